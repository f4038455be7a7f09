"""Summarize a sweep directory: one row per job in sweep_summary.csv, the phase-diagram figures, a
table on the terminal, and a W&B run (job_type `summary`) holding the table and the figures.

Works on a sweep still running, partly failed, or copied from a cluster: a job whose files are
missing or cut short is reported, never a crash.
"""

import csv
import functools
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from grok.recording.files import read_metrics
from grok.sweeps.named import grid_axes, grid_jobs, job_dirs, job_status
from grok.sweeps.phase import (
    OVER_SEEDS_FIELDS,
    REPLICATE_KEYS,
    over_seeds,
    phase,
    plot_epochs_curve,
    plot_grok_epochs,
    plot_phase_map,
    plot_test_curves,
)

FIELDS = [
    "status",
    "phase",
    "memorize_epoch",
    "grok_epoch",
    "delay",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epochs",
    "wall_seconds",
    "error",
]
FIGURES = {
    "phase_diagram": "phase_diagram.png",
    "phase_map": "phase_map.png",
    "test_acc_curves": "test_acc_curves.png",
    "epochs_curve": "epochs_curve.png",  # one numeric swept key besides seeds: the epochs against it
}


@dataclass
class JobDir:
    name: str  # its directory's name: the job number
    overrides: List[str]  # as in .hydra/overrides.yaml: key=value
    status: str  # completed | failed | incomplete (running, or stopped) | unreadable
    summary: Dict[str, Any]
    rows: List[Dict[str, float]]  # metrics.csv
    problems: List[str] = field(default_factory=list)

    def values(self) -> Dict[str, str]:
        return dict(item.split("=", 1) for item in self.overrides)


def read_rows(path: Path, problems: List[str]) -> List[Dict[str, float]]:
    """metrics.csv's rows, if it exists; a damaged file or rows cut short are reported in `problems`."""
    if not path.exists():
        return []
    try:
        return read_metrics(path, problems)
    except (csv.Error, UnicodeDecodeError) as error:
        problems.append(f"metrics.csv is unreadable: {error}")
        return []


def read_job(job_dir: Path) -> JobDir:
    from omegaconf import OmegaConf

    problems: List[str] = []
    overrides: List[str] = []
    try:
        overrides = [
            str(item) for item in OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
        ]
        if not all("=" in item for item in overrides):  # a list cut short mid-item
            raise ValueError("not a list of key=value")
    except FileNotFoundError:
        problems.append(".hydra/overrides.yaml is missing: its swept values are unknown")
    except Exception as error:  # YAML errors, or a mapping where a list belongs
        overrides = []
        problems.append(f".hydra/overrides.yaml is unreadable: {' '.join(str(error).split())}")
    status = job_status(job_dir)
    summary: Dict[str, Any] = {}
    if status == "unreadable":
        problems.append("summary.json is unreadable (cut short?)")
    elif status != "incomplete":
        summary = json.loads((job_dir / "summary.json").read_text())
    rows = read_rows(job_dir / "metrics.csv", problems)
    if status == "completed" and not rows:
        problems.append("metrics.csv is missing or empty: no curve")
    return JobDir(job_dir.name, overrides, status, summary, rows, problems)


def _first_epoch(rows: List[Dict[str, float]], key: str, threshold: float) -> Optional[int]:
    return next((int(row["epoch"]) for row in rows if row.get(key, -1) >= threshold), None)


def job_record(job: JobDir, keys: List[str]) -> Dict[str, Any]:
    """One CSV row: the job's swept values, then its outcome. A finished job's outcome is its
    summary.json; an unfinished or failed one's is read off metrics.csv so far."""
    from grok.training.experiment import GROKKED, MEMORIZED, generalization_key

    values = job.values()
    record: Dict[str, Any] = {"job": job.name, **{key: values.get(key) for key in keys}}
    if job.status == "completed":
        outcome = {name: job.summary.get(name) for name in FIELDS if name in job.summary}
    else:
        last = job.rows[-1] if job.rows else {}
        outcome = {name: last.get(name) for name in ("train_loss", "train_acc", "test_loss", "test_acc")}
        outcome.update(
            memorize_epoch=_first_epoch(job.rows, "train_acc", MEMORIZED),
            grok_epoch=_first_epoch(job.rows, generalization_key(last), GROKKED) if last else None,
            epochs=int(last["epoch"]) if last else None,
            error=job.summary.get("error"),
        )
    record.update({name: outcome.get(name) for name in FIELDS})
    record["status"] = job.status
    memorized, grokked = record["memorize_epoch"], record["grok_epoch"]
    record["delay"] = grokked - memorized if memorized is not None and grokked is not None else None
    record["phase"] = phase(memorized, grokked) if job.status == "completed" else None
    return record


def expected_jobs(sweep_dir: Path) -> Optional[List[List[str]]]:
    """The jobs the sweep was launched with (from Hydra's multirun.yaml), where it was a grid."""
    from omegaconf import OmegaConf

    try:
        hydra_cfg = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        if "n_trials" in hydra_cfg.sweeper:
            return None
        params = OmegaConf.to_container(hydra_cfg.sweeper.params or {})
        # unresolved (`list()` would resolve data_seed=${seed} to data_seed=0): grid_axes writes it as a job's
        # overrides.yaml does, data_seed=$\{seed\}
        overrides = OmegaConf.to_container(hydra_cfg.overrides.task)
        return grid_jobs(grid_axes(params, overrides))
    except Exception:  # no or damaged multirun.yaml (a partial copy): the job dirs are all there is
        return None


def swept_keys(jobs: List[JobDir], expected: Optional[List[List[str]]]) -> List[str]:
    """Keys that take more than one value, over the grid where known and the jobs found."""
    values: Dict[str, set] = {}
    for overrides in (expected or []) + [job.overrides for job in jobs]:
        for item in overrides:
            key, value = item.split("=", 1)
            values.setdefault(key, set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1]


@dataclass
class SweepSummary:
    sweep_dir: Path
    keys: List[str]
    records: List[Dict[str, Any]]
    problems: List[str]
    never_started: List[List[str]] = field(default_factory=list)  # the grid's jobs without a job dir: overrides

    def failed(self) -> List[Dict[str, Any]]:
        """The jobs that ended without completing: failed, interrupted (by a signal) or unreadable."""
        return [r for r in self.records if r["status"] in ("failed", "interrupted", "unreadable")]

    def columns(self) -> List[str]:
        """sweep_summary.csv's (and its W&B table's) columns."""
        return ["job", *self.keys, *FIELDS]

    def seed_columns(self) -> List[str]:
        """sweep_over_seeds.csv's (and its W&B and terminal tables') columns."""
        return [*self.settings(), *OVER_SEEDS_FIELDS]

    def settings(self) -> List[str]:
        """The swept keys that change the setting: all but the seeds (REPLICATE_KEYS)."""
        return [key for key in self.keys if key not in REPLICATE_KEYS]

    def curve_key(self) -> Optional[str]:
        """The swept key the epochs are plotted against: the one setting swept, if one is."""
        return self.settings()[0] if len(self.settings()) == 1 else None

    @functools.cached_property
    def seed_table(self) -> Optional[List[Dict[str, Any]]]:
        """over_seeds by setting, the grid's jobs that never started among the unfinished, where the
        sweep repeats a setting with other seeds; else None (no seeds swept, or a search drew each
        setting once)."""
        if len(self.settings()) == len(self.keys):
            return None
        not_started = [
            {**dict(item.split("=", 1) for item in overrides), "status": "never started"}
            for overrides in self.never_started
        ]
        rows = over_seeds([*self.records, *not_started], self.settings())
        return rows if any(row["runs"] + row["unfinished"] > 1 for row in rows) else None


def sweep_table(sweep_dir: Path) -> Tuple[SweepSummary, List[JobDir]]:
    """The sweep's table, read from its job directories (nothing is written), and the jobs."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    jobs = [read_job(path) for path in job_dirs(sweep_dir)]
    expected = expected_jobs(sweep_dir)
    keys = swept_keys(jobs, expected)
    records = [job_record(job, keys) for job in jobs]
    problems = [f"job {job.name}: {problem}" for job in jobs for problem in job.problems]
    found = {tuple(job.overrides) for job in jobs}
    never = [overrides for overrides in expected or [] if tuple(overrides) not in found]
    problems += [f"never started (no job dir has these overrides): {' '.join(overrides)}" for overrides in never]
    return SweepSummary(sweep_dir, keys, records, problems, never), jobs


def write_csv(path: Path, columns: List[str], rows: List[Dict[str, Any]]) -> None:
    """`rows` under `columns`, None as an empty cell."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def summarize(sweep_dir: Path, log_wandb: bool = True) -> SweepSummary:
    """Write sweep_summary.csv and the figures into sweep_dir; log the W&B summary run."""
    summary, jobs = sweep_table(sweep_dir)
    sweep_dir, keys, records = summary.sweep_dir, summary.keys, summary.records
    write_csv(sweep_dir / "sweep_summary.csv", summary.columns(), records)
    if summary.seed_table is not None:
        write_csv(sweep_dir / "sweep_over_seeds.csv", summary.seed_columns(), summary.seed_table)
    if records:
        plot_grok_epochs(records, keys, sweep_dir / FIGURES["phase_diagram"])
        plot_phase_map(records, keys, sweep_dir / FIGURES["phase_map"])
        curve_key = summary.curve_key()
        if curve_key is not None:
            plot_epochs_curve(records, curve_key, sweep_dir / FIGURES["epochs_curve"])
        plot_test_curves(
            [(record, job.rows) for record, job in zip(records, jobs)], keys, sweep_dir / FIGURES["test_acc_curves"]
        )
    if log_wandb and records:
        log_summary_run(summary)
    return summary


def log_summary_run(summary: SweepSummary) -> Optional[str]:
    """The summary as its own W&B run (job_type summary) in the jobs' group, under the sweep dir.
    Returns its group, or None where the jobs ran without W&B (logger=none)."""
    from omegaconf import OmegaConf

    from grok.recording.wandb_logger import WandbLogger

    configs = [OmegaConf.load(path) for path in sorted(summary.sweep_dir.glob("*/config.yaml"))]
    logger_cfg = next((cfg.logger for cfg in configs if cfg.logger.name == "wandb"), None)
    if logger_cfg is None:
        return None
    logger_cfg.job_type = "summary"
    config = {"sweep_dir": str(summary.sweep_dir), "swept": summary.keys, "jobs": len(summary.records)}
    logger = WandbLogger(logger_cfg, config, summary.sweep_dir, uuid.uuid4().hex[:8], "summary")
    columns = summary.columns()
    logger.log_table("sweep_summary", columns, [[record[c] for c in columns] for record in summary.records])
    seeds = summary.seed_table
    if seeds is not None:
        columns = summary.seed_columns()
        logger.log_table("sweep_over_seeds", columns, [[row[c] for c in columns] for row in seeds])
    for key, name in FIGURES.items():
        if (summary.sweep_dir / name).exists():
            logger.log_image(key, summary.sweep_dir / name)
    logger.finish(False)
    return logger_cfg.group


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    try:  # swept values are the override strings: shorten a search's 0.0020554062603827007
        return f"{float(text):.4g}" if len(text) > 8 else text
    except ValueError:
        return text


def _fixed_width(cells: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in cells]


def format_table(summary: SweepSummary) -> str:
    """The sweep as a fixed-width table, one line per job, problems listed underneath."""
    columns = [
        "job",
        *summary.keys,
        "status",
        "phase",
        "memorize_epoch",
        "grok_epoch",
        "delay",
        "test_acc",
        "epochs",
        "wall_seconds",
    ]
    headers = {"memorize_epoch": "memorized", "grok_epoch": "grokked", "wall_seconds": "seconds"}
    lines = _fixed_width(
        [[headers.get(c, c) for c in columns]] + [[_cell(r[c]) for c in columns] for r in summary.records]
    )
    seeds = summary.seed_table
    if seeds is not None:
        columns = summary.seed_columns()
        headers = {"median_memorize_epoch": "median memorized", "median_grok_epoch": "median grokked"}
        by = f", by {', '.join(summary.settings())}" if summary.settings() else ""
        lines.append(f"over the seeds{by} (a median counts a run that never got there as the latest):")
        lines += _fixed_width([[headers.get(c, c) for c in columns]] + [[_cell(r[c]) for c in columns] for r in seeds])
    for record in summary.failed():
        values = " ".join(f"{key}={record[key]}" for key in summary.keys)
        error = (record["error"] or "summary.json is unreadable").strip().splitlines()[-1]
        lines.append(f"{record['status']}: job {record['job']} ({values}): {error}")
    lines += summary.problems
    return "\n".join(lines)
