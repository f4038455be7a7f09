"""The S_n tasks: tokens number the permutations in itertools order, labels equal the formulas
written with plain tuples, and the composition table obeys the group laws."""

from itertools import permutations

import pytest
import torch

from grok.config import validate
from grok.data import make_dataset
from grok.errors import ConfigError
from tests.conftest import make_config


def dataset(task, n):
    cfg = make_config([f"task={task}", f"task.n={n}"])
    return make_dataset(cfg.task, 0.3, 0)


def compose(a, b):
    return tuple(a[i] for i in b)  # (a∘b)(i) = a(b(i))


def inverse(a):
    inv = [0] * len(a)
    for i, image in enumerate(a):
        inv[image] = i
    return tuple(inv)


FORMULAS = {
    "s5": lambda a, b: compose(a, b),
    "s5conj": lambda a, b: compose(compose(a, b), inverse(a)),
    "s5aba": lambda a, b: compose(compose(a, b), a),
}


@pytest.mark.parametrize("task", sorted(FORMULAS))
@pytest.mark.parametrize("n", [3, 4])
def test_labels_are_the_formula_on_permutations_in_itertools_order(task, n):
    perms = list(permutations(range(n)))
    token = {perm: k for k, perm in enumerate(perms)}
    data = dataset(task, n)
    assert sorted(map(tuple, data.inputs[:, :2].tolist())) == [
        (a, b) for a in range(len(perms)) for b in range(len(perms))
    ]
    for (a, b, equals), label in zip(data.inputs.tolist(), data.labels.tolist()):
        assert equals == len(perms)
        assert label == token[FORMULAS[task](perms[a], perms[b])], (perms[a], perms[b])


def composition_table(n):
    data = dataset("s5", n)
    m = data.n_classes
    table = torch.empty(m, m, dtype=torch.int64)
    table[data.inputs[:, 0], data.inputs[:, 1]] = data.labels
    return table


def test_composition_obeys_the_group_laws():
    table = composition_table(4)
    m = len(table)
    e = torch.arange(m)
    assert torch.equal(table[0], e) and torch.equal(table[:, 0], e), "token 0 is the identity"
    inverse_of = (table == 0).int().argmax(dim=1)
    assert torch.equal(table[inverse_of, e], torch.zeros(m, dtype=torch.int64)), "every element has an inverse"
    assert torch.equal(table[e, inverse_of], torch.zeros(m, dtype=torch.int64))
    # (a∘b)∘c == a∘(b∘c) for all 24^3 triples
    left = table[table[:, :, None], e[None, None, :]]  # [a, b, c] = table[table[a, b], c]
    right = table[e[:, None, None], table[None, :, :]]  # [a, b, c] = table[a, table[b, c]]
    assert torch.equal(left, right)
    assert len({tuple(row) for row in table.tolist()}) == m, "a Latin square: each row is a permutation"


def test_s5_defaults_to_n_5_with_120_elements():
    data = dataset("s5", 5)
    assert make_config(["task=s5"]).task.n == 5
    assert (data.n_classes, data.n_vocab, len(data.inputs)) == (120, 121, 120 * 120)


def test_n_outside_2_to_6_is_refused():
    with pytest.raises(ConfigError, match=r"^task\.n=7: must be in 2\.\.6"):
        validate(make_config(["task=s5conj", "task.n=7"]))
