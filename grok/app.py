"""Hydra's side of the command line: the schema and resolvers registered, composition for code that
is not train.py (sweep.py, benchmarks, tests), and the guard that runs before Hydra writes into an
existing run directory."""

import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from grok.config import CONF_DIR, run_dir_of
from grok.errors import ConfigError


def register() -> None:
    """The top-level schema as `base_config` (conf/config.yaml extends it) and the resolvers the
    configs use: `${grok_slurm_gpus:partition}`, `${grok_sweep_group:}`."""
    from hydra.core.config_store import ConfigStore

    from grok.config import Config
    from grok.system.slurm import cluster_gpus

    OmegaConf.register_new_resolver("grok_slurm_gpus", cluster_gpus, replace=True)
    OmegaConf.register_new_resolver("grok_sweep_group", sweep_group, replace=True)
    ConfigStore.instance().store(name="base_config", node=Config)


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config `python train.py overrides...` runs, through Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def sweep_group() -> Optional[str]:
    """`${grok_sweep_group:}`: '<sweep name>-<sweep dir name>' in a multirun job, None otherwise.

    Both names are read off Hydra's sweep config, which is identical in every job of a multirun
    (whatever the launcher), so all its jobs land in one W&B group; the dir name is the start time."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    return f"{hydra_cfg.runtime.choices.get('sweep') or 'multirun'}-{Path(hydra_cfg.sweep.dir).name}"


class RunDirGuard(Callback):
    """Before Hydra writes `.hydra/` into an existing run directory (`hydra.run.dir=<run>`, or the
    directory `resume` names), take its lock and check the values, the memory the run needs and a
    resume against its checkpoint, so that a refused command leaves the run exactly as it was."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = run_dir_of(config, Path(str(config.hydra.run.dir)))
        if not run_dir.is_dir():
            return  # a new run: nobody else can be writing into it yet (and torch is not imported here)
        from grok.config import validate
        from grok.run import check_resumable, resolve_device
        from grok.system.lock import lock_run_dir, unlock_run_dir
        from grok.training.memory import check_memory

        try:
            lock_run_dir(run_dir)
            cfg = validate(config)
            check_memory(cfg, resolve_device(cfg.device))
            if cfg.resume:
                with warnings.catch_warnings():  # a fallback to an older checkpoint: start() warns about it
                    warnings.simplefilter("ignore")
                    check_resumable(cfg, run_dir)
        except ConfigError as error:
            unlock_run_dir(run_dir)
            sys.exit(f"error: {error}")

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        from grok.system.lock import unlock_run_dir

        unlock_run_dir(run_dir_of(config, Path(str(config.hydra.run.dir))))
