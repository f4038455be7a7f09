"""The table path: the same math as the plain models, grouped so that a large batch costs less
(docs/performance.md). Training runs the model through `fast(model)`: by default the table path on a
CPU, the model itself on a GPU; `model(...)` itself always takes the plain path, where every hook
point sees its activation.

The first layer only ever sees V x T distinct inputs (a token at a position). So for a large batch,
`Transformer` (without LayerNorm) computes its first block from tables of those rows, and `OperandMLP`
its hidden layer's input; each example then sums a few table rows (`embedding_bag`). A hook attached
anywhere on the model switches back to the plain path.

Shapes: B batch, T positions, Q query positions, D d_model, H heads, E d_head, M d_mlp, V vocabulary,
C classes, O operands.
"""

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from grok.models.hooks import hooks_attached
from grok.models.layers import gather_rows
from grok.models.mlp import OperandMLP
from grok.models.transformer import Transformer


class TableForward(nn.Module):
    """`model` run by its tables where they pay and no hook is attached, else as itself. Its
    parameters are the model's (named `model.<name>`).

    With `shares_tables` (the training loop's module): an epoch's test pass and the next epoch's
    training forward see the same weights, a step before and a step after. So a forward without
    gradients makes the weights' tables with their autograd graph (though it records no gradients
    itself) and keeps them for the next forward alone, whatever its path; the training forward takes
    them, and its backward runs through that graph: the tables are made once an epoch. They serve only
    the weights they were made of (each one's identity, memory, requires_grad and autograd version,
    which a step of grok's optimizers, a load or a rollback bumps; a write autograd does not see,
    through `.data` or a kernel of one's own, does not: hence the next forward alone, which follows
    no such write in the training loop).

    With `inputs` (every batch the module will see comes from them: the run's splits), a
    transformer's tables hold rows for the (token, position) pairs those inputs show alone (a
    binary task's `=` at its last position, its operands at the others: 195 of the 294 pairs for
    p = 97); a batch with another pair takes tables of every pair."""

    def __init__(self, model: nn.Module, shares_tables: bool = False, inputs: Optional[Tensor] = None):
        super().__init__()
        self.model = model
        self.shares_tables = shares_tables
        held = inputs is not None and isinstance(model, Transformer)
        self.pairs = Pairs.of(inputs, model.W_E.shape[0]) if held else None
        self.kept: Optional[Tuple[tuple, list, Tuple[Tensor, Tensor, Tensor]]] = None  # key, weights, tables

    def __getstate__(self):  # kept tables hold an autograd graph, which neither copies nor pickles
        return {**super().__getstate__(), "kept": None}

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        model, tables = self.model, first_block_tables
        if self.shares_tables and not torch.compiler.is_compiling():
            kept, self.kept = self.kept, None
            tables = functools.partial(self.shared_tables, kept)
        if not hooks_attached(self):  # a hook on the model or any of its modules: the plain path
            if isinstance(model, Transformer) and transformer_tables_pay(model, tokens, all_positions):
                return transformer_by_tables(model, tokens, all_positions, tables, self.pairs)
            if isinstance(model, OperandMLP) and len(tokens) >= model.W_E.shape[0]:
                return operand_mlp_by_tables(model, tokens)
        return model(tokens, all_positions=all_positions)

    def shared_tables(self, kept, model: Transformer, pairs: "Pairs", Q: int, readout: Optional[Tensor]):
        """first_block_tables, or the `kept` ones of these weights; without gradients, kept for the next forward."""
        weights = list(model.parameters())  # a superset of what the tables read: none is left out of the key
        if not all(map(_plain, weights)):  # under torch.func transforms
            return first_block_tables(model, pairs, Q, readout)
        key = (pairs, Q, tuple((id(w), w.data_ptr(), w._version, w.requires_grad) for w in weights))
        if kept is not None and kept[0] == key:
            if torch.is_grad_enabled():
                return kept[2]  # its graph is backpropagated once: not kept again
            self.kept = kept
            return tuple(t.detach() for t in kept[2])
        if torch.is_grad_enabled():
            return first_block_tables(model, pairs, Q, readout)
        with torch.inference_mode(False), torch.enable_grad():
            tables = first_block_tables(model, pairs, Q, readout)
        self.kept = (key, weights, tables)  # holds the weights, so that their ids are not reused
        return tuple(t.detach() for t in tables)


def fast(
    model: nn.Module, shares_tables: bool = False, tables: Optional[bool] = None, inputs: Optional[Tensor] = None
) -> nn.Module:
    """The module to train and evaluate `model` through: TableForward(model, shares_tables, inputs) for
    the models that have tables, the model itself for the others and without `tables` (the config's).
    None: tables on a CPU only. On a GPU their gathers and sums, built for a CPU's kernels, take longer
    than the products they save (docs/performance.md, "On a GPU")."""
    if not isinstance(model, (Transformer, OperandMLP)):
        return model
    return TableForward(model, shares_tables, inputs) if takes_tables(model.W_E.device, tables) else model


def takes_tables(device: torch.device, tables: Optional[bool]) -> bool:
    """Whether a model on `device` trains through its tables, the config's `tables` null, true or false."""
    return device.type == "cpu" if tables is None else tables


# ----------------------------------------------------------------------------- transformer
def transformer_tables_pay(model: Transformer, tokens: Tensor, all_positions: bool) -> bool:
    """Without LayerNorm, when the batch's B*Q rows through W_in outnumber those of the tables of every
    (token, position) pair, (T + Q) * V of width D (the tables of fewer pairs pay sooner: a bound that holds)."""
    T, V = tokens.shape[1], model.W_E.shape[0]
    Q = model.n_queries(T, all_positions)[0]
    return isinstance(model.ln_final, nn.Identity) and len(tokens) * Q >= (T + Q) * V


def transformer_by_tables(
    model: Transformer, tokens: Tensor, all_positions: bool, tables: Callable, pairs: Optional["Pairs"]
) -> Tensor:
    """Transformer.forward with its first block from tables (`tables`: first_block_tables, or
    TableForward's) of `pairs`' rows."""
    n_queries = model.n_queries(tokens.shape[1], all_positions)
    if len(model.blocks) == 1:  # W_U alone reads the block's output: the tables fold it in
        logits = first_block_by_tables(model, tokens, n_queries[0], model.W_U, tables, pairs)
        return logits if all_positions else logits[:, -1]
    x = first_block_by_tables(model, tokens, n_queries[0], None, tables, pairs)
    for block, n in zip(model.blocks[1:], n_queries[1:]):
        x = block(x, n)
    logits = model.ln_final(x) @ model.W_U
    return logits if all_positions else logits[:, -1]


def first_block_by_tables(
    model: Transformer, tokens: Tensor, Q: int, readout: Optional[Tensor], tables: Callable, pairs: Optional["Pairs"]
) -> Tensor:
    """Block 0 at the last Q positions, without hooks or LayerNorm: Block.forward's math, grouped
    by table rows. Its input W_E[token] + W_pos[position] is one of V x T rows (those of `pairs`;
    of every pair where `pairs` is None, has other positions or lacks a pair of `tokens`), so q, k,
    v are computed once per row and the attention scores once per (query row, key row) pair. After the
    softmax, all up to the MLP's activation is linear: the residual stream and the pre-activations
    are pattern-weighted sums of value rows (through W_O), plus the query's own row. embedding_bag
    forms such sums without gathering the rows; its backward scatters gradients into the tables.
    Returns the residual stream after the block (B, Q, D), or with `readout` (D, C) that stream
    times readout: what is linear in the stream (value rows, own rows, W_out) is multiplied by
    readout once per row instead of once per example, and (B, M) @ (M, D) @ (D, C) becomes
    (B, M) @ (M, C). What depends on the weights alone comes from `tables(model, pairs, Q, readout)`:
    first_block_tables, or TableForward's shared ones."""
    (B, T), (H, _, _) = tokens.shape, model.blocks[0].attn.W_Q.shape
    held = pairs is not None and pairs.place.shape[1] == T
    indices = per_batch_of_tokens(transformer_indices, tokens, pairs, H, Q, gets_a_backward(tokens)) if held else None
    if indices is None:  # no pairs of T positions, or a pair of `tokens` that they do not hold: every pair's
        pairs = Pairs.every(model.W_E.shape[0], T, tokens.device)
        indices = per_batch_of_tokens(transformer_indices, tokens, pairs, H, Q, gets_a_backward(tokens))
    pair, bags = indices
    pair_scores, rows, W_out = tables(model, pairs, Q, readout)
    pos = torch.arange(T, device=tokens.device)
    future = (pos[:, None] > pos[T - Q :])[:, None]  # (T, 1, Q): the key comes after the query
    # (H, T, B, Q), through index_select as layers.gather_rows on a CPU; the softmax over the T keys then runs
    # vectorized across examples (along a last axis of length T it is ~20x slower)
    pattern = pair_scores.index_select(1, pair.flatten()).view(H, T, B, Q)
    pattern = pattern.masked_fill(future, float("-inf")).softmax(dim=1)
    weights = torch.cat([pattern.permute(2, 3, 0, 1).flatten(2), pattern.new_ones(B, Q, 1)], dim=-1)  # as bags
    weights = weights.flatten(0, 1)  # one bag of H*T + 1 rows per query
    mlp = model.blocks[0].mlp
    widths = [mlp.W_in.shape[1], W_out.shape[1], rows.shape[1] - mlp.W_in.shape[1] - W_out.shape[1]]

    if torch.is_grad_enabled():
        return rest_of_block(bags, rows, weights, widths, mlp.act, W_out).view(B, Q, -1)
    return rest_of_block_in_slices(bags.index, rows, weights, widths, mlp.act, W_out).view(B, Q, -1)


def rest_of_block(
    bags: "Bags", rows: Tensor, weights: Tensor, widths: List[int], act: Callable, W_out: Tensor
) -> Tensor:
    """Block 0 after the softmax, (n, D or C): the stream after attention (+ b_out) plus the MLP's
    output, through readout if given; from the bags' sums [pre-activation (M) | stream | zeros]. With
    a ReLU, on plain tensors, as one Function (_EmbeddingBagThroughReLU)."""
    if (
        act is F.relu
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and all(map(_plain, (rows, weights, bags.index, W_out)))
    ):
        return _EmbeddingBagThroughReLU.apply(bags.index, rows, weights, bags.order, bags.starts, W_out, widths)
    pre, stream, _ = embedding_bag(bags, rows, weights).split(widths, dim=1)
    return torch.addmm(stream, act(pre), W_out)


# Evaluation runs SLICE examples at a time, whose (SLICE, M) activations stay in cache from one step to
# the next. A CPU's sums them COLUMNS pre-activations at a time too: that block of the tables (rows x 128
# floats: 400 KB for the default experiment's 781 rows, against 1.9 MB at their whole width) and of
# the activations stays in a core's L2 cache from one bag to the next and on into the product with
# W_out (the default experiment's test pass, when its tables held 1274 rows: 1.06x faster at 2 threads,
# 1.17x at 1); the price, a copy of the tables in blocks each pass
SLICE, COLUMNS = 1024, 128


def rest_of_block_in_slices(
    index: Tensor, rows: Tensor, weights: Tensor, widths: List[int], act: Callable, W_out: Tensor
) -> Tensor:
    """rest_of_block without gradients, SLICE examples at a time, into one (n, D or C) output; on a CPU
    outside torch.func's transforms (vmap has no rule for addmm_), in blocks of COLUMNS pre-activations."""
    transformed = not torch.compiler.is_compiling() and not all(map(_unwrapped, (rows, weights, index, W_out)))
    if rows.device.type != "cpu" or transformed:
        # joined flat: torch.cat runs ~10x slower on rows whose width is not a multiple of 8 floats, as C=97's
        slices = zip(index.split(SLICE), weights.split(SLICE))
        parts = [rest_of_block(Bags(part), rows, w, widths, act, W_out).flatten() for part, w in slices]
        return torch.cat(parts).view(len(index), -1)
    M, width = widths[0], widths[1]
    blocks = [rows[:, start : min(start + COLUMNS, M)].contiguous() for start in range(0, M, COLUMNS)]
    stream_rows = rows[:, M:].contiguous()  # [stream | zeros]
    out = W_out.new_empty(len(index), width)
    for start in range(0, len(index), SLICE):
        part = slice(start, start + SLICE)
        bag = functools.partial(F.embedding_bag, index[part], per_sample_weights=weights[part], mode="sum")
        out[part] = bag(stream_rows)[:, :width]
        for block, W_block in zip(blocks, W_out.split(COLUMNS)):
            out[part].addmm_(act(bag(block)), W_block)
    return out


def first_block_tables(
    model: Transformer, pairs: "Pairs", Q: int, readout: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor]:
    """What first_block_by_tables computes from the weights alone, for the rows of `pairs` (R of
    them, the last R_Q at the last Q positions: the query rows): the attention scores of every
    (query row, key row) pair, (H, R_Q * R) for query row a and key row r at a*R + r, as a matrix
    product per head leaves them (neither it nor its backward copies them into another order); the
    table rows [the MLP's pre-activation (M) | the residual stream (D), or with readout the logits it
    adds (C) | zeros up to a multiple of 8 floats, on which embedding_bag's backward runs several
    times faster], (H*R + R_Q, width); and W_out through readout, (M, D or C). A value row has
    rank E: through W_O and W_in it costs E*M per row, not D*M."""
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    H, E = attn.W_Q.shape[0], attn.W_Q.shape[2]
    resid = gather_rows(model.W_E, pairs.tokens) + gather_rows(model.W_pos, pairs.positions)  # (R, D)
    own = resid[len(resid) - pairs.queries(Q) :]  # (R_Q, D): the query rows
    q = torch.einsum("rd,hde->hre", own, attn.W_Q)  # (H, R_Q, E)
    k = torch.einsum("rd,hde->hre", resid, attn.W_K)  # (H, R, E)
    v = torch.einsum("rd,hde->hre", resid, attn.W_V)
    pair_scores = (q @ k.transpose(1, 2)).flatten(1) / math.sqrt(E)  # (H, R_Q * R)

    read = (lambda x: x) if readout is None else (lambda x: x @ readout)
    W_out = read(mlp.W_out)  # (M, D or C)
    pad = -(mlp.W_in.shape[1] + W_out.shape[1]) % 8
    zeros = lambda *shape: W_out.new_zeros(*shape, pad)
    W_O_in = torch.einsum("hed,dm->hem", attn.W_O, mlp.W_in)
    value_rows = v @ torch.cat([W_O_in, read(attn.W_O), zeros(H, E)], dim=-1)  # (H, R, width)
    own_rows = torch.cat([own @ mlp.W_in + mlp.b_in, read(own + mlp.b_out), zeros(len(own))], dim=-1)
    return pair_scores, torch.cat([value_rows.flatten(0, 1), own_rows]), W_out


def transformer_indices(
    tokens: Tensor, pairs: "Pairs", H: int, Q: int, backward: bool
) -> Optional[Tuple[Tensor, "Bags"]]:
    """What first_block_by_tables looks up for a batch of tokens (B, T): the pair_scores column of each
    (key position, example, query) (T, B, Q), and the bags (by row too where they get a `backward`).
    With r the row of a token's pair among `pairs`' R (R_Q of them query rows, which come last), a bag
    per query holds the value rows of (head h, row r) at h*R + r, then the query's own residual row
    at H*R + (r - (R - R_Q)), which carries the biases. None where `pairs` lacks a pair of `tokens`,
    checked where it can be: not while torch.compile traces, nor for tokens that torch.func wraps
    (runs trained together, each with its own tokens), which are the splits the module was made for.
    Unchecked, a pair they lack still cannot be read as another: its place, far past every row,
    makes each index that it enters fail."""
    (B, T), R, R_Q = tokens.shape, len(pairs.tokens), pairs.queries(Q)
    pos, heads = torch.arange(T, device=tokens.device), torch.arange(H, device=tokens.device)
    row = pairs.place[tokens, pos]  # (B, T)
    if not torch.compiler.is_compiling() and _unwrapped(tokens) and bool((row >= R).any()):
        return None
    query_row = row[:, T - Q :] - (R - R_Q)  # (B, Q)
    pair = query_row * R + row.T[:, :, None]  # (T, B, Q)
    value_index = heads[:, None] * R + row[:, None, :]  # (B, H, T)
    own_index = H * R + query_row  # (B, Q)
    index = torch.cat([value_index[:, None].expand(B, Q, H, T).flatten(2), own_index[..., None]], dim=-1)
    bags = Bags(index.flatten(0, 1))
    return pair, bags.by_row(H * R + R_Q) if backward else bags


# A pair's place where Pairs do not hold it: every index computed from it lies past every row (and
# stays within int64), so that a pair they lack fails to be read rather than reads another's row
NOT_HELD = 2**40


@dataclass(eq=False)  # compared and hashed by identity: a key of the kept tables and of per_batch_of_tokens
class Pairs:
    """The (token, position) pairs a transformer's first-block tables hold rows for, R of them,
    ordered by position, then token: those at the last positions, whose rows are the query rows,
    come last."""

    tokens: Tensor  # (R,)
    positions: Tensor  # (R,)
    place: Tensor  # (V, T): the row of pair (v, t) among them; NOT_HELD where they do not hold it
    per_position: Tuple[int, ...]  # (T,): how many of them each position has

    @staticmethod
    @torch.inference_mode(False)  # kept, and gathered from by forwards that record gradients
    def of(inputs: Tensor, n_vocab: int) -> "Pairs":
        """The pairs that `inputs` (N, T) show."""
        shown = torch.zeros(n_vocab, inputs.shape[1], dtype=torch.bool, device=inputs.device)
        shown[inputs, torch.arange(inputs.shape[1], device=inputs.device)] = True
        positions, tokens = shown.T.nonzero(as_tuple=True)  # by position, then token
        place = torch.full(shown.shape, NOT_HELD, dtype=torch.long, device=inputs.device)
        place[tokens, positions] = torch.arange(len(tokens), device=inputs.device)
        return Pairs(tokens, positions, place, tuple(shown.sum(0).tolist()))

    @staticmethod
    def every(n_vocab: int, T: int, device: torch.device) -> "Pairs":
        """Every pair of V tokens and T positions, made once (without Pairs.of's data-dependent nonzero,
        which torch.compile cannot trace)."""
        key = (n_vocab, T, device)
        if key not in _EVERY:
            with torch.inference_mode(False):
                tokens = torch.arange(n_vocab, device=device).repeat(T)
                positions = torch.arange(T, device=device).repeat_interleave(n_vocab)
                place = torch.arange(n_vocab * T, device=device).view(T, n_vocab).T.contiguous()
            _EVERY[key] = Pairs(tokens, positions, place, (n_vocab,) * T)
        return _EVERY[key]

    def queries(self, Q: int) -> int:
        """R_Q: how many of them lie at the last Q positions."""
        return sum(self.per_position[len(self.per_position) - Q :])


_EVERY: Dict[tuple, Pairs] = {}  # (V, T, device) -> Pairs.every


# ----------------------------------------------------------------------------- operand MLP
def operand_mlp_by_tables(model: OperandMLP, tokens: Tensor) -> Tensor:
    """OperandMLP.forward with the hidden layer's input from a table: concat(W_E[a], W_E[b]) @ W_in =
    W_E[a] @ W_in[:D] + W_E[b] @ W_in[D:], so one (O, V, M) table holds every operand's term, and each
    example sums O rows of it (embedding_bag: gather + sum)."""
    mlp, (V, D), O = model.mlp, model.W_E.shape, tokens.shape[1] - 1
    table = torch.einsum("vd,odm->ovm", model.W_E, mlp.W_in.view(O, D, -1)).flatten(0, 1)  # (O*V, M)
    pre = embedding_bag(per_batch_of_tokens(operand_bags, tokens, V, gets_a_backward(tokens)), table) + mlp.b_in
    return (mlp.act(pre) @ mlp.W_out + mlp.b_out) @ model.W_U  # pre: (B, M)


def operand_bags(tokens: Tensor, V: int, backward: bool) -> "Bags":
    """Each example's bag: its O operands' rows of the (O*V, M) table (by row too where they get a `backward`)."""
    O = tokens.shape[1] - 1
    bags = Bags(tokens[:, :-1] + V * torch.arange(O, device=tokens.device))  # (B, O)
    return bags.by_row(O * V) if backward else bags


# ----------------------------------------------------------------------------- per batch of tokens
# key -> (its tokens, the result), latest last; those of forwards that record gradients (training)
# apart from the others', so that a test split evaluated in many chunks does not push the train split out
_PER_TOKENS: "Dict[bool, OrderedDict[tuple, tuple]]" = {True: OrderedDict(), False: OrderedDict()}
_KEPT = 8  # of each: a split, or a large split's chunks (grok.training.metrics.EVAL_TOKENS), and a few more


def per_batch_of_tokens(make: Callable, tokens: Tensor, *args):
    """make(tokens, *args), computed once per batch of tokens: a split's tokens, and so the indices
    made from them, are the same every epoch. The last few are kept, keyed by where the tokens lie,
    their shape, strides and version (which an in-place change bumps; a write that autograd does not
    see, through `.data`, the storage or a numpy array, is not seen here either) and `args`; an entry
    holds its tokens, so that their memory is not reused while it is kept. Only plain tensors are
    kept (those of a test pass in inference mode are made as plain ones): while torch.compile traces,
    the graph computes them; within a torch.func transform, they are made afresh."""
    if torch.compiler.is_compiling() or not _plain(tokens):
        return make(tokens, *args)
    key = (make, tokens.device, tokens.data_ptr(), tokens.shape, tokens.stride(), tokens._version, args)
    kept = _PER_TOKENS[torch.is_grad_enabled()]
    if key not in kept:
        with torch.inference_mode(False):
            made = make(tokens, *args)
        if not all(map(_plain, tree_leaves(made))):
            return made
        kept[key] = (tokens, made)
        if len(kept) > _KEPT:
            kept.popitem(last=False)
    kept.move_to_end(key)
    return kept[key][1]


def _unwrapped(tensor: Tensor) -> bool:
    """Not a torch.func transform's wrapper (which torch.compile cannot ask about)."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def _plain(tensor) -> bool:
    """Not a torch.func transform's wrapper nor an inference tensor (which has no version)."""
    return not isinstance(tensor, Tensor) or (_unwrapped(tensor) and not tensor.is_inference())


# ----------------------------------------------------------------------------- embedding_bag
def gets_a_backward(tokens: Tensor) -> bool:
    """Whether the bags made from `tokens` go through _EmbeddingBag's backward, which reads them by row.
    Runs trained together with tokens of their own (under torch.vmap) go through _RunsEmbeddingBag,
    whose one call over every run's bags sorts its own entries."""
    return torch.is_grad_enabled() and not torch._C._functorch.is_batchedtensor(tokens)


class Bags(NamedTuple):
    """Bags of table rows: bag n sums rows index[n, 0], ..., index[n, J-1]. For the rows' gradient
    the same entries by row: `order` lists the entries (n*J + j) sorted by row, stably, and row r's
    are order[starts[r]:starts[r+1]]. Where they are not given, the backward sorts."""

    index: Tensor  # (N, J)
    order: Optional[Tensor] = None  # (N*J,)
    starts: Optional[Tensor] = None  # (R,)

    def by_row(self, n_rows: int) -> "Bags":
        sorted_rows, order = torch.sort(self.index.flatten(), stable=True)
        starts = torch.searchsorted(sorted_rows, torch.arange(n_rows, device=sorted_rows.device))
        return Bags(self.index, order, starts)


def embedding_bag(bags: Bags, rows: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """F.embedding_bag in mode "sum": out[n] = sum_j weights[n, j] * rows[bags.index[n, j]] (weights 1
    when None). Under torch.vmap, with a stack of runs' rows (grok/sweeps/batched.py), one call for all runs."""
    if torch._C._functorch.is_batchedtensor(rows):  # inside torch.vmap, over runs
        return _RunsEmbeddingBag.apply(bags.index, rows, weights)
    if not torch.is_grad_enabled():  # evaluation: no backward, no Function's cost per call
        return F.embedding_bag(bags.index, rows, per_sample_weights=weights, mode="sum")
    return _EmbeddingBag.apply(bags.index, rows, weights, bags.order, bags.starts)


class _EmbeddingBag(torch.autograd.Function):
    """F.embedding_bag, whose rows' gradient is a bag too: grad_rows[r] sums weights[n, j] * grad[n]
    over the entries (n, j) with index[n, j] = r, so with the entries sorted by row (Bags.by_row) it is
    an embedding_bag over grad's rows. PyTorch's own backward sorts the entries too, then scatters
    them: on a CPU at half the speed (docs/performance.md). Under torch.vmap with the rows unbatched
    (one model, batches of tokens), vmap runs forward and backward per batch."""

    generate_vmap_rule = True

    @staticmethod
    def forward(index, rows, weights, order, starts) -> Tensor:
        return F.embedding_bag(index, rows, per_sample_weights=weights, mode="sum")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, rows, weights, order, starts = ctx.saved_tensors
        return None, *_bag_gradients(ctx, grad, index, rows, weights, order, starts), None, None


def _bag_gradients(ctx, grad: Tensor, index: Tensor, rows: Tensor, weights, order, starts):
    """The gradients of embedding_bag(index, rows, weights) from its output's, `grad` (N, width): the
    rows' (where ctx needs them: input 1) and the weights' (input 2)."""
    (N, J), grad_rows, grad_weights = index.shape, None, None
    if ctx.needs_input_grad[1]:
        if order is None:
            _, order, starts = Bags(index).by_row(len(rows))
        by_row_weights = None if weights is None else weights.flatten().index_select(0, order)
        grad_rows = F.embedding_bag(order // J, grad, starts, per_sample_weights=by_row_weights, mode="sum")
    if weights is not None and ctx.needs_input_grad[2]:  # weights[n, j]'s: grad[n] . rows[index[n, j]]
        bags = torch.arange(N, device=index.device)
        grad_weights = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad,
            rows,
            index.flatten(),
            bags * J,
            bags.repeat_interleave(J),
            0,  # mode 0: sum
        ).view(N, J)
    return grad_rows, grad_weights


class _EmbeddingBagThroughReLU(torch.autograd.Function):
    """rest_of_block with a ReLU: [pre | stream | zeros] = embedding_bag(index, rows, weights), then
    stream + relu(pre) @ W_out. Autograd's backward would compute the gradients of pre and of stream
    apart and then concatenate them, with zeros, into the bags' output gradient; this one writes them
    into it where they belong (the same numbers, one pass over (N, width) fewer)."""

    @staticmethod
    def forward(ctx, index, rows, weights, order, starts, W_out, widths) -> Tensor:
        pre, stream, _ = F.embedding_bag(index, rows, per_sample_weights=weights, mode="sum").split(widths, dim=1)
        hidden = pre.relu()
        ctx.save_for_backward(index, rows, weights, order, starts, W_out, hidden)
        return torch.addmm(stream, hidden, W_out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        index, rows, weights, order, starts, W_out, hidden = ctx.saved_tensors
        M, C = hidden.shape[1], grad.shape[1]
        grad_out = grad.new_empty(len(grad), rows.shape[1])  # [pre's | stream's | zeros']
        grad_hidden = grad_out[:, :M]
        torch.mm(grad, W_out.T, out=grad_hidden)
        torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0, grad_input=grad_hidden)  # relu's
        grad_out[:, M : M + C] = grad
        grad_out[:, M + C :] = 0
        grad_W_out = hidden.T @ grad if ctx.needs_input_grad[5] else None
        return None, *_bag_gradients(ctx, grad_out, index, rows, weights, order, starts), None, None, grad_W_out, None


class _RunsEmbeddingBag(torch.autograd.Function):
    """The batching rule torch.vmap lacks for embedding_bag: without one, vmap calls it once per run
    and stacks the results (7-13x slower than one call, for 8 runs of the default experiment's
    tables, forward and backward). Here the runs' rows are
    concatenated, each run's indices shifted into its own block, and one embedding_bag computes every
    run's sums. vmap applies the rule to the unbatched tensors, so autograd records that one call
    (_EmbeddingBag's); this Function's own forward and backward never run."""

    @staticmethod
    def forward(index: Tensor, rows: Tensor, weights: Optional[Tensor]) -> Tensor:
        raise RuntimeError("only for torch.vmap: call grok.models.tables.embedding_bag")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):
        raise RuntimeError("only for torch.vmap: call grok.models.tables.embedding_bag")

    @staticmethod
    def vmap(info, in_dims, index: Tensor, rows: Tensor, weights: Optional[Tensor]):
        runs = info.batch_size
        stacked = lambda x, dim: x.expand(runs, *x.shape) if dim is None else x.movedim(dim, 0)
        index, rows = stacked(index, in_dims[0]), stacked(rows, in_dims[1])  # (K, N, J), (K, R, D)
        offsets = rows.shape[1] * torch.arange(runs, device=index.device)  # run k's rows start at k * R
        flat_index = (index + offsets.view(runs, 1, 1)).flatten(0, 1)  # (K*N, J)
        flat_weights = None if weights is None else stacked(weights, in_dims[2]).flatten(0, 1)
        out = _EmbeddingBag.apply(flat_index, rows.flatten(0, 1), flat_weights, None, None)
        return out.view(runs, -1, out.shape[-1]), 0
