"""The formula task: Colebrook-White data, least-squares scores, parsing, prompt, seeds, features."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from dbgpu.errors import DbgpuError
from dbgpu.tasks import get_task, read_template
from dbgpu.tasks.expr import parse_expression
from dbgpu.tasks.formula import (INVALID, ROUGHNESS, SEEDS, Table, colebrook, fit_expression, friction_table,
                                 score_from_error)


def test_colebrook_solves_the_implicit_law():
    re = np.array([4e3, 1e5, 1e7])
    lam = colebrook(re, ROUGHNESS)
    for r, l in zip(re, lam):                # independent: bracketing root of the equation in lambda
        g = lambda t: 1 / math.sqrt(t) + 2 * math.log10(ROUGHNESS / 3.7 + 2.51 / (r * math.sqrt(t)))  # noqa: E731
        assert l == pytest.approx(brentq(g, 1e-4, 1.0, xtol=1e-15), rel=1e-12)
    # golden value (Moody chart): Re = 1e5, k/D = 1e-4 gives lambda = 0.0185
    assert colebrook(np.array([1e5]), 1e-4)[0] == pytest.approx(0.0185, abs=2e-4)
    # fully rough limit: lambda -> (2 log10(3.7 D/k))^-2 as Re grows
    assert colebrook(np.array([1e12]), ROUGHNESS)[0] == pytest.approx((2 * math.log10(3.7 / ROUGHNESS)) ** -2,
                                                                      rel=1e-6)


def test_the_table_is_seeded_small_and_scattered_about_the_law():
    a, b = friction_table(), friction_table()
    np.testing.assert_array_equal(a.y, b.y)
    assert len(a.x) == 30 and a.x[0] == pytest.approx(math.log10(4e3)) and a.x[-1] == pytest.approx(7.0)
    assert not np.array_equal(friction_table(seed=1).y, a.y)
    assert 0.003 < a.e_noise < 0.02                             # about 1% scatter
    exact = friction_table(scatter=0.0)
    assert exact.e_noise == 0.0 and np.all(np.diff(exact.y) < 0)   # friction falls with Re


def test_score_mapping_golden_values():
    kw = dict(e_const=0.1, e_noise=0.001)
    # values at the clip bounds are the bounds themselves (np.clip returns them exactly)
    assert score_from_error(0.1, **kw) == 0.0                     # as good as a constant: log(1) = 0
    assert score_from_error(0.5, **kw) == 0.0                     # worse: clipped
    assert score_from_error(0.001, **kw) == 100.0                 # as good as the law itself
    assert score_from_error(1e-5, **kw) == 100.0                  # better than the noise: clipped
    assert score_from_error(0.01, **kw) == pytest.approx(50.0)    # geometric midpoint
    assert score_from_error(float("inf"), **kw) == 0.0
    assert score_from_error(float("nan"), **kw) == 0.0


def test_least_squares_recovers_known_parameters():
    x = np.linspace(3.6, 7, 30)
    y = 0.02 + 0.3 * np.exp(-0.8 * x)
    table = Table(x=x, y=y, exact=y)
    p, e = fit_expression(parse_expression("param1 + param2*exp(-param3*x)"), table)
    assert e < 1e-8
    np.testing.assert_allclose(p, [0.02, 0.3, 0.8], rtol=1e-5)


def test_fitting_survives_overflow_and_nan():
    t = friction_table()
    for text in ("exp(exp(param1*x))", "log(param1 - x)", "sqrt(-x)*param1", "param1/(x - x)", "x**param1**2"):
        p, e = fit_expression(parse_expression(text), t)
        assert np.isfinite(p).all() and (e == float("inf") or e > 0)


def test_parse_states_invalid_and_empty():
    task = get_task("formula")
    assert task.parse(" param3*x + param1\n") == "param1 + param2*x"
    assert task.parse("`y = param1*x`.") == "param1*x"               # wrappers removed
    assert task.parse("The formula is param1*x") is None              # prose: rejected
    assert task.parse("f(x) = x + 1 where") is None                   # not an expression: rejected
    assert task.parse("1.5*x") == INVALID                             # a number outside the whitelist
    assert task.parse("y") == INVALID and task.parse("x.real") == INVALID  # refused by the whitelist
    assert task.parse("  \n") is None
    assert task.valid("param1 + param2*x") and not task.valid(INVALID)
    assert not task.valid("param2*x + param1")                        # not canonical: not a state
    assert task.check_state("x*param2 + param1") == "param1 + param2*x"
    assert task.check_state("INVALID") == INVALID
    with pytest.raises(DbgpuError, match="not an allowed formula"):
        task.check_state("import os")


def test_prompt_render_and_templates():
    task = get_task("formula")
    text = task.messages("param1 + param2*x")[0]["content"]
    assert "param1 + param2*x" in text and f"score {task.score('param1 + param2*x'):.1f}" in text
    assert "friction factor" in text and "log10 of the Reynolds number" in text
    assert "formula only" in text
    assert task.answer_prefix == "y =" and task.render("param1*x") == " param1*x"
    assert get_task("formula", answer_prefix="").render("param1*x") == "param1*x"
    terse = get_task("formula", template=read_template("terse", task="formula"))
    assert "param1*x" in terse.messages("param1*x")[0]["content"]
    assert set(task.templates) == {"default", "terse"}


def test_seed_states_range_from_trivial_to_good_fits():
    task = get_task("formula")
    seeds = task.seed_states(len(SEEDS))
    assert len(seeds) == len(set(seeds)) == len(SEEDS) >= 24
    assert all(task.valid(s) for s in seeds)
    scores = [task.score(s) for s in seeds]
    # a constant scores 0 by construction: its least-squares error equals the table's
    # constant-fit error up to the optimiser's rounding (relative ~1e-13), which moves the
    # score by 100 * 1e-13 / log(e_const / e_noise) ~ 1e-11; 1e-9 leaves room for that
    assert scores[seeds.index("param1")] == pytest.approx(0.0, abs=1e-9)
    assert min(scores) == pytest.approx(0.0, abs=1e-9) and max(scores) >= 90.0
    assert task.score("param1 + param2*x + param3*x**2 + param4/x") > task.score("param1 + param2*x")
    with pytest.raises(DbgpuError, match="seed states"):
        task.seed_states(len(SEEDS) + 1)


def test_features_of_one_expression_by_hand():
    task = get_task("formula")
    g = "param1 + param2*exp(-param3*x)"
    f = task.features(g)
    assert f["length"] == len(g) == 30
    assert f["parameters"] == 3 and f["parentheses"] == 1 and f["functions"] == 1
    assert f["depth"] == 6          # sum > prod > exp > sum(-) > prod > param
    assert f["uses_exp"] == 1.0 and f["uses_sin"] == 0.0
    assert f["score"] == task.score(g) > 50
