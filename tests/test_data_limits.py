"""Sizes are checked before anything is allocated: a data set, or a run, too large for the memory
available is refused with one line that names the field setting its size, how many examples it has
and the largest value of the field that fits. The byte counts behind it are those of the real
tensors, and the value offered fits where the next one does not."""

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from grok.data import make_dataset
from grok.errors import ConfigError
from grok.models import build_model
from grok.plugins import plugin
from grok.training.memory import cgroup_limits, check_data, check_memory, data_size, training_bytes
from tests.conftest import ROOT, cli_env, make_config, run_cli

CPU = torch.device("cpu")


def task_config(*overrides):
    return make_config(list(overrides)).task


def tensors(data):
    """What a Dataset holds, and the train and test copies grok/run.py's start makes of it."""
    columns = [data.inputs, data.labels] + ([] if data.clean_labels is None else [data.clean_labels])
    copies = [column[idx] for column in columns for idx in (data.train_idx, data.test_idx)]
    return columns + [data.train_idx, data.test_idx], copies


def nbytes(tensor_list):
    return sum(t.nbytes for t in tensor_list)


def offered(error) -> int:
    return int(re.search(r"up to (\d+) fits", str(error)).group(1))


# ----------------------------------------------------------------------------- byte counts
@pytest.mark.parametrize(
    "overrides",
    [
        ["task.p=11"],
        ["task=divide", "task.p=11"],
        ["task=noisy_label", "task.p=7"],
        ["task=random", "task.p=5"],
        ["task.p=7", "task.label_noise_frac=0.2"],
        ["task=expr", "task.p=7"],
        ["task=s5", "task.n=4"],
        ["task=s5conj", "task.n=3"],
        ["task=digit_add", "task.digits=2"],
        ["task=calculator", "task.digits=1"],
        ["task=calculator", "task.digits=2", "task.reverse=false"],
    ],
)
def test_the_size_is_that_of_the_tensors_make_dataset_builds(overrides):
    cfg = task_config(*overrides)
    size, data = data_size(cfg), make_dataset(cfg, 0.3, 0)
    held, copies = tensors(data)
    assert (size.examples, size.width, size.n_classes) == (len(data.inputs), data.inputs.shape[1], data.n_classes)
    assert size.tensor_bytes() == nbytes(held)
    assert size.split_bytes() == nbytes(copies)


def test_a_sample_of_problems_is_at_most_as_wide_as_the_size_says():
    cfg = task_config("task=calculator", "task.digits=3", "task.n_problems=5")
    size, data = data_size(cfg), make_dataset(cfg, 0.5, 0)
    assert size.examples == len(data.inputs) and size.width >= data.inputs.shape[1]
    assert size.tensor_bytes() >= nbytes(tensors(data)[0])


PEAK_SCRIPT = """
import sys
from pathlib import Path
from grok.system.speed import keep_freed_memory
from grok.data import make_dataset
from tests.conftest import make_config
from tests.test_data_limits import tensors

kib = lambda field: int(dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
                        [field].split()[0])
cfg = make_config(sys.argv[1:])
keep_freed_memory()  # as grok/run.py's start does before it builds the data
Path("/proc/self/clear_refs").write_text("5")  # the peak resident memory starts again from now
before = kib("VmRSS")
data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
held, copies = tensors(data)  # the copies grok/run.py's start makes
print((kib("VmHWM") - before) * 1024)
"""


@pytest.mark.parametrize(
    "overrides",
    [
        ["task.p=1009"],
        ["task=s5", "task.n=6"],
        ["task=expr", "task.p=709"],
        ["task=calculator", "task.digits=2", "task.n_problems=300000"],
    ],
)
def test_building_a_data_set_takes_no_more_memory_than_its_estimate(overrides):
    """The peak resident memory of make_dataset and the splits' copies, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**cli_env(), "PYTHONPATH": str(ROOT)},
    )
    peak, estimate = int(result.stdout), data_size(task_config(*overrides)).build_bytes()
    assert estimate / 2 < peak <= estimate


@pytest.mark.parametrize(
    "batch_size,analysis,expected_pass",
    [(None, False, "a full-batch step"), (4, True, "the progress measures"), (4, False, "an evaluation chunk")],
)
def test_training_holds_the_splits_and_the_logits_of_its_largest_pass(batch_size, analysis, expected_pass):
    cfg = make_config(["task.p=11", "train_frac=0.7"])
    data = make_dataset(cfg.task, cfg.train_frac, 0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1])
    train_logits, test_logits = model(data.inputs[data.train_idx]), model(data.inputs[data.test_idx])
    expected_logits = {  # what coexists: the float32 logits and the loss's float64 copy, or its log-softmax
        "a full-batch step": train_logits.nbytes + train_logits.double().nbytes,
        "the progress measures": train_logits.nbytes + F.log_softmax(train_logits, -1).nbytes,
        "an evaluation chunk": test_logits.nbytes + test_logits.double().nbytes,  # the test split is one chunk
    }[expected_pass]
    rows = len(data.train_idx) if expected_pass != "an evaluation chunk" else len(data.test_idx)
    assert training_bytes(data_size(cfg.task), cfg.train_frac, batch_size, analysis) == (
        nbytes(tensors(data)[1]) + expected_logits,
        rows,
        expected_pass,
    )


def test_a_sequence_task_has_logits_at_every_position():
    cfg = make_config(["task=digit_add", "task.digits=1", "model=gpt", "train_frac=0.5"])
    data = make_dataset(cfg.task, cfg.train_frac, 0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1])
    logits = model(data.inputs[data.train_idx], all_positions=True)  # (N, T, C)
    assert training_bytes(data_size(cfg.task), cfg.train_frac, None, True)[0] == (
        nbytes(tensors(data)[1]) + logits.nbytes + logits.double().nbytes
    )


# ----------------------------------------------------------------------------- refusals
def test_a_modulus_too_large_is_refused_before_anything_is_allocated():
    with pytest.raises(ConfigError) as error:
        check_data(task_config("task.p=1000003"))  # 36 TiB of tensors: allocating them would fail
    message = str(error.value)
    assert message.startswith("task.p=1000003: the data set has 1,000,006,000,009 examples (~36.4 TiB as tensors")
    assert "of memory available here; task.p up to " in message and message.endswith(" fits")
    assert "\n" not in message


def test_a_group_too_large_is_refused():
    with pytest.raises(ConfigError) as error:
        check_data(task_config("task=s5conj", "task.n=9"))  # (9!)^2 pairs
    assert str(error.value).startswith("task.n=9: the data set has 131,681,894,400 examples")
    assert re.search(r"; task\.n up to \d fits$", str(error.value))


def test_too_many_digits_are_refused_and_so_are_too_many_sampled_problems():
    with pytest.raises(ConfigError) as error:
        check_data(task_config("task=calculator", "task.digits=18"))
    assert str(error.value).startswith(f"task.digits=18: the data set has {4 * 10**36 - 10**18:,} examples")
    assert re.search(r"; task\.digits up to \d+ fits$", str(error.value))
    with pytest.raises(ConfigError) as error:
        check_data(task_config("task=digit_add", "task.digits=18", "task.n_problems=1000000000000"))
    assert str(error.value).startswith("task.n_problems=1000000000000: the data set has 1,000,000,000,000 examples")
    assert re.search(r"; task\.n_problems up to \d+ fits$", str(error.value))


@pytest.mark.parametrize(
    "overrides,field,budget,largest,following",
    [
        (["task.p=11"], "p", 40, 40, 41),
        (["task=divide", "task.p=11"], "p", 52, 47, 53),  # divide needs a prime p
        (["task=s5", "task.n=4"], "n", 4, 4, 5),
        (["task=calculator", "task.digits=1"], "digits", 1, 1, 2),
    ],
)
def test_the_value_offered_fits_and_the_next_does_not(overrides, field, budget, largest, following):
    """With memory for exactly the data set of `budget`, the largest value offered is `largest`: its real
    tensors fit, those of the next value allowed do not."""
    resized = lambda value: task_config(*overrides, f"task.{field}={value}")
    peak = plugin(resized(budget), "task").peak
    real_need = lambda value: int(peak * nbytes(tensors(make_dataset(resized(value), 0.3, 0))[0]))
    available = data_size(resized(budget)).build_bytes()
    with pytest.raises(ConfigError) as error:
        check_data(resized(following + 3), available)
    assert str(error.value).startswith(f"task.{field}={following + 3}: ") and offered(error.value) == largest
    assert real_need(largest) <= available < real_need(following)
    check_data(resized(largest), available)
    with pytest.raises(ConfigError):
        check_data(resized(following), available)


def test_a_run_whose_training_does_not_fit_is_refused_with_what_does():
    cfg = make_config(["task.p=97", "train_frac=0.8"])  # full batch, progress measures
    need, rows, _ = training_bytes(data_size(cfg.task), cfg.train_frac, None, True)
    with pytest.raises(ConfigError) as error:
        check_memory(cfg, CPU, available_bytes=need - 1)
    assert str(error.value).startswith(
        f"task.p=97: training needs ~{need / 2**20:.3g} MiB on cpu (the splits of "
        f"its 9,409 examples, and the logits of {rows:,} at once in a full-batch step)"
    )
    assert str(error.value).endswith("fits, or set batch_size")  # the progress measures need less: 8 bytes a logit
    best = offered(error.value)
    check_memory(make_config([f"task.p={best}", "train_frac=0.8"]), CPU, available_bytes=need - 1)
    with pytest.raises(ConfigError):
        check_memory(make_config([f"task.p={best + 1}", "train_frac=0.8"]), CPU, available_bytes=need - 1)
    check_memory(make_config(["task.p=97", "train_frac=0.8", "batch_size=64"]), CPU, available_bytes=need - 1)


def test_a_run_whose_data_set_does_not_fit_is_offered_a_value_that_also_trains():
    cfg = make_config(["task.p=1009", "train_frac=0.8"])
    available = data_size(cfg.task).build_bytes() - 1  # far less than the full-batch logits need
    with pytest.raises(ConfigError) as error:
        check_memory(cfg, CPU, available_bytes=available)
    assert str(error.value).startswith("task.p=1009: the data set has 1,018,081 examples")
    best = offered(error.value)
    check_memory(make_config([f"task.p={best}", "train_frac=0.8"]), CPU, available_bytes=available)
    with pytest.raises(ConfigError, match=r"^task\.p=\d+: training needs"):
        check_memory(make_config([f"task.p={best + 1}", "train_frac=0.8"]), CPU, available_bytes=available)


def test_ordinary_runs_fit_here():
    for overrides in (
        [],
        ["experiment=seed000"],
        ["experiment=seed001"],
        ["experiment=seed002"],
        ["experiment=seed003"],
        ["experiment=seed004"],
        ["task=s5"],
        ["task=s5", "task.n=6"],
        ["task=calculator"],
        ["task=expr"],
    ):
        check_memory(make_config(overrides), CPU)


def test_the_cli_refuses_a_modulus_too_large_in_one_line_and_trains_nothing(tmp_path):
    result = run_cli(["task.p=1000003", "logger=none"], cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: task.p=1000003: the data set has 1,000,006,000,009 examples")
    assert line.endswith(" fits")
    assert not list(tmp_path.rglob("metrics.csv"))


# ----------------------------------------------------------------------------- memory available
def test_the_memory_limits_of_this_process_cgroups_and_their_ancestors_count(tmp_path):
    job = tmp_path / "v2" / "job_1"
    (job / "step_0").mkdir(parents=True)
    (job / "memory.max").write_text("8589934592\n")  # a SLURM job's --mem=8G
    (job / "step_0" / "memory.max").write_text("max\n")
    (tmp_path / "v2.cgroup").write_text("0::/job_1/step_0\n")
    assert cgroup_limits(str(tmp_path / "v2.cgroup"), str(tmp_path / "v2")) == [8 << 30]

    job = tmp_path / "v1" / "memory" / "slurm" / "job_2"
    job.mkdir(parents=True)
    (job / "memory.limit_in_bytes").write_text("4294967296\n")
    (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (tmp_path / "v1.cgroup").write_text("5:cpu,cpuacct:/slurm/job_2\n4:memory:/slurm/job_2\n")
    assert sorted(cgroup_limits(str(tmp_path / "v1.cgroup"), str(tmp_path / "v1"))) == [4 << 30, 9223372036854771712]
