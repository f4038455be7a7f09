"""The harness's epoch in this tree against another revision's, alternated epoch by epoch.

    python benchmarks/compare.py 7f331f0                                 # the default experiment
    python benchmarks/compare.py HEAD~1 --experiment "model=mlp" --threads 1 --epochs 200

Each tree's epoch (benchmarks/bench.py's harness epoch: the training step, the test pass, the metrics
read back) runs in a worker process of its own that imports that tree's grok; the other revision is
exported from git into a temporary directory. The parent has the two workers train one epoch each in
turn, never both at once, the order swapped every pair, so that both see the same machine: on a shared
VM the speed drifts by more than a change of a few percent between rounds of seconds (make bench's
spread), not between two epochs. Reported: each tree's median epoch time and the median of the
per-pair ratios (the other revision's epoch time over this tree's: above 1, this tree is faster) with
its quartiles, and the ratio of the two total times (what a whole run lives through, slow epochs
included).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
# seconds before each epoch: a worker's OpenMP threads spin on for a while after its epoch (GNU
# OpenMP's default), on the cores the other's need; with no pause the ratios' quartiles spread 3x wider
PAUSE = 0.02

# argv: the tree, threads (0: PyTorch's), device, overrides. One epoch per line read; its seconds written.
WORKER = """
import os, sys, time
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # what the harness prints goes to stderr, not into the replies
root, threads, device, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
sys.path.insert(0, root)
import torch
from grok.system.speed import flush_denormals, keep_freed_memory
flush_denormals()  # as train.py does, before any thread starts
if threads:
    torch.set_num_threads(threads)
keep_freed_memory()
import grok
from benchmarks.bench import setup
from grok.run import resolve_device
assert grok.__file__.startswith(root), f"{grok.__file__} is not the grok of {root}"
harness = setup(overrides, resolve_device(device))[0]
for _ in sys.stdin:
    start = time.perf_counter()
    harness()  # reads its metrics back: on a GPU, it waits for the epoch's work
    print(time.perf_counter() - start, file=replies, flush=True)
"""


class Worker:
    def __init__(self, root: Path, threads: int, device: str, overrides: str):
        command = [sys.executable, "-c", WORKER, str(root), str(threads), device, overrides]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def epoch(self) -> float:
        time.sleep(PAUSE)
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"a worker ended (exit code {self.process.wait()}): its error is above")
        return float(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def export(revision: str, into: Path) -> None:
    """The tree of `revision` (git archive), into the directory `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"revision {revision!r}: {' '.join(archive.stderr.decode().split())}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def compare(trees: Dict[str, Path], epochs: int, warm_up: int, threads: int, device: str, overrides: str) -> Dict:
    workers = {name: Worker(root, threads, device, overrides) for name, root in trees.items()}
    try:
        for worker in workers.values():
            for _ in range(warm_up):
                worker.epoch()
        seconds: Dict[str, List[float]] = {name: [] for name in workers}
        for i in range(epochs):
            for name in list(workers)[:: 1 if i % 2 == 0 else -1]:
                seconds[name].append(workers[name].epoch())
    finally:
        for worker in workers.values():
            worker.close()
    this, other = seconds.values()
    ratios = [b / a for a, b in zip(this, other)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "median_ms": {name: 1e3 * statistics.median(values) for name, values in seconds.items()},
        "ratio": statistics.median(ratios),
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "total_ratio": sum(other) / sum(this),
    }


def pairs(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 2 (quartiles need two ratios)")
    return int(text)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="a git revision of this repository (HEAD~1, a commit, a branch)")
    parser.add_argument("--experiment", default="", help='Hydra overrides, space separated (default: "")')
    parser.add_argument("--epochs", type=pairs, default=300, help="epochs timed of each, >= 2 (default: 300)")
    parser.add_argument("--warm-up", type=int, default=5, help="epochs of each not timed first (default: 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's, all cores)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: cpu)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as other:
        export(args.revision, Path(other))
        trees = {"this tree": ROOT, args.revision: Path(other)}
        result = compare(trees, args.epochs, args.warm_up, args.threads, args.device, args.experiment)
    times = ", ".join(f"{name} {ms:.2f} ms" for name, ms in result["median_ms"].items())
    low, high = result["ratio_quartiles"]
    print(f"{args.experiment or 'default'}: median epoch {times}; {args.revision}'s epoch / this tree's:")
    print(f"  {result['ratio']:.3f} (quartiles {low:.3f}-{high:.3f}, {args.epochs} alternated pairs);", end=" ")
    print(f"their total times: {result['total_ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
