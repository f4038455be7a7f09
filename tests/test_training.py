"""Training: a small config really groks, runs are deterministic, the recorded metrics are those of
the saved weights, early stop and minibatches behave as configured, and a diverging run fails."""

import copy
import csv
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from grok.data import make_dataset
from grok.models import build_model, fast
from grok.run import run
from grok.training.loop import set_mode
from tests.conftest import GROKS_FAST, ROOT, make_config, run_cli


def train(tmp_path: Path, *overrides: str, name: str = "run"):
    out = tmp_path / name
    out.mkdir()
    cfg = make_config(["logger=none", "progress=false", "figures=false", *overrides])
    return run(cfg, out), out


def read_rows(run_dir: Path):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_a_small_config_memorizes_first_and_groks_clearly_later(tmp_path):
    summary, out = train(tmp_path, *GROKS_FAST, "epochs=2000", "stop.test_acc=0.99")
    rows = read_rows(out)
    assert summary["memorize_epoch"] is not None and summary["grok_epoch"] is not None
    assert summary["grok_epoch"] >= summary["memorize_epoch"] + 200, summary
    at_memorization = next(r for r in rows if r["epoch"] == summary["memorize_epoch"])
    assert at_memorization["train_acc"] >= 0.99 and at_memorization["test_acc"] < 0.5
    assert summary["stopped_early"] and summary["epochs"] == summary["grok_epoch"]


def test_same_config_and_seeds_give_identical_metrics_and_measures_bit_for_bit(tmp_path):
    args = ["task.p=11", "epochs=40", "analysis.every=10"]
    train(tmp_path, *args, name="a")
    train(tmp_path, *args, name="b")
    train(tmp_path, *args, "seed=1", name="other_seed")
    for name in ["metrics.csv", "analysis.csv"]:
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name
        assert first != (tmp_path / "other_seed" / name).read_bytes(), name


@pytest.mark.parametrize(
    "model", [["epochs=40"], ["model.layer_norm=true", "epochs=5"]], ids=["table-path", "plain-path"]
)
def test_the_default_experiment_on_two_threads_repeats_bit_for_bit_in_every_process(tmp_path, model):
    # where a sum's order depended on more than the thread count (advanced indexing's backward on the
    # CPU), three runs of the same command each went their own way within these epochs (the table
    # path's from epoch 21; the plain path's, which the transformer takes with LayerNorm
    # (grok/models/tables.py), from epoch 2: six runs of 5 epochs, six files)
    args = [*model, "threads=2", "logger=none", "progress=false", "figures=false", "analysis=none"]
    for name in "abc":
        run_cli([*args, f"hydra.run.dir={tmp_path / name}"], tmp_path, check=True)
    first = (tmp_path / "a" / "metrics.csv").read_bytes()
    assert all((tmp_path / name / "metrics.csv").read_bytes() == first for name in "bc")


def test_model_seed_changes_weights_but_not_the_split(tmp_path):
    a, _ = train(tmp_path, "task.p=11", "epochs=2", "seed=1", name="a")
    b, _ = train(tmp_path, "task.p=11", "epochs=2", "seed=2", name="b")
    assert (a["n_train"], a["n_test"]) == (b["n_train"], b["n_test"])


def test_recorded_metrics_are_those_of_the_final_weights(tmp_path):
    """Recompute the last row's test metrics from the final checkpoint, independently of the loop."""
    summary, out = train(tmp_path, "task=noisy_label", "task.p=13", "task.noise=4", "epochs=30")
    cfg = make_config(["task=noisy_label", "task.p=13", "task.noise=4"])
    data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, 3)
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        # the forward the loop evaluates with: its tables hold the (token, position) pairs of both splits
        logits = fast(model, inputs=data.inputs)(data.inputs[data.test_idx]).double()
    noisy, clean = data.labels[data.test_idx], data.clean_labels[data.test_idx]
    log_probs = logits - logits.logsumexp(-1, keepdim=True)
    last = read_rows(out)[-1]
    assert last["test_loss"] == pytest.approx(-log_probs[torch.arange(len(noisy)), noisy].mean().item(), rel=1e-9)
    assert last["test_acc"] == pytest.approx((logits.argmax(-1) == noisy).double().mean().item())
    assert last["test_acc_clean"] == pytest.approx((logits.argmax(-1) == clean).double().mean().item())
    assert "train_acc_clean" in last and summary["test_acc_clean"] == last["test_acc_clean"]
    every_weight = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    assert last["weight_norm"] == pytest.approx(every_weight.square().sum().sqrt().item(), rel=1e-6)


def test_every_epoch_records_losses_accuracies_lr_and_weight_norm(tmp_path):
    _, out = train(tmp_path, "task.p=11", "epochs=12")
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "weight_norm"]
    assert [r["lr"] for r in rows[:11]] == pytest.approx([k / 10 * 1e-3 for k in range(10)] + [1e-3]), "10-step warmup"


def test_eval_every_records_every_nth_epoch_and_the_last(tmp_path):
    _, out = train(tmp_path, "task.p=11", "epochs=23", "eval_every=5")
    assert [r["epoch"] for r in read_rows(out)] == [5, 10, 15, 20, 23]


def test_early_stop_waits_for_patience_consecutive_evaluations(tmp_path):
    summary, out = train(tmp_path, "task.p=11", "epochs=300", "stop.test_acc=0.1", "stop.patience=3")
    rows = read_rows(out)
    hits = [r["test_acc"] >= 0.1 for r in rows]
    first_stop = next(i for i in range(2, len(hits)) if all(hits[i - 2 : i + 1]))
    assert len(rows) == first_stop + 1 and summary["stopped_early"]
    assert (out / "checkpoints" / f"epoch_{len(rows):06d}.pt").exists(), "the stopping epoch is checkpointed"


def test_early_stop_on_test_loss(tmp_path):
    summary, out = train(tmp_path, *GROKS_FAST, "epochs=3000", "stop.test_loss=0.5")
    assert summary["stopped_early"] and read_rows(out)[-1]["test_loss"] < 0.5
    assert all(r["test_loss"] >= 0.5 for r in read_rows(out)[:-1])


def test_minibatches_cover_the_train_set_each_epoch(tmp_path):
    full, _ = train(tmp_path, "task.p=11", "epochs=5", name="full")
    same, _ = train(tmp_path, "task.p=11", "epochs=5", "batch_size=100000", name="one_batch")
    mini, _ = train(tmp_path, "task.p=11", "epochs=5", "batch_size=8", name="mini")
    assert (full["train_loss"], full["test_loss"]) == (same["train_loss"], same["test_loss"])
    assert mini["test_loss"] != full["test_loss"] and mini["status"] == "completed"


def test_checkpoints_every_save_every_and_at_the_end_with_full_state(tmp_path):
    _, out = train(tmp_path, "task.p=11", "epochs=25", "save_every=10")
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["epoch_000010.pt", "epoch_000020.pt", "epoch_000025.pt", "last.pt"]
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 25
    assert checkpoint["config"]["task"] == {
        "_target_": "grok.data.tasks.add",
        "name": "add",
        "p": 11,
        "label_noise_frac": 0.0,
    }
    assert {"model", "optimizer", "scheduler", "rng"} <= set(checkpoint)
    assert checkpoint["scheduler"]["last_epoch"] == 25


def test_figures_false_leaves_out_the_figures_and_nothing_else(tmp_path):
    args = ["task.p=11", "epochs=12", "analysis.every=5"]
    drawn, with_figures = train(tmp_path, *args, "figures=true", name="drawn")
    summary, without = train(tmp_path, *args, "figures=false", name="without")
    figures = {"curves.png", "progress.png", "fourier_spectrum.png"}
    written = {p.name for p in with_figures.iterdir()}
    assert figures <= written and {p.name for p in without.iterdir()} == written - figures
    assert (without / "metrics.csv").read_bytes() == (with_figures / "metrics.csv").read_bytes()
    assert (without / "analysis.csv").read_bytes() == (with_figures / "analysis.csv").read_bytes()
    timings = {"wall_seconds", "train_seconds", "startup_seconds", "epochs_per_second"}
    assert {k: v for k, v in summary.items() if k not in timings} == {
        k: v for k, v in drawn.items() if k not in timings
    }


def test_a_later_job_of_the_same_process_counts_its_start_up_from_its_own_start(tmp_path):
    """A joblib worker, a sequential `-m` or a batched sweep runs several jobs in one process: the
    process's age would count the jobs before this one as its start-up."""
    train(tmp_path, "task.p=11", "epochs=3", name="first")
    before = time.perf_counter()
    summary, _ = train(tmp_path, "task.p=11", "epochs=3", name="second")
    assert 0 < summary["startup_seconds"] <= time.perf_counter() - before


def test_a_processs_first_job_counts_its_start_up_from_the_processs_start():
    """The imports before it are its start-up; a later job's start is its own."""
    probe = (
        "import time; time.sleep(1.0); from grok.run import startup_seconds; "
        "now = time.perf_counter(); print(startup_seconds(True, now), startup_seconds(False, now))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    first, later = map(float, result.stdout.split())
    assert first >= 1.0 and 0 <= later < 1.0


def test_a_run_resumed_with_figures_false_keeps_no_figures_of_its_earlier_epochs(tmp_path):
    _, out = train(tmp_path, "task.p=11", "epochs=4", "figures=true")
    assert (out / "curves.png").exists()
    summary, _ = train(tmp_path, "task.p=11", "epochs=8", f"resume={out}", "figures=false", name="resumed")
    assert summary["epochs"] == 8 and not list(out.glob("*.png")), "a curves.png of 4 epochs would mislead"


def test_a_diverging_run_fails_and_says_so(tmp_path):
    with pytest.raises(FloatingPointError, match="diverged"):
        train(tmp_path, "task.p=11", "epochs=50", "optimizer=sgd", "optimizer.lr=1e30", "optimizer.warmup_steps=0")
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["error"]


def test_uniform_label_noise_records_clean_label_accuracy_and_keeps_test_labels_clean(tmp_path):
    _, out = train(tmp_path, "task.p=13", "task.label_noise_frac=0.5", "epochs=30")
    rows = read_rows(out)
    assert {"train_acc_clean", "test_acc_clean"} <= set(rows[0])
    assert all(r["test_acc"] == r["test_acc_clean"] for r in rows), "only training labels are noised"
    assert any(r["train_acc"] != r["train_acc_clean"] for r in rows)


@pytest.mark.parametrize("model", ["gpt", "transformer"])
def test_a_sequence_task_trains_and_records_exact_match_accuracy(tmp_path, model):
    summary, out = train(
        tmp_path,
        "task=calculator",
        "task.digits=1",
        f"model={model}",
        "model.d_model=32",
        "model.d_mlp=64",
        "epochs=3",
        "batch_size=64",
    )
    assert summary["status"] == "completed" and summary["n_train"] + summary["n_test"] == 4 * 100 - 10
    assert list(read_rows(out)[0]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "weight_norm"]


class KeepsFrozenInEval(torch.nn.Module):
    """A module with its own train(), as a frozen part asks for: that part stays in eval mode."""

    def __init__(self):
        super().__init__()
        self.frozen, self.trained = torch.nn.Dropout(), torch.nn.Dropout()

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self


def kept_in_eval_on_this_instance():
    layer = torch.nn.Dropout()
    layer.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), layer)
    return layer


# models whose modules switch modes in every way: plainly, by a train() of their own (on the class or
# the instance), and a scripted part, which keeps its `training` flag in C++
MODELS = {
    "transformer": lambda: fast(build_model(make_config([]).model, n_vocab=98, n_classes=97, n_ctx=3)),
    "its own train()": lambda: torch.nn.Sequential(KeepsFrozenInEval(), torch.nn.ReLU()),
    "train() on the instance": lambda: torch.nn.Sequential(kept_in_eval_on_this_instance(), torch.nn.ReLU()),
    "a scripted part": lambda: torch.nn.Sequential(torch.jit.script(torch.nn.Sequential(torch.nn.Dropout()))),
}


@pytest.mark.parametrize("kind", MODELS)
def test_the_loop_switches_every_module_s_mode_as_module_train_does(kind):
    model = MODELS[kind]()
    for training in (False, True, False, True):
        set_mode(model, training)
        expected = [module.training for module in copy.deepcopy(model).train(training).modules()]
        assert [module.training for module in model.modules()] == expected
    if kind == "a scripted part":  # its dropout, in eval mode, passes its input through
        set_mode(model, False)
        assert torch.equal(model(torch.ones(1000)), torch.ones(1000))
