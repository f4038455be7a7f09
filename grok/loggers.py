"""Where each evaluated epoch goes: `metrics.csv` always, the progress measures (grok/analysis.py)
to `analysis.csv`, and both as one row to Weights & Biases unless `logger=none`.

A W&B failure (import, network, disk) never stops training: the W&B logger warns once and turns
itself off, while `metrics.csv` and the rest of the run carry on.
"""

import csv
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional


class CSVLogger:
    """One row per logged epoch, the file created with the first. On resume, rows past the
    checkpoint's epoch are dropped first, so a resumed run's file equals an uninterrupted run's."""

    def __init__(self, path: Path, resume_epoch: Optional[int] = None):
        self.path = path
        self.fields: Optional[List[str]] = None
        if resume_epoch is not None and path.exists():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                self.fields = rows[0]
                kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= resume_epoch]
                with open(path, "w", newline="") as f:
                    csv.writer(f, lineterminator="\n").writerows(kept)
        elif path.exists():
            path.unlink()
        self.file = None

    def log_epoch(self, row: Dict[str, Any]) -> None:
        if self.file is None:
            self.file = open(self.path, "a", newline="")
            self.writer = csv.writer(self.file, lineterminator="\n")
        if self.fields is None:
            self.fields = list(row)
            self.writer.writerow(self.fields)
        self.writer.writerow([repr(row[key]) if isinstance(row[key], float) else row[key] for key in self.fields])
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


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
            mode=cfg.mode,
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

    def finish(self, failed: bool) -> None:
        if self.run is not None:
            self._guard("finish", self.run.finish, 1 if failed else 0)


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

    def finish(self, failed: bool) -> None:
        self.metrics.close()
        self.measures.close()
        if self.wandb is not None:
            self.wandb.finish(failed)
