"""The run's own files: `metrics.csv` and `analysis.csv` (one row per logged epoch, each row one
unbuffered write), summary.json, and atomic replacement, so that no reader ever sees half a file."""

import csv
import io
import json
import os
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
                data = data[os.write(self.fd, data) :]
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


def read_metrics(path: Path, problems: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """A CSVLogger's rows, numbers as floats (other values, like a list of frequencies, as text). A row
    cut short (a copy or a writer interrupted mid-row) is left out, and counted in `problems` if given."""

    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    whole = [row for row in raw if None not in row and None not in row.values()]  # DictReader's marks of a bad length
    if len(whole) < len(raw) and problems is not None:
        problems.append(f"{path.name}: {len(raw) - len(whole)} unreadable row(s), cut short?")
    return [{key: value(text) for key, text in row.items()} for row in whole]


def write_json(path: Path, data: Dict[str, Any]) -> None:
    write_atomically(path, json.dumps(data, indent=2) + "\n")
