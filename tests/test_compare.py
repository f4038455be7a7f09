"""benchmarks/compare.py: this tree's epoch against another revision's, each in a worker of its own,
alternated epoch by epoch (docs/performance.md)."""

import subprocess
import sys

from benchmarks.compare import compare, export
from tests.conftest import ROOT


def test_a_revision_is_exported_and_its_epochs_alternate_with_this_trees(tmp_path):
    export("HEAD", tmp_path)
    assert (tmp_path / "grok" / "models" / "tables.py").exists() and (tmp_path / "conf").is_dir()
    # each worker imports its own tree's grok (it checks), though this one is installed in the venv
    result = compare({"this tree": ROOT, "HEAD": tmp_path}, 3, 1, 1, "cpu", "task.p=11")
    assert list(result["median_ms"]) == ["this tree", "HEAD"]
    assert all(ms > 0 for ms in result["median_ms"].values()) and result["ratio"] > 0 and result["total_ratio"] > 0


def test_an_unknown_revision_is_refused_in_one_line():
    refused = subprocess.run(
        [sys.executable, "benchmarks/compare.py", "no-such-revision"], capture_output=True, text=True, cwd=ROOT
    )
    assert refused.returncode != 0
    assert refused.stderr.strip().startswith("revision 'no-such-revision':") and len(refused.stderr.splitlines()) == 1
