"""Train one grokking experiment: `python train.py task=divide train_frac=0.1` (see README.md)."""

import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from grok.app import register
from grok.config import run_dir_of
from grok.errors import ConfigError
from grok.system.collector import defer_collections

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one experiment; return its `objective` (what hydra/sweeper=optuna minimizes or maximizes).
    A failure the user can act on (a config value, divergence, a full disk) ends a single run with
    one `error:` line and exit 1; a signal ends it with exit 128 + the signal's number."""
    defer_collections()  # until the run trains: torch's imports without collections (grok/system/collector.py)
    if cfg.logger.name == "wandb":  # W&B's helper process imports and starts W&B beside torch's imports
        from grok.recording.wandb_logger import start_helper

        start_helper(cfg.logger)
    from grok.run import DISK_ERRORS, failure_reason, objective, run  # here: --help and --cfg stay fast
    from grok.system.signals import Interrupted
    from grok.training.loop import Diverged

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    run_dir = run_dir_of(cfg, out_dir)
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("resume=", "hydra."))]
    resume = " ".join(["python train.py", *map(shlex.quote, overrides), shlex.quote(f"resume={run_dir}")])
    try:
        summary = run(cfg, out_dir, run_name=hydra_cfg.job.override_dirname or "default")
        return objective(summary, cfg)
    except Interrupted as error:
        print(f"{error}; resume with: {resume}", file=sys.stderr)
        sys.exit(error.exit_code)
    except (ConfigError, Diverged, OSError) as error:
        if isinstance(error, OSError) and error.errno not in DISK_ERRORS:
            raise
        if hydra_cfg.mode != RunMode.RUN:
            raise  # in a multirun, Hydra records the failed job and the others go on
        message = failure_reason(error)
        if isinstance(error, OSError) and (run_dir / "checkpoints" / "last.pt").exists():
            message += f"; once there is space, resume from the last checkpoint with: {resume}"
        sys.exit(f"error: {message}")


if __name__ == "__main__":
    main()
