"""Formula expressions: the whitelist parser refuses hostile text quickly and executes nothing;
the canonical form is unique and stable; the numpy compilation computes the expression."""

from __future__ import annotations

import builtins
import math
import os
import time

import numpy as np
import pytest

from dbgpu.tasks.expr import (MAX_CHARS, ExprError, canonical, compile_tree, depth, functions, juxtaposed,
                              parameters, parse_expression)
from dbgpu.tasks.formula import INVALID, SEEDS, Formula

HOSTILE = {
    "import": "__import__('os').system('touch PWNED')",
    "open": "open('PWNED', 'w').write('x')",
    "attribute": "x.__class__.__bases__[0].__subclasses__()",
    "attribute on a function": "sin.__globals__",
    "lambda": "(lambda: __import__('os').system('touch PWNED'))()",
    "power tower": "9**9**9",
    "power tower of twos": "2**2**2**2**2**2**2**2**99999999",
    "deep nesting": "(" * 10_000 + "x" + ")" * 10_000,
    "deep unary": "-" * 10_000 + "x",
    "deep calls": "sin(" * 5_000 + "x" + ")" * 5_000,
    "deep unary within the length limit": "-" * 250 + "x",
    "deep brackets within the length limit": "(" * 100 + "x" + ")" * 100,
    "many nodes within the length limit": "+".join(["x"] * 140),
    "megabyte": "x+" * 500_000 + "x",
    "list comprehension": "[x for x in range(10**9)]",
    "generator": "sum(x for x in range(10**9))",
    "subscript": "x[0]",
    "f-string": "f'{x}'",
    "string": "'x'",
    "bytes": "b'x'",
    "unknown name": "y",
    "unknown function": "exec('x')",
    "eval": "eval('1')",
    "keyword argument": "sin(x=1)",
    "two arguments": "sin(x, x)",
    "starred": "sin(*x)",
    "no argument": "sin()",
    "bare function": "sin",
    "called variable": "x(1)",
    "called constant": "pi(2)",
    "walrus": "(y := 1)",
    "conditional": "1 if x else 2",
    "comparison": "x < 1",
    "boolean": "x and 1",
    "xor": "x ^ 2",
    "floor division": "x // 2",
    "modulo": "x % 2",
    "matmul": "x @ x",
    "tuple": "(x, 1)",
    "dict": "{1: x}",
    "set": "{x}",
    "None": "None",
    "True": "True*x",
    "complex": "1j*x",
    "other number": "3*x",
    "decimal": "0.5*x",
    "await": "await x",
    "yield": "(yield x)",
    "too many parameters": " + ".join(f"param{k}" for k in range(1, 12)),
    "param0": "param0*x",
}
# Not Python expressions at all: rejected like a non-alphabetic word (parse -> None).
NOT_EXPRESSIONS = {
    "megabyte of prose": "word " * 200_000,
    "statement": "import os",
    "assignment": "x = 1",
    "prose": "The new formula is param1*x",
    "formula then prose": "param1*x\n\nThis fits better because",
    "code fence": "```python\nimport os\nos.system('x')\n```",
    "unbalanced": "sin(x",
    "null byte": "x\0",
    "ellipsis": "...",                    # a final period is removed first: ".." is no expression
}


@pytest.mark.parametrize("name", list(HOSTILE) + list(NOT_EXPRESSIONS))
def test_hostile_answers_are_the_invalid_state_quickly_with_nothing_executed(name, monkeypatch, tmp_path):
    """A Python expression the whitelist refuses (or one over the limits) is INVALID; text
    that is no expression at all is rejected (None); either way fast, nothing executed."""
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "system", lambda *a: calls.append(("system", a)))
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append(("eval", a)))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: calls.append(("exec", a)))
    text = HOSTILE.get(name, NOT_EXPRESSIONS.get(name))
    task = Formula()
    t0 = time.perf_counter()
    with pytest.raises(ExprError):
        parse_expression(text)
    assert task.parse(text) == (INVALID if name in HOSTILE else None)
    assert time.perf_counter() - t0 < 1.0, "refusing a hostile answer must be quick"
    assert calls == [] and not (tmp_path / "PWNED").exists()


def test_text_length_is_checked_before_parsing(monkeypatch):
    import ast

    def boom(*a, **k):
        raise AssertionError("ast.parse must not see an over-long text")

    monkeypatch.setattr(ast, "parse", boom)
    with pytest.raises(ExprError, match="longer than"):
        parse_expression("x+" * MAX_CHARS)
    with pytest.raises(ExprError, match="nested"):
        parse_expression("(" * 40 + "x" + ")" * 40)


@pytest.mark.parametrize("text,expected", [
    ("param3*x + param1", "param1 + param2*x"),           # terms sorted, parameters renumbered
    ("x*param7 + param2", "param1 + param2*x"),
    ("param2*exp(-param1*x) + param3", "param1 + param2*exp(-param3*x)"),
    ("x - (param2 - param1)", "param1 - param2 + x"),     # subtraction flattened into signs
    ("param1/(x/param2)", "param1*param2/x"),             # division into numerator/denominator
    ("-x*param1", "-param1*x"),                           # sign pulled out of the product
    ("-(-(x))", "x"), ("+x", "x"), ("x*1", "x"), ("1.0*x", "x"), ("x**1", "x"),
    ("x**-1", "x**(-1)"), ("-(x**2)", "-x**2"), ("(-x)**2", "(-x)**2"), ("1/x", "1/x"),
    ("sin(x)**2 + cos(x)**2", "cos(x)**2 + sin(x)**2"),
    ("1/(param1+param2*x)**2", "1/(param1 + param2*x)**2"),
    ("2.0*pi*x", "2*pi*x"), ("x*x", "x*x"),               # no folding, no new constants
    ("  param1  ", "param1"),
])
def test_canonical_form(text, expected):
    assert canonical(text) == expected


def test_canonical_form_is_idempotent_and_identifies_rewritings():
    for s in Formula().seed_states(len(SEEDS)):
        assert canonical(s) == s
    same = ["param1 + param2*x", "x*param2 + param1", "param9 + x*param4", "param2*x + param1",
            "(param1) + (x)*(param2)", "param1 - (-param2*x)"]
    assert {canonical(s) for s in same} == {"param1 + param2*x"}


def test_compiled_expression_matches_a_hand_computation():
    x = np.array([0.5, 1.0, 2.0])
    p = np.array([1.5, -0.25, 3.0])
    tree = parse_expression("param1 + param2*exp(-param3*x) - sqrt(x)/(2*pi) + abs(log(x))**2 + tanh(x)")
    # canonical renumbering keeps this order: param1, param2, param3 appear in that order
    want = [1.5 - 0.25 * math.exp(-3 * xi) - math.sqrt(xi) / (2 * math.pi) + abs(math.log(xi)) ** 2
            + math.tanh(xi) for xi in x]
    np.testing.assert_allclose(compile_tree(tree)(x, p), want, rtol=1e-12)


def test_overflow_and_domain_errors_are_values_not_exceptions():
    x = np.array([1.0, 2.0])
    with np.errstate(all="ignore"):
        assert np.all(np.isinf(compile_tree(parse_expression("2**2**2**2**2*x"))(x, np.zeros(0))))
        assert np.all(np.isnan(compile_tree(parse_expression("log(-x)"))(x, np.zeros(0))))
        assert np.all(np.isinf(compile_tree(parse_expression("exp(exp(exp(exp(x))))"))(x * 10, np.zeros(0))))


def test_structure_helpers():
    tree = parse_expression("param1 + param2*sin(exp(-param3*x))")
    assert parameters(tree) == [1, 2, 3]
    assert functions(tree) == ["sin", "exp"]
    # sum > prod > sin > exp > sum(-) > prod > param  (7 levels)
    assert depth(tree) == 7


@pytest.mark.parametrize("text,side_by_side", [
    ("The formula", True), ("x) where", True), ("2 x", True), ("param1*x\n\nThis", True),
    ("1e-5 * false_contrast * Reynolds number", True), ("x²", True),
    ("x if y else 2", False), ("x not in y", False), ("x is not y", False), ("lambda x: x", False),
    ("0x1f", False), ("x 'a b'", False), ("x # a b", False), ("sin (x)", False), ("(x)(y)", False),
    ("x i", False),                        # "i" may still become "if", "in", "is"
    ("x_1 y", False),                      # "y" may still become "yield"
])
def test_side_by_side_operands(text, side_by_side):
    assert juxtaposed(text) is side_by_side


ANSWERS = [
    "param1 + param2*x", "x if y else 2", "x in y", "x is not None", "lambda x: x", "The formula is x",
    "param1*x\n\nThis formula fits", "f(x) = sin(x)\nwhere x is", "`param1*x`.", "y = param1 + x",
    "x) (y", "1e-5 * false_contrast", "sin(x) # the answer is x", "x 'quoted text' y", "(x\n y)",
    "param1*exp(-param2*x) + param3", "3 apples", "abs(x) if x else yield_", "x i", "f(x) = x y",
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_hopeless_prefixes_never_parse_whatever_follows(answer):
    """Soundness of the early stop: every prefix flagged hopeless leads to an answer that
    is rejected (parse None) however it ends, here with each continuation tried."""
    task = Formula()
    for cut in range(1, len(answer) + 1):
        if task.hopeless(answer[:cut]):
            for tail in ("", " + x", ")", " if x else 1", "\n", "."):
                assert task.parse(answer[:cut] + tail) is None, (answer[:cut], tail)
            assert task.parse(answer) is None
    assert task.hopeless("param1 + param2*x") is False and task.hopeless("The formula") is True
