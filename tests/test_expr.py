"""The expr task: a user's formula gives the labels a direct Python formula gives, pairs where it
divides by zero are left out, and anything outside the whitelist is refused in one line."""

import pytest
import torch
from omegaconf import OmegaConf

from grok.config import validate
from grok.data import make_dataset
from grok.errors import ConfigError
from tests.conftest import make_config

P = 13


def expr_config(expr, p=P):
    cfg = make_config(["task=expr", f"task.p={p}"])
    OmegaConf.update(cfg, "task.expr", expr)
    return cfg


def labels_by_pair(expr, p=P):
    cfg = expr_config(expr, p)
    data = make_dataset(cfg.task, 0.5, 0)
    return {(a, b): label for (a, b, _), label in zip(data.inputs.tolist(), data.labels.tolist())}


@pytest.mark.parametrize(
    "expr,formula",
    [
        ("(x**2 + 3*x*y) % p", lambda x, y: (x**2 + 3 * x * y) % P),
        ("x**3 - 2*y", lambda x, y: (x**3 - 2 * y) % P),  # the label is the value mod p, so % p is optional
        ("-x * (y - 5) + p", lambda x, y: (-x * (y - 5) + P) % P),
        ("(x + 1) // (y + 1) + x % 3 * +y", lambda x, y: ((x + 1) // (y + 1) + x % 3 * y) % P),
        ("x**(y % 4) * 7**20", lambda x, y: (x ** (y % 4) * 7**20) % P),  # exact integers: nothing overflows
    ],
)
def test_labels_equal_the_formula_for_every_pair(expr, formula):
    labels = labels_by_pair(expr)
    assert sorted(labels) == [(x, y) for x in range(P) for y in range(P)]
    for (x, y), label in labels.items():
        assert label == formula(x, y), (x, y)


def test_pairs_where_it_divides_by_zero_are_left_out():
    labels = labels_by_pair("x // y + x % (y - 3)")
    assert sorted(labels) == [(x, y) for x in range(P) for y in range(P) if y not in (0, 3)]
    assert all(label == (x // y + x % (y - 3)) % P for (x, y), label in labels.items())


def test_the_example_from_the_command_line_composes_with_hydra_quoting():
    cfg = make_config(["task=expr", 'task.expr="(x**2 + 3*x*y) % p"'])
    assert cfg.task.expr == "(x**2 + 3*x*y) % p"
    validate(cfg)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "x.real",
        "open('f')",
        "x if y else 1",
        "x / y",
        "x < y",
        "[x]",
        "lambda: 1",
        "1.5 * x",
        "True + x",
        "z + 1",
        "x & y",
        "'a'",
        "x; y",
        "x +",
        "(x",
        "",
    ],
)
def test_anything_outside_the_whitelist_is_refused_in_one_line_naming_task_expr(expr):
    with pytest.raises(ConfigError) as error:
        validate(expr_config(expr))
    message = str(error.value)
    assert message.startswith(f"task.expr={expr!r}: ") and "\n" not in message
    assert "use x, y, p, integers, + - * // % ** and parentheses" in message


@pytest.mark.parametrize(
    "expr,reason",
    [
        ("x ** 100000", "grows past 2**4096"),
        ("2 ** 2 ** 2 ** 2 ** 2 ** 2", "grows past 2**4096"),
        ("(x + 2) ** (y ** 9)", "grows past 2**4096"),
        ("x ** (y - 3)", "negative exponent"),
    ],
)
def test_huge_or_fractional_powers_are_refused_before_they_are_computed(expr, reason):
    with pytest.raises(ConfigError) as error:
        make_dataset(expr_config(expr).task, 0.5, 0)
    assert str(error.value).startswith(f"task.expr={expr!r}: ") and reason in str(error.value)


def test_x_and_y_are_the_operand_tokens_and_p_the_modulus():
    labels = labels_by_pair("x * 100 + y + p * 0", p=101)
    assert labels[(3, 7)] == 307 % 101 and labels[(0, 100)] == 100
    data = make_dataset(expr_config("x", p=11).task, 0.5, 0)
    assert torch.equal(data.labels, data.inputs[:, 0]) and data.n_classes == 11
