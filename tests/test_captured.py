"""The captured epoch (`compile=true`, grok/training/captured.py): a run's whole epoch, step, test pass,
metrics and weight norm, as one compiled graph. From the same weights it trains as the plain epoch
does: the same rows, weights and optimizer state, to rounding. Its optimizer state is torch.optim's,
so a run goes on from its checkpoints with or without `compile`, and a snapshot restored trains again
to the same numbers. Where an epoch cannot be captured, or compiling fails, the run says so in a
warning and trains uncompiled."""

import contextlib
import time
import warnings

import pytest
import torch

from grok.recording.files import read_metrics
from grok.run import start
from grok.training.captured import CapturedEpoch, captured_epoch, unsupported
from grok.training.loop import Alone
from tests.conftest import DEVICES, make_config
from tests.test_training import train

SMALL = ["train_frac=0.5", "model.d_model=32", "model.d_mlp=64", "analysis=none"]
P11 = "task.p=11"  # the default task, (a + b) mod 11
EPOCHS = 12


def experiment(tmp_path, name, overrides, device):
    out = tmp_path / name
    out.mkdir()
    cfg = make_config([*SMALL, *overrides, "logger=none", f"device={device}"])
    run = start(cfg, out, name, time.perf_counter())
    run.model.double()  # the same Parameter objects: two ways of summing agree to float64 rounding
    return run


def captured(run, **options):
    return CapturedEpoch(Alone(run).module, run.optimizer, run.scheduler, run.train, run.test, run.loss_fn, **options)


def train_both_ways(tmp_path, overrides, device, plain_first=0, evaluated=None):
    """EPOCHS epochs of one config, plainly and captured (the first `plain_first` plainly too), from
    the same weights, each epoch evaluated as the run's schedule says or as the list `evaluated`
    says; returns the two runs and each one's evaluated rows. The captured graph runs the ATen
    operations it traced (backend aot_eager): the optimizer's math and the functional gradient are
    what differs, not the compiler's kernels."""
    runs = [experiment(tmp_path, name, overrides, device) for name in ("plain", "captured")]
    engines = [Alone(run) for run in runs]
    evaluated = evaluated or [runs[0].schedule.evaluated(epoch) for epoch in range(1, EPOCHS + 1)]
    rows = [[], []]
    for epoch, with_test in enumerate(evaluated, start=1):
        if epoch == plain_first + 1:
            engines[1].captured = captured(runs[1], backend="aot_eager")
        for engine, engine_rows in zip(engines, rows):
            measured = engine.epoch(with_test)
            assert (measured is None) == (not with_test), f"epoch {epoch}: the other graph ran"
            if measured is not None:
                engine_rows.append(dict(zip(measured[0], measured[1][0].tolist())))
    assert engines[1].captured is not None, "the captured epoch fell back to the plain one"
    return runs, rows


def assert_same_training(runs, rows, rel=1e-9):
    assert [row.keys() for row in rows[0]] == [row.keys() for row in rows[1]]
    for plain_row, captured_row in zip(*rows):
        assert captured_row == pytest.approx(plain_row, rel=rel, abs=1e-12)
    for (name, a), b in zip(runs[0].model.named_parameters(), runs[1].model.parameters()):
        assert torch.allclose(a, b, rtol=rel, atol=1e-12), name
    states = [run.optimizer.state_dict() for run in runs]
    for index, moments in states[0]["state"].items():
        assert moments.keys() == states[1]["state"][index].keys()
        for key, value in moments.items():
            other = states[1]["state"][index][key]
            assert (value.dtype, value.device) == (other.dtype, other.device), (index, key)
            assert torch.allclose(value.double(), other.double(), rtol=rel, atol=1e-12), (index, key)
    assert runs[0].scheduler.state_dict() == runs[1].scheduler.state_dict()


@pytest.mark.parametrize(
    "overrides",
    [
        [P11],  # AdamW, every epoch evaluated
        [P11, "optimizer=adam", "eval_every=3"],  # weight decay in the gradient; epochs trained unevaluated
        ["optimizer=sgd", "task=noisy_label", "task.p=11", "task.noise=2"],  # momentum; clean labels
        [P11, "model=mlp"],
        [P11, "tables=true"],  # through the tables (a CPU's default)
        [P11, "tables=false"],  # through the model's own forward (a GPU's default)
        ["task=digit_add", "task.digits=1", "model=gpt", "model.n_layers=1", "model.n_heads=2"],  # sequences
    ],
    ids=["adamw", "adam-unevaluated-epochs", "sgd-noisy-labels", "mlp", "tables", "no-tables", "sequences"],
)
def test_the_captured_epoch_trains_as_the_plain_one(tmp_path, overrides, device):
    assert_same_training(*train_both_ways(tmp_path, overrides, device))


@pytest.mark.parametrize("first", [True, False], ids=["evaluated-first", "unevaluated-first"])
def test_warmed_up_graphs_still_tell_an_evaluated_epoch_from_one_without_a_test_pass(tmp_path, first, device):
    # once warmed up, a graph is found by the guards that tell the two apart (and the tensors'): here
    # the other one is first traced after that, then the two alternate
    order = [first] * 3 + [not first] * 3 + [True, False] * 3
    assert_same_training(*train_both_ways(tmp_path, [P11], device, evaluated=order))


def test_the_captured_epoch_goes_on_from_the_state_torch_optim_left(tmp_path, device):
    assert_same_training(*train_both_ways(tmp_path, [P11], device, plain_first=4))


@pytest.mark.parametrize("guards_changed", [False, True], ids=["as-warmed-up", "grad-mode-changed"])
def test_a_restored_snapshot_trains_again_to_the_same_numbers(tmp_path, device, guards_changed):
    """Also where something a warmed-up graph guards on has changed: warmed up, a graph is looked up
    by a few of Dynamo's guards (captured.py); where one of the others no longer holds (here the grad
    mode of one epoch), Dynamo refuses to compile under that stance, and the epoch is looked up with
    every guard again instead of failing the run."""
    run = experiment(tmp_path, "run", [P11], device)
    epoch = captured(run, backend="aot_eager").epoch
    for _ in range(3):
        epoch(True)
    snapshot = run.snapshot()
    first = [epoch(True)[1] for _ in range(4)]
    run.restore(snapshot)  # new optimizer state tensors: the graph takes them as inputs, not as constants
    again = []
    for i in range(4):
        with torch.no_grad() if guards_changed and i == 1 else contextlib.nullcontext():
            again.append(epoch(True)[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_runs_one_after_another_in_a_process_each_compile_their_epoch(tmp_path):
    with torch._dynamo.config.patch(recompile_limit=1):  # Dynamo's limit (8) reached at the second shape
        for p in (11, 13):
            run = experiment(tmp_path, f"p{p}", [f"task.p={p}"], "cpu")
            epoch = captured(run, backend="eager").epoch
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, as in the whole suite (pyproject)
                assert epoch(True) is not None


def test_an_epoch_that_cannot_be_captured_trains_uncompiled_with_a_warning(tmp_path):
    for overrides, reason in [
        (["batch_size=8"], "batch_size is set"),
        (["transforms=[orthograd]"], "transforms edit the gradients"),
    ]:
        run = experiment(tmp_path, reason.split()[0], [P11, *overrides, "compile=true"], "cpu")
        with pytest.warns(UserWarning, match=f"compile=true: the epoch is not captured.*{reason}"):
            assert captured_epoch(run, Alone(run).module) is None


@pytest.mark.parametrize(
    "optimizer, reason",
    [
        (lambda params: torch.optim.AdamW(params, amsgrad=True), "amsgrad and maximize are not written out"),
        (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True), "nesterov, maximize and"),
        (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.5), "nesterov, maximize and"),
        (lambda params: torch.optim.RMSprop(params), "Adam, AdamW and SGD, not RMSprop"),
        (lambda params: torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}]), "more than one"),
        (lambda params: torch.optim.AdamW(params[1:]), "not train exactly the model's parameters"),
    ],
    ids=["amsgrad", "nesterov", "dampening", "rmsprop", "two-groups", "some-parameters"],
)
def test_a_step_the_captured_epoch_does_not_write_out_is_refused(tmp_path, optimizer, reason):
    run = experiment(tmp_path, "run", [P11], "cpu")
    refusal = unsupported(run.cfg, optimizer(list(run.model.parameters())), run.model, len(run.train.labels))
    assert refusal is not None and reason in refusal
    hook = run.optimizer.register_step_post_hook(lambda *args: None)
    assert "hooks are attached" in unsupported(run.cfg, run.optimizer, run.model, len(run.train.labels))
    hook.remove()
    run.cfg.batch_size = len(run.train.labels)  # one batch of all: a full-batch epoch
    assert unsupported(run.cfg, run.optimizer, run.model, len(run.train.labels)) is None


def test_a_failing_compiler_leaves_the_run_to_train_uncompiled_with_a_warning(tmp_path):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    runs = [experiment(tmp_path, name, [P11], "cpu") for name in ("plain", "broken")]
    plain, broken = Alone(runs[0]), Alone(runs[1])
    broken.captured = captured(runs[1], backend=broken_backend)
    with pytest.warns(UserWarning, match="torch.compile failed, the run trains uncompiled: .*no compiler here"):
        measured = broken.epoch(True)
    assert broken.captured is None, "and it does not try again"
    assert torch.equal(measured[1], plain.epoch(True)[1]), "the failed compile changed nothing"


@pytest.fixture(scope="module", params=DEVICES)
def compiled_then_resumed(request, tmp_path_factory):
    """A run with compile=true (torch.compile's own compiler, Inductor, float32; on a GPU its CUDA
    graphs) to epoch 10, resumed uncompiled to epoch 20 from its checkpoint, and the same 20 epochs
    uncompiled throughout."""
    tmp_path = tmp_path_factory.mktemp("compiled")
    common = [*SMALL, P11, "threads=1", "save_every=10", f"device={request.param}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tmp_path, *common, "compile=true", "epochs=10", name="captured")
    assert not [w for w in caught if "uncompiled" in str(w.message)], "the epoch was compiled"
    train(tmp_path, *common, f"resume={tmp_path / 'captured'}", "epochs=20", name="resumed")
    train(tmp_path, *common, "epochs=20", name="plain")
    return read_metrics(tmp_path / "captured" / "metrics.csv"), read_metrics(tmp_path / "plain" / "metrics.csv")


@pytest.mark.float_sensitive
def test_a_compiled_run_and_its_resumption_follow_the_plain_run(compiled_then_resumed):
    captured_rows, plain_rows = compiled_then_resumed
    assert [row["epoch"] for row in captured_rows] == list(range(1, 21)), "resumed from epoch 10 to 20"
    for captured_row, plain_row in zip(captured_rows, plain_rows):
        # float32, and the compiler's kernels sum in their own order: rounding grows over 20 epochs
        assert captured_row == pytest.approx(plain_row, rel=1e-5, abs=1e-7), captured_row["epoch"]
