"""The `expr` task's operation: a formula in x, y and p typed by the user, parsed safely.

The text is parsed with Python's `ast` and walked node by node; only the names x, y, p, integer
literals, unary + and -, the binary operators + - * // % ** and parentheses are accepted, anything
else is a ConfigError naming task.expr. The text is never handed to eval or compile: the walk below
applies each operator itself, to every (x, y) pair at once, in exact Python integers (numpy object
arrays), so nothing overflows. A value that would need more than MAX_BITS bits (`x**100000`) is
refused before it is computed, and pairs where the formula divides by zero (// or % by 0) are
marked undefined, to be left out of the data set as `divide` leaves out b = 0.
"""

import ast
import operator

import numpy as np

from grok.errors import ConfigError

MAX_BITS = 4096  # no intermediate value may be larger than 2**MAX_BITS in magnitude
ALLOWED = "use x, y, p, integers, + - * // % ** and parentheses"
BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
NAMES = ("x", "y", "p")


def _refuse(text: str, reason: str) -> ConfigError:
    return ConfigError(f"task.expr={text!r}: {reason}")


def _check(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        _check(node.left, text)
        _check(node.right, text)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        _check(node.operand, text)
    elif not (
        isinstance(node, ast.Name) and node.id in NAMES or isinstance(node, ast.Constant) and type(node.value) is int
    ):
        raise _refuse(text, f"`{ast.unparse(node)}` is not allowed; {ALLOWED}")


def parse_expr(text: str) -> ast.expr:
    """The formula's syntax tree, once every node has passed the whitelist."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
        _check(tree, text)
    except SyntaxError as error:
        raise _refuse(text, f"not a valid expression ({error.msg}); {ALLOWED}") from None
    except (RecursionError, MemoryError):  # the parser reports deep nesting as either
        raise _refuse(text, "nested too deeply") from None
    return tree


def _bits(values: np.ndarray) -> int:
    return max(abs(int(v)) for v in values).bit_length()


def evaluate_expr(text: str, x: np.ndarray, y: np.ndarray, p: int):
    """(value mod p, defined) for each pair: int64 arrays; `defined` is False where it divides by 0."""
    defined = np.ones(len(x), dtype=bool)
    names = {"x": x.astype(object), "y": y.astype(object), "p": np.full(len(x), p, dtype=object)}

    def value(node: ast.expr) -> np.ndarray:
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.Constant):
            return np.full(len(x), node.value, dtype=object)
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](value(node.operand))
        left, right = value(node.left), value(node.right)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)):
            zero = (right == 0).astype(bool)
            defined[zero] = False
            right = np.where(zero, 1, right)  # any nonzero divisor: these pairs are dropped
        if isinstance(node.op, ast.Pow):
            if (right < 0).any():
                raise _refuse(text, f"`{ast.unparse(node)}` has a negative exponent; exponents must be >= 0")
            if len(x) and max(_bits(left), 1) * max(right) > MAX_BITS:
                raise _refuse(text, f"`{ast.unparse(node)}` grows past 2**{MAX_BITS}; reduce the base with % p")
        result = BINARY[type(node.op)](left, right)
        if len(x) and _bits(result) > MAX_BITS:
            raise _refuse(text, f"`{ast.unparse(node)}` grows past 2**{MAX_BITS}; reduce it with % p")
        return result

    labels = value(parse_expr(text)) % p
    return labels.astype(np.int64), defined
