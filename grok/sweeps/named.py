"""Named sweeps (conf/sweep/): their grid, and running one with progress over the whole sweep (the W&B
sweep: grok/sweeps/wandb_sweep.py).

A named sweep is `python train.py -m +sweep=NAME [overrides]`: Hydra's sweeper expands
`hydra.sweeper.params` and any comma lists on the command line into one job per grid point;
`grid_axes` reproduces that expansion so sweep.py knows the jobs before they start.
"""

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from grok.app import compose
from grok.config import CONF_DIR, ROOT


class SweepError(ValueError):
    """A sweep that cannot be run or translated; the message is one line for the user."""


def sweep_names() -> List[str]:
    return sorted(path.stem for path in (CONF_DIR / "sweep").glob("*.yaml"))


# ----------------------------------------------------------------------------- the grid
@dataclass
class Axis:
    key: str  # as Hydra writes it in a job's overrides: train_frac, task, +sweep
    strings: List[str]  # each value as it appears in a job's overrides
    values: List[Any]  # the same values, typed (for W&B)


def _parse(overrides: Sequence[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def grid_axes(params: Dict[str, str], overrides: Sequence[str]) -> List[Axis]:
    """The axes Hydra's basic sweeper expands: `hydra.sweeper.params` first, then the command line's
    job overrides in order; a key given twice keeps its place and its last value (as BasicSweeper does)."""
    axes: Dict[str, Axis] = {}
    for override in _parse([f"{key}={value}" for key, value in params.items()] + list(overrides)):
        key = override.get_key_element()
        if override.is_hydra_override():
            continue
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise SweepError(f"{key}: a range to search, not a list of values; grid sweeps need lists")
        if override.is_sweep_override():
            axes[key] = Axis(key, list(override.sweep_string_iterator()), list(override.sweep_iterator()))
        else:
            axes[key] = Axis(key, [override.get_value_element_as_str()], [override.value()])
    return list(axes.values())


def grid_jobs(axes: Sequence[Axis]) -> List[List[str]]:
    """Each job's overrides, in Hydra's job order (the last axis varies fastest)."""
    return [
        [f"{axis.key}={value}" for axis, value in zip(axes, point)]
        for point in itertools.product(*(axis.strings for axis in axes))
    ]


def compose_sweep(name: str, overrides: Sequence[str]):
    """The master config (hydra node included) of `train.py -m +sweep=NAME overrides`; comma lists
    are left out here (compose cannot take them) and enter through `grid_axes`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if name not in sweep_names():
        raise SweepError(f"no sweep named {name!r}: choose one of {', '.join(sweep_names())}")
    try:
        single = [text for text, override in zip(overrides, _parse(overrides)) if not override.is_sweep_override()]
        return compose([f"+sweep={name}", *single], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:  # a bad override: Hydra says which
        raise SweepError(" ".join(str(error).split())) from None


def is_search(hydra_cfg) -> bool:
    """A sweeper that picks its own points (optuna) rather than expanding a grid."""
    return "n_trials" in hydra_cfg.sweeper


def sweep_axes(cfg, name: str, overrides: Sequence[str]) -> List[Axis]:
    """The grid of `train.py -m +sweep=NAME overrides`, given its composed config."""
    return grid_axes(dict(cfg.hydra.sweeper.params or {}), [f"+sweep={name}", *overrides])


# ----------------------------------------------------------------------------- running
def job_status(job_dir: Path) -> str:
    """completed | interrupted (by a signal) | failed | incomplete (no summary.json yet: running, or
    killed) | unreadable."""
    import json

    try:
        return json.loads((job_dir / "summary.json").read_text())["status"]
    except FileNotFoundError:
        return "incomplete"
    except (ValueError, KeyError, TypeError):  # cut short, or not a run's summary
        return "unreadable"


def job_dirs(sweep_dir: Path) -> List[Path]:
    """The jobs' directories: Hydra's `.hydra/` marks one, or the run's own files where it is lost."""
    marks = (".hydra", "summary.json", "metrics.csv")
    found = [path for path in sweep_dir.iterdir() if path.is_dir() and any((path / m).exists() for m in marks)]
    return sorted(
        found, key=lambda path: (not path.name.isdigit(), int(path.name) if path.name.isdigit() else 0, path.name)
    )


def claim_new_dir(path: Path) -> Path:
    """`path`, made here; where it exists, `path_2`, `path_3`, ...: a directory named by the time
    (Hydra's ${now:...}) is another's when two sweeps or reproductions start in the same second.
    mkdir decides which process gets a name."""
    for n in itertools.count(1):
        claimed = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            claimed.mkdir(parents=True)
            return claimed
        except FileExistsError:
            continue


def run_sweep(
    name: str, overrides: Sequence[str], jobs: Optional[int] = None, batched: bool = False
) -> Tuple[Path, int]:
    """Run `train.py -m +sweep=NAME overrides` in a subprocess, with a progress bar over the whole
    sweep read from the job dirs; Hydra's own output goes to <sweep dir>/multirun.log.
    `jobs`: run that many at once through hydra/launcher=joblib, each with cores // jobs threads.
    `batched`: train them together in one process (hydra/launcher=batched, grok/sweeps/batched.py).
    Returns the sweep dir and train.py's exit status; raises SweepError if no job ran at all."""
    from tqdm import tqdm

    cfg = compose_sweep(name, overrides)
    hydra_cfg = cfg.hydra
    total = hydra_cfg.sweeper.n_trials if is_search(hydra_cfg) else len(grid_jobs(sweep_axes(cfg, name, overrides)))
    sweep_dir = Path(hydra_cfg.sweep.dir).absolute()  # resolved once, here: passed on to Hydra below
    keys = {override.get_key_element().lstrip("+~") for override in _parse(overrides)}
    args = [sys.executable, str(ROOT / "train.py"), "-m", f"+sweep={name}", *overrides]
    if "hydra.sweep.dir" not in keys:
        sweep_dir = claim_new_dir(sweep_dir)
        args += [f"hydra.sweep.dir={sweep_dir}"]
    if jobs is not None:
        args += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
        args += [] if "threads" in keys else [f"threads={max(1, (os.cpu_count() or 1) // jobs)}"]
    if batched:
        args += ["hydra/launcher=batched"]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log_path = sweep_dir / "multirun.log"
    print(f"sweep {name}: {total} jobs in {sweep_dir}", flush=True)
    with open(log_path, "w") as log, tqdm(total=total, unit="job", dynamic_ncols=True) as bar:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        shown = None
        try:
            while True:
                finished = process.poll() is not None
                statuses = [job_status(path) for path in job_dirs(sweep_dir)]
                state = (
                    sum(status != "incomplete" for status in statuses),
                    statuses.count("incomplete"),
                    statuses.count("failed"),
                )
                if state != shown or sys.stderr.isatty():  # a log file gets a line per change only
                    bar.n, shown = state[0], state
                    bar.set_postfix(running=state[1], failed=state[2], refresh=False)
                    bar.refresh()
                if finished:
                    break
                time.sleep(1.0)
        except KeyboardInterrupt:
            process.wait()  # the terminal sent Ctrl-C to Hydra too; what ran is summarized below
    if not job_dirs(sweep_dir):
        tail = log_path.read_text().strip().splitlines()[-15:]
        raise SweepError(f"train.py failed before any job ran (exit {process.returncode}):\n" + "\n".join(tail))
    return sweep_dir, process.returncode
