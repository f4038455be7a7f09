"""`make bench`: epochs/s of the harness against the straightforward reference, measured in one run.

For each experiment (the default one and `model=mlp`; others with --experiment) the harness's task,
model and optimizer are built by its own code (Hydra compose, grok.data, grok.models,
grok.training.optimizers) and an epoch is what train.py runs: grok.training.loop.train_epoch (one
full-batch step) + evaluate (the test pass), its metrics read back to Python at the end of a timed
block, as the loop reads back a block's (on a GPU the host queues the next epochs meanwhile); with
compile=true, the captured epoch (grok/training/captured.py). benchmarks/reference.py, which reads
back every epoch, trains from the same initial weights.
The two alternate in rounds, so that both see the same load on a shared machine; the ratio is the
median of the per-round ratios. FLOPs per epoch are those of the matrix products, counted with
torch's FLOP formulas; "peak fraction" divides the FLOP rate by a large matmul's, measured here.
The tiny model's figure: what the harness costs per epoch besides the math, from whole runs of a
tiny model (W&B on and off) against its bare epochs, and with compile=true (the captured epoch) its
cost per epoch once compiled and the compile's seconds. Also: the start-up of one job (`python train.py`
to its first epoch, from its summary.json; median of several, W&B on and off)
and the default experiment's time to grok (from a finished run, --grok-run, or a new one, --grok,
with --grok-with's overrides),
with the plateau figure: epochs/s from that run's last checkpoint before it grokked against fresh
weights, alternated (float32 denormals are flushed to zero as train.py does; --keep-denormals not).

The batched figure (docs/sweeps.md): run-epochs/s of K runs trained together as one stacked
model, grok.training.stacked.Stack (its epoch: backward, step, evaluate, metrics, as train_together
runs it without the logging), for K = 1, 8, 64 (--batched-k) against K runs one after another, whose
run-epochs/s is the harness epoch's above, on a run of its own built by grok.run.start as train.py builds it.
The K members differ as a sweep's do (seed, data_seed) with the same shapes: the default experiment's
and conf/sweep/phase_diagram_small.yaml's (--batched-shape). Batched and sequential alternate in rounds
of at least two epochs; the ratio batched/sequential is the median of the per-round ratios. Peak
memory: the process's peak resident memory during the figure on a CPU, the peak CUDA allocation on a GPU.

The loaded-machine figure (docs/performance.md): the default experiment's epochs/s with no busy
process started and beside N = 1, 2 (--load-busy) pure-Python spin loops in subprocesses, each
way: PyTorch's default threads held fixed (the harness before grok/system/threads.py), threads=1, and the
harness's default, grok.system.threads.AdaptiveThreads updated once an epoch as train_loop does. The three
alternate in rounds at each N; the adaptive threads' ratios to the other two are medians of per-round ratios.

    python benchmarks/bench.py                          # writes outputs/bench/<date>/<time>/bench.json
    python benchmarks/bench.py --grok-run outputs/grok_default --experiment "" --experiment "task.p=113"
"""

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import reference  # noqa: E402
from grok.app import compose as compose_config  # noqa: E402
from grok.config import validate  # noqa: E402
from grok.data import make_dataset  # noqa: E402
from grok.errors import ConfigError  # noqa: E402
from grok.models import build_model  # noqa: E402
from grok.plugins import plugin  # noqa: E402
from grok.run import resolve_device, start  # noqa: E402
from grok.sweeps.batched import batchable  # noqa: E402
from grok.system.speed import flush_denormals, keep_freed_memory  # noqa: E402
from grok.system.threads import WINDOW, AdaptiveThreads  # noqa: E402
from grok.training.captured import CapturedEpoch, unsupported  # noqa: E402
from grok.training.experiment import Experiment, Split  # noqa: E402
from grok.training.loop import Alone, evaluate, train_epoch, trained_through  # noqa: E402
from grok.training.optimizers import build_optimizer  # noqa: E402
from grok.training.stacked import Stack  # noqa: E402

# conf/sweep/phase_diagram_small.yaml's task, model and lr at its middle train fraction (its threads=1
# left out: the batched figure compares one process's ways of using the machine's threads)
SMALL_SWEEP = "task.p=31 model.d_model=64 model.d_mlp=256 optimizer.lr=3e-3 train_frac=0.6"


def compose(overrides: List[str]):
    return validate(compose_config(overrides))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """The best of `repeats` float32 (n x n) @ (n x n) products: what matrix products reach here."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# products into their first argument, which the registry does not name (the tables' test pass: addmm_)
IN_PLACE = {torch.ops.aten.addmm_: torch.ops.aten.addmm, torch.ops.aten.baddbmm_: torch.ops.aten.baddbmm}


class MatmulFlops(TorchDispatchMode):
    """Sums the FLOPs of the matrix products that run, by torch's own formulas (the registry behind
    FlopCounterMode, which itself would attach global module hooks and so switch the harness's model
    to its hooked path)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = flop_registry.get(IN_PLACE.get(func._overloadpacket, func._overloadpacket))
        if formula is None:  # a composite op (matmul under inference_mode arrives whole): count its parts
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(epoch: Callable[[], object]) -> int:
    with MatmulFlops() as counter:
        epoch()
    return counter.total


def timed_block(
    epoch: Callable[[], Optional[Tensor]], seconds: float, device: torch.device, min_epochs: int = 1
) -> float:
    """Epochs per second over a block of epochs lasting about `seconds`, and at least `min_epochs`.
    What an epoch returns, its metrics, stays on the device until the block ends and then comes to
    the host in one transfer, as the training loop's blocks do: on a GPU the host queues the next
    epochs while the device computes (reading back every epoch, a captured epoch ran 1,063 epochs/s
    on an H200 where the loop's way gave 1,254; docs/performance.md)."""
    n, kept, start = 0, [], time.perf_counter()
    while True:
        measured = epoch()
        if measured is not None:
            kept.append(measured.flatten())
        n += 1
        if time.perf_counter() - start >= seconds and n >= min_epochs:
            break
    if kept:
        torch.cat(kept).tolist()
    sync(device)
    return n / (time.perf_counter() - start)


def compose_for_reference(overrides: List[str]):
    """The experiment's config, if the reference implements it (ConfigError otherwise)."""
    cfg = compose(overrides)
    model = cfg.model
    if model.name == "transformer" and (model.n_layers != 1 or model.layer_norm or model.act != "relu"):
        raise ConfigError("the reference is the default transformer: n_layers=1, layer_norm=false, act=relu")
    if model.name not in ("transformer", "mlp") or (model.name == "mlp" and model.act != "relu"):
        raise ConfigError(f"model={model.name}: the reference has the default transformer and the relu mlp")
    if cfg.optimizer.name != "adamw" or cfg.batch_size is not None or cfg.loss.name != "cross_entropy":
        raise ConfigError("the reference trains full batch with AdamW on the cross-entropy")
    return cfg


def setup(overrides: List[str], device: torch.device):
    """Epoch functions from the same initial weights: the harness's (as trained, and uncompiled,
    for counting FLOPs; the two share weights and optimizer) and the reference's."""
    cfg = compose_for_reference(overrides)
    model_cfg = cfg.model
    data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
    split = lambda idx: Split(
        data.inputs[idx].to(device),
        data.labels[idx].to(device),
        None if data.clean_labels is None else data.clean_labels[idx].to(device),
    )
    train, test = split(data.train_idx), split(data.test_idx)
    torch.manual_seed(cfg.seed)
    n_ctx = data.inputs.shape[1]
    model = build_model(model_cfg, data.n_vocab, data.n_classes, n_ctx).to(device)
    optimizer, scheduler = build_optimizer(cfg.optimizer, cfg.transforms, model.parameters())
    generator = torch.Generator().manual_seed(cfg.seed)

    if model_cfg.name == "mlp":
        ref = reference.ReferenceMLP(data.n_vocab, data.n_classes, n_ctx, model_cfg.d_model, model_cfg.d_mlp)
    else:
        ref = reference.ReferenceTransformer(
            data.n_vocab, data.n_classes, n_ctx, model_cfg.d_model, model_cfg.n_heads, model_cfg.d_mlp
        )
    reference.load_weights(ref, model.state_dict())
    ref.to(device)
    opt = cfg.optimizer
    ref_optimizer, ref_scheduler = reference.optimizer_for(
        ref, opt.lr, opt.weight_decay, tuple(opt.betas), opt.warmup_steps
    )

    def reference_epoch() -> None:
        reference.train_epoch(
            ref, ref_optimizer, ref_scheduler, (train.inputs, train.labels), (test.inputs, test.labels)
        )

    module = trained_through(model, cfg.tables, train, test)
    uncompiled = harness_epoch(cfg, module, train, test, optimizer, scheduler, generator)
    if not cfg.compile:
        return uncompiled, uncompiled, reference_epoch
    # what grok.training.loop.Alone trains with compile=true: the whole epoch as one compiled graph
    why = unsupported(cfg, optimizer, model, len(train.labels))
    if why is not None:
        raise ConfigError(f"{' '.join(overrides)}: compile=true does not capture this epoch: {why}")
    loss_fn = plugin(cfg.loss, "loss")
    captured = CapturedEpoch(module, optimizer, scheduler, train, test, loss_fn)  # as Alone captures it
    return lambda: captured.epoch(True)[1], uncompiled, reference_epoch


def kept_on_device(train_metrics: Dict[str, Tensor], test_metrics: Dict[str, Tensor]) -> Tensor:
    """An epoch's train and test metrics as one float64 tensor on the device, as the loop keeps them
    until its block ends (timed_block reads them back then)."""
    return torch.stack([value.double() for value in [*train_metrics.values(), *test_metrics.values()]])


def harness_epoch(
    cfg, module: torch.nn.Module, train: Split, test: Split, optimizer, scheduler, generator
) -> Callable[[], Tensor]:
    """An epoch as grok.training.loop.Alone runs it: the step, the test pass, the metrics (which the
    loop reads back at a block's end: timed_block)."""
    loss_fn = plugin(cfg.loss, "loss")

    def epoch() -> Tensor:
        train_metrics = train_epoch(module, train, optimizer, scheduler, cfg.batch_size, generator, loss_fn)
        test_metrics = evaluate(module, test, loss_fn)
        return kept_on_device(train_metrics, test_metrics)

    return epoch


def alternate(
    epochs: Dict[str, Callable[[], Optional[Tensor]]],
    rounds: int,
    seconds: float,
    device: torch.device,
    min_epochs: int = 1,
) -> Dict[str, List[float]]:
    """Epochs/s of each epoch function over `rounds` timed blocks, the order reversed every round, so
    that all of them see the same load on a shared machine."""
    rates: Dict[str, List[float]] = {name: [] for name in epochs}
    for i in range(rounds):
        for name, epoch in list(epochs.items())[:: 1 if i % 2 == 0 else -1]:
            rates[name].append(timed_block(epoch, seconds, device, min_epochs))
    return rates


def bench_experiment(overrides: List[str], device: torch.device, rounds: int, seconds: float, peak: float) -> Dict:
    harness, uncompiled_harness, reference_epoch = setup(overrides, device)
    uncompiled_harness()  # the first epoch makes the tables twice, the others once (TableForward's shares_tables)
    # the same operations compiled or not; counted uncompiled, where each runs through the dispatcher
    flops = {"harness": count_flops(uncompiled_harness), "reference": count_flops(reference_epoch)}
    for _ in range(5):  # warm-up: first-call allocations, thread pools, compiling and recording CUDA graphs
        harness()
        reference_epoch()
    rates = alternate({"harness": harness, "reference": reference_epoch}, rounds, seconds, device)
    ratios = [h / r for h, r in zip(rates["harness"], rates["reference"])]
    result = {
        "experiment": " ".join(overrides) or "default",
        "overrides": overrides,
        "ratio": statistics.median(ratios),
        "ratio_per_round": ratios,
    }
    for name in ("harness", "reference"):
        median = statistics.median(rates[name])
        result[name] = {
            "epochs_per_second": median,
            "epochs_per_second_best": max(rates[name]),
            "epochs_per_second_per_round": rates[name],
            "gflop_per_epoch": flops[name] / 1e9,
            "achieved_gflops": flops[name] * median / 1e9,
            "peak_fraction": flops[name] * median / 1e9 / peak,
        }
    return result


def compose_for_batch(overrides: List[str], device: str):
    """The shape's config for a batch's members (ConfigError if its runs would not train together)."""
    cfg = compose([*overrides, "logger=none", "progress=false", "analysis=none", f"device={device}"])
    if not batchable(cfg):
        raise ConfigError(f"{' '.join(overrides)}: batched runs train full batch, fresh and uncompiled")
    return cfg


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak: CUDA's allocator statistics; or the process's peak resident memory (Linux),
    glibc first handing back the freed memory keep_freed_memory() keeps (some of an earlier, larger
    figure's may stay resident and count)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        return True
    except (OSError, AttributeError):
        return False


def peak_memory(device: torch.device) -> int:
    """Bytes: CUDA's peak allocation, or the process's peak resident memory (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM:"))) * 1024


def bench_batched(overrides: List[str], k: int, device: torch.device, rounds: int, seconds: float) -> Dict:
    """Run-epochs/s of k runs trained together as one stacked model (grok.training.stacked.Stack: its epoch is
    train_together's, without the logging) against runs trained one after another (harness_epoch); the
    members differ as a sweep's do (seed=i, data_seed=i), with the same shapes."""
    cfg = compose_for_batch(overrides, device.type)
    measure_memory = reset_peak_memory(device)
    with ExitStack() as stack:

        def experiment(i: int) -> Experiment:
            member = cfg.copy()
            member.seed = member.data_seed = i
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))  # start() writes config.yaml
            return start(member, out_dir, f"member{i}", time.perf_counter())

        alone_run = experiment(0)
        alone = harness_epoch(
            cfg,
            trained_through(alone_run.model, cfg.tables, alone_run.train, alone_run.test),
            alone_run.train,
            alone_run.test,
            alone_run.optimizer,
            alone_run.scheduler,
            alone_run.generator,
        )
        batch = Stack([experiment(i) for i in range(k)])
        stack.callback(batch.release)

        def batched_epoch() -> Tensor:
            train_metrics = batch.train_epoch()
            test_metrics = batch.evaluate()
            return kept_on_device(train_metrics, test_metrics)

        for _ in range(2):  # warm-up: first-call allocations, thread pools
            batched_epoch()
            alone()
        # two epochs a block at least: a large batch's epoch takes seconds
        rates = alternate({"batched": batched_epoch, "sequential": alone}, rounds, seconds, device, min_epochs=2)
        rates["batched"] = [k * rate for rate in rates["batched"]]  # run-epochs: k runs per batched epoch
        memory = peak_memory(device) if measure_memory else None
    ratios = [b / s for b, s in zip(rates["batched"], rates["sequential"])]
    result = {
        "shape": " ".join(overrides) or "default",
        "overrides": overrides,
        "k": k,
        "members_differ_by": "seed=i data_seed=i",
        "ratio": statistics.median(ratios),
        "ratio_per_round": ratios,
        "peak_memory_bytes": memory,
        "peak_memory_of": "CUDA allocations" if device.type == "cuda" else "the process (resident)",
    }
    for name in ("batched", "sequential"):
        result[name] = {
            "run_epochs_per_second": statistics.median(rates[name]),
            "run_epochs_per_second_per_round": rates[name],
        }
    return result


SPIN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


@contextmanager
def busy_processes(n: int, limit: float) -> Iterator[None]:
    """`n` CPU-bound neighbours: pure-Python spin loops in subprocesses, killed when the block ends
    (and ending by themselves after `limit` seconds, should the benchmark be killed first)."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(limit=limit)]) for _ in range(n)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def bench_load(busy: List[int], device: torch.device, rounds: int, seconds: float) -> Dict:
    """Epochs/s of the default experiment beside 0 and `busy` busy processes: at PyTorch's default
    threads held fixed, at one thread, and at the threads grok.system.threads.AdaptiveThreads picks (one
    governor throughout, as one long run would see the load come and go)."""
    harness, _, _ = setup([], device)
    default = torch.get_num_threads()
    governor = AdaptiveThreads(None)

    def at(threads: int) -> Tensor:
        if torch.get_num_threads() != threads:  # the ways alternate in one process
            torch.set_num_threads(threads)
        return harness()

    def governed(used: Counter) -> Callable[[], Tensor]:
        def epoch() -> Tensor:
            used[governor.threads] += 1
            measured = at(governor.threads)
            governor.update()
            return measured

        return epoch

    result = {"pytorch_default_threads": default, "adaptive_active": governor.active, "levels": []}
    for n in [0, *busy]:
        used: Counter = Counter()
        ways = {"pytorch_default": lambda: at(default), "threads_1": lambda: at(1), "adaptive": governed(used)}
        with busy_processes(n, limit=2 * WINDOW[1] + 3 * rounds * seconds + 120):
            for name in ways:  # warm-up: first calls, and two of the governor's windows under this load
                timed_block(ways[name], 2 * WINDOW[1] if name == "adaptive" else 0.2, device)
            used.clear()
            rates = alternate(ways, rounds, seconds, device)
        level = {"busy_processes": n, "adaptive_epochs_at_threads": {str(k): v for k, v in sorted(used.items())}}
        for name, per_round in rates.items():
            level[name] = {"epochs_per_second": statistics.median(per_round), "epochs_per_second_per_round": per_round}
        for other in ("threads_1", "pytorch_default"):
            ratios = [a / o for a, o in zip(rates["adaptive"], rates[other])]
            level[f"adaptive_vs_{other}"] = {"ratio": statistics.median(ratios), "ratio_per_round": ratios}
        result["levels"].append(level)
    governor.restore()
    torch.set_num_threads(default)
    return result


def plateau_checkpoint(run_dir: Path) -> Optional[Path]:
    """The run's checkpoint deepest into the plateau: the newest one before it grokked."""
    summary = json.loads((run_dir / "summary.json").read_text())
    grokked = summary.get("grok_epoch") or summary["epochs"]
    found = sorted((int(path.stem[6:]), path) for path in (run_dir / "checkpoints").glob("epoch_*.pt"))
    return next((path for epoch, path in reversed(found) if 0 < epoch < grokked), None)


def harness_at(checkpoint: Optional[Path], device: torch.device) -> Callable[[], Tensor]:
    """The default experiment's harness epoch, from fresh weights or from `checkpoint`'s weights and
    optimizer state."""
    cfg = compose([])
    data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
    split = lambda idx: Split(data.inputs[idx].to(device), data.labels[idx].to(device))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1]).to(device)
    optimizer, scheduler = build_optimizer(cfg.optimizer, cfg.transforms, model.parameters())
    if checkpoint is not None:
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    train, test = split(data.train_idx), split(data.test_idx)
    return harness_epoch(
        cfg,
        trained_through(model, cfg.tables, train, test),
        train,
        test,
        optimizer,
        scheduler,
        torch.Generator().manual_seed(cfg.seed),
    )


def bench_plateau(run_dir: Path, device: torch.device, rounds: int, seconds: float) -> Dict:
    """Epochs/s of the default experiment deep in its plateau (a checkpoint of `run_dir`, a default
    run) against fresh weights, alternated. Without denormals flushed to zero the plateau ran 3-6x
    slower than the start (grok/system/speed.py, flush_denormals; --keep-denormals measures that)."""
    checkpoint = plateau_checkpoint(run_dir)
    if checkpoint is None:
        return {"run_dir": str(run_dir), "status": "no checkpoint before the grok epoch"}
    epochs = {"fresh": harness_at(None, device), "plateau": harness_at(checkpoint, device)}
    for epoch in epochs.values():  # warm-up
        epoch()
    rates = alternate(epochs, rounds, seconds, device)
    ratios = [p / f for p, f in zip(rates["plateau"], rates["fresh"])]
    return {
        "checkpoint": str(checkpoint),
        "ratio": statistics.median(ratios),
        "ratio_per_round": ratios,
        **{
            name: {"epochs_per_second": statistics.median(rate), "epochs_per_second_per_round": rate}
            for name, rate in rates.items()
        },
    }


TINY = "task.p=5 model.d_model=8 model.n_heads=1 model.d_mlp=8 threads=1 analysis=none"


def job(out: Path, name: str, overrides: List[str]) -> Dict:
    """`python train.py overrides` in a subprocess (W&B offline, as a user runs it); its summary.json."""
    run_dir = out / name
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "progress=false", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tempfile.gettempdir(),
        env=dict(os.environ, WANDB_SILENT="true"),
        check=True,
        capture_output=True,
    )
    return json.loads((run_dir / "summary.json").read_text())


def startup_overhead(out: Path, rounds: int) -> Dict:
    """Seconds from `python train.py` to the first epoch (summary.json's startup_seconds) of a default
    job of one epoch, with W&B (offline) and with logger=none, alternated; medians."""
    seconds: Dict[str, List[float]] = {"wandb": [], "none": []}
    for i in range(rounds):
        for logger in ("wandb", "none")[:: 1 if i % 2 == 0 else -1]:
            summary = job(out, f"startup_{logger}_{i}", ["epochs=1", f"logger={logger}"])
            seconds[logger].append(summary["startup_seconds"])
    return {
        **{f"seconds_to_first_epoch_{logger}": statistics.median(values) for logger, values in seconds.items()},
        "per_round": seconds,
    }


def tiny_bare_rate(epochs: int) -> float:
    """Epochs/s of the tiny model's bare epochs, `epochs` of them, as a whole run times them: the
    step, test pass and weight norm of grok.training.loop.Alone, each epoch's metrics read back."""
    with tempfile.TemporaryDirectory() as run_dir:
        experiment = start(compose([*TINY.split(), "logger=none"]), Path(run_dir), "tiny", time.perf_counter())
        alone = Alone(experiment)
        started = time.perf_counter()
        for _ in range(epochs):
            alone.epoch(True)[1].tolist()
        rate = epochs / (time.perf_counter() - started)
        experiment.loggers.finish(0)
    return rate


def bench_tiny(out: Path, rounds: int, epochs: int) -> Dict:
    """The harness's cost per epoch besides the math: whole runs of a tiny model (TINY, `epochs` each,
    W&B on and logger=none; epochs/s from summary.json) against the same model's bare epochs
    (tiny_bare_rate), each in a process of its own, alternated. Overhead per epoch: 1/run rate -
    1/bare rate, from the medians."""
    rates: Dict[str, List[float]] = {"wandb": [], "none": [], "bare": []}
    bare = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench import tiny_bare_rate; "
    for i in range(rounds):
        for kind in ("wandb", "none", "bare")[:: 1 if i % 2 == 0 else -1]:
            if kind == "bare":
                command = [sys.executable, "-c", bare + f"print(tiny_bare_rate({epochs}))"]
                done = subprocess.run(command, cwd=tempfile.gettempdir(), check=True, capture_output=True, text=True)
                rates[kind].append(float(done.stdout.split()[-1]))
            else:
                summary = job(out, f"tiny_{kind}_{i}", [*TINY.split(), f"epochs={epochs}", f"logger={kind}"])
                rates[kind].append(summary["epochs_per_second"])
    bare_rate = statistics.median(rates["bare"])
    result = {
        "experiment": TINY,
        "epochs": epochs,
        "bare": {"epochs_per_second": bare_rate, "per_round": rates["bare"]},
    }
    for logger in ("wandb", "none"):
        rate = statistics.median(rates[logger])
        result[logger] = {
            "epochs_per_second": rate,
            "epochs_per_second_per_round": rates[logger],
            "overhead_ms_per_epoch": 1e3 * (1 / rate - 1 / bare_rate),
        }
    return result


def bench_tiny_compiled(out: Path, rounds: int, epochs: int, more: int) -> Dict:
    """The tiny model with compile=true (grok/training/captured.py), W&B on: whole runs of `epochs` and
    of `epochs + more` epochs, alternated, each in a process of its own. A run pays its compile once,
    in its first block: the difference of the two runs' train_seconds is the cost of `more` epochs
    (median over rounds), and what it leaves of the shorter run's time is the compile."""
    seconds: Dict[int, List[float]] = {epochs: [], epochs + more: []}
    for i in range(rounds):
        for length in sorted(seconds, reverse=i % 2 == 1):
            summary = job(out, f"tiny_compiled_{length}_{i}", [*TINY.split(), f"epochs={length}", "compile=true"])
            seconds[length].append(summary["train_seconds"])
    short, long = (statistics.median(seconds[length]) for length in sorted(seconds))
    per_epoch = (long - short) / more
    return {
        "experiment": f"{TINY} compile=true",
        "epochs": sorted(seconds),
        "train_seconds_per_round": {str(length): values for length, values in seconds.items()},
        "epochs_per_second_after_compiling": 1 / per_epoch,
        "ms_per_epoch_after_compiling": 1e3 * per_epoch,
        "compile_seconds": short - epochs * per_epoch,
        "whole_run_epochs_per_second": {str(length): length / statistics.median(seconds[length]) for length in seconds},
    }


def time_to_grok(run_dir: Path, reference_rate: Optional[float]) -> Dict:
    """From a finished default run's summary.json: its grok epoch, and the training time to reach it."""
    if not (run_dir / "summary.json").exists():
        return {"run_dir": str(run_dir), "status": "no summary.json: not a finished run"}
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {
        key: summary.get(key)
        for key in (
            "status",
            "grok_epoch",
            "memorize_epoch",
            "epochs",
            "epochs_per_second",
            "train_seconds",
            "wall_seconds",
            "startup_seconds",
            "device",
        )
    }
    result["run_dir"] = str(run_dir)
    if summary.get("grok_epoch"):
        # a run stopped by stop.test_acc at the grok epoch trained exactly that long; otherwise pro rata
        result["time_to_grok_seconds"] = summary["train_seconds"] * summary["grok_epoch"] / summary["epochs"]
        if reference_rate:
            result["reference_time_to_grok_seconds_estimate"] = summary["grok_epoch"] / reference_rate
    return result


def machine(device: torch.device) -> Dict:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "platform": platform.platform(),
        "load_average_1min_at_start": os.getloadavg()[0],
    }


def run_counts(text: str) -> List[int]:
    """--batched-k: "1,8,64" -> [1, 8, 64]."""
    counts = [int(k) for k in text.split(",")]
    if min(counts) < 1:
        raise ValueError(text)
    return counts


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiment",
        action="append",
        metavar="OVERRIDES",
        help='Hydra overrides, space separated ("" = the default experiment); repeatable. Default: "" and "model=mlp"',
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per implementation (default: 5)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed round (default: 2)")
    parser.add_argument("--out", type=Path, help="output directory (default: outputs/bench/<date>/<time>)")
    parser.add_argument("--grok-run", type=Path, help="a finished default run's directory: report its time to grok")
    parser.add_argument("--grok", action="store_true", help="run the default experiment to grokking first (long)")
    parser.add_argument(
        "--grok-with", default="", metavar="OVERRIDES", help='Hydra overrides of the --grok run (a GPU: "compile=true")'
    )
    parser.add_argument("--skip-startup", action="store_true", help="do not measure the per-job start-up overhead")
    parser.add_argument("--startup-rounds", type=int, default=5, help="start-ups measured each way (default: 5)")
    parser.add_argument("--skip-tiny", action="store_true", help="do not measure the tiny model's whole runs")
    parser.add_argument("--tiny-epochs", type=int, default=2000, help="epochs of a tiny-model run (default: 2000)")
    parser.add_argument("--tiny-rounds", type=int, default=3, help="tiny-model runs each way (default: 3)")
    parser.add_argument(
        "--tiny-compiled-more",
        type=int,
        default=20000,
        help="epochs the longer of the tiny model's compile=true runs adds (default: 20000)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's, all cores)")
    parser.add_argument(
        "--batched-shape",
        action="append",
        metavar="OVERRIDES",
        help=f'Hydra overrides of runs trained together; repeatable. Default: "" and "{SMALL_SWEEP}"',
    )
    parser.add_argument(
        "--batched-k", type=run_counts, default=[1, 8, 64], help="runs per batch, comma separated (default: 1,8,64)"
    )
    parser.add_argument("--batched-rounds", type=int, default=3, help="timed rounds of a batched figure (default: 3)")
    parser.add_argument("--skip-batched", action="store_true", help="do not measure runs trained together")
    parser.add_argument(
        "--load-busy",
        type=run_counts,
        default=[1, 2],
        help="busy processes beside the loaded-machine figure's runs, comma separated (default: 1,2)",
    )
    parser.add_argument(
        "--load-rounds", type=int, default=3, help="timed rounds of the loaded-machine figure (default: 3)"
    )
    parser.add_argument(
        "--skip-load", action="store_true", help="do not measure the default experiment beside busy processes"
    )
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush float32 denormals to zero, as the harness does (to measure what that gains)",
    )
    args = parser.parse_args(argv)
    flushed = False if args.keep_denormals else flush_denormals()  # as grok/run.py does, before any thread starts
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as grok/run.py does; the reference, in the same process, gains from it too

    now = datetime.now()
    out = (args.out or ROOT / "outputs" / "bench" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")).resolve()
    device = resolve_device(args.device)
    experiments = [e.split() for e in (args.experiment if args.experiment is not None else ["", "model=mlp"])]
    shapes = [] if args.skip_batched else [s.split() for s in (args.batched_shape or ["", SMALL_SWEEP])]
    for overrides in experiments:  # every bad experiment or shape is refused before anything runs
        compose_for_reference(overrides)
    for overrides in shapes:
        compose_for_batch(overrides, device.type)
    out.mkdir(parents=True, exist_ok=True)

    report: Dict = {
        "machine": machine(device),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "denormals_flushed": flushed,
    }
    report["matmul_gflops"] = peak = matmul_gflops(device)
    print(
        f"{report['machine']['cpu']} ({report['machine']['cpu_count']} CPUs, {report['machine']['torch_threads']} "
        f"torch threads), device {report['machine']['device']}: float32 matmul {peak:.0f} GFLOP/s"
    )
    report["experiments"] = []
    for overrides in experiments:
        result = bench_experiment(overrides, device, args.rounds, args.seconds, peak)
        report["experiments"].append(result)
        h, r = result["harness"], result["reference"]
        print(
            f"{result['experiment']:>24}: harness {h['epochs_per_second']:6.1f} epochs/s "
            f"({h['gflop_per_epoch']:.2f} GFLOP/epoch, {h['peak_fraction']:.0%} of peak) | reference "
            f"{r['epochs_per_second']:5.2f} epochs/s ({r['gflop_per_epoch']:.2f} GFLOP/epoch, "
            f"{r['peak_fraction']:.0%} of peak) | ratio {result['ratio']:.2f}"
        )

    report["batched"] = []
    for overrides in shapes:
        print(f"runs trained together ({' '.join(overrides) or 'default'}) against one after another:")
        for k in args.batched_k:
            result = bench_batched(overrides, k, device, args.batched_rounds, args.seconds)
            report["batched"].append(result)
            memory = result["peak_memory_bytes"]
            print(
                f"{'K=' + str(k):>8}: batched {result['batched']['run_epochs_per_second']:7.1f} run-epochs/s | "
                f"sequential {result['sequential']['run_epochs_per_second']:6.1f} run-epochs/s | "
                f"ratio {result['ratio']:5.2f}" + (f" | peak memory {memory / 2**20:.0f} MiB" if memory else "")
            )

    if not args.skip_load:
        load = report["load"] = bench_load(args.load_busy, device, args.load_rounds, args.seconds)
        print(
            f"default experiment beside busy processes, epochs/s at PyTorch's {load['pytorch_default_threads']} threads"
            f" | threads=1 | adaptive threads{'' if load['adaptive_active'] else ' (inactive: threads chosen)'}:"
        )
        for level in load["levels"]:
            rate = lambda name: level[name]["epochs_per_second"]
            print(
                f"{level['busy_processes']:>4} busy: {rate('pytorch_default'):5.1f} | {rate('threads_1'):5.1f} | "
                f"{rate('adaptive'):5.1f}; adaptive/threads=1 {level['adaptive_vs_threads_1']['ratio']:.2f}, "
                f"adaptive/PyTorch's {level['adaptive_vs_pytorch_default']['ratio']:.2f}; "
                f"epochs at each thread count {level['adaptive_epochs_at_threads']}"
            )

    if not args.skip_tiny:
        tiny = report["tiny"] = bench_tiny(out, args.tiny_rounds, args.tiny_epochs)
        print(
            f"tiny model ({TINY}), whole runs of {args.tiny_epochs} epochs: {tiny['wandb']['epochs_per_second']:.0f}"
            f" epochs/s with W&B, {tiny['none']['epochs_per_second']:.0f} with logger=none, against "
            f"{tiny['bare']['epochs_per_second']:.0f} for its bare epochs: overhead "
            f"{tiny['wandb']['overhead_ms_per_epoch']:.2f} ms/epoch with W&B, "
            f"{tiny['none']['overhead_ms_per_epoch']:.2f} without"
        )
        compiled = report["tiny_compiled"] = bench_tiny_compiled(
            out, args.tiny_rounds, args.tiny_epochs, args.tiny_compiled_more
        )
        whole = compiled["whole_run_epochs_per_second"]
        print(
            f"the same with compile=true and W&B: {compiled['epochs_per_second_after_compiling']:.0f} epochs/s "
            f"({compiled['ms_per_epoch_after_compiling']:.2f} ms/epoch) after compiling for "
            f"{compiled['compile_seconds']:.1f} s; whole runs "
            + ", ".join(f"{rate:.0f} epochs/s over {length}" for length, rate in whole.items())
        )
    if not args.skip_startup:
        startup = report["startup"] = startup_overhead(out, args.startup_rounds)
        print(
            f"per-job start-up to the first epoch, median of {args.startup_rounds}: "
            f"{startup['seconds_to_first_epoch_wandb']:.2f} s with W&B, "
            f"{startup['seconds_to_first_epoch_none']:.2f} s with logger=none"
        )
    grok_run = args.grok_run
    if args.grok:
        grok_run = out / "grok_run"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "logger=none",
                "progress=false",
                "stop.test_acc=0.99",
                f"device={device.type}",
                *args.grok_with.split(),
                f"hydra.run.dir={grok_run}",
            ],
            cwd=tempfile.gettempdir(),
            check=True,
        )
    if grok_run is not None:
        default = next((e for e in report["experiments"] if not e["overrides"]), None)
        report["grok"] = time_to_grok(grok_run, default and default["reference"]["epochs_per_second"])
        g = report["grok"]
        if g.get("time_to_grok_seconds"):
            print(
                f"time to grok: epoch {g['grok_epoch']}, {g['time_to_grok_seconds'] / 60:.1f} min of training "
                f"at {g['epochs_per_second']:.1f} epochs/s ({grok_run})"
            )
        else:
            print(f"{grok_run}: no time to grok ({g['status']})")
        plateau = report["plateau"] = bench_plateau(grok_run, device, args.rounds, args.seconds)
        if "ratio" in plateau:
            print(
                f"deep in the plateau ({plateau['checkpoint']}): {plateau['plateau']['epochs_per_second']:.1f} epochs/s"
                f" against {plateau['fresh']['epochs_per_second']:.1f} fresh: ratio {plateau['ratio']:.2f}"
                + ("" if flushed else " (denormals kept)")
            )
        else:
            print(f"{grok_run}: no plateau figure ({plateau['status']})")
    report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'bench.json'}")
    return report


if __name__ == "__main__":
    from hydra.errors import HydraException

    try:
        main()
    except (ConfigError, HydraException) as error:  # a bad option or override: one line, no traceback
        sys.exit(f"error: {error}")
