"""Batched sweeps (grok/sweeps/batched.py, hydra/launcher=batched): runs that share shapes train together
as one stacked model (grok/training/stacked.py), through the loop a run alone goes through
(grok/training/loop.py), and each still ends exactly as it would alone: its own split, labels and noise,
its own steps, stopping, output directory, metrics.csv, checkpoint, W&B run and summary.json."""

import json
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from grok.config import validate
from grok.data import IGNORE, make_dataset
from grok.recording.files import read_metrics
from grok.run import end, start
from grok.sweeps import batched
from grok.sweeps.batched import Job, run_batched
from grok.system.signals import Preempted, StopRequest, preemption_signal
from grok.training import memory, optimizers
from grok.training.loop import train_runs
from grok.training.optimizers import build_optimizer, step_together
from grok.training.stacked import Stack
from tests.conftest import EARLY_EPOCHS, FLOAT32_ROUNDINGS, make_config, run_cli, wandb_records
from tests.test_speed_equivalence import autograd_ops, by_embedding_bag

SMALL = [
    "task=noisy_label",
    "task.p=31",
    "model.d_model=32",
    "model.d_mlp=128",
    "optimizer.lr=3e-3",
    "logger=none",
    "progress=false",
    "figures=false",
    "analysis=none",
    "epochs=200",
    "save_every=1000",
]
# Members of one batch: they differ in every key a sweep varies; all with label noise (0: clean labels)
MEMBERS = [
    ["task.noise=0", "train_frac=0.5", "stop.test_acc=0.25"],  # stops early
    ["task.noise=0", "train_frac=0.3", "optimizer.weight_decay=0.3", "seed=1"],
    ["task.noise=2", "train_frac=0.7", "data_seed=2", "transforms=[grokfast_ema]"],
    ["task.noise=4", "train_frac=0.5", "transforms=[orthograd]", "optimizer.lr=1e-3"],
    ["task.noise=2", "train_frac=0.6", "seed=2"],
]
PLAIN = SMALL[1:]  # (a + b) mod 31, no noise
METRICS = ["train_loss", "train_acc", "train_acc_clean", "test_loss", "test_acc", "test_acc_clean", "weight_norm"]


def experiments(root: Path, tag: str, dtype: torch.dtype, extra=()):
    found = []
    for i, overrides in enumerate(MEMBERS):
        out_dir = root / f"{tag}{i}"
        out_dir.mkdir(parents=True)
        experiment = start(make_config(SMALL + overrides + list(extra)), out_dir, f"{tag}{i}", time.perf_counter())
        experiment.model.to(dtype)  # the same Parameter objects: the optimizer built in start() still holds them
        found.append(experiment)
    return found


def trajectories(root: Path, tag: str):
    return [
        torch.tensor(
            [[row[key] for key in METRICS] for row in read_metrics(root / f"{tag}{i}" / "metrics.csv")],
            dtype=torch.float64,
        )
        for i in range(len(MEMBERS))
    ]


def batched_and_alone(root: Path, dtype: torch.dtype, extra=(), members_only=()):
    """MEMBERS trained together (root/batched_k, with `members_only` overrides too) and one by one (root/alone_k)."""
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting
    train_runs(experiments(root, "batched_", dtype, [*extra, *members_only]), StopRequest(), end)
    for experiment in experiments(root, "alone_", dtype, extra):
        train_runs([experiment], StopRequest(), end)
    return root


@pytest.fixture(scope="module")
def in_float64(tmp_path_factory):
    """200 epochs, in exact math; the members draw their figures (test_members_end_as_runs_alone_end)."""
    return batched_and_alone(tmp_path_factory.mktemp("float64"), torch.float64, members_only=["figures=true"])


@pytest.fixture(scope="module")
def in_float32(tmp_path_factory):
    """As trained, in float32: the first epochs only (EARLY_EPOCHS, tests/conftest.py)."""
    return batched_and_alone(tmp_path_factory.mktemp("float32"), torch.float32, [f"epochs={EARLY_EPOCHS}"])


def test_in_float64_each_member_takes_the_steps_it_takes_alone(in_float64):
    # float64 rounding differences, amplified over the 200 epochs, stay far below 1e-9: one ulp of
    # every weight at the start grows to 6e-13 at most (member 2; the others stay near 1e-15)
    together, alone = trajectories(in_float64, "batched_"), trajectories(in_float64, "alone_")
    for i, (a, b) in enumerate(zip(together, alone)):
        assert a.shape == b.shape, f"member {i}: as many epochs as alone"
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), f"member {i}"
    assert len(alone[0]) < 200 == len(alone[1]), "the early stopper left the batch; the others went on"
    assert alone[1][-1, METRICS.index("train_acc")] > 0.9, "and they learned"


@pytest.mark.float_sensitive
def test_in_float32_members_follow_their_runs_alone_through_the_first_epochs(in_float32):
    """Batching sums in another order, at float32's precision: each member stays within a few float32
    roundings of its run alone, and the same examples are right, but for an argmax near a tie."""
    together, alone = trajectories(in_float32, "batched_"), trajectories(in_float32, "alone_")
    is_acc = torch.tensor(["acc" in key for key in METRICS])
    for i in range(len(MEMBERS)):
        assert len(together[i]) == len(alone[i]) == EARLY_EPOCHS, i
        relative = (together[i] - alone[i])[:, ~is_acc].abs() / alone[i][:, ~is_acc].abs()
        assert (relative < FLOAT32_ROUNDINGS).all(), (i, relative.max(dim=0).values)
        summary = json.loads((in_float32 / f"alone_{i}" / "summary.json").read_text())
        n_examples = torch.tensor(
            [summary["n_train" if key.startswith("train") else "n_test"] for key in METRICS if "acc" in key]
        )
        examples_apart = ((together[i] - alone[i])[:, is_acc].abs() * n_examples).round()
        assert (examples_apart <= 1).all(), (i, examples_apart.max(dim=0).values)


def test_members_end_as_runs_alone_end(in_float64):
    for i in range(len(MEMBERS)):
        together = json.loads((in_float64 / f"batched_{i}" / "summary.json").read_text())
        alone = json.loads((in_float64 / f"alone_{i}" / "summary.json").read_text())
        for key in (
            "status",
            "memorize_epoch",
            "grok_epoch",
            "epochs",
            "stopped_early",
            "n_train",
            "n_test",
            "n_params",
        ):
            assert together[key] == alone[key], (i, key)
        files = {path.name for path in (in_float64 / f"batched_{i}").iterdir()}
        assert {"config.yaml", "metrics.csv", "checkpoints", "curves.png", "summary.json"} <= files


def test_each_member_trains_on_its_own_split_labels_and_noise(tmp_path):
    together = experiments(tmp_path, "m", torch.float32)
    batch = Stack(together)
    try:
        for k, (overrides, experiment) in enumerate(zip(MEMBERS, together)):
            cfg = make_config(SMALL + overrides)
            data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)  # what a run alone trains on
            n = len(data.train_idx)
            assert torch.equal(batch.train["inputs"][k, :n], data.inputs[data.train_idx])
            assert torch.equal(batch.train["labels"][k, :n], data.labels[data.train_idx])
            assert (batch.train["labels"][k, n:] == IGNORE).all(), "padding is never scored"
            assert torch.equal(batch.test["labels"][k, : len(data.test_idx)], data.labels[data.test_idx])
            assert torch.equal(batch.train["clean_labels"][k, :n], data.clean_labels[data.train_idx])
            noisy = cfg.task.noise > 0
            assert torch.equal(data.labels, data.clean_labels) != noisy, "the noise is in the labels trained on"
            for name, param in zip(batch.names, experiment.model.parameters()):
                assert param.data_ptr() == batch.params[name][k].data_ptr(), "a member's weights are its slice"
    finally:
        batch.release()


def test_a_member_that_diverges_fails_alone_and_the_others_finish(tmp_path):
    jobs = [
        Job(make_config(PLAIN + ["epochs=20", *overrides]), tmp_path / str(i), str(i))
        for i, overrides in enumerate([[], ["optimizer=sgd", "optimizer.lr=1e30"], ["seed=3"]])
    ]
    for job in jobs:
        job.out_dir.mkdir()
    results = run_batched(jobs)
    assert isinstance(results[1], FloatingPointError)
    assert json.loads((tmp_path / "1" / "summary.json").read_text())["status"] == "failed"
    assert [results[i]["status"] for i in (0, 2)] == ["completed", "completed"]
    assert results[0]["epochs"] == 20 and len(read_metrics(tmp_path / "0" / "metrics.csv")) == 20


@pytest.fixture
def batch_sizes(monkeypatch):
    """The number of members of each batch that grok.sweeps.batched trains, in order."""
    sizes = []
    real_train_runs = batched.train_runs
    monkeypatch.setattr(
        batched, "train_runs", lambda runs, stop, end: sizes.append(len(runs)) or real_train_runs(runs, stop, end)
    )
    return sizes


def test_jobs_are_grouped_by_shape_and_unbatchable_ones_run_alone(tmp_path, batch_sizes):
    variants = [
        ["seed=1"],
        ["task.p=37"],
        ["seed=2"],
        ["task.p=37", "seed=1"],
        ["batch_size=64"],
        ["train_frac=1.5"],
        ["task=subtract"],
        ["tables=false"],  # p=31's shapes; on a CPU another path through them: alone
        ["tables=true"],  # on a CPU the path that tables=null takes there: in p=31's group (on a GPU, alone)
    ]
    jobs = [
        Job(make_config(PLAIN + ["epochs=5", *overrides]), tmp_path / str(i), str(i))
        for i, overrides in enumerate(variants)
    ]
    for job in jobs:
        job.out_dir.mkdir()
    results = run_batched(jobs)
    assert sorted(batch_sizes) == [2, 4], "p=31 (add twice, subtract, a tables= choosing the same path), p=37"
    assert "train_frac" in str(results[5]), "a bad config fails its own job, with its one-line reason"
    assert json.loads((tmp_path / "5" / "summary.json").read_text())["status"] == "failed"
    assert all(results[i]["status"] == "completed" for i in (0, 1, 2, 3, 4, 6, 7, 8))


def test_a_group_too_big_for_memory_is_split_into_batches_that_fit(tmp_path, monkeypatch, batch_sizes):
    jobs = [Job(make_config(PLAIN + ["epochs=5", f"seed={i}"]), tmp_path / str(i), str(i)) for i in range(5)]
    for job in jobs:
        job.out_dir.mkdir()
    one_member = memory.member_bytes(start(jobs[0].cfg, tmp_path, "probe", 0.0))
    monkeypatch.setattr(memory, "free_memory", lambda device: int(2.5 * one_member / memory.MEMORY_SHARE))
    results = run_batched(jobs)
    assert batch_sizes == [2, 2, 1], "two members fit in the memory given"
    assert all(result["status"] == "completed" for result in results)


@pytest.mark.parametrize("epoch", [1, 6])  # at the start of a block, inside one
def test_a_batch_out_of_gpu_memory_goes_on_as_two_halves(tmp_path, monkeypatch, epoch):
    # the GPU's out-of-memory error, raised for batches of more than two runs from `epoch` on
    real_train_epoch = Stack.train_epoch
    trained = []

    def train_epoch(self):
        if len(self.experiments) > 2 and len(trained) + 1 >= epoch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        trained.append(len(self.experiments))
        return real_train_epoch(self)

    one_block = ["epochs=30", "sync_seconds=1e9"]  # epoch 6 lies inside the block, on any machine
    reference = experiments(tmp_path / "whole", "r", torch.float64, one_block)[1:]
    train_runs(reference, StopRequest(), end)
    monkeypatch.setattr(Stack, "train_epoch", train_epoch)
    halves = experiments(tmp_path / "halves", "h", torch.float64, one_block)[1:]
    with pytest.warns(UserWarning, match=f"ran out of GPU memory at epoch {epoch}:"):
        train_runs(halves, StopRequest(), end)
    for i in range(1, 5):
        whole, split = (
            read_metrics(tmp_path / d / f"{t}{i}" / "metrics.csv") for d, t in (("whole", "r"), ("halves", "h"))
        )
        assert len(whole) == len(split) == 30
        assert all(row_w == pytest.approx(row_s, rel=1e-9) for row_w, row_s in zip(whole, split)), i


def test_a_test_pass_out_of_gpu_memory_is_taken_in_halves_with_the_same_metrics(tmp_path, monkeypatch):
    stack = Stack(experiments(tmp_path, "s", torch.float64))
    whole = stack.evaluate()
    real_logits = Stack._logits

    def logits(self, params, inputs):  # the GPU's error for more than two runs' test passes at once
        if len(inputs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_logits(self, params, inputs)

    monkeypatch.setattr(Stack, "_logits", logits)
    halves = stack.evaluate()  # 5 runs: 0-1, then 2, 3-4
    assert halves.keys() == whole.keys() == {"loss", "acc", "acc_clean"}
    for key in whole:
        torch.testing.assert_close(halves[key], whole[key], rtol=1e-12, atol=0)


# 10 epochs (EARLY_EPOCHS): the jobs train in float32 and are compared epoch by epoch
GRID = [
    "+sweep=phase_diagram_small",
    "task.p=23",
    "model.d_model=32",
    "model.d_mlp=128",
    "epochs=10",
    "train_frac=0.4,0.8",
    "optimizer.weight_decay=0.3,3",
    "save_every=10",
]


@pytest.mark.slow
def test_the_batched_launcher_writes_each_job_as_the_basic_launcher_does(tmp_path):
    batched_dir, basic_dir = tmp_path / "batched", tmp_path / "basic"
    run_cli(
        ["-m", *GRID, "hydra/launcher=batched", f"hydra.sweep.dir={batched_dir}"], tmp_path, check=True, timeout=600
    )
    # the jobs alone draw no figures: the batched ones do, their images logged through one W&B helper
    run_cli(["-m", *GRID, "figures=false", f"hydra.sweep.dir={basic_dir}"], tmp_path, check=True, timeout=600)
    assert not (tmp_path / "outputs").exists(), "nothing outside the sweep dir"
    run_ids = set()
    for job in ["0", "1", "2", "3"]:
        b, s = batched_dir / job, basic_dir / job
        alone_overrides = [o for o in OmegaConf.load(s / ".hydra" / "overrides.yaml") if not o.startswith("figures=")]
        assert OmegaConf.load(b / ".hydra" / "overrides.yaml") == alone_overrides
        assert (b / "checkpoints" / "last.pt").is_file()
        together, alone = read_metrics(b / "metrics.csv"), read_metrics(s / "metrics.csv")
        summary = json.loads((b / "summary.json").read_text())
        assert [row["epoch"] for row in together] == [row["epoch"] for row in alone]
        for row_b, row_s in zip(together, alone):
            assert row_b["train_loss"] == pytest.approx(row_s["train_loss"], rel=FLOAT32_ROUNDINGS)
            assert round(abs(row_b["test_acc"] - row_s["test_acc"]) * summary["n_test"]) <= 1, "but for a near-tie"
        records = wandb_records(b)
        assert [row["epoch"] for row in records["history"]] == [row["epoch"] for row in together]
        assert records["run"]["run_group"] == f"phase_diagram_small-{batched_dir.name}"
        run_ids.add(records["run"]["run_id"])
        assert summary["status"] == "completed" and records["summary"]["summary"]["epochs"] == summary["epochs"] == 10
        assert records["summary"]["state"] == "finished" and records["summary"]["exit_code"] == 0
        assert records["summary"]["summary"]["curves"]["_type"] == "image-file", "its figure, in its own W&B run"
    assert len(run_ids) == 4, "a W&B run per job"

    # a member's checkpoint is an ordinary one: the run goes on alone
    job_overrides = [o for o in OmegaConf.load(batched_dir / "0" / ".hydra" / "overrides.yaml") if "epochs" not in o]
    run_cli([*job_overrides, f"resume={batched_dir / '0'}", "epochs=20", "logger=none"], tmp_path, check=True)
    assert [row["epoch"] for row in read_metrics(batched_dir / "0" / "metrics.csv")] == list(range(1, 21))

    result = run_cli(["summarize", str(batched_dir), "--no-wandb"], tmp_path, script="sweep.py", check=True)
    assert "completed" in result.stdout and (batched_dir / "sweep_summary.csv").is_file()


class PreemptedAt(StopRequest):
    """The stop request SLURM's warning signal makes (grok/system/signals.py), made once the batch reaches `epoch`."""

    def __init__(self, experiments, epoch):
        self.experiments, self.epoch = experiments, epoch

    @property
    def signum(self):
        return preemption_signal() if any(e.state.epoch >= self.epoch for e in self.experiments) else None


@pytest.mark.float_sensitive
def test_a_requeued_batch_goes_on_from_its_members_checkpoints(tmp_path, monkeypatch):
    every_epoch = ["sync_seconds=0"]  # the runs' progress comes to the host every epoch, where PreemptedAt looks
    jobs = [
        Job(make_config(PLAIN + every_epoch + overrides), tmp_path / name, name)
        for name, overrides in (("short", ["epochs=4"]), ("long", ["epochs=10"]), ("other", ["epochs=10", "seed=5"]))
    ]
    for job in jobs:
        job.out_dir.mkdir()
    runs = [start(job.cfg, job.out_dir, job.run_name, 0.0) for job in jobs]
    with pytest.raises(Preempted):
        train_runs(runs, PreemptedAt(runs, 6), end)
    summary = json.loads((tmp_path / "long" / "summary.json").read_text())
    # the signal comes while epoch 6 is being closed: the runs stop together after epoch 7
    assert summary["status"] == "interrupted" and summary["epochs"] == 7, (
        "preempted: checkpointed at epoch 7, not finished"
    )

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job runs the same sweep again
    results = run_batched(jobs)
    assert [r["epochs"] for r in results] == [4, 10, 10]
    for name, epochs in (("short", 4), ("long", 10), ("other", 10)):
        assert [row["epoch"] for row in read_metrics(tmp_path / name / "metrics.csv")] == list(range(1, epochs + 1))

    monkeypatch.delenv("SLURM_RESTART_COUNT")
    (tmp_path / "whole").mkdir(), (tmp_path / "two").mkdir()
    uninterrupted = run_batched(
        [Job(jobs[1].cfg, tmp_path / "whole", "whole"), Job(jobs[2].cfg, tmp_path / "two", "two")]
    )
    # a batch of three, then of two, sums in other orders than one of two all along: float32, 10 epochs
    assert uninterrupted[0]["test_loss"] == pytest.approx(results[1]["test_loss"], rel=FLOAT32_ROUNDINGS)


# The members' optimizers: two alike, and each of the others differing in one way
OPTIMIZERS = [
    ["optimizer=adamw"],
    ["optimizer=adamw"],
    ["optimizer=adamw", "optimizer.lr=3e-3"],
    ["optimizer=adamw", "optimizer.weight_decay=0.1"],
    ["optimizer=adam", "optimizer.weight_decay=1.0"],  # weight decay as an L2 term, AdamW's default decay
    ["optimizer=adamw", "transforms=[orthograd]"],  # a hook before each step
    ["optimizer=sgd"],
]


def test_a_stack_steps_the_optimizers_that_agree_in_one_call_and_each_takes_its_own_steps(device, monkeypatch):
    """step_together against each optimizer's own step(): the same weights and optimizer states, bit
    for bit, through the warmup; after the first step (which creates each state, as torch does) one
    call steps the two alike, one each of the other Adam ones, and the last two step alone."""
    torch.manual_seed(0)
    shapes = [(5, 3), (3,), (4, 5)]
    starts = [[torch.randn(shape, device=device) for shape in shapes] for _ in OPTIMIZERS]
    gradients = [[[torch.randn(shape, device=device) for shape in shapes] for _ in OPTIMIZERS] for _ in range(12)]

    def trained(together: bool):
        runs = []
        for overrides, start_weights in zip(OPTIMIZERS, starts):
            cfg = validate(make_config(overrides))
            params = [torch.nn.Parameter(weight.clone()) for weight in start_weights]
            runs.append((params, *build_optimizer(cfg.optimizer, cfg.transforms, params)))
        for step_gradients in gradients:
            for (params, _, _), grads in zip(runs, step_gradients):
                for param, grad in zip(params, grads):
                    param.grad = grad.clone()
            if together:
                step_together([optimizer for _, optimizer, _ in runs])
            else:
                for _, optimizer, _ in runs:
                    optimizer.step()
            for _, _, scheduler in runs:
                scheduler.step()
        return runs

    joint_calls = []
    real_update = optimizers.adam_update
    counted = lambda params, *args, **kwargs: joint_calls.append(len(params)) or real_update(params, *args, **kwargs)
    monkeypatch.setattr(optimizers, "adam_update", counted)
    for (params, optimizer, _), (own_params, own_optimizer, _) in zip(trained(True), trained(False)):
        assert all(torch.equal(a, b) for a, b in zip(params, own_params))
        state, own_state = optimizer.state_dict()["state"], own_optimizer.state_dict()["state"]
        assert state.keys() == own_state.keys()
        for key in state:
            assert all(torch.equal(state[key][name], own_state[key][name]) for name in own_state[key])
    assert joint_calls == [6, 3, 3, 3] * 11, "from the second step: the two alike, then one each of the others"


@pytest.mark.float_sensitive
def test_under_vmap_one_embedding_bag_serves_every_run():
    """grok.models.tables.embedding_bag: vmap has no batching rule for embedding_bag (the models' table
    paths); the one given concatenates the runs' rows. Same sums and gradients as run by run."""
    from grok.models.tables import Bags, embedding_bag

    runs, n_rows, width = 4, 10, 6
    rows = torch.randn(runs, n_rows, width, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(runs, 7, 3, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, n_rows, (runs, 7, 3))
    out = torch.vmap(lambda i, r, w: embedding_bag(Bags(i), r, w))(index, rows, weights)
    by_run = torch.stack([(weights[k, :, :, None] * rows[k][index[k]]).sum(1) for k in range(runs)])  # gather, sum
    assert torch.allclose(out, by_run, rtol=0, atol=1e-12)
    grads = [torch.autograd.grad(value.square().sum(), (rows, weights)) for value in (out, by_run)]
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(*grads))
    assert by_embedding_bag(out) and "StackBackward0" not in autograd_ops(out), "one call"
    unweighted = torch.vmap(lambda r: embedding_bag(Bags(index[0]), r))(rows)  # the MLP's table: no weights
    assert torch.allclose(unweighted, rows[:, index[0]].sum(2), rtol=0, atol=1e-12)


def test_sweep_py_batched_runs_the_named_sweep_in_one_process_and_summarizes_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    grid = [
        "task.p=23",
        "model.d_model=32",
        "model.d_mlp=128",
        "epochs=5",
        "logger=none",
        "train_frac=0.4,0.8",
        "optimizer.weight_decay=1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = run_cli(["phase_diagram_small", *grid, "--batched"], tmp_path, script="sweep.py", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "launcher=batched" in (sweep_dir / "multirun.yaml").read_text()
    assert [json.loads((sweep_dir / job / "summary.json").read_text())["epochs"] for job in "01"] == [5, 5]
    assert (sweep_dir / "sweep_summary.csv").is_file()

    refused = run_cli(["phase_diagram_small", "--jobs", "2", "--batched"], tmp_path, script="sweep.py")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "error: --jobs and --batched: choose one (a batched sweep runs in one process)"
    )


def test_a_signal_during_an_epochs_bookkeeping_stops_every_run_at_the_same_epoch(tmp_path):
    """The signal arrives after the first run has closed epoch 6 and before the second has: the stop
    is decided once a block of epochs (here one epoch: sync_seconds=0), so both go on to epoch 7,
    checkpoint it and end as interrupted there."""
    overrides = PLAIN + ["epochs=10", "sync_seconds=0"]
    jobs = [Job(make_config(overrides + [f"seed={seed}"]), tmp_path / str(seed), str(seed)) for seed in (0, 1)]
    for job in jobs:
        job.out_dir.mkdir()
    runs = [start(job.cfg, job.out_dir, job.run_name, 0.0) for job in jobs]
    with pytest.raises(Preempted):
        train_runs(runs, PreemptedAt(runs[:1], 6), end)
    for job in jobs:
        summary = json.loads((job.out_dir / "summary.json").read_text())
        assert (summary["status"], summary["epochs"]) == ("interrupted", 7), job.run_name
        assert (job.out_dir / "checkpoints" / "epoch_000007.pt").is_file()
