"""Where each evaluated epoch goes: `metrics.csv` always, the progress measures (grok/analysis.py)
to `analysis.csv`, and both as one row to Weights & Biases unless `logger=none`.

A W&B failure (import, network, disk) never stops training: the W&B logger warns once and turns
itself off, while `metrics.csv` and the rest of the run carry on.
"""

import csv
import io
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional


class CSVLogger:
    """One row per logged epoch, the file created with the first. On resume, rows past the
    checkpoint's epoch are dropped first, so a resumed run's file equals an uninterrupted run's.
    Each row goes to the file in one unbuffered write: nothing is left in a buffer to fail again
    when a run that hit a full disk closes its files."""

    def __init__(self, path: Path, resume_epoch: Optional[int] = None):
        self.path = path
        self.fields: Optional[List[str]] = None
        if resume_epoch is not None and path.exists():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                self.fields = rows[0]
                # a row cut short (a full disk, a kill mid-write) has fewer fields and goes too
                kept = [rows[0]] + [row for row in rows[1:] if len(row) == len(rows[0]) and int(row[0]) <= resume_epoch]
                write_atomically(path, _csv_lines(kept))
        elif path.exists():
            path.unlink()
        self.fd: Optional[int] = None

    def log_epoch(self, row: Dict[str, Any]) -> None:
        lines = []
        if self.fields is None:
            self.fields = list(row)
            lines.append(self.fields)
        lines.append([repr(row[key]) if isinstance(row[key], float) else row[key] for key in self.fields])
        data = _csv_lines(lines).encode()
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(self.path)) from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _csv_lines(rows: List[list]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename, so that a reader (or a full disk) never sees half a file;
    on failure the old file stays and the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """A CSVLogger's rows, numbers as floats (other values, like a list of frequencies, as text)."""

    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as f:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(f)]


class WandbLogger:
    def __init__(self, cfg, config: Dict[str, Any], out_dir: Path, run_id: str, run_name: str):
        self.run = None
        self._guard("start", self._init, cfg, config, out_dir, run_id, run_name)

    def _init(self, cfg, config, out_dir, run_id, run_name) -> None:
        import wandb

        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags),
            job_type=cfg.job_type,
            mode=os.environ.get("WANDB_MODE") or cfg.mode,
            dir=str(out_dir),
            id=run_id,
            name=run_name,
            resume="allow",
            reinit="create_new",  # a batched sweep (grok/batched.py) holds one run per job in one process
            config=config,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True),
        )
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def _guard(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as error:  # W&B must never take the training run down with it
            warnings.warn(f"W&B {what} failed, W&B logging is off for this run: {error}", stacklevel=3)
            self.run = None

    def log_epoch(self, row: Dict[str, Any]) -> None:
        if self.run is not None:
            self._guard("log", self.run.log, row)

    def log_summary(self, summary: Dict[str, Any]) -> None:
        if self.run is not None:
            self._guard("summary", self.run.summary.update, summary)

    def log_image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            # In the summary, not the history: the history holds exactly one row per evaluated epoch.
            self._guard("image", self.run.summary.update, {key: wandb.Image(str(path))})

    def log_table(self, key: str, columns: List[str], rows: List[list]) -> None:
        if self.run is not None:
            import wandb

            self._guard("table", self.run.log, {key: wandb.Table(columns=columns, data=rows)})

    def finish(self, exit_code: int) -> None:
        if self.run is not None:
            self._guard("finish", self.run.finish, exit_code)


class Loggers:
    """A run's loggers: `metrics.csv`, `analysis.csv` and W&B (None with `logger=none`)."""

    def __init__(self, run_dir: Path, resume_epoch: Optional[int], wandb: Optional[WandbLogger]):
        self.metrics = CSVLogger(run_dir / "metrics.csv", resume_epoch)
        self.measures = CSVLogger(run_dir / "analysis.csv", resume_epoch)
        self.wandb = wandb

    def log_epoch(self, row: Dict[str, Any], measures: Dict[str, Any]) -> None:
        self.metrics.log_epoch(row)
        if measures:
            self.measures.log_epoch({"epoch": row["epoch"], **measures})
        if self.wandb is not None:
            self.wandb.log_epoch({**row, **measures})  # one W&B history row per evaluated epoch

    def log_summary(self, summary: Dict[str, Any], images: Dict[str, Path]) -> None:
        if self.wandb is not None:
            self.wandb.log_summary(summary)
            for key, path in images.items():
                self.wandb.log_image(key, path)

    def finish(self, exit_code: int) -> None:
        """Close every logger; W&B marks the run by `exit_code` (0: finished, or preempted to resume)."""
        self.metrics.close()
        self.measures.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code)
