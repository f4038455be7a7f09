"""Where each evaluated epoch goes: `metrics.csv` always, the progress measures (analysis.py) to
`analysis.csv`, and both as one row to Weights & Biases (wandb_logger.py) unless `logger=none`."""

from pathlib import Path
from typing import Any, Dict, Optional

from grok.recording.files import CSVLogger
from grok.recording.wandb_logger import WandbLogger


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
