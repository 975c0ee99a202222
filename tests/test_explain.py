"""Explaining V by features: hand-checked regressions, standard errors against an independent
computation, cross-validation, and what is dropped."""

from __future__ import annotations

import numpy as np
import pytest

from dbgpu.errors import DbgpuError
from dbgpu.explain import (design_matrix, explain_markdown, explain_potential, kfold, regress, ridge_fit,
                           standardise, summary_lines)


def _rows(X, names):
    return [dict(zip(names, map(float, r))) for r in X]


def test_features_that_determine_V_exactly_give_R2_one_and_the_right_coefficients():
    rng = np.random.default_rng(0)
    f1, f2, noise = rng.normal(size=40), rng.uniform(0, 5, size=40), rng.normal(size=40)
    V = 2.0 * f1 - 3.0 * f2 + 7.0
    doc = explain_potential([f"s{i}" for i in range(40)], V, _rows(np.c_[f1, f2, noise], ["f1", "f2", "noise"]))
    ols = doc["ols"]
    assert ols["r2"] == pytest.approx(1.0, abs=1e-12) and ols["r2_cv"] == pytest.approx(1.0, abs=1e-10)
    co = ols["coefficients"]
    assert co["f1"]["raw"] == pytest.approx(2.0, abs=1e-10) and co["f2"]["raw"] == pytest.approx(-3.0, abs=1e-10)
    # standardised coefficient = raw coefficient x population sd of the feature
    assert co["f1"]["coef"] == pytest.approx(2.0 * f1.std(), abs=1e-10)
    assert co["f2"]["coef"] == pytest.approx(-3.0 * f2.std(), abs=1e-10)
    assert abs(co["noise"]["coef"]) < 1e-10
    assert ols["intercept"] == pytest.approx(V.mean())          # features are centred
    assert doc["ridge"]["r2_cv"] > 0.999                         # the smallest penalty wins
    assert doc["leading"][:2] == ["f2", "f1"]                    # |-3 sd(f2)| > |2 sd(f1)|
    assert len(summary_lines(doc)) == 2                          # no "predicts nothing" note


def test_noise_features_get_coefficients_near_zero():
    rng = np.random.default_rng(1)
    n = 200
    f = rng.normal(size=n)
    noise = rng.normal(size=(n, 4))
    V = 1.5 * f + 0.3 * rng.normal(size=n)
    doc = regress(["f", "n1", "n2", "n3", "n4"], np.c_[f, noise], V)
    co = doc["ols"]["coefficients"]
    assert co["f"]["raw"] == pytest.approx(1.5, abs=4 * co["f"]["se"] / f.std())
    for k in ("n1", "n2", "n3", "n4"):
        assert abs(co[k]["coef"]) < 4 * co[k]["se"] and abs(co[k]["coef"]) < 0.1
    assert 0.9 < doc["ols"]["r2_cv"] < 1.0 and doc["leading"][0] == "f"


def test_ols_standard_errors_match_the_textbook_formula():
    """Independent: the classical (X'X)^-1 sigma^2 with an intercept column, raw units."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -2.0]
    V = X @ [0.5, -1.0, 2.0] + rng.normal(size=30)
    doc = regress(["a", "b", "c"], X, V)
    A = np.c_[np.ones(30), X]
    beta = np.linalg.solve(A.T @ A, A.T @ V)
    s2 = np.sum((V - A @ beta) ** 2) / (30 - 4)
    se = np.sqrt(np.diag(np.linalg.inv(A.T @ A)) * s2)
    sd = X.std(0)
    for j, k in enumerate("abc"):
        c = doc["ols"]["coefficients"][k]
        assert c["raw"] == pytest.approx(beta[j + 1], rel=1e-10)
        assert c["se"] == pytest.approx(se[j + 1] * sd[j], rel=1e-10)   # per sd of the feature
    assert doc["ols"]["dof"] == 26


def test_ridge_is_ols_at_zero_penalty_and_shrinks_with_it():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(25, 2))
    V = X @ [1.0, -2.0] + 0.1 * rng.normal(size=25)
    Z, _, _ = standardise(X)
    c0, b0 = ridge_fit(Z, V, 0.0)
    c1, b1 = ridge_fit(Z, V, 1e-9)
    np.testing.assert_allclose(b0, b1, rtol=1e-7)
    _, b_big = ridge_fit(Z, V, 1e4)
    assert np.all(np.abs(b_big) < 0.1 * np.abs(b0))
    # closed form: centred normal equations with alpha on the diagonal
    Zc = Z - Z.mean(0)
    np.testing.assert_allclose(ridge_fit(Z, V, 3.0)[1], np.linalg.solve(Zc.T @ Zc + 3 * np.eye(2), Zc.T @ (V - V.mean())))


def test_cross_validation_folds_are_seeded_and_partition_the_states():
    a, b = kfold(23, 5, seed=0), kfold(23, 5, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(23)) and len(a) == 5
    assert not all(np.array_equal(x, y) for x, y in zip(a, kfold(23, 5, seed=1)))


def test_pure_noise_has_no_cross_validated_skill():
    rng = np.random.default_rng(4)
    doc = regress(["n1", "n2", "n3"], rng.normal(size=(60, 3)), rng.normal(size=60))
    assert doc["ols"]["r2_cv"] < 0.05 and doc["ridge"]["r2_cv"] < 0.05
    assert doc["ols"]["r2"] > doc["ols"]["r2_cv"]          # in-sample R² is optimistic
    if doc["ridge"]["r2_cv"] <= 0:
        assert "better than the mean" in summary_lines(doc)[-1]


def test_constant_and_non_finite_features_are_dropped_and_listed():
    rows = [{"a": float(i), "const": 1.0, "bad": float("nan") if i == 2 else 1.0 * i} for i in range(6)]
    names, X, dropped = design_matrix(rows)
    assert names == ["a"] and X.shape == (6, 1)
    assert set(dropped) == {"const", "bad"}
    doc = explain_potential([str(i) for i in range(6)], [2.0 * i for i in range(6)], rows)
    assert doc["dropped"]["const"] == "the same for every state"
    md = explain_markdown(doc)
    assert "| a |" in md and "Dropped: " in md and "explain.png" in md
    assert "R²" in summary_lines(doc)[0]


def test_bad_inputs():
    with pytest.raises(DbgpuError, match="at least 4 states"):
        explain_potential(["a", "b", "c"], [0.0, 1.0, 2.0], [{"f": 0.0}, {"f": 1.0}, {"f": 3.0}])
    with pytest.raises(DbgpuError, match="no feature varies"):
        explain_potential(list("abcd"), [0.0, 1.0, 2.0, 3.0], [{"f": 1.0}] * 4)
    with pytest.raises(DbgpuError, match="features"):
        design_matrix([{"f": 1.0}, {"g": 1.0}])
