"""The fast harness does the reference's math (issue 5): from the same initial weights, its training
steps and test passes (grok.training.loop, through fast(model) as training runs it: on a CPU the
tables, on a GPU the model itself) give the losses and accuracies of benchmarks/reference.py, the
straightforward implementation; and the models' table paths (fast(model, tables=True),
grok/models/tables.py) equal their plain paths (model itself)."""

import copy
import functools
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import reference
from grok.data import make_dataset
from grok.models import build_model, fast, run_with_cache, tables
from grok.recording.files import read_metrics
from grok.run import start
from grok.training.experiment import Split
from grok.training.loop import evaluate, train_epoch
from grok.training.optimizers import LinearWarmup, build_optimizer, without_dynamo_import
from grok.training.stacked import Stack
from tests.conftest import (
    EARLY_EPOCHS,
    FLOAT32_ROUNDINGS,
    ROOT,
    assert_optimizer_states_equal,
    make_config,
    run_here,
)

# p=31 on half the pairs: both the train (480) and test (481) batches take the table paths; a narrower
# model keeps 2 x 100 epochs short (test_the_default_experiment_takes_the_reference_steps has the default)
SMALL = ["task.p=31", "train_frac=0.5", "model.d_model=64", "model.d_mlp=256"]
METRICS = ["train_loss", "train_acc", "test_loss", "test_acc"]


def setup(overrides, dtype, device="cpu"):
    cfg = make_config(overrides)
    data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
    train, test = (
        Split(data.inputs[idx].to(device), data.labels[idx].to(device)) for idx in (data.train_idx, data.test_idx)
    )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1])
    m = cfg.model
    ref = (
        reference.ReferenceMLP(data.n_vocab, data.n_classes, 3, m.d_model, m.d_mlp)
        if m.name == "mlp"
        else reference.ReferenceTransformer(data.n_vocab, data.n_classes, 3, m.d_model, m.n_heads, m.d_mlp)
    )
    reference.load_weights(ref, model.state_dict())
    return cfg, model.to(device, dtype), ref.to(device, dtype), train, test


def harness_run(overrides, dtype, epochs, device="cpu"):
    cfg, model, _, train, test = setup(overrides, dtype, device)
    optimizer, scheduler = build_optimizer(cfg.optimizer, cfg.transforms, model.parameters())
    module, rows = fast(model, shares_tables=True), []  # as the training loop's: on a GPU the model's own forward
    for _ in range(epochs):
        train_metrics = train_epoch(module, train, optimizer, scheduler, None, None)
        test_metrics = evaluate(module, test)
        metrics = [train_metrics["loss"], train_metrics["acc"], test_metrics["loss"], test_metrics["acc"]]
        rows.append([float(value) for value in metrics])
    return torch.tensor(rows, dtype=torch.float64)


def reference_run(overrides, dtype, epochs, device="cpu"):
    cfg, _, ref, train, test = setup(overrides, dtype, device)
    opt = cfg.optimizer
    optimizer, scheduler = reference.optimizer_for(ref, opt.lr, opt.weight_decay, tuple(opt.betas), opt.warmup_steps)
    rows = [
        reference.train_epoch(ref, optimizer, scheduler, (train.inputs, train.labels), (test.inputs, test.labels))
        for _ in range(epochs)
    ]
    return torch.tensor([[row[key] for key in METRICS] for row in rows], dtype=torch.float64)


def relative(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max(dim=0).values  # per metric, over epochs


def errors(run, exact):
    """The largest deviation over the epochs: relative for the losses, absolute for the accuracies."""
    absolute = (run - exact).abs().max(dim=0).values
    return torch.where(torch.tensor(["loss" in key for key in METRICS]), relative(run, exact), absolute)


@pytest.mark.parametrize("model", ["transformer", "mlp"])
def test_in_float64_the_harness_and_the_reference_take_the_same_100_steps(model, device):
    # float64 rounding differences, amplified over the 100 epochs, stay far below 1e-9 (measured: 1e-15)
    harness = harness_run([f"model={model}", *SMALL], torch.float64, 100, device)
    ref = reference_run([f"model={model}", *SMALL], torch.float64, 100, device)
    loss = [METRICS.index("train_loss"), METRICS.index("test_loss")]
    acc = [METRICS.index("train_acc"), METRICS.index("test_acc")]
    assert (relative(harness, ref)[loss] < 1e-9).all(), relative(harness, ref)
    assert torch.allclose(harness[:, acc], ref[:, acc], rtol=0, atol=1e-6), "the same examples right, every epoch"
    assert harness[-1, 1] > 0.5, "and they learned: train accuracy far above chance (1/31)"


@pytest.mark.float_sensitive
@pytest.mark.parametrize("model", ["transformer", "mlp"])
def test_in_float32_the_harness_follows_exact_math_through_the_first_epochs(model):
    exact = reference_run([f"model={model}", *SMALL], torch.float64, EARLY_EPOCHS)
    error = errors(harness_run([f"model={model}", *SMALL], torch.float32, EARLY_EPOCHS), exact)
    n_examples = torch.tensor([480, 480, 481, 481])  # train and test split, for the accuracies
    is_loss = torch.tensor(["loss" in key for key in METRICS])
    assert (error[is_loss] < FLOAT32_ROUNDINGS).all(), error
    assert ((error * n_examples).round()[~is_loss] <= 1).all(), ("an argmax near a tie may go either way", error)
    assert (error[is_loss] > 1e-12).all(), "and it ran in float32: further from exact math than float64 rounding"


@pytest.mark.parametrize("model", ["transformer", "mlp"])
def test_the_default_experiment_takes_the_reference_steps(model):
    """p=97, the default shapes, a few epochs in float64 through the warmup."""
    harness = harness_run([f"model={model}"], torch.float64, 4)
    ref = reference_run([f"model={model}"], torch.float64, 4)
    assert (relative(harness, ref)[[0, 2]] < 1e-9).all()
    assert torch.allclose(harness[:, [1, 3]], ref[:, [1, 3]], rtol=0, atol=1e-6)


def autograd_ops(tensor):
    """Names of the backward nodes behind `tensor`: how it was computed."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def by_embedding_bag(tensor) -> bool:
    """Whether an embedding_bag (the tables' sums of rows, grok/models/tables.py) computed `tensor`."""
    return any("EmbeddingBag" in name for name in autograd_ops(tensor))


# one layer: the tables fold W_U in; two: they return the residual stream; d_mlp=100 and 31 classes:
# table rows of odd width, padded for embedding_bag; two heads: another order of the bag's rows
@pytest.mark.float_sensitive
@pytest.mark.parametrize(
    "overrides", [[], ["model.n_layers=2"], ["model.act=gelu"], ["model=mlp"], ["model.d_mlp=100", "model.n_heads=2"]]
)
def test_the_table_path_equals_the_plain_path_in_values_and_gradients(overrides):
    cfg = make_config(["task.p=31", *overrides])
    data = make_dataset(cfg.task, 0.5, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, 3).double()
    tokens = data.inputs  # all 961 pairs
    for all_positions in [False, True] if cfg.model.name == "transformer" else [False]:
        tables = fast(model, tables=True)(tokens, all_positions=all_positions)
        assert by_embedding_bag(tables), "fast(model, tables=True) on a large batch: the table path"
        plain = model(tokens, all_positions=all_positions)
        assert not by_embedding_bag(plain), "the model itself: the plain path"
        assert torch.allclose(tables, plain, rtol=0, atol=1e-12)
        with torch.inference_mode():  # evaluation goes through the tables in slices (2883 rows: three)
            assert torch.allclose(
                fast(model, tables=True)(tokens, all_positions=all_positions), plain, rtol=0, atol=1e-12
            )
        grads = [torch.autograd.grad(out.square().sum(), list(model.parameters())) for out in (tables, plain)]
        assert all(torch.allclose(f, p, rtol=1e-10, atol=1e-10) for f, p in zip(*grads))


def test_tables_false_runs_through_the_models_own_forward_to_the_same_numbers(tmp_path, monkeypatch):
    """`tables=false` (the config's): a run's steps, test passes and progress measures all go through
    the model itself, where every hook point sees its activation, to the table path's numbers (to
    float32 rounding); a stack of runs goes through it too."""
    by_tables = []
    spied = tables.transformer_by_tables
    monkeypatch.setattr(tables, "transformer_by_tables", lambda *args: by_tables.append(1) or spied(*args))
    rows = {}
    for tables_on in (True, False):
        by_tables.clear()
        overrides = [*SMALL, "epochs=4", "analysis.every=2", "logger=none", f"tables={str(tables_on).lower()}"]
        run_dir = run_here(overrides, tmp_path / f"tables_{tables_on}")
        assert bool(by_tables) == tables_on
        rows[tables_on] = [read_metrics(run_dir / name) for name in ("metrics.csv", "analysis.csv")]
        stack = Stack([start(make_config(overrides), tmp_path / f"stack_{tables_on}", "stack", time.perf_counter())])
        assert by_embedding_bag(stack.module(stack.experiments[0].train.inputs)) == tables_on
    for with_tables, without in zip(*rows.values()):
        assert len(with_tables) == len(without) > 0
        for a, b in zip(with_tables, without):
            assert a.keys() == b.keys()
            near = lambda value: pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value
            assert all(b[key] == near(value) for key, value in a.items()), (a, b)


def test_the_tables_hold_rows_for_the_token_position_pairs_of_the_runs_splits_alone(tmp_path, monkeypatch):
    """A binary task's inputs are [a, b, =]: `=` is the only token at the last position (the queries'),
    and never at the others. A run's tables hold rows for the (token, position) pairs its two splits
    show (for p = 31: 63 of the 32 x 3), to the plain path's values and gradients; a batch with a pair
    they lack gets tables of every pair, to the same numbers. The rows: H per pair (one value row per
    head), and one more per pair at the query position (its own residual row)."""
    rows_made, make = [], tables.first_block_tables

    def first_block_tables(*args):
        made = make(*args)
        rows_made.append(len(made[1]))
        return made

    monkeypatch.setattr(tables, "first_block_tables", first_block_tables)
    H, V = 4, 32
    shown = lambda inputs: {(int(token), position) for row in inputs for position, token in enumerate(row)}
    run_here([*SMALL, "epochs=2", "logger=none", "analysis=none"], tmp_path / "run")
    data = make_dataset(make_config(SMALL).task, 0.5, 0)
    assert len(shown(data.inputs)) == 63, "31 operands at each of two positions, and `=`"
    assert set(rows_made) == {H * 63 + 1}, "the run's step and test passes"

    torch.manual_seed(0)
    model = build_model(make_config(SMALL).model, data.n_vocab, data.n_classes, 3).double()
    module = fast(model, tables=True, inputs=data.inputs[data.train_idx])
    at_the_query, at_a_key = data.inputs.clone(), data.inputs.clone()
    at_the_query[0, 2] = 5  # an operand at the query position: a pair the train split does not show
    at_a_key[0, 0] = V - 1  # `=` at a key's position
    train = data.inputs[data.train_idx]
    for tokens, pairs in [(train, shown(train)), (at_the_query, None), (at_a_key, None)]:
        rows_made.clear()
        tables_path = module(tokens)
        assert by_embedding_bag(tables_path)
        with torch.inference_mode():
            assert torch.allclose(module(tokens), model(tokens), rtol=0, atol=1e-12)
        n_pairs, queries = (V * 3, V) if pairs is None else (len(pairs), 1)
        assert rows_made == [H * n_pairs + queries] * 2
        plain = model(tokens)
        assert torch.allclose(tables_path, plain, rtol=0, atol=1e-12)
        grads = [torch.autograd.grad(out.square().sum(), list(model.parameters())) for out in (tables_path, plain)]
        assert all(torch.allclose(f, p, rtol=1e-10, atol=1e-10) for f, p in zip(*grads))
    # runs trained together (a stack: torch.vmap over the runs' weights and tokens, which are not checked)
    # never read a pair the tables lack as another's row: the second run's first example has `=` at a key's
    # position, and `=`'s query row is the second of two
    two_queries = train.clone()
    two_queries[0, 2] = 5
    module = fast(model, tables=True, inputs=two_queries)
    runs = {name: torch.stack([param.detach()] * 2) for name, param in module.named_parameters()}
    with pytest.raises((RuntimeError, IndexError)):
        torch.vmap(lambda weights, tokens: torch.func.functional_call(module, weights, (tokens,)))(
            runs, torch.stack([train[:400], at_a_key[:400]])
        )


def test_the_pairs_of_tables_first_made_in_a_test_pass_serve_the_later_steps(monkeypatch):
    """A module's pairs are made once and kept: made in a test pass (under torch.inference_mode), they
    serve the training steps after it, whose backward saves what it gathered from them."""
    monkeypatch.setattr(tables, "_EVERY", {})  # every pair's, as in a fresh process
    data = make_dataset(make_config(SMALL).task, 0.5, 0)
    model = build_model(make_config(SMALL).model, data.n_vocab, data.n_classes, 3)
    with torch.inference_mode():
        modules = [fast(model, tables=True), fast(model, tables=True, inputs=data.inputs.clone())]
        for module in modules:
            module(data.inputs)
    for module in modules:
        module(data.inputs).sum().backward()
        assert all(param.grad is not None for param in model.parameters())


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
@pytest.mark.parametrize("by_row", [True, False], ids=["sorted-by-row-ahead", "sorted-in-the-backward"])
def test_a_bags_sums_and_gradients_are_those_of_gathering_its_rows(weighted, by_row):
    """tables.embedding_bag against rows[index] summed: rows in several bags, twice in one bag, in none."""
    torch.manual_seed(0)
    n_rows = 12
    rows = torch.randn(n_rows, 5, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, n_rows - 2, (40, 4))  # the last two rows in no bag
    index[0] = 3
    weights = torch.rand(40, 4, dtype=torch.float64, requires_grad=True) if weighted else None
    bags = tables.Bags(index).by_row(n_rows) if by_row else tables.Bags(index)
    out = tables.embedding_bag(bags, rows, weights)
    gathered = (rows[index] * (weights[..., None] if weighted else 1)).sum(1)
    assert torch.allclose(out, gathered, rtol=0, atol=1e-12)
    inputs, grad = [rows, weights] if weighted else [rows], torch.randn_like(out)
    got, want = (torch.autograd.grad(value, inputs, grad) for value in (out, gathered))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(got, want))
    assert (got[0][-2:] == 0).all(), "a row in no bag: no gradient"


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_the_rest_of_the_block_and_its_gradients_are_those_of_gathering_the_rows(act):
    """tables.rest_of_block, stream + act(pre) @ W_out from the bags' sums [pre | stream | zeros]
    (with a ReLU, one Function that writes the bags' output gradient in place), against rows[index]."""
    torch.manual_seed(0)
    M, C, pad = 6, 3, 7
    rows = torch.randn(12, M + C + pad, dtype=torch.float64)
    rows[:, M + C :] = 0
    rows.requires_grad_()
    index = torch.randint(0, 12, (40, 4))
    weights = torch.rand(40, 4, dtype=torch.float64, requires_grad=True)
    W_out = torch.randn(M, C, dtype=torch.float64, requires_grad=True)
    activation = getattr(torch.nn.functional, act)
    out = tables.rest_of_block(tables.Bags(index).by_row(12), rows, weights, [M, C, pad], activation, W_out)
    sums = (rows[index] * weights[..., None]).sum(1)
    expected = sums[:, M : M + C] + activation(sums[:, :M]) @ W_out
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    assert any("ThroughReLU" in name for name in autograd_ops(out)) == (act == "relu")
    grad = torch.randn_like(out)
    got, want = (torch.autograd.grad(value, [rows, weights, W_out], grad) for value in (out, expected))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(got, want))


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap runs embedding_bag per batch
@pytest.mark.filterwarnings("ignore:torch.searchsorted")  # and the backward's sort of each batch's entries
@pytest.mark.parametrize("model_name", ["transformer", "mlp"])
def test_under_torch_func_transforms_the_table_path_equals_the_plain_path(model_name):
    """torch.func.grad (twice: the indices made within it are not kept) and torch.vmap over batches
    of tokens through one model."""
    cfg = make_config(["task.p=31", f"model={model_name}"])
    data = make_dataset(cfg.task, 0.5, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, 3).double()
    params = dict(model.named_parameters())
    loss = lambda net, tokens: lambda p: torch.func.functional_call(net, p, (tokens,)).logsumexp(-1).sum()
    plain = torch.func.grad(loss(model, data.inputs))(params)
    for _ in range(2):
        by_tables = torch.func.grad(loss(fast(model, tables=True), data.inputs))(
            {f"model.{k}": v for k, v in params.items()}
        )
        assert all(torch.allclose(by_tables[f"model.{k}"], g, rtol=1e-10, atol=1e-10) for k, g in plain.items())
    batches = torch.stack([data.inputs, data.inputs.flip(0)])
    out, expected = torch.vmap(fast(model, tables=True))(batches), torch.stack([model(tokens) for tokens in batches])
    assert by_embedding_bag(out) and torch.allclose(out, expected, rtol=0, atol=1e-12)
    with torch.inference_mode():  # evaluation's path, which on a CPU otherwise sums the bags in blocks
        assert torch.allclose(torch.vmap(fast(model, tables=True))(batches), expected, rtol=0, atol=1e-12)
    grads = [torch.autograd.grad(value.square().sum(), list(model.parameters())) for value in (out, expected)]
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(*grads))


def test_the_indices_of_a_batch_of_tokens_are_made_once_and_again_when_the_tokens_change():
    """A split's tokens are the same every epoch: the table path makes their indices once
    (tables.per_batch_of_tokens), and again when they change in place or are other tokens."""
    made = []
    total = lambda tokens: made.append(1) or tokens.sum().item()
    tokens = torch.arange(12).view(4, 3)
    assert tables.per_batch_of_tokens(total, tokens) == 66
    assert tables.per_batch_of_tokens(total, tokens[:]) == 66 and len(made) == 1, "a view of the same tokens"
    tokens[0, 0] = 5
    assert tables.per_batch_of_tokens(total, tokens) == 71 and len(made) == 2, "changed in place"
    assert tables.per_batch_of_tokens(total, tokens.clone()) == 71 and len(made) == 3, "other tokens"
    with torch.inference_mode():  # a test pass's: kept too, as plain tensors that outlive inference mode
        first = tables.per_batch_of_tokens(torch.clone, tokens)
        assert tables.per_batch_of_tokens(torch.clone, tokens) is first and not first.is_inference()
    train, test_split = tables.per_batch_of_tokens(torch.clone, tokens), torch.arange(300).view(100, 3)
    with torch.inference_mode():  # a test split evaluated in many chunks
        for chunk in test_split.split(4):
            tables.per_batch_of_tokens(torch.clone, chunk)
    assert tables.per_batch_of_tokens(torch.clone, tokens) is train, "training's are kept apart"

    cfg = make_config(["task.p=31"])
    data = make_dataset(cfg.task, 0.5, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, 3)
    tokens = data.inputs.clone()
    fast(model, tables=True)(tokens)
    tokens[:, 0] = tokens[:, 0].flip(0)  # other operands, in the same memory
    assert by_embedding_bag(fast(model, tables=True)(tokens))
    assert torch.allclose(fast(model, tables=True)(tokens), model(tokens), rtol=1e-5, atol=1e-5)


def test_the_training_loops_test_pass_makes_the_tables_that_its_next_step_backpropagates_through(monkeypatch):
    """An epoch's test pass and the next epoch's training forward see the same weights: the loop's
    module (fast(model, shares_tables=True, tables=True)) makes the weights' tables once for both, and the step's
    gradients are the plain path's. They serve the next forward alone, and only the weights they were
    made of: after a step, a load, a weight's gradient switched on, or a forward down the plain path,
    they are made again."""
    made = []
    make = tables.first_block_tables
    monkeypatch.setattr(tables, "first_block_tables", lambda *args: made.append(1) or make(*args))
    cfg = make_config(["task.p=31"])
    data = make_dataset(cfg.task, 0.5, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, 3).double()
    module = fast(model, shares_tables=True, tables=True)

    def gradients(forward, tokens=data.inputs):
        model.zero_grad()
        forward(tokens).logsumexp(-1).sum().backward()
        return [param.grad.clone() for param in model.parameters()]

    def equal(got, want):
        return all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(got, want))

    def test_pass():
        with torch.inference_mode():
            assert torch.allclose(module(data.inputs), model(data.inputs), rtol=0, atol=1e-12)

    test_pass()
    test_pass()
    assert len(made) == 1, "two test passes on the same weights"
    assert equal(gradients(module), gradients(model)) and len(made) == 1, "the training forward took them"
    assert equal(gradients(module), gradients(model)) and len(made) == 2, "consumed: made again"
    optimizer, _ = build_optimizer(cfg.optimizer, cfg.transforms, model.parameters())  # fused AdamW
    test_pass()
    optimizer.step()
    test_pass()
    assert len(made) == 4, "a step"
    gradients(module, data.inputs[:3])  # too few examples for the tables: the plain path
    with torch.no_grad():
        model.W_E.data.add_(0.01)  # a write that autograd does not see
    test_pass()
    assert len(made) == 5, "kept for the next forward alone, which took the plain path"
    model.load_state_dict({name: value + 0.01 for name, value in model.state_dict().items()})
    assert equal(gradients(module), gradients(model)) and len(made) == 6, "loaded weights"
    model.W_E.requires_grad_(False)
    test_pass()
    model.W_E.requires_grad_(True)  # the kept tables have no graph back to it
    assert equal(gradients(module), gradients(model)) and model.W_E.grad is not None and len(made) == 8
    test_pass()
    assert copy.deepcopy(module).kept is None and module.kept is not None, "a copy leaves the graph behind"
    assert fast(model, tables=True) is not module and fast(model, tables=True).shares_tables is False


@pytest.mark.float_sensitive
@pytest.mark.parametrize("on", ["blocks.0.mlp.hook_post", ""], ids=["on_a_hook_point", "on_the_model"])
def test_a_hook_attached_sends_even_a_large_batch_down_the_plain_path(on):
    cfg = make_config(["task.p=31"])
    data = make_dataset(cfg.task, 0.5, 0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, 3).double()  # the paths sum in other orders
    logits, cache = run_with_cache(fast(model, tables=True), data.inputs)  # a hook on every hook point: all computed
    assert cache["model.blocks.0.mlp.hook_post"].shape == (len(data.inputs), 3, cfg.model.d_mlp)
    if on:  # the MLP's output zeroed: the stream after attention, plus b_out, unembedded
        expected = ((cache["model.blocks.0.hook_resid_mid"] + model.blocks[0].mlp.b_out) @ model.W_U)[:, -1]
        handle = dict(model.named_modules())[on].register_forward_hook(lambda m, i, output: torch.zeros_like(output))
    else:  # the logits doubled
        expected = 2 * logits[:, -1]
        handle = model.register_forward_hook(lambda m, i, output: 2 * output)
    edited = fast(model, tables=True)(data.inputs)
    handle.remove()
    assert not by_embedding_bag(edited)
    assert torch.allclose(edited, expected, rtol=0, atol=1e-12), "the hook edited the large batch"
    assert torch.allclose(logits[:, -1], fast(model, tables=True)(data.inputs), rtol=0, atol=1e-12)


PAGE_FAULTS_OF_A_SECOND_TENSOR = """
import resource, sys, torch
from grok.system.speed import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    sys.exit("not glibc")
torch.ones(2**24 + 2**12)  # 64 MiB and a little (room for the aligned 64 MiB below), written, freed
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(2**24)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def test_freed_memory_is_reused_without_page_faults():
    def faults(mode):  # a fresh process each, so that nothing else has shaped its heap
        result = subprocess.run(
            [sys.executable, "-c", PAGE_FAULTS_OF_A_SECOND_TENSOR, mode], capture_output=True, text=True, cwd=ROOT
        )
        if result.returncode != 0:
            pytest.skip(result.stderr.strip())
        return int(result.stdout)

    assert faults("default") > 10000, "glibc maps the second 64 MiB afresh: 16384 pages fault in"
    assert faults("keep") < 1000


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_steps_fused_and_as_pytorchs_loop_over_the_tensors_does(name, device):
    """The optimizers run PyTorch's fused kernels, on a CPU too; in float64 their steps are those of
    PyTorch's plain loop over the tensors (foreach=False), to rounding."""
    cfg = make_config([f"optimizer={name}", "optimizer.warmup_steps=0"])
    torch.manual_seed(0)
    shapes = [(97, 128), (128,), (4, 128, 32)]
    ours = [torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True) for shape in shapes]
    plain = [p.detach().clone().requires_grad_() for p in ours]
    optimizer, _ = build_optimizer(cfg.optimizer, cfg.transforms, ours)
    make = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    o = cfg.optimizer
    reference = make(plain, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=False)
    assert optimizer.param_groups[0]["fused"]
    for _ in range(20):
        for a, b in zip(ours, plain):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        optimizer.step()
        reference.step()
    for a, b in zip(ours, plain):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_the_optimizers_step_as_torch_optim_s_own_classes_do_bit_for_bit(name):
    """grok's optimizers are torch.optim's without the wrappers that import torch._dynamo on first use
    (grok/training/optimizers.py): the same kernels, so the same parameters and state bit for bit
    under the warmup schedule; step hooks run, and state dicts load into torch.optim's own classes
    and back."""
    cfg = make_config([f"optimizer={name}", "optimizer.warmup_steps=3"])
    torch.manual_seed(0)
    ours = [torch.randn(shape, requires_grad=True) for shape in [(97, 32), (32,), (4, 32, 8)]]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    optimizer, scheduler = build_optimizer(cfg.optimizer, cfg.transforms, ours)
    o = cfg.optimizer
    if name == "sgd":
        reference = torch.optim.SGD(theirs, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        make = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        reference = make(theirs, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=True)
    assert type(optimizer) is not type(reference) and isinstance(optimizer, type(reference))
    reference_schedule = torch.optim.lr_scheduler.LambdaLR(reference, LinearWarmup(o.warmup_steps))
    hooked = []
    optimizer.register_step_pre_hook(lambda *_: hooked.append("pre"))
    optimizer.register_step_post_hook(lambda *_: hooked.append("post"))

    def steps(count):
        for _ in range(count):
            for opt, params in ((optimizer, ours), (reference, theirs)):
                opt.zero_grad(set_to_none=True)
                (sum((p**2).sum() for p in params) + params[2].sin().sum()).backward()
                opt.step()  # in grad mode: a step that recorded a graph would raise (in-place on a leaf)
            scheduler.step()
            reference_schedule.step()

    steps(8)
    assert hooked == ["pre", "post"] * 8
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert_optimizer_states_equal(optimizer.state_dict(), reference.state_dict())
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # as a checkpoint from torch.optim
    reference.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    steps(4)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_only_torch_s_own_wrappers_come_off_an_optimizer_s_methods():
    """without_dynamo_import takes off torch.optim's wrappers of an optimizer's methods, not anyone
    else's: a step wrapped by another library (functools.wraps) still runs through its wrapper."""
    wrapped = []

    class Counted(torch.optim.SGD):
        @functools.wraps(torch.optim.SGD.step)
        def step(self, closure=None):
            wrapped.append("step")
            return super().step(closure)

    param = torch.ones(3, requires_grad=True)
    optimizer = without_dynamo_import(Counted)([param], lr=0.5)
    param.sum().backward()
    optimizer.step()
    assert wrapped == ["step"]
    assert torch.equal(param.detach(), torch.full((3,), 0.5))


def test_a_checkpoint_from_before_fused_adam_resumes_with_the_loop_it_was_trained_with():
    """Checkpoints written before grok fused Adam on the CPU hold param_groups with fused=None: loaded,
    they go on with PyTorch's loop, bit for bit as the run would have."""
    cfg = make_config(["optimizer.warmup_steps=0"])
    torch.manual_seed(0)
    ours = [torch.randn(64, 32, requires_grad=True), torch.randn(32, requires_grad=True)]
    before = [p.detach().clone().requires_grad_() for p in ours]
    o = cfg.optimizer
    earlier = torch.optim.AdamW(before, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    grads = [[torch.randn_like(p) for p in ours] for _ in range(6)]
    for p, g in zip(before, grads[0]):
        p.grad = g.clone()
    earlier.step()
    with torch.no_grad():
        for p, q in zip(ours, before):
            p.copy_(q)
    optimizer, _ = build_optimizer(cfg.optimizer, cfg.transforms, ours)
    optimizer.load_state_dict(copy.deepcopy(earlier.state_dict()))  # as from a file: its own tensors
    assert not optimizer.param_groups[0]["fused"]
    for step in grads[1:]:
        for p, q, g in zip(ours, before, step):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        earlier.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, before))
