"""Detailed-balance statistics of a weighted transition graph and its fitted potential.

All of them work on the "mutual pairs": unordered pairs {f, g} with an edge in both
directions, oriented f < g (state index), with the antisymmetric log-ratio flow

    X(f, g) = log w(f->g) - log w(g->f)          (detailed balance: = V(f) - V(g)).

For sampled inputs each X has the paper's Poisson variance
`sigma^2 = 1/N(f->g) + 1/n_f + 1/N(g->f) + 1/n_g`; exact kernels have no errors, so
their chi2 is null and the RMS residual is reported instead.

- `pairwise`: X against V(f) - V(g) on the main SCC. Every pair enters in both
  orientations, so the fitted line goes through the origin and r is the Pearson r of
  that symmetric cloud (= the uncentred correlation). slope = beta (weighted by
  1/sigma^2 for counts); chi2/ndf of the residual from the fitted line, ndf = pairs - 1.
- `loops`: every 3-cycle f->g->h->f whose three pairs are mutual (Kolmogorov's
  criterion), found by a vectorised wedge/closure search on the degree-ordered
  adjacency (sparse CSR, no Python loop over edges); forward sum of log w against the
  backward sum; chi2/ndf with ndf = number of loops (their sigma^2 is the sum of the six
  edges' `1/N + 1/n_source`, as in the paper).
- `hodge`: the least-squares gradient part of X on the mutual-pair graph (a graph
  Laplacian solve by conjugate gradients); the gradient fraction
  `||grad part||^2 / ||X||^2` in [0, 1] is 1 iff X is a gradient (detailed balance).
- `entropy_production`: the jump chain restricted to the main SCC,
  `P(f,g) = w(f->g) / sum_{g' != f} w(f->g')`, its stationary distribution pi, and
  `sigma = 1/2 sum_{f != g} (J_fg - J_gf) log(J_fg / J_gf)`, `J_fg = pi_f P_fg`, in nats per
  jump, summed over mutual pairs only. A one-way edge would contribute +inf; it is left
  out of the sum and the share of the stationary flux it carries is reported as
  `one_way_flux_fraction` (0 when every edge has its reverse).
- `reversibility_test` (counts only): a likelihood-ratio test on the main SCC.
  Conditional on `m = N(f->g) + N(g->f)`, `N(f->g) ~ Binomial(m, p_fg)` with
  `p_fg = n_f T_fg / (n_f T_fg + n_g T_gf)` (Poisson sampling from uniformly drawn
  sources). Reversibility says `logit p_fg = V(f) - V(g) + log(n_f / n_g)` for one
  potential V: a Bradley–Terry model with offsets, fitted by maximum likelihood with the
  same Newton solver (its negative log-likelihood is the action with w = N and those
  offsets). Against the saturated model (one free p per pair):
  `G^2 = 2 (loglik_saturated - loglik_reversible)`, `dof = pairs - (n_main - 1)`,
  p-value from the chi-square law (asymptotic: unreliable when most pairs have few counts).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from scipy.special import chdtrc, log_expit

from dbgpu.devices import resolve_device
from dbgpu.fit import minimise_action
from dbgpu.graph import in_sum, incidence, laplacian_solve, mutual_pairs

# --------------------------------------------------------------------------- pairs


def pair_variance(count, visits, src, dst, e_fg, e_gf):
    """(P,) the paper's sigma^2 = 1/N_fg + 1/n_f + 1/N_gf + 1/n_g of each mutual pair."""
    f, g = src[e_fg], dst[e_fg]
    return (1.0 / count[e_fg] + 1.0 / visits[f] + 1.0 / count[e_gf] + 1.0 / visits[g])


# --------------------------------------------------------------------------- pairwise


def pairwise(x: np.ndarray, y: np.ndarray, var: np.ndarray | None = None) -> dict:
    """Log-ratio x (P,) against potential difference y (P,), one orientation per pair.

    Taking each pair in both orientations makes the cloud symmetric: its mean is 0, the
    fitted line goes through the origin and Pearson's r is the uncentred correlation,
    all independent of how the pairs happen to be oriented.
    """
    P = len(x)
    out = {"n_pairs": int(P), "r": None, "slope": None, "chi2": None, "ndf": None,
           "chi2_ndf": None, "rms_residual": None}
    if P == 0:
        return out
    wt = np.ones(P) if var is None else 1.0 / var              # (P,)
    sxx, syy = np.sum(x * x), np.sum(y * y)
    if sxx > 0 and syy > 0:
        out["r"] = float(np.sum(x * y) / np.sqrt(sxx * syy))
    syy_w = np.sum(wt * y * y)
    slope = float(np.sum(wt * x * y) / syy_w) if syy_w > 0 else None
    out["slope"] = slope
    resid = x - (slope or 0.0) * y                             # (P,)
    out["rms_residual"] = float(np.sqrt(np.mean(resid ** 2)))
    if var is not None:
        out["chi2"] = float(np.sum(resid ** 2 / var))
        out["ndf"] = int(P - 1)
        out["chi2_ndf"] = out["chi2"] / (P - 1) if P > 1 else None
    return out


# --------------------------------------------------------------------------- loops


def triangles(n: int, a: np.ndarray, b: np.ndarray, *, chunk: int = 4_000_000):
    """Every triangle of the undirected simple graph with edges (a, b), once each.

    Edges are oriented from lower to higher (degree, index) rank; a triangle u<v<w (in
    rank) is the wedge u->v->w closed by u->w. Wedges are expanded from CSR rows with
    numpy repeat/gather and closures checked by binary search on sorted edge keys.
    Returns three (T,) int64 arrays.
    """
    if len(a) == 0:
        return (np.empty(0, np.int64),) * 3
    deg = np.bincount(np.r_[a, b], minlength=n)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), deg))] = np.arange(n)
    lo = np.where(rank[a] < rank[b], a, b)
    hi = np.where(rank[a] < rank[b], b, a)
    key = np.unique(lo * n + hi)                               # (M,) oriented, sorted
    lo, hi = key // n, key % n
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(lo, minlength=n), out=indptr[1:])    # CSR rows = lo, cols = hi
    out_deg = np.diff(indptr)
    fan = out_deg[hi]                                          # (M,) wedges through edge u->v
    found = []
    start = 0
    cum = np.cumsum(fan)
    while start < len(lo):
        stop = int(np.searchsorted(cum, (cum[start - 1] if start else 0) + chunk, side="right"))
        stop = max(stop, start + 1)
        u, v, k = lo[start:stop], hi[start:stop], fan[start:stop]
        tot = int(k.sum())
        if tot:
            uu = np.repeat(u, k)                               # (W,)
            vv = np.repeat(v, k)
            first = np.repeat(indptr[v], k)
            offs = np.arange(tot) - np.repeat(np.cumsum(k) - k, k)
            ww = hi[first + offs]                              # (W,) v->w
            wkey = uu * n + ww
            pos = np.clip(np.searchsorted(key, wkey), 0, len(key) - 1)
            hit = key[pos] == wkey                             # u->w closes the triangle
            found.append((uu[hit], vv[hit], ww[hit]))
        start = stop
    if not found:
        return (np.empty(0, np.int64),) * 3
    return tuple(np.concatenate(c) for c in zip(*found))


def loops(n: int, f: np.ndarray, g: np.ndarray, lw_fg: np.ndarray, lw_gf: np.ndarray,
          var: np.ndarray | None = None) -> tuple[dict, dict]:
    """Kolmogorov 3-cycles over the mutual pairs (f, g) (P,) with log w both ways.

    Returns the summary and the per-loop arrays `forward`, `backward` (T,) (and `var`).
    """
    u, v, w = triangles(n, f, g)
    key = f * n + g                                            # f < g
    order = np.argsort(key)
    skey = key[order]

    def lw(a, b):                                              # log w(a->b) for mutual pairs
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        p = order[np.searchsorted(skey, lo * n + hi)]
        return np.where(a < b, lw_fg[p], lw_gf[p]), p

    fw = [lw(u, v), lw(v, w), lw(w, u)]
    bw = [lw(u, w), lw(w, v), lw(v, u)]
    F = fw[0][0] + fw[1][0] + fw[2][0]                          # (T,)
    B = bw[0][0] + bw[1][0] + bw[2][0]
    T = len(F)
    out = {"count": int(T), "chi2": None, "ndf": None, "chi2_ndf": None, "rms": None}
    arrays = {"forward": F, "backward": B}
    if T == 0:
        return out, arrays
    d = F - B
    out["rms"] = float(np.sqrt(np.mean(d ** 2)))
    if var is not None:
        lv = var[fw[0][1]] + var[fw[1][1]] + var[fw[2][1]]      # (T,) pairs' variances
        out["chi2"] = float(np.sum(d ** 2 / lv))
        out["ndf"] = int(T)
        out["chi2_ndf"] = out["chi2"] / T
        arrays["var"] = lv
    return out, arrays


# --------------------------------------------------------------------------- Hodge


def hodge(n: int, f: np.ndarray, g: np.ndarray, X: np.ndarray, *, device: str = "cpu") -> dict:
    """Gradient part of the flow X (P,) on the pair graph (f, g): fraction of ||X||^2.

    The least-squares potential phi solves the graph Laplacian system L phi = B X
    (B X = the flow's divergence), by the same PCG as the fit.
    """
    P = len(X)
    out = {"gradient_fraction": None, "n_pairs": int(P), "cycle_rank": None}
    if P == 0:
        return out
    nodes, inv = np.unique(np.r_[f, g], return_inverse=True)
    m = len(nodes)
    fi, gi = inv[:P], inv[P:]
    n_cc = connected_components(
        sp.csr_matrix((np.ones(P), (fi, gi)), shape=(m, m)), directed=False)[0]
    out["cycle_rank"] = int(P - m + n_cc)
    total = float(np.sum(X ** 2))
    if total == 0:
        out["gradient_fraction"] = 1.0
        return out
    div = np.bincount(fi, X, minlength=m) - np.bincount(gi, X, minlength=m)   # (m,) B X
    phi = laplacian_solve(m, fi, gi, np.ones(P), div, device=device)
    grad = phi[fi] - phi[gi]                                   # (P,) gradient part
    # ||grad||^2 / ||X||^2 = <grad, X> / ||X||^2 for the projection; clip the rounding
    out["gradient_fraction"] = float(np.clip(np.sum(grad * X) / total, 0.0, 1.0))
    return out


# --------------------------------------------------------------------------- entropy production


def _power_cpu(Pm, pi, tol, max_iter):
    PT = Pm.T.tocsr()
    for _ in range(max_iter):
        nxt = 0.5 * (pi + PT @ pi)
        nxt /= nxt.sum()
        done = np.abs(nxt - pi).sum() < tol
        pi = nxt
        if done:
            break
    return pi


def _power_torch(n, src, dst, p, pi, tol, max_iter, dev):
    order = np.argsort(src, kind="stable")
    inc = incidence(n, src[order], dst[order], dev)
    pt = torch.as_tensor(p[order], device=dev)
    pi_t = torch.as_tensor(pi, dtype=torch.float64, device=dev)
    for k in range(max_iter):
        nxt = 0.5 * (pi_t + in_sum(inc, torch.index_select(pi_t, 0, inc.src) * pt))
        nxt = nxt / nxt.sum()
        done = k % 10 == 9 and (nxt - pi_t).abs().sum().item() < tol
        pi_t = nxt
        if done:
            break
    return pi_t.cpu().numpy()


def stationary(n: int, src: np.ndarray, dst: np.ndarray, p: np.ndarray, *,
               guess: np.ndarray | None = None, tol: float = 1e-13, max_iter: int = 20000,
               dense_max: int = 2000, device: str = "cpu"):
    """Stationary distribution (n,) of an irreducible chain P given as edges (src, dst, p).

    Dense direct solve for n <= dense_max, else power iteration on the lazy chain
    (I + P)/2 (aperiodic; scipy on CPU, torch on CUDA), started from `guess`, until the
    L1 change is below tol. Returns (pi, residual ||pi P - pi||_1).
    """
    Pm = sp.csr_matrix((p, (src, dst)), shape=(n, n))
    if n <= dense_max:
        A = Pm.T.toarray() - np.eye(n)
        A[-1, :] = 1.0
        b = np.zeros(n)
        b[-1] = 1.0
        pi = np.linalg.solve(A, b)
    else:
        g = np.full(n, 1.0 / n) if guess is None else guess / guess.sum()
        dev = resolve_device(device)
        pi = _power_cpu(Pm, g, tol, max_iter) if dev.type == "cpu" else \
            _power_torch(n, src, dst, p, g, tol, max_iter, dev)
    pi = np.clip(pi, 0.0, None)
    pi /= pi.sum()
    resid = float(np.abs(Pm.T @ pi - pi).sum())
    return pi, resid


def entropy_production(n: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray, *,
                       guess_V: np.ndarray | None = None, device: str = "cpu") -> dict:
    """Entropy production (nats per jump) of the jump chain of w on n states.

    The graph (src, dst) must be strongly connected on its n states, without self edges.
    `guess_V` (n,), a fitted potential, warm-starts the stationary solve.
    """
    rows = np.bincount(src, weights=w, minlength=n)            # (n,)
    p = w / rows[src]                                          # (E,) row-normalised
    guess = None if guess_V is None else rows * np.exp(-(guess_V - np.nanmin(guess_V)))
    pi, resid = stationary(n, src, dst, p, guess=guess, device=device)
    J = pi[src] * p                                            # (E,) stationary flux
    e_fg, e_gf = mutual_pairs(n, src, dst)
    jf, jb = J[e_fg], J[e_gf]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (jf - jb) * (np.log(jf) - np.log(jb))
    terms = np.where((jf > 0) & (jb > 0), terms, 0.0)
    one_way = np.ones(len(J), bool)
    one_way[e_fg] = False
    one_way[e_gf] = False
    return {"entropy_production": float(np.sum(terms)),
            "one_way_flux_fraction": float(J[one_way].sum() / J.sum()) if J.sum() > 0 else 0.0,
            "stationary_residual": resid, "n_states": int(n)}


# --------------------------------------------------------------------------- G^2


def reversibility_test(n: int, src: np.ndarray, dst: np.ndarray, count: np.ndarray,
                       visits: np.ndarray, *, device: str = "cpu") -> dict:
    """Likelihood-ratio test of reversibility on a strongly connected count graph.

    (src, dst, count) (E,) are the edges among n states (all strongly connected),
    `visits` (n,) the queries from each state. See the module docstring.
    """
    offset = np.log(visits[src]) - np.log(visits[dst])          # (E,)
    V, _, info = minimise_action(n, src, dst, count.astype(np.float64), offset=offset,
                                 device=device)
    z = V[src] - V[dst] + offset                                # (E,) logit p(src->dst)
    # every unordered pair once: its two directions (the second may be absent)
    e_fg, e_gf = mutual_pairs(n, src, dst)
    ll_model = np.sum(count * log_expit(z))                     # sum N log p over all edges
    m = count.astype(np.float64).copy()
    m[e_fg] += count[e_gf]
    m[e_gf] += count[e_fg]
    ll_sat = np.sum(count * np.log(count / m))
    g2 = float(max(0.0, 2.0 * (ll_sat - ll_model)))
    n_pairs = int(len(src) - len(e_fg))
    dof = n_pairs - (n - 1)
    return {"G2": g2, "dof": int(dof),
            "p_value": float(chdtrc(dof, g2)) if dof > 0 else None,
            "n_pairs": n_pairs, "converged": info["converged"],
            "model": "Bradley-Terry with offsets log(n_f/n_g) vs saturated, per pair"}


# --------------------------------------------------------------------------- components

#: how many components `stats.json` lists one by one, and states named per component
MAX_LISTED_COMPONENTS = 200
MAX_NAMED_STATES = 10


def components_summary(states, comps, kept) -> dict:
    """The components as stats.json lists them (main first, then by size)."""
    label, size, position = comps.label, comps.size, comps.position
    state_pos = np.where(kept, position[label], "dropped")                 # (N,)
    members = np.argsort(label, kind="stable")
    bounds = np.r_[0, np.cumsum(size)]
    listed = []
    for c in range(min(len(size), MAX_LISTED_COMPONENTS)):
        idx = members[bounds[c]:bounds[c + 1]]
        pos = "dropped" if not kept[idx].any() else str(position[c])
        listed.append({"size": int(size[c]), "position": pos,
                       "states": [states[i] for i in idx[:MAX_NAMED_STATES]]})
    by_pos = {}
    for pos in ("above", "below", "unrelated", "dropped"):
        sel = state_pos == pos
        by_pos[pos] = {"states": int(sel.sum()), "components": int(len(np.unique(label[sel])))}
    return {
        "count": int(len(size)),
        "main_size": int(size[0]),
        "by_position": by_pos,
        "list": listed,
        "list_truncated": bool(len(size) > MAX_LISTED_COMPONENTS),
        "state_position": {states[i]: str(state_pos[i]) for i in np.flatnonzero(label != 0)},
        "note": ("above: reaches the main component, potential +inf relative to it; below: "
                 "reached from it, -inf; unrelated: neither; dropped: removed by --threshold"),
    }


# --------------------------------------------------------------------------- all of them


def detailed_balance_stats(edges, fit, *, device: str = "cpu") -> tuple[dict, dict]:
    """Every statistic for an `Edges` graph and its `Fit`. Returns (stats, arrays) where
    arrays hold the per-pair and per-loop points the report plots."""
    n = len(edges.states)
    src, dst, lw = edges.src, edges.dst, edges.log_w
    sampled = edges.count is not None
    e_fg, e_gf = mutual_pairs(n, src, dst)
    f, g = src[e_fg], dst[e_fg]
    X = lw[e_fg] - lw[e_gf]                                      # (P,) log-ratio flow
    var = pair_variance(edges.count, edges.visits, src, dst, e_fg, e_gf) if sampled else None

    # pairwise, on the main SCC (both ends have a potential)
    main_pair = (fit.components.label[f] == 0) & (fit.components.label[g] == 0)
    y = fit.V[f[main_pair]] - fit.V[g[main_pair]]
    x = X[main_pair]
    pv = var[main_pair] if sampled else None
    pw = pairwise(x, y, pv)

    lp, loop_arrays = loops(n, f, g, lw[e_fg], lw[e_gf], var)
    hd = hodge(n, f, g, X, device=device)

    main = fit.components.label == 0
    mi = np.flatnonzero(main)
    local = np.full(n, -1, np.int64)
    local[mi] = np.arange(len(mi))
    me = main[src] & main[dst]
    if len(mi) > 1:
        ep = entropy_production(len(mi), local[src[me]], local[dst[me]], edges.w[me],
                                guess_V=fit.V[mi], device=device)
        rev = (reversibility_test(len(mi), local[src[me]], local[dst[me]], edges.count[me],
                                  edges.visits[mi], device=device) if sampled else None)
    else:
        ep = {"entropy_production": None, "one_way_flux_fraction": None,
              "stationary_residual": None, "n_states": int(len(mi))}
        rev = None
    stats = {"pairwise": pw, "loops": lp, "hodge": hd, "entropy_production": ep,
             "reversibility": rev}
    arrays = {"pair_x": x, "pair_dV": y, "pair_var": pv if pv is not None else np.zeros(0),
              "loop_forward": loop_arrays["forward"], "loop_backward": loop_arrays["backward"],
              "loop_var": loop_arrays.get("var", np.zeros(0))}
    return stats, arrays
