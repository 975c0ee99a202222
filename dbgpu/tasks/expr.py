"""Fitting-function expressions: a whitelist parser on `ast`, a canonical form, numpy evaluation.

Model text is never evaluated. `parse_expression(text)` checks the text's length and
bracket nesting, parses it with `ast.parse(mode="eval")` (which only builds a tree), walks
the tree iteratively checking every node against a whitelist, and converts it into a
small tree of tuples; `canonical(tree)` prints that tree in one normal form; `compile_tree`
turns it into numpy operations. Allowed:

    the input variable x; free parameters param1 ... param99 (at most 9 distinct);
    the constants 1, 2 (int or float literals) and pi;
    + - * / ** and unary minus/plus;
    sin cos tan exp log sqrt abs tanh, each called with one positional argument.

Anything else (other numbers, other names, attribute access, subscripts, lambdas,
comprehensions, strings, f-strings, keywords, comparisons, `^`, `//`, `%`) is an
`ExprError`. Limits: 300 characters (checked before parsing), bracket nesting 16
(checked before parsing), 80 tree nodes and depth 16 (checked before converting).

Canonical form: sums and products are flattened and their terms sorted, subtraction and
division become signs and denominators (`a - (b - c)` -> `a - b + c`, `a/(b/c)` ->
`a*c/b`), unary minus is pulled out of products, factors 1 are dropped, `1.0` -> `1`,
and parameters are renumbered in their order of appearance (`param3*x + param1` ->
`param1 + param2*x`). No arithmetic is done on constants (no folding): `x*x` stays
`x*x`, so canonicalisation creates no number the whitelist would reject and costs
O(nodes log nodes).

Internal tree (tuples, hashable):

    ("num", 1 | 2)  ("pi",)  ("x",)  ("param", k)  ("fn", name, arg)  ("pow", base, exponent)
    ("sum", ((+1 | -1, term), ...))  ("prod", (numerator factors), (denominator factors))
"""

from __future__ import annotations

import ast
import keyword
import re

import numpy as np

MAX_CHARS = 300
MAX_DEPTH = 16
MAX_NODES = 80
MAX_PARAMS = 9
VARIABLE = "x"
FUNCTIONS = {"sin": np.sin, "cos": np.cos, "tan": np.tan, "exp": np.exp, "log": np.log,
             "sqrt": np.sqrt, "abs": np.abs, "tanh": np.tanh}
_PARAM = re.compile(r"param([1-9][0-9]?)")
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)


class ExprError(ValueError):
    """Why a text is not an allowed expression (one line). `syntax` is True when the text
    is not a Python expression at all (rather than one the whitelist refuses)."""

    def __init__(self, message: str, *, syntax: bool = False):
        super().__init__(message)
        self.syntax = syntax


# --------------------------------------------------------------------------- not an expression

_KEYWORDS = set(keyword.kwlist) | set(keyword.softkwlist)
_LEX = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|[0-9][0-9A-Za-z_.]*|[)\]}]|.", re.S)


def _atom(tok: str) -> bool:
    """A token that ends an operand: a name that is no keyword, a number, a closing bracket."""
    return (tok[0].isalpha() or tok[0] == "_") and tok not in _KEYWORDS or tok[0].isdigit() or tok in ")]}"


def juxtaposed(text: str, *, partial: bool = True) -> bool:
    """Whether `text` has two operands side by side ("The formula", "x) where", "2 x"): then
    no text that starts with it is a Python expression. Sound for prefixes (partial): a
    last name that could still grow into a keyword (`i` -> `if`) is not counted, and the
    scan stops at a quote or `#` (strings and comments are not analysed). O(len(text))."""
    toks = [(m.group(), m.end()) for m in _LEX.finditer(text)]
    prev = None
    for tok, end in toks:
        if tok[0] in "'\"#":
            return False
        if tok.isspace():
            continue
        second = (tok[0].isalpha() or tok[0] == "_" or tok[0].isdigit()) and tok not in _KEYWORDS
        if prev is not None and _atom(prev) and second:
            growing = partial and end == len(text) and not tok[0].isdigit()
            if not (growing and any(k.startswith(tok) for k in _KEYWORDS)):
                return True
        prev = tok
    return False


# --------------------------------------------------------------------------- text -> checked ast


def _bracket_depth(text: str) -> int:
    depth = top = 0
    for c in text:
        if c in "([{":
            depth += 1
            top = max(top, depth)
        elif c in ")]}":
            depth -= 1
    return top


def _parse_ast(text: str) -> ast.expr:
    """`ast.parse` behind the cheap limits; every parser failure is an ExprError."""
    if len(text) > MAX_CHARS:
        raise ExprError(f"longer than {MAX_CHARS} characters")
    if _bracket_depth(text) > MAX_DEPTH:
        raise ExprError(f"brackets nested deeper than {MAX_DEPTH}")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:               # IndentationError included
        raise ExprError(f"not an expression ({type(e).__name__})", syntax=True) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        raise ExprError(f"cannot be parsed within limits ({type(e).__name__})") from None


def _check_node(node: ast.AST) -> list[ast.AST]:
    """Check one node against the whitelist; its children to check next."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return [node.operand]
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ExprError("call of something that is not an allowed function")
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise ExprError(f"{node.func.id} takes exactly one argument")
        return [node.args[0]]
    if isinstance(node, ast.Name):
        if node.id != VARIABLE and node.id != "pi" and not _PARAM.fullmatch(node.id):
            raise ExprError(f"unknown name {node.id[:20]!r}")
        return []
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (1, 2):
            raise ExprError("a number other than the constants 1 and 2")
        return []
    raise ExprError(f"{type(node).__name__} is not allowed")


def check_ast(root: ast.expr) -> None:
    """Whitelist, node count and depth, checked iteratively (no recursion on model input)."""
    stack, nodes = [(root, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ExprError(f"more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise ExprError(f"nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in _check_node(node))


# --------------------------------------------------------------------------- checked ast -> tree


def _convert(node: ast.expr) -> tuple:
    """A checked ast (depth <= MAX_DEPTH, so recursion is bounded) as a normalised tree."""
    if isinstance(node, ast.Constant):
        return ("num", int(node.value))
    if isinstance(node, ast.Name):
        if node.id == VARIABLE:
            return ("x",)
        if node.id == "pi":
            return ("pi",)
        return ("param", int(node.id[5:]))
    if isinstance(node, ast.Call):
        return ("fn", node.func.id, _convert(node.args[0]))
    if isinstance(node, ast.UnaryOp):
        a = _convert(node.operand)
        return make_sum([(-1, a)]) if isinstance(node.op, ast.USub) else a
    a, b = _convert(node.left), _convert(node.right)
    op = node.op
    if isinstance(op, ast.Add):
        return make_sum([(1, a), (1, b)])
    if isinstance(op, ast.Sub):
        return make_sum([(1, a), (-1, b)])
    if isinstance(op, ast.Mult):
        return make_prod([a, b], [])
    if isinstance(op, ast.Div):
        return make_prod([a], [b])
    return make_pow(a, b)


_RANK = {"num": 0, "pi": 1, "param": 2, "x": 3, "pow": 4, "fn": 5, "prod": 6, "sum": 7}


def _key(t: tuple) -> tuple[int, str, str]:
    """Sort key: the kind (constants, parameters, x, powers, functions, products), then the
    text with parameters anonymised, so that renumbering the parameters does not reorder
    terms, then the full text for ties."""
    text = to_text(t)
    return (_RANK[t[0]], _PARAM.sub("p", text), text)


def _negated(t: tuple) -> tuple | None:
    """The inner term if t is a single negated term (-a), else None."""
    if t[0] == "sum" and len(t[1]) == 1 and t[1][0][0] == -1:
        return t[1][0][1]
    return None


def make_sum(terms: list[tuple[int, tuple]]) -> tuple:
    flat = []
    for sign, t in terms:
        if t[0] == "sum":
            flat += [(sign * s, u) for s, u in t[1]]
        else:
            flat.append((sign, t))
    if len(flat) == 1 and flat[0][0] == 1:
        return flat[0][1]
    return ("sum", tuple(sorted(flat, key=lambda st: (_key(st[1]), -st[0]))))


def make_prod(num: list[tuple], den: list[tuple]) -> tuple:
    sign, n_out, d_out = 1, [], []
    for factors, out, flip in ((num, n_out, d_out), (den, d_out, n_out)):
        for f in factors:
            inner = _negated(f)
            if inner is not None:
                sign, f = -sign, inner
            if f[0] == "prod":
                out += f[1]
                flip += f[2]
            else:
                out.append(f)
    d_out = [f for f in d_out if f != ("num", 1)]
    n_out = [f for f in n_out if f != ("num", 1)] or [("num", 1)]
    if len(n_out) == 1 and not d_out:
        core = n_out[0]
    else:
        core = ("prod", tuple(sorted(n_out, key=_key)), tuple(sorted(d_out, key=_key)))
    return core if sign == 1 else make_sum([(-1, core)])


def make_pow(base: tuple, exponent: tuple) -> tuple:
    return base if exponent == ("num", 1) else ("pow", base, exponent)


# --------------------------------------------------------------------------- tree -> text


_PREC = {"sum": 1, "prod": 2, "pow": 4}


def _prec(t: tuple) -> int:
    return _PREC.get(t[0], 5)


def _wrap(t: tuple, below: int) -> str:
    s = to_text(t)
    return f"({s})" if _prec(t) < below else s


def to_text(t: tuple) -> str:
    """The tree as an expression text that parses back to the same tree."""
    kind = t[0]
    if kind == "num":
        return str(t[1])
    if kind in ("x", "pi"):
        return VARIABLE if kind == "x" else "pi"
    if kind == "param":
        return f"param{t[1]}"
    if kind == "fn":
        return f"{t[1]}({to_text(t[2])})"
    if kind == "pow":
        return f"{_wrap(t[1], 5)}**{_wrap(t[2], 4)}"
    if kind == "prod":
        text = "*".join(_wrap(f, 2) for f in t[1])
        return text + "".join("/" + _wrap(f, 3) for f in t[2])
    parts = []
    for i, (sign, term) in enumerate(t[1]):
        s = _wrap(term, 2)
        parts.append(("-" if sign < 0 else "") + s if i == 0 else (" - " if sign < 0 else " + ") + s)
    return "".join(parts)


def _rename(t: tuple, mapping: dict[int, int]) -> tuple:
    kind = t[0]
    if kind == "param":
        return ("param", mapping[t[1]])
    if kind == "fn":
        return ("fn", t[1], _rename(t[2], mapping))
    if kind == "pow":
        return make_pow(_rename(t[1], mapping), _rename(t[2], mapping))
    if kind == "prod":
        return make_prod([_rename(f, mapping) for f in t[1]], [_rename(f, mapping) for f in t[2]])
    if kind == "sum":
        return make_sum([(s, _rename(u, mapping)) for s, u in t[1]])
    return t


def parameters(t: tuple) -> list[int]:
    """Parameter numbers in order of first appearance in the canonical text."""
    return list(dict.fromkeys(int(k) for k in _PARAM.findall(to_text(t))))


def renumber(t: tuple) -> tuple:
    """Parameters renamed param1..paramK in order of appearance (to a fixed point; the
    anonymised sort key makes one pass enough in practice, at most 4 are made)."""
    for _ in range(4):
        order = parameters(t)
        if order == list(range(1, len(order) + 1)):
            break
        t = _rename(t, {k: i + 1 for i, k in enumerate(order)})
    return t


def parse_expression(text: str) -> tuple:
    """The canonical tree of an expression text; ExprError if it is not allowed.

    Time and memory are bounded by MAX_CHARS whatever the input: a longer text is
    refused before anything else is done with it.
    """
    if not isinstance(text, str):
        raise ExprError("not a text")
    root = _parse_ast(text)
    check_ast(root)
    tree = _convert(root)
    if len(parameters(tree)) > MAX_PARAMS:
        raise ExprError(f"more than {MAX_PARAMS} parameters")
    return renumber(tree)


def canonical(text: str) -> str:
    return to_text(parse_expression(text))


# --------------------------------------------------------------------------- features


def depth(t: tuple) -> int:
    kind = t[0]
    if kind == "fn":
        return 1 + depth(t[2])
    if kind == "pow":
        return 1 + max(depth(t[1]), depth(t[2]))
    if kind == "prod":
        return 1 + max(depth(f) for f in t[1] + t[2])
    if kind == "sum":
        return 1 + max(depth(u) for _, u in t[1])
    return 1


def functions(t: tuple) -> list[str]:
    """Function names called, with repetition, in tree order."""
    kind = t[0]
    if kind == "fn":
        return [t[1]] + functions(t[2])
    if kind == "pow":
        return functions(t[1]) + functions(t[2])
    if kind == "prod":
        return [n for f in t[1] + t[2] for n in functions(f)]
    if kind == "sum":
        return [n for _, u in t[1] for n in functions(u)]
    return []


# --------------------------------------------------------------------------- tree -> numpy


def compile_tree(t: tuple):
    """f(x, p) -> values: numpy float64 operations for the tree (x an array, p the
    parameter vector, param k = p[k - 1]). Overflow and domain errors give inf/nan
    (call it under np.errstate(all="ignore")); nothing is evaluated from text."""
    kind = t[0]
    if kind == "num":
        c = np.float64(t[1])
        return lambda x, p: c
    if kind == "pi":
        return lambda x, p: np.float64(np.pi)
    if kind == "x":
        return lambda x, p: x
    if kind == "param":
        i = t[1] - 1
        return lambda x, p: p[i]
    if kind == "fn":
        fn, arg = FUNCTIONS[t[1]], compile_tree(t[2])
        return lambda x, p: fn(arg(x, p))
    if kind == "pow":
        a, b = compile_tree(t[1]), compile_tree(t[2])
        return lambda x, p: np.power(np.float64(a(x, p)), b(x, p))
    if kind == "prod":
        num, den = [compile_tree(f) for f in t[1]], [compile_tree(f) for f in t[2]]

        def prod(x, p):
            v = np.float64(1.0)
            for f in num:
                v = v * f(x, p)
            for f in den:
                v = v / f(x, p)
            return v
        return prod
    terms = [(float(s), compile_tree(u)) for s, u in t[1]]

    def total(x, p):
        v = np.float64(0.0)
        for s, f in terms:
            v = v + s * f(x, p)
        return v
    return total
