"""Error bars on V and null distributions of the statistics, for sampled inputs.

An exact kernel has no sampling error: the honest error on its V is how much V moves
under a second template or temperature, which `dbgpu compare` reports
(`dbgpu.comparison.potential_spread`). For sampled inputs (counts):

- `laplace_sigma`: the Laplace (inverse-Hessian) approximation. With `--weights counts`
  the fitted V estimates the potential of the reversible model whose likelihood is the
  Bradley–Terry one of `dbgpu.stats.reversibility_test` (`N(f->g) ~ Binomial(m_fg,
  sigmoid(V_f - V_g + log(n_f/n_g)))`, m_fg = N(f->g) + N(g->f)); its negative
  log-likelihood is the action with w = N and those offsets, whose Hessian at V is the
  graph Laplacian L with edge weights `N sigmoid(z) sigmoid(-z)` (the Fisher information).
  In the zero-mean gauge of potential.json the covariance of V is the pseudo-inverse
  L^+, so `sigma_f = sqrt(L^+_ff)`. (With equal visits per source the counts fit *is*
  that maximum-likelihood V; otherwise it is a consistent estimate of the same V and
  sigma is the likelihood's.) The paper's weights `min(1, N/N0)` make no likelihood,
  so there is no Laplace sigma for them: use the bootstrap. Cost: for n <= 2,000 states
  an exact dense inverse, O(n^3) time and O(n^2) memory; above, a Johnson–Lindenstrauss
  (Hutchinson-style) estimate `L^+_ff = ||W^1/2 B^T L^+ e_f||^2 ~ mean_r (L^+ B W^1/2 q_r)_f^2`
  with `probes` random sign vectors q_r (relative sd of sigma about 1/sqrt(2 probes)),
  `probes` Laplacian solves by block conjugate gradients: O(probes E) per iteration,
  O(probes n) memory.
- `bootstrap_potentials`: a seeded bootstrap over queries. The queries (each source's
  answers, self-transitions and invalid answers included) are resampled with
  replacement, Q from Q; every replicate is weighted and fitted as the input was (same
  weights), warm-started from the fit. Each replicate's V is moved to the original
  gauge (equal mean on the states bounded in both); sigma_f is the standard deviation
  over the replicates in which f is bounded (null when that is fewer than half of
  them). Cost: one fit per replicate.
- `null_distribution`: each statistic (pairwise r and slope, loop chi2/ndf, Hodge
  gradient fraction, entropy production) under detailed balance, by a seeded parametric
  bootstrap: counts are resampled from the fitted reversible kernel with the observed
  visits, weighted, fitted and measured exactly as the input was. The reversible kernel
  is the maximum-likelihood one: inside each strongly connected component the
  Bradley–Terry-with-offsets V above, each pair keeping its observed total
  (`T(f,g) = m_fg sigmoid(z_fg) / n_f` both ways); an edge between components keeps its
  observed `N / n_f`; the rest of each row is the observed self/invalid share. Each
  source's answers are then drawn as one multinomial of its observed visits. Reported
  per statistic: observed value, null mean and sd, and the p-value
  `(1 + #{null at least as extreme}) / (1 + B)` in the direction of a violation
  (r and gradient fraction: lower; chi2 and entropy production: higher; slope: both
  ways). Cost: one fit and one set of statistics per replicate.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from dbgpu.data import Transitions, make_edges
from dbgpu.errors import DbgpuError
from dbgpu.fit import fit_potential
from dbgpu.graph import incidence, laplacian_matrix, laplacian_solve_many, strong_components
from dbgpu.stats import detailed_balance_stats, reversible_fit

#: states up to which the Laplace sigma is exact (a dense inverse)
LAPLACE_DENSE_MAX = 2000
#: random probes of the Laplace estimate above that
LAPLACE_PROBES = 200

# --------------------------------------------------------------------------- Laplace


def laplace_sigma(n: int, src, dst, count, visits, V, *, probes: int = LAPLACE_PROBES, seed: int = 0,
                  dense_max: int = LAPLACE_DENSE_MAX) -> tuple[np.ndarray, str]:
    """(sigma (n,), method) of the potential V (n,) of a strongly connected count graph
    (src, dst, count) (E,) with visits (n,): see the module docstring."""
    src = np.asarray(src, np.int64)
    dst = np.asarray(dst, np.int64)
    z = V[src] - V[dst] + np.log(visits[src]) - np.log(visits[dst])
    s = expit(z)
    c = count * s * (1.0 - s)                                   # (E,) Fisher weights
    if n <= dense_max:
        L = laplacian_matrix(n, src, dst, c).toarray()
        M = np.linalg.inv(L + 1.0 / n)                          # = L^+ + 1 1^T / n
        return np.sqrt(np.clip(np.diag(M) - 1.0 / n, 0.0, None)), "exact inverse"
    L = laplacian_matrix(n, src, dst, c)
    inc = incidence(n, src, dst, "cpu")
    rng = np.random.default_rng(seed)
    root = np.sqrt(c)
    acc = np.zeros(n)
    done = 0
    while done < probes:
        k = min(32, probes - done)
        q = rng.choice([-1.0, 1.0], size=(len(src), k)) * root[:, None]     # (E, k)
        rhs = np.stack([np.bincount(inc.src, q[:, j], minlength=n) - np.bincount(inc.dst, q[:, j], minlength=n)
                        for j in range(k)], axis=1)             # (n, k) = B W^1/2 Q
        X = laplacian_solve_many(L, rhs, rtol=1e-6)
        acc += (X * X).sum(1)
        done += k
    return np.sqrt(acc / probes), f"random projection, {probes} probes"


def laplace(edges, fit) -> tuple[np.ndarray, dict]:
    """Laplace sigma (N,) of the fit's V on the main component (NaN elsewhere)."""
    if edges.count is None:
        raise DbgpuError("--laplace needs sampled counts: an exact kernel has no sampling error "
                         "(compare templates or temperatures with `dbgpu compare` instead)")
    if edges.mode != "counts":
        raise DbgpuError("--laplace needs --weights counts: the paper's weights min(1, N/N0) make no "
                         "likelihood (use --bootstrap B for error bars)")
    n = len(edges.states)
    mi = np.flatnonzero(fit.components.label == 0)
    sigma = np.full(n, np.nan)
    if len(mi) < 2:
        return sigma, {"method": "laplace", "states": 0}
    local = np.full(n, -1, np.int64)
    local[mi] = np.arange(len(mi))
    me = (local[edges.src] >= 0) & (local[edges.dst] >= 0)
    s, how = laplace_sigma(len(mi), local[edges.src[me]], local[edges.dst[me]], edges.count[me].astype(np.float64),
                           edges.visits[mi].astype(np.float64), fit.V[mi])
    sigma[mi] = s
    return sigma, {"method": "laplace", "how": how, "states": int(len(mi)),
                   "median_sigma": float(np.median(s))}


# --------------------------------------------------------------------------- replicates


def _refit(t: Transitions, fit0, *, weights: str, reject: str, threshold: float, device: str):
    """Weight and fit a resampled input as the original was, warm-started from fit0."""
    edges = make_edges(t, weights=weights, reject=reject, threshold=threshold)
    fit = fit_potential(len(t.states), edges.src, edges.dst, log_w=edges.log_w, V0=fit0.V_within,
                        device=device)
    return edges, fit


def _with_counts(t: Transitions, count: np.ndarray, src, dst, visits) -> Transitions:
    keep = count > 0
    rest = int(visits.sum() - count.sum())
    return Transitions(states=t.states, src=src[keep], dst=dst[keep], count=count[keep].astype(np.int64),
                       visits=visits.astype(np.int64), n_self=0, n_invalid=rest, kind=t.kind)


def resample_queries(t: Transitions, rng: np.random.Generator) -> Transitions:
    """The queries resampled with replacement (Q from Q): one multinomial over the cells
    (each edge, and each source's self/invalid answers). O(E + N)."""
    n = len(t.states)
    rest = t.visits - np.bincount(t.src, t.count, minlength=n).astype(np.int64)   # (N,)
    cells = np.r_[t.count, rest].astype(np.float64)
    Q = int(cells.sum())
    draw = rng.multinomial(Q, cells / Q)
    count, rest_b = draw[:len(t.count)], draw[len(t.count):]
    visits = rest_b + np.bincount(t.src, count, minlength=n).astype(np.int64)
    return _with_counts(t, count, t.src, t.dst, visits)


def bootstrap_potentials(t: Transitions, fit, *, replicates: int, seed: int, weights: str, reject: str,
                         threshold: float, device: str = "cpu", progress=None) -> tuple[np.ndarray, dict]:
    """Bootstrap sigma (N,) of the fit's V (NaN outside the main component or where fewer
    than half the replicates bound the state), and a summary. See the module docstring."""
    n = len(t.states)
    main = fit.components.label == 0
    rng = np.random.default_rng(seed)
    s1, s2, k = np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
    for _ in range(replicates):
        _, fb = _refit(resample_queries(t, rng), fit, weights=weights, reject=reject, threshold=threshold,
                       device=device)
        both = main & (fb.components.label == 0)
        if both.sum() < 2:
            continue
        Vb = fb.V - (fb.V[both].mean() - fit.V[both].mean())     # the original gauge
        s1[both] += Vb[both]
        s2[both] += Vb[both] ** 2
        k[both] += 1
        if progress is not None:
            progress.update(1)
    ok = main & (k >= max(2, replicates / 2))
    sigma = np.full(n, np.nan)
    kk = k[ok].astype(np.float64)
    sigma[ok] = np.sqrt(np.clip((s2[ok] - s1[ok] ** 2 / kk) / (kk - 1), 0.0, None))
    return sigma, {"method": "bootstrap", "replicates": int(replicates), "seed": int(seed),
                   "states": int(ok.sum()), "states_bounded_too_rarely": int((main & ~ok).sum()),
                   "median_sigma": float(np.median(sigma[ok])) if ok.any() else None}


# --------------------------------------------------------------------------- null


def reversible_model(t: Transitions, *, device: str = "cpu"):
    """The fitted reversible kernel of a count input as cells (src, dst, T) sorted by
    (src, dst): see the module docstring. One Bradley–Terry fit, O(E) per Newton step."""
    n = len(t.states)
    src, dst, count, visits = t.src, t.dst, t.count.astype(np.float64), t.visits.astype(np.float64)
    comps = strong_components(n, src, dst)
    lab = comps.label
    inner = lab[src] == lab[dst]
    members = np.flatnonzero(comps.size[lab] > 1)
    local = np.full(n, -1, np.int64)
    local[members] = np.arange(len(members))
    V = np.zeros(n)
    if len(members):
        V[members] = reversible_fit(len(members), local[src[inner]], local[dst[inner]], count[inner],
                                    visits[members], device=device)[0]
    a, b = np.minimum(src, dst)[inner], np.maximum(src, dst)[inner]
    key, pair = np.unique(a * n + b, return_inverse=True)
    m = np.bincount(pair, count[inner])                          # (pairs,) observed totals
    a, b = key // n, key % n
    p = expit(V[a] - V[b] + np.log(visits[a]) - np.log(visits[b]))
    cs = np.r_[a, b, src[~inner]]
    cd = np.r_[b, a, dst[~inner]]
    T = np.r_[m * p / visits[a], m * (1.0 - p) / visits[b], count[~inner] / visits[src[~inner]]]
    order = np.lexsort((cd, cs))
    return cs[order], cd[order], T[order]


def multinomial_rows(rng: np.random.Generator, n_row: np.ndarray, row: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Counts (K,) of independent multinomials, one per row r with n_row[r] draws over its
    cells (row (K,) sorted, every row has at least one cell, p of a row sums to 1; the
    last cell of a row takes what is left). Conditional binomials, vectorised across rows:
    one pass per cell position, O(K) draws in all."""
    K, R = len(row), len(n_row)
    start = np.searchsorted(row, np.arange(R))
    pos = np.arange(K) - start[row]
    last = np.r_[row[1:] != row[:-1], True]                      # (K,) the last cell of its row
    order = np.lexsort((row, pos))
    bounds = np.searchsorted(pos[order], np.arange(pos.max() + 2))
    counts = np.zeros(K, np.int64)
    left_n = np.asarray(n_row, np.int64).copy()
    left_p = np.ones(R)
    for k in range(pos.max() + 1):
        cells = order[bounds[k]:bounds[k + 1]]
        r = row[cells]
        q = np.clip(np.divide(p[cells], left_p[r], out=np.ones(len(cells)), where=left_p[r] > 0), 0.0, 1.0)
        x = np.where(last[cells], left_n[r], rng.binomial(left_n[r], q))
        counts[cells] = x
        left_n[r] -= x
        left_p[r] -= p[cells]
    return counts


def sample_null(t: Transitions, model, rng: np.random.Generator) -> Transitions:
    """Counts drawn from the reversible kernel `model` with the observed visits."""
    n = len(t.states)
    cs, cd, T = model
    rest = np.clip(1.0 - np.bincount(cs, T, minlength=n), 0.0, None)     # (N,) self / invalid
    row = np.r_[cs, np.arange(n)]
    order = np.argsort(row, kind="stable")                       # each row's cells, rest last
    p = np.r_[T, rest][order]
    p /= np.bincount(row[order], p, minlength=n)[row[order]].clip(1e-300)
    counts = multinomial_rows(rng, t.visits, row[order], p)
    back = np.empty_like(counts)
    back[order] = counts
    return _with_counts(t, back[:len(cs)], cs, cd, t.visits)


#: the statistics read against their null: (name, path in stats, direction of a violation)
NULL_STATISTICS = (
    ("pairwise_r", ("pairwise", "r"), "less"),
    ("pairwise_slope", ("pairwise", "slope"), "two-sided"),
    ("loops_chi2_ndf", ("loops", "chi2_ndf"), "greater"),
    ("gradient_fraction", ("hodge", "gradient_fraction"), "less"),
    ("entropy_production", ("entropy_production", "entropy_production"), "greater"),
)


def _get(stats: dict, path):
    v = stats.get(path[0]) or {}
    return v.get(path[1])


def p_value(observed: float, null: np.ndarray, alternative: str) -> float:
    """(1 + #{null at least as extreme as observed}) / (1 + B)."""
    B = len(null)
    lo = (1 + np.sum(null <= observed)) / (B + 1)
    hi = (1 + np.sum(null >= observed)) / (B + 1)
    if alternative == "less":
        return float(lo)
    if alternative == "greater":
        return float(hi)
    return float(min(1.0, 2 * min(lo, hi)))


def null_distribution(t: Transitions, fit, observed: dict, *, replicates: int, seed: int, weights: str,
                      reject: str, threshold: float, device: str = "cpu", progress=None) -> dict:
    """The statistics' distribution under detailed balance (module docstring): per
    statistic the observed value, null mean, sd, p-value and the direction tested."""
    model = reversible_model(t, device=device)
    rng = np.random.default_rng(seed)
    values = {name: [] for name, _, _ in NULL_STATISTICS}
    for _ in range(replicates):
        edges, fb = _refit(sample_null(t, model, rng), fit, weights=weights, reject=reject,
                           threshold=threshold, device=device)
        st, _ = detailed_balance_stats(edges, fb, device=device, points=False, reversibility=False)
        for name, path, _ in NULL_STATISTICS:
            v = _get(st, path)
            if v is not None:
                values[name].append(v)
        if progress is not None:
            progress.update(1)
    out = {}
    for name, path, alt in NULL_STATISTICS:
        obs, null = _get(observed, path), np.array(values[name], np.float64)
        out[name] = {"observed": obs, "null_mean": float(null.mean()) if len(null) else None,
                     "null_sd": float(null.std(ddof=1)) if len(null) > 1 else None,
                     "p_value": p_value(obs, null, alt) if obs is not None and len(null) else None,
                     "alternative": alt, "replicates": int(len(null))}
    return {"replicates": int(replicates), "seed": int(seed), "statistics": out,
            "model": "counts resampled from the fitted reversible (Bradley-Terry) kernel with the observed "
                     "visits; weighted, fitted and measured as the input"}
