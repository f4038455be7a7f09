"""`make reproduce NAME=...` (`python sweep.py reproduce NAME`): one result of the literature, run
and reported. NAME is a named sweep (conf/sweep/NAME.yaml: a curve or a phase diagram; its table and
figures are the sweep's own, sweep.py) or a preset (conf/experiment/NAME.yaml: one run; its table is
the phases its progress measures mark, written to phases.csv, its figures the run's own).

The phases of one run (Nanda et al. 2023), read off its metrics.csv and analysis.csv:
  memorization       epoch 0 to memorize_epoch (train accuracy first >= 0.99)
  circuit formation  to the epoch the excluded loss peaks, after memorization (the Fourier circuit
                     grows beside the memorized lookup table; removing its directions hurts more)
  cleanup            to grok_epoch (test accuracy first >= 0.99: the table is gone)
"""

import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from grok.config import CONF_DIR, ROOT
from grok.recording.files import read_metrics
from grok.sweeps.named import SweepError, claim_new_dir, sweep_names
from grok.sweeps.summary import write_csv
from grok.training.experiment import GROKKED, MEMORIZED, generalization_key


def presets() -> List[str]:
    return sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


def reproductions() -> List[str]:
    return sweep_names() + presets()


def run_preset(name: str, overrides: Sequence[str]) -> Path:
    """`python train.py experiment=NAME overrides` into outputs/reproduce/NAME/<time>; its run dir."""
    run_dir = claim_new_dir(Path("outputs", "reproduce", name, time.strftime("%Y-%m-%d_%H-%M-%S")).absolute())
    command = [sys.executable, str(ROOT / "train.py"), f"experiment={name}", *overrides, f"hydra.run.dir={run_dir}"]
    print(f"reproduce {name}: {' '.join(command[1:])}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise SweepError(f"train.py experiment={name} failed; see {run_dir}")
    return run_dir


def phases(run_dir: Path) -> List[Dict[str, Optional[float]]]:
    """The run's phases, each with the epoch it ends at (None: not reached within the run)."""
    rows = read_metrics(run_dir / "metrics.csv")
    measures = read_metrics(run_dir / "analysis.csv") if (run_dir / "analysis.csv").exists() else []
    first = lambda key, threshold: next((int(r["epoch"]) for r in rows if r[key] >= threshold), None)
    memorized = first("train_acc", MEMORIZED)
    grokked = first(generalization_key(rows[0]), GROKKED) if rows else None
    after = [m for m in measures if "excluded_loss" in m and memorized is not None and m["epoch"] >= memorized]
    if grokked is not None:
        after = [m for m in after if m["epoch"] <= grokked]
    peak = int(max(after, key=lambda m: m["excluded_loss"])["epoch"]) if after else None
    ends = {"memorization": memorized, "circuit formation": peak, "cleanup": grokked}
    return [{"phase": name, "ends_at_epoch": epoch} for name, epoch in ends.items()]


def report_run(run_dir: Path) -> str:
    """phases.csv in the run dir, and the table as text."""
    table = phases(run_dir)
    write_csv(run_dir / "phases.csv", ["phase", "ends_at_epoch"], table)
    measured = (run_dir / "analysis.csv").exists()
    unknown = lambda row: (
        "not measured (no analysis.csv)" if row["phase"] == "circuit formation" and not measured else "not reached"
    )
    lines = [f"{row['phase']:<18} ends at epoch {row['ends_at_epoch'] or unknown(row)}" for row in table]
    figures = ", ".join(path.name for path in sorted(run_dir.glob("*.png"))) or "none (figures=false)"
    return "\n".join([*lines, f"wrote {run_dir / 'phases.csv'}; figures: {figures}"])
