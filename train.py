"""Train one grokking experiment: `python train.py task=divide train_frac=0.1` (see README.md)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from grok.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one experiment; return its `objective` (what hydra/sweeper=optuna minimizes or maximizes)."""
    from grok.run import run  # imported here so that --help and --cfg stay fast
    from grok.sweeps import objective

    hydra_cfg = HydraConfig.get()
    try:
        summary = run(cfg, Path(hydra_cfg.runtime.output_dir), run_name=hydra_cfg.job.override_dirname or "default")
        return objective(summary, cfg)
    except ConfigError as error:
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(f"error: {error}")
        raise  # in a multirun, Hydra records the failed job and the others go on


if __name__ == "__main__":
    main()
