"""Will a run fit in memory? Its data set and its training, sized from the config alone and checked
before anything is allocated, so that a large modulus, group or digit count is refused in one line
(a ConfigError naming the field that sets the size, and the largest value of it that fits) instead
of dying in the allocator.

Sizes: N examples of T tokens, int64 inputs and labels, as each task's `size` gives them (grok/data);
a task's `peak` is what building them takes over the finished tensors. Training holds the splits and
the logits of its largest pass (grok/training/loop.py). Runs stacked together (grok/training/stacked.py)
are as many as fit in MEMORY_SHARE of the device's free memory.
"""

from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch import Tensor

from grok.data import DataSize
from grok.data.tasks import is_prime
from grok.errors import ConfigError
from grok.models import fast
from grok.plugins import plugin, typed
from grok.training.experiment import Experiment
from grok.training.metrics import EVAL_TOKENS

LOGIT_BYTES = 12  # a logit in float32, and the float64 copy of it the loss computes on (grok/training/losses.py)
ANALYSIS_LOGIT_BYTES = 8  # progress measures: float32 logits and their float32 log-softmax (grok/recording/analysis.py)
MEMORY_SHARE = 0.5  # of the free memory, what a stack of runs may plan to use


def data_size(task_cfg) -> DataSize:
    task_cfg = typed(task_cfg, "task")
    return plugin(task_cfg, "task").size(task_cfg)


def cgroup_limits(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> List[int]:
    """The memory limits of this process's cgroups and their ancestors (a SLURM job's --mem, a
    container's): cgroup v2's memory.max, v1's memory.limit_in_bytes. MemAvailable ignores them."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mount, name = Path(root), "memory.max"
        elif "memory" in controllers.split(","):
            mount, name = Path(root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        directory = mount / path.lstrip("/")
        for level in [directory, *directory.parents]:
            if not level.is_relative_to(mount):
                break
            try:
                text = (level / name).read_text().strip()
            except OSError:  # not this level (or not mounted here)
                continue
            if text.isdigit():  # "max": no limit at this level
                limits.append(int(text))
    return limits


def available_memory(device: Optional[torch.device] = None) -> Optional[int]:
    """Bytes that `device` (default the CPU) can still allocate: free GPU memory, or Linux's
    MemAvailable, capped by the cgroups' limits. None where that cannot be read: nothing is checked."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return min([available, *cgroup_limits()])


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def _largest_fitting(task_cfg, fits: Callable[[Any], bool]) -> Optional[int]:
    """The largest value of the size field below the config's own for which fits(the config with
    it) holds, fits being monotone; for a task that needs a prime p, the largest prime. None: none fits."""
    task = plugin(task_cfg, "task")
    key, smallest = task.size_key(task_cfg)
    low, high = smallest - 1, task_cfg[key]  # fits(low) taken as true, fits(high) is false
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(OmegaConf.merge(task_cfg, {key: middle})) else (low, middle)
    if task.needs_prime:
        while low >= smallest and not is_prime(low):
            low -= 1
    return low if low >= smallest else None


def _refusal(task_cfg, reason: str, fits: Callable[[Any], bool], hint: str = "") -> ConfigError:
    key, _ = plugin(task_cfg, "task").size_key(task_cfg)
    best = _largest_fitting(task_cfg, fits)
    fitting = f"no task.{key} fits" if best is None else f"task.{key} up to {best} fits"
    return ConfigError(f"task.{key}={task_cfg[key]}: {reason}; {fitting}{hint}")


def _data_refusal(task_cfg, size: DataSize, available: int, fits: Callable[[Any], bool]) -> ConfigError:
    return _refusal(
        task_cfg,
        f"the data set has {size.examples:,} examples (~{_bytes(size.tensor_bytes())} as "
        f"tensors, ~{_bytes(size.build_bytes())} while it is built), more than the "
        f"{_bytes(available)} of memory available here",
        fits,
    )


def check_data(task_cfg, available_bytes: Optional[int] = None) -> None:
    """Refuse a data set that needs more than `available_bytes` to build (None: the memory
    available now), before any of it is allocated."""
    available = available_memory() if available_bytes is None else available_bytes
    size = data_size(task_cfg)
    if available is not None and size.build_bytes() > available:
        raise _data_refusal(task_cfg, size, available, lambda cfg: data_size(cfg).build_bytes() <= available)


def training_bytes(
    size: DataSize, train_frac: float, batch_size: Optional[int], analysis: bool
) -> Tuple[int, int, str]:
    """(bytes, rows, pass): what training holds on its device at least, the train and test splits
    and the logits of its largest pass, over `rows` examples at once."""
    n_train = int(train_frac * size.examples)
    passes = [
        (n_train, LOGIT_BYTES, "a full-batch step")
        if batch_size is None
        else (min(batch_size, n_train), LOGIT_BYTES, "a minibatch"),
        (min(size.examples - n_train, max(1, EVAL_TOKENS // size.width)), LOGIT_BYTES, "an evaluation chunk"),
    ]
    if analysis and size.scored == 1:  # grok/training/loop.py takes progress measures of binary operations only
        passes.append((n_train, ANALYSIS_LOGIT_BYTES, "the progress measures"))
    rows, per_logit, name = max(passes, key=lambda p: p[0] * p[1])
    return size.split_bytes() + rows * size.scored * size.n_classes * per_logit, rows, name


def check_memory(cfg, device: torch.device, available_bytes: Optional[int] = None) -> None:
    """Refuse a run whose data set (built in the CPU's memory) or training (on `device`) would not
    fit in the memory available, before anything is allocated. `available_bytes` stands for both."""
    host = available_memory() if available_bytes is None else available_bytes
    on_device = host if device.type == "cpu" or available_bytes is not None else available_memory(device)
    analysis = cfg.analysis.name != "none"

    def fits(task_cfg, batch_size=cfg.batch_size, analysis=analysis) -> bool:
        size = data_size(task_cfg)
        return (host is None or size.build_bytes() <= host) and (
            on_device is None or training_bytes(size, cfg.train_frac, batch_size, analysis)[0] <= on_device
        )

    if fits(cfg.task):
        return
    size = data_size(cfg.task)
    if host is not None and size.build_bytes() > host:
        raise _data_refusal(cfg.task, size, host, fits)
    need, rows, name = training_bytes(size, cfg.train_frac, cfg.batch_size, analysis)
    smaller_batch = "set batch_size" if cfg.batch_size is None else "a smaller batch_size"
    alternatives = {
        "analysis=none": {"analysis": False},
        smaller_batch: {"batch_size": 1},
        f"{smaller_batch} and analysis=none": {"batch_size": 1, "analysis": False},
    }
    hint = next((f", or {text}" for text, settings in alternatives.items() if fits(cfg.task, **settings)), "")
    raise _refusal(
        cfg.task,
        f"training needs ~{_bytes(need)} on {device} (the splits of its {size.examples:,} "
        f"examples, and the logits of {rows:,} at once in {name}), more than the "
        f"{_bytes(on_device)} available",
        fits,
        hint,
    )


# ----------------------------------------------------------------------------- runs stacked together
def free_memory(device: torch.device) -> int:
    """Bytes the device can still allocate: free GPU memory, or the machine's available memory."""
    available = available_memory(device)
    return 4 << 30 if available is None else available  # where it cannot be read, assume 4 GiB


def member_bytes(experiment: Experiment) -> int:
    """Memory one run of a stack needs: what autograd saves for a training step on its split
    (measured, on the run's own model), scaled up when its test split is larger, plus its
    parameters, gradients and optimizer state (four copies of the parameters)."""
    saved = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model, train, test = experiment.model, experiment.train, experiment.test
    forward = fast(model, tables=experiment.cfg.tables, inputs=torch.cat([train.inputs, test.inputs]))  # as a stack
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = forward(train.inputs, all_positions=train.labels.dim() == 2)
    saved += 2 * logits.numel() * 8  # the float64 loss' copy of the logits and its gradient
    del logits
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(saved * max(1.0, len(test.labels) / len(train.labels))) + 4 * params


def members_that_fit(experiment: Experiment, scale: float = 1.0) -> int:
    """How many runs like `experiment`, with splits up to `scale` times its larger one, one stack
    may hold in MEMORY_SHARE of the device's free memory."""
    return max(1, int(MEMORY_SHARE * free_memory(experiment.device) // (scale * member_bytes(experiment))))
