"""Explaining a fitted potential by numeric features of the states (pure numpy).

The paper explained its formula agent's potential by a hand-built function of expression
features (length, parameters, nesting, parentheses, functions used). Here V is regressed
on whatever features a task defines (`task.features(g)`):

- features are standardised (mean 0, sd 1; constant or non-finite ones are dropped and
  listed), so each coefficient is the change of V per standard deviation of its feature;
- ordinary least squares: coefficients, standard errors sigma^2 (Z'Z)^+ with
  sigma^2 = RSS / (n - rank - 1), in-sample R^2;
- ridge (penalty alpha |b|^2, intercept free): alpha chosen from a grid by K-fold
  cross-validated R^2, standard errors from the sandwich sigma^2 A^-1 Z'Z A^-1 with
  A = Z'Z + alpha I and sigma^2 = RSS / (n - trace(H) - 1);
- cross-validated R^2 of both: seeded K-fold, out-of-fold predictions with the
  standardisation refitted on each training fold, R^2 = 1 - SS(out-of-fold) / SS(total)
  (it can be negative: worse than predicting the mean). Ridge's alpha is chosen on the
  same folds, so its cross-validated R^2 is slightly optimistic.

Cost: O(K * n_alpha * n p^2) for n states and p features; memory O(n p).
"""

from __future__ import annotations

import math

import numpy as np

from dbgpu.console import fmt
from dbgpu.errors import DbgpuError
from dbgpu.io import json_safe

MIN_STATES = 4
ALPHAS = 10.0 ** np.linspace(-3, 3, 25)      # times n: Z'Z has n on its diagonal


def design_matrix(rows: list[dict[str, float]]) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(kept feature names, X (n, p) float64, {dropped name: why}) from one dict per state."""
    names = list(rows[0])
    for i, r in enumerate(rows):
        if list(r) != names:
            raise DbgpuError(f"state {i} has features {sorted(r)}, expected {sorted(names)}")
    X = np.array([[float(r[k]) for k in names] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
    dropped, keep = {}, []
    for j, name in enumerate(names):
        col = X[:, j]
        if not np.all(np.isfinite(col)):
            dropped[name] = "not finite for every state"
        elif np.ptp(col) == 0:
            dropped[name] = "the same for every state"
        else:
            keep.append(j)
    return [names[j] for j in keep], X[:, keep], dropped


def standardise(X: np.ndarray, *, mean=None, sd=None):
    """(Z, mean, sd): columns of X at mean 0 and sd 1 (or with the given mean and sd); a
    constant column (sd 0, e.g. on one cross-validation fold) is only centred."""
    mean = X.mean(0) if mean is None else mean
    sd = X.std(0) if sd is None else sd
    sd = np.where(sd > 0, sd, 1.0)
    return (X - mean) / sd, mean, sd


def ridge_fit(Z: np.ndarray, v: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """(intercept, coefficients) minimising |v - c - Z b|^2 + alpha |b|^2 (alpha = 0: OLS,
    the minimum-norm solution when Z is rank deficient)."""
    c = v.mean()
    if alpha == 0:
        b = np.linalg.lstsq(Z - Z.mean(0), v - c, rcond=None)[0]
    else:
        Zc = Z - Z.mean(0)
        b = np.linalg.solve(Zc.T @ Zc + alpha * np.eye(Z.shape[1]), Zc.T @ (v - c))
    return float(c - Z.mean(0) @ b), b


def standard_errors(Z: np.ndarray, v: np.ndarray, b: np.ndarray, c: float, alpha: float) -> tuple[np.ndarray, float]:
    """(standard errors of b, residual dof) for the fit above; NaN where dof <= 0."""
    n = len(v)
    Zc = Z - Z.mean(0)
    G = Zc.T @ Zc
    A_inv = np.linalg.pinv(G + alpha * np.eye(len(b)))
    if alpha == 0:
        dof_model = np.linalg.matrix_rank(Zc)
        cov = A_inv
    else:
        dof_model = float(np.trace(Zc @ A_inv @ Zc.T))
        cov = A_inv @ G @ A_inv
    dof = n - dof_model - 1
    rss = float(np.sum((v - c - Z @ b) ** 2))
    if dof <= 0:
        return np.full(len(b), np.nan), dof
    return np.sqrt(np.maximum(np.diag(cov), 0) * rss / dof), dof


def r_squared(v: np.ndarray, pred: np.ndarray) -> float:
    ss = float(np.sum((v - v.mean()) ** 2))
    return 1.0 - float(np.sum((v - pred) ** 2)) / ss if ss > 0 else float("nan")


def kfold(n: int, k: int, *, seed: int) -> list[np.ndarray]:
    """K test folds of a seeded permutation of range(n)."""
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def cv_predictions(X: np.ndarray, v: np.ndarray, folds: list[np.ndarray], alpha: float) -> np.ndarray:
    """Out-of-fold predictions, standardising on each training fold."""
    pred = np.empty_like(v)
    for test in folds:
        train = np.setdiff1d(np.arange(len(v)), test)
        Z, mean, sd = standardise(X[train])
        c, b = ridge_fit(Z, v[train], alpha)
        pred[test] = c + standardise(X[test], mean=mean, sd=sd)[0] @ b
    return pred


def _coefficients(names, b, se, sd) -> dict:
    return {k: {"coef": float(b[j]), "se": float(se[j]), "raw": float(b[j] / sd[j])} for j, k in enumerate(names)}


def regress(names: list[str], X: np.ndarray, v: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict:
    """OLS and cross-validated ridge of v on the standardised columns of X (see module doc)."""
    n = len(v)
    if n < MIN_STATES:
        raise DbgpuError(f"explaining V needs at least {MIN_STATES} states with a bounded potential "
                         f"and features, got {n}")
    if not names:
        raise DbgpuError("no feature varies across the states: nothing to explain V with")
    parts = kfold(n, min(folds, n), seed=seed)
    Z, mean, sd = standardise(X)
    c, b = ridge_fit(Z, v, 0.0)
    se, dof = standard_errors(Z, v, b, c, 0.0)
    ols = {"intercept": c, "r2": r_squared(v, c + Z @ b), "r2_cv": r_squared(v, cv_predictions(X, v, parts, 0.0)),
           "dof": dof, "rank": int(np.linalg.matrix_rank(Z - Z.mean(0))), "coefficients": _coefficients(names, b, se, sd)}
    cv = [(r_squared(v, cv_predictions(X, v, parts, a * n)), a * n) for a in ALPHAS]
    best_r2, alpha = max(cv, key=lambda t: (np.nan_to_num(t[0], nan=-np.inf), t[1]))
    cr, br = ridge_fit(Z, v, alpha)
    ser, dofr = standard_errors(Z, v, br, cr, alpha)
    ridge = {"alpha": alpha, "intercept": cr, "r2": r_squared(v, cr + Z @ br), "r2_cv": best_r2, "dof": dofr,
             "coefficients": _coefficients(names, br, ser, sd)}
    leading = sorted(names, key=lambda k: -abs(ridge["coefficients"][k]["coef"]))
    return {"n_states": n, "folds": len(parts), "seed": seed, "features": names, "ols": ols, "ridge": ridge,
            "leading": leading, "predicted_cv": cv_predictions(X, v, parts, alpha).tolist(),
            "fitted": (cr + Z @ br).tolist()}


def explain_potential(states: list[str], V: list[float], rows: list[dict[str, float]], *, folds: int = 5,
                      seed: int = 0) -> dict:
    """explain.json's document (JSON-safe: an undefined standard error is None): the
    regression plus the states, V and feature values."""
    if not rows:
        raise DbgpuError("no state has both a bounded potential and features")
    names, X, dropped = design_matrix(rows)
    v = np.asarray(V, dtype=np.float64)
    doc = regress(names, X, v, folds=folds, seed=seed)
    return json_safe({**doc, "dropped": dropped, "states": list(states), "V": v.tolist(),
                      "values": {k: X[:, j].tolist() for j, k in enumerate(names)}})


def summary_lines(doc: dict, *, top: int = 5) -> list[str]:
    """R^2 and the leading features as a few lines of text."""
    ols, ridge = doc["ols"], doc["ridge"]
    lead = ", ".join(f"{k} {ridge['coefficients'][k]['coef']:+.3g} ± {fmt(ridge['coefficients'][k]['se'], '.2g')}"
                     for k in doc["leading"][:top])
    lines = [f"explaining V by {len(doc['features'])} features on {doc['n_states']} states: "
             f"OLS R² {fmt(ols['r2'], '.3f')} (cross-validated {fmt(ols['r2_cv'], '.3f')}), ridge R² "
             f"{fmt(ridge['r2'], '.3f')} (cross-validated {fmt(ridge['r2_cv'], '.3f')}, alpha {ridge['alpha']:.3g})",
             f"leading features (ridge, V per sd of the feature): {lead}"]
    if ridge["r2_cv"] is None or ridge["r2_cv"] <= 0:
        lines.append("no combination of these features predicts V out of fold better than the mean "
                     "(cross-validated R² <= 0)")
    return lines


def explain_markdown(doc: dict) -> str:
    """The report.md section for explain.json."""
    ols, ridge = doc["ols"], doc["ridge"]
    lines = ["## Explaining V by state features", "",
             f"{doc['n_states']} states, {len(doc['features'])} standardised features, {doc['folds']}-fold "
             f"cross-validation (seed {doc['seed']}). Coefficients: change of V per standard deviation of "
             "the feature (± standard error).", "",
             "| fit | R² | cross-validated R² |", "|---|---|---|",
             f"| OLS | {fmt(ols['r2'], '.4f')} | {fmt(ols['r2_cv'], '.4f')} |",
             f"| ridge (alpha {ridge['alpha']:.3g}) | {fmt(ridge['r2'], '.4f')} | {fmt(ridge['r2_cv'], '.4f')} |",
             "", "| feature | OLS | ridge |", "|---|---|---|"]
    for k in doc["leading"]:
        o, r = ols["coefficients"][k], ridge["coefficients"][k]
        lines.append(f"| {k} | {o['coef']:+.4g} ± {_se(o['se'])} | {r['coef']:+.4g} ± {_se(r['se'])} |")
    if doc["dropped"]:
        lines += ["", "Dropped: " + "; ".join(f"{k} ({why})" for k, why in doc["dropped"].items())]
    lines += ["", "![explaining V](explain.png)", ""]
    return "\n".join(lines)


def _se(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"
