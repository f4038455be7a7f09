"""The W&B sweep equivalent to a named Hydra grid sweep: `python sweep.py wandb NAME [overrides] [--agent]`.

Same grid (method grid, the same values), and a command that calls train.py with `+sweep=NAME`,
the sweep's fixed overrides and W&B's `${args_no_hyphens}` (`key=value`, Hydra's override syntax), so
each agent run composes the same config as the Hydra multirun job for that grid point. Agent runs
go online (`logger.mode=online`): an offline run never reports back to its sweep.
"""

import os
from pathlib import Path
from typing import Any, Dict, Sequence

from grok.sweeps.named import ROOT, SweepError, compose_sweep, is_search, sweep_axes


def wandb_sweep_config(name: str, overrides: Sequence[str]) -> Dict[str, Any]:
    cfg = compose_sweep(name, overrides)
    if is_search(cfg.hydra):
        raise SweepError(
            f"sweep {name} is a search ({cfg.hydra.sweeper._target_}): only grid sweeps translate to a W&B grid"
        )
    axes = sweep_axes(cfg, name, overrides)
    fixed = [f"{axis.key}={axis.strings[0]}" for axis in axes if len(axis.values) == 1]
    config: Dict[str, Any] = {
        "name": name,
        "program": "train.py",
        "method": "grid",
        "metric": {"name": cfg.objective, "goal": "maximize" if cfg.objective.endswith("_acc") else "minimize"},
        "parameters": {axis.key: {"values": _wandb_values(axis)} for axis in axes if len(axis.values) > 1},
        "command": ["${env}", "${interpreter}", "${program}", *fixed, "logger.mode=online", "${args_no_hyphens}"],
    }
    if cfg.logger.name == "wandb":
        config.update(project=cfg.logger.project, **({"entity": cfg.logger.entity} if cfg.logger.entity else {}))
    return config


def _wandb_values(axis) -> list:
    """The axis's values, typed for W&B's charts; a list (several options of a group: transforms=[a,b])
    as Hydra writes it, which W&B hands back to train.py as it is."""
    return [text if isinstance(value, (list, dict)) else value for value, text in zip(axis.values, axis.strings)]


def write_sweep_yaml(config: Dict[str, Any], path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_agent(config: Dict[str, Any]) -> None:
    """Create the sweep on W&B and run an agent here; its runs write under the repository's outputs/."""
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise SweepError("--agent needs a W&B login: run `wandb login` (or set WANDB_API_KEY) first")
    project, entity = config.get("project"), config.get("entity")
    sweep_id = wandb.sweep(sweep=config, project=project, entity=entity)
    os.chdir(ROOT)  # the agent runs `python train.py ...` in its working directory
    wandb.agent(sweep_id, project=project, entity=entity)
