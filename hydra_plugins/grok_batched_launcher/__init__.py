"""`hydra/launcher=batched`: a multirun's jobs in this process, trained together where their shapes
allow (grok/sweeps/batched.py; docs/sweeps.md). Hydra prepares each job as its basic launcher does
(output directory, .hydra/ files, the job's resolved config); then grok.sweeps.batched trains them all and
each job's return value is its objective, as train.py would return it."""

import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class BatchedLauncher(Launcher):
    def __init__(self, max_members: Optional[int] = None) -> None:
        self.max_members = max_members
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # task_function (train.py's main) is not called: grok.sweeps.batched runs the jobs together
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from grok.run import objective
        from grok.sweeps.batched import Job, run_batched
        from grok.system.signals import Interrupted

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        log.info(f"Launching {len(job_overrides)} jobs batched in this process")
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

        def prepare(cfg: DictConfig) -> Job:  # called by run_job, with this job's HydraConfig set
            hydra_cfg = HydraConfig.get()
            resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
            return Job(resolved, Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.override_dirname or "default")

        returns: List[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=prepare,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                    configure_logging=False,
                )
            )
        ready = [
            ret for ret in returns if ret.status == JobStatus.COMPLETED
        ]  # a config Hydra could not resolve fails alone
        try:
            results = run_batched([ret.return_value for ret in ready], self.max_members)
        except Interrupted as error:  # each job stopped by the signal has checkpointed and says so
            log.error(str(error))
            sys.exit(error.exit_code)
        for ret, result in zip(ready, results):
            failed = isinstance(result, BaseException)
            ret.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
            ret.return_value = result if failed else objective(result, ret.cfg)
        return returns
