"""Detailed-balance statistics of a weighted transition graph and its fitted potential.

All of them work on the "mutual pairs": unordered pairs {f, g} with an edge in both
directions, oriented f < g (state index), with the antisymmetric log-ratio flow

    X(f, g) = log w(f->g) - log w(g->f)          (detailed balance: = V(f) - V(g)).

For sampled inputs each X has the paper's Poisson variance
`sigma^2 = 1/N(f->g) + 1/n_f + 1/N(g->f) + 1/n_g`; exact kernels have no errors, so
their chi2 is null and the RMS residual is reported instead. P = mutual pairs, E = edges,
m = states on some mutual pair; every cost below is stated for growing N.

- `pairwise`: X against V(f) - V(g) on the main SCC. Every pair enters in both
  orientations, so the fitted line goes through the origin and r is the Pearson r of
  that symmetric cloud (= the uncentred correlation). slope = beta (weighted by
  1/sigma^2 for counts); chi2/ndf of the residual from the fitted line, ndf = pairs - 1.
  O(P) time and memory.
- `hodge`: the least-squares gradient part of X on the mutual-pair graph (a graph
  Laplacian solve by conjugate gradients); the gradient fraction
  `||grad part||^2 / ||X||^2` in [0, 1] is 1 iff X is a gradient (detailed balance).
  O(P) memory, O(P) per CG iteration. Its residual R = X - grad (curl and harmonic part)
  has the same sum as X around every cycle, and is what `loops` sums.
- `loops` (Kolmogorov's criterion): every 3-cycle f->g->h->f whose three pairs are
  mutual, forward sum of log w minus backward sum, `d = X_fg + X_gh + X_hf`. Reported
  from exact moments, never by listing all cycles: the count T, `rms = sqrt(sum d^2 / T)`,
  and for counts `chi2/ndf = sum d^2 / sum sigma_loop^2` (the pooled chi-square: a loop's
  sigma^2 is the sum of its three pairs' sigma^2, the six edges' `1/N + 1/n_source` as in
  the paper; E[d^2] = sigma_loop^2 for every loop under detailed balance, so the ratio is
  1 in expectation; loops share pairs, so it is no chi-square variate: read it against
  the null distribution of `dbgpu.null`), ndf = T. With Y = A o R (A the mutual-pair
  adjacency, Y antisymmetric), summing over the six directed versions of each triangle:
      T = sum(A o A^2) / 6,   sum d^2 = sum(Y^2 o A^2) / 2 + sum(A o (Y Y)),
      sum sigma^2 = sum(S o A^2) / 2    (S = A o sigma^2 per pair).
  Three ways to get them, chosen by cost: a complete pair graph (every exact kernel
  without -inf) in O(P) (A^2 = (m - 2) on every pair, `sum A o YY = ||Y||^2 - ||Y 1||^2`);
  a dense one by matrix products in row blocks (numpy BLAS, torch on CUDA): O(m^3)
  flops, O(m^2) memory; a sparse one by enumerating the triangles of the degree-ordered
  pair graph in chunks, accumulating the sums: O(W) time (W = wedges, at most
  O(P^1.5)) and O(chunk) memory. The figure draws a seeded uniform sample of
  `sample` cycles (rejection sampling on dense graphs, a reservoir on sparse ones).
- `entropy_production`: the jump chain restricted to the main SCC,
  `P(f,g) = w(f->g) / sum_{g' != f} w(f->g')` (from log w: no underflow), its stationary
  distribution pi, and `sigma = 1/2 sum_{f != g} (J_fg - J_gf) log(J_fg / J_gf)`,
  `J_fg = pi_f P_fg`, in nats per jump, summed over mutual pairs only. A one-way edge would
  contribute +inf; it is left out of the sum and the share of the stationary flux it
  carries is reported as `one_way_flux_fraction` (0 when every edge has its reverse).
  O(E) memory; pi by a dense solve for n <= 1,000 (O(n^3) on at most 1,000 states),
  else BiCGSTAB on `(I - P^T + 1 1^T / n) pi = 1 / n` (CPU; power iteration if it fails)
  or power iteration (CUDA), O(E) per iteration.
- `reversibility_test` (counts only): a likelihood-ratio test on the main SCC.
  Conditional on `m = N(f->g) + N(g->f)`, `N(f->g) ~ Binomial(m, p_fg)` with
  `p_fg = n_f T_fg / (n_f T_fg + n_g T_gf)` (Poisson sampling from uniformly drawn
  sources). Reversibility says `logit p_fg = V(f) - V(g) + log(n_f / n_g)` for one
  potential V: a Bradley–Terry model with offsets, fitted by maximum likelihood with the
  same Newton solver (its negative log-likelihood is the action with w = N and those
  offsets). Against the saturated model (one free p per pair):
  `G^2 = 2 (loglik_saturated - loglik_reversible)`, `dof = pairs - (n_main - 1)`,
  p-value from the chi-square law (asymptotic: unreliable when most pairs have few counts).
  One Newton fit: O(E) per step.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.special import chdtrc, log_expit

from dbgpu.fit import minimise_action
from dbgpu.graph import analysis_device, laplacian_solve, mutual_pairs

#: cycles drawn for the loop figure (a seeded uniform sample)
LOOP_SAMPLE = 5000
#: largest pair graph whose loop moments may be computed by dense matrix products
DENSE_LOOPS_MAX = 12_000
#: a wedge enumerated in numpy costs about this many matrix-product flops
FLOPS_PER_WEDGE = 400.0

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
    all independent of how the pairs happen to be oriented. O(P).
    """
    P = len(x)
    out = {"n_pairs": int(P), "r": None, "slope": None, "chi2": None, "ndf": None,
           "chi2_ndf": None, "rms_residual": None}
    if P == 0:
        return out
    wt = np.ones(P) if var is None else 1.0 / var              # (P,)
    sxx, syy = np.dot(x, x), np.dot(y, y)
    if sxx > 0 and syy > 0:
        out["r"] = float(np.dot(x, y) / np.sqrt(sxx * syy))
    syy_w = np.dot(wt * y, y)
    slope = float(np.dot(wt * x, y) / syy_w) if syy_w > 0 else None
    out["slope"] = slope
    resid = x - (slope or 0.0) * y                             # (P,)
    out["rms_residual"] = float(np.sqrt(np.dot(resid, resid) / P))
    if var is not None:
        out["chi2"] = float(np.dot(resid * resid, wt))
        out["ndf"] = int(P - 1)
        out["chi2_ndf"] = out["chi2"] / (P - 1) if P > 1 else None
    return out


# --------------------------------------------------------------------------- loops: enumeration


def _orient(n: int, a: np.ndarray, b: np.ndarray) -> dict:
    """The pair graph (a, b) (distinct unordered pairs) oriented from lower to higher
    (degree, index) rank, as CSR rows: lo -> hi sorted by (lo, hi), with each oriented
    edge's pair index and sign (+1 when lo = a of its pair). O(P log P)."""
    deg = np.bincount(np.r_[a, b], minlength=n)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), deg))] = np.arange(n)
    flip = rank[a] > rank[b]
    lo = np.where(flip, b, a)
    hi = np.where(flip, a, b)
    key = lo * n + hi
    order = np.argsort(key)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(lo, minlength=n), out=indptr[1:])
    lo, hi = lo[order], hi[order]
    fan = np.diff(indptr)[hi]                                  # (P,) wedges through lo -> hi
    return {"n": n, "key": key[order], "lo": lo, "hi": hi, "pair": order, "indptr": indptr,
            "sign": np.where(flip[order], -1.0, 1.0), "fan": fan, "wedges": int(fan.sum())}


def _triangle_chunks(o: dict, chunk: int):
    """Yield the triangles u<v<w (rank) of an oriented pair graph, a chunk of about
    `chunk` wedges at a time, as oriented-edge positions (u->v, v->w, u->w)."""
    n, key, lo, hi, indptr, fan = o["n"], o["key"], o["lo"], o["hi"], o["indptr"], o["fan"]
    cum = np.cumsum(fan)
    start = 0
    while start < len(lo):
        base = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, base + chunk, side="right")), start + 1)
        k = fan[start:stop]
        tot = int(k.sum())
        if tot:
            e1 = np.repeat(np.arange(start, stop), k)          # (W,) u -> v
            e2 = np.repeat(indptr[hi[start:stop]], k) + (np.arange(tot) - np.repeat(cum[start:stop] - base - k, k))
            wkey = lo[e1] * n + hi[e2]                         # u -> w closes the triangle
            e3 = np.minimum(np.searchsorted(key, wkey), len(key) - 1)
            hit = key[e3] == wkey
            yield e1[hit], e2[hit], e3[hit]
        start = stop


def triangles(n: int, a: np.ndarray, b: np.ndarray, *, chunk: int = 2_000_000):
    """Every triangle of the undirected simple graph with edges (a, b), once each, as
    three (T,) int64 arrays. Materialises all T triangles: for tests and small graphs."""
    if len(a) == 0:
        return (np.empty(0, np.int64),) * 3
    o = _orient(n, np.asarray(a, np.int64), np.asarray(b, np.int64))
    found = [(o["lo"][e1], o["hi"][e1], o["hi"][e2]) for e1, e2, _ in _triangle_chunks(o, chunk)]
    if not found:
        return (np.empty(0, np.int64),) * 3
    return tuple(np.concatenate(c) for c in zip(*found))


def _moments_sparse(n, f, g, R, var, *, sample: int, seed: int, chunk: int = 2_000_000, oriented=None):
    """Loop moments by chunked enumeration, and a uniform sample (without replacement)
    of `sample` triangles kept as a reservoir of the smallest random keys."""
    o = oriented or _orient(n, f, g)
    rng = np.random.default_rng(seed)
    count, sd2, slv = 0, 0.0, 0.0
    res_key, res = np.empty(0), np.empty((0, 3), np.int64)
    pair, sign = o["pair"], o["sign"]
    for e1, e2, e3 in _triangle_chunks(o, chunk):
        p1, p2, p3 = pair[e1], pair[e2], pair[e3]
        d = sign[e1] * R[p1] + sign[e2] * R[p2] - sign[e3] * R[p3]   # u->v->w->u
        count += len(d)
        sd2 += float(np.dot(d, d))
        if var is not None:
            slv += float(var[p1].sum() + var[p2].sum() + var[p3].sum())
        if sample:
            keys = np.r_[res_key, rng.random(len(d))]
            tri = np.r_[res, np.c_[o["lo"][e1], o["hi"][e1], o["hi"][e2]]]
            keep = np.argpartition(keys, sample)[:sample] if len(keys) > sample else slice(None)
            res_key, res = keys[keep], tri[keep]
    return {"count": count, "sum_d2": sd2, "sum_var": slv if var is not None else None}, res


# --------------------------------------------------------------------------- loops: algebra


def _moments_complete(m: int, fi, gi, R, var) -> dict:
    """Loop moments when every pair of the m nodes is mutual: O(P)."""
    div = np.bincount(fi, R, minlength=m) - np.bincount(gi, R, minlength=m)   # Y 1
    y2 = 2.0 * float(np.dot(R, R))                                            # ||Y||_F^2
    return {"count": m * (m - 1) * (m - 2) // 6,
            "sum_d2": max(0.0, 0.5 * m * y2 - float(np.dot(div, div))),
            "sum_var": None if var is None else float((m - 2) * var.sum())}


def _moments_dense(m: int, fi, gi, R, var, *, device: str = "cpu", backend: str | None = None) -> dict:
    """Loop moments by matrix products in row blocks: A (float32, exact), Y and S
    (float64) m x m each; O(m^3) flops, O(m^2) memory (numpy on CPU, torch on CUDA or
    with backend="torch")."""
    if (backend or ("numpy" if device == "cpu" else "torch")) == "numpy":
        xp, new = np, (lambda dt: np.zeros((m, m), dt))
        idx = (fi, gi), (gi, fi)
        f64 = {"dtype": np.float64}
    else:
        import torch as xp

        new = lambda dt: xp.zeros((m, m), dtype=getattr(xp, dt), device=device)  # noqa: E731
        t = lambda a: xp.as_tensor(a, device=device)  # noqa: E731
        idx = (t(fi), t(gi)), (t(gi), t(fi))
        R = t(np.asarray(R, np.float64))
        var = None if var is None else t(np.asarray(var, np.float64))
        f64 = {"dtype": xp.float64}
    A, Y = new("float32"), new("float64")
    A[idx[0]] = 1.0
    A[idx[1]] = 1.0
    Y[idx[0]] = R
    Y[idx[1]] = -R
    S = None
    if var is not None:
        S = new("float64")
        S[idx[0]] = var
        S[idx[1]] = var
    block = max(1, (1 << 22) // max(m, 1))
    c = a2 = yy = slv = 0.0
    for i in range(0, m, block):
        Ab = A[i:i + block]
        A2 = Ab @ A                                             # (b, m) exact small integers
        c += float((Ab * A2).sum(**f64))
        a2 += float(((Y[i:i + block] ** 2) * A2).sum(**f64))
        yy += float((Ab * (Y[i:i + block] @ Y)).sum(**f64))
        if S is not None:
            slv += float((S[i:i + block] * A2).sum(**f64))
    return {"count": int(round(c / 6)), "sum_d2": max(0.0, 0.5 * a2 + yy),
            "sum_var": None if var is None else 0.5 * slv}


def _sample_dense(n, f, g, *, sample: int, seed: int) -> np.ndarray:
    """A uniform sample (without replacement) of `sample` triangles of a dense pair graph
    holding many more: a random pair and a random third node, kept when both closing
    pairs exist (each triangle is hit with probability 3 / (P n)); duplicates dropped in
    draw order; at most 200 * sample draws."""
    rng = np.random.default_rng(seed)
    key = np.sort(np.minimum(f, g) * n + np.maximum(f, g))

    def has(a, b):
        k = np.minimum(a, b) * n + np.maximum(a, b)
        return key[np.minimum(np.searchsorted(key, k), len(key) - 1)] == k

    found = np.empty((0, 3), np.int64)
    for _ in range(100):
        p, c = rng.integers(0, len(f), 2 * sample), rng.integers(0, n, 2 * sample)
        a, b = f[p], g[p]
        ok = (c != a) & (c != b) & has(a, c) & has(b, c)
        found = np.r_[found, np.sort(np.c_[a[ok], b[ok], c[ok]], axis=1)]
        tk = (found[:, 0] * n + found[:, 1]) * n + found[:, 2]
        _, first = np.unique(tk, return_index=True)
        found = found[np.sort(first)]
        if len(found) >= sample:
            break
    return found[:sample]


def loop_points(n, f, g, lw_fg, lw_gf, var, tri: np.ndarray) -> dict:
    """Forward and backward sums of log w (and the loop variances) for the triangles
    `tri` (K, 3) of the mutual pairs (f, g) (P,): the points the loop figure draws."""
    key = f * n + g
    order = np.argsort(key)
    skey = key[order]

    def lw(a, b):                                              # log w(a->b), and the pair
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        p = order[np.searchsorted(skey, lo * n + hi)]
        return np.where(a == f[p], lw_fg[p], lw_gf[p]), p

    u, v, w = tri.T
    fw = [lw(u, v), lw(v, w), lw(w, u)]
    bw = [lw(u, w), lw(w, v), lw(v, u)]
    out = {"forward": fw[0][0] + fw[1][0] + fw[2][0], "backward": bw[0][0] + bw[1][0] + bw[2][0]}
    if var is not None:
        out["var"] = var[fw[0][1]] + var[fw[1][1]] + var[fw[2][1]]
    return out


def loops(n: int, f: np.ndarray, g: np.ndarray, lw_fg: np.ndarray, lw_gf: np.ndarray,
          var: np.ndarray | None = None, *, residual: np.ndarray | None = None,
          sample: int = LOOP_SAMPLE, seed: int = 0, device: str = "cpu", method: str = "auto",
          points: bool = True) -> tuple[dict, dict]:
    """Kolmogorov 3-cycles over the mutual pairs (f, g) (P,) with log w both ways.

    `residual` (P,): X minus any gradient (the Hodge residual): the same loop sums,
    computed without cancellation. `method`: "auto" (by cost), "complete", "dense" or
    "sparse" (see the module docstring). Returns the summary and the sampled loops'
    `forward`, `backward` (K,) (and `var`) for the figure.
    """
    R = (lw_fg - lw_gf) if residual is None else residual
    nodes, inv = np.unique(np.r_[f, g], return_inverse=True)
    m, P = len(nodes), len(f)
    fi, gi = inv[:P], inv[P:]
    out = {"count": 0, "chi2": None, "ndf": None, "chi2_ndf": None, "rms": None,
           "sum_d2": None, "sum_var": None, "method": None, "sample": 0}
    arrays = {"forward": np.zeros(0), "backward": np.zeros(0), "var": np.zeros(0)}
    if P < 3:
        return out, arrays
    oriented = None
    if method == "auto":
        method = "complete" if P == m * (m - 1) // 2 else "sparse"
        if method == "sparse" and m <= DENSE_LOOPS_MAX:
            oriented = _orient(m, fi, gi)
            if 4.0 * m ** 3 < FLOPS_PER_WEDGE * oriented["wedges"]:
                method = "dense"
    tri = np.empty((0, 3), np.int64)
    if method == "sparse":
        mom, tri = _moments_sparse(m, fi, gi, R, var, sample=sample if points else 0, seed=seed,
                                   oriented=oriented)
        tri = nodes[tri]
    else:
        mom = (_moments_complete(m, fi, gi, R, var) if method == "complete"
               else _moments_dense(m, fi, gi, R, var, device=analysis_device(device)))
        if points and mom["count"] <= sample:
            tri = np.column_stack(triangles(m, fi, gi))
        elif points:
            tri = _sample_dense(m, fi, gi, sample=sample, seed=seed)
        tri = nodes[tri]
    T = mom["count"]
    out.update(count=int(T), method=method, sum_d2=mom["sum_d2"], sum_var=mom["sum_var"])
    if T == 0:
        return out, arrays
    out["rms"] = float(np.sqrt(mom["sum_d2"] / T))
    if var is not None and mom["sum_var"] > 0:
        out["chi2_ndf"] = mom["sum_d2"] / mom["sum_var"]
        out["ndf"] = int(T)
        out["chi2"] = out["chi2_ndf"] * T
    if points and len(tri):
        arrays = {"var": np.zeros(0), **loop_points(n, f, g, lw_fg, lw_gf, var, tri)}
        out["sample"] = int(len(tri))
    return out, arrays


# --------------------------------------------------------------------------- Hodge


def hodge(n: int, f: np.ndarray, g: np.ndarray, X: np.ndarray, *, device: str = "cpu"):
    """Gradient part of the flow X (P,) on the pair graph (f, g): fraction of ||X||^2.

    The least-squares potential phi solves the graph Laplacian system L phi = B X
    (B X = the flow's divergence), by the same PCG as the fit: O(P) per iteration.
    Returns (summary, residual R = X - grad (P,))."""
    P = len(X)
    out = {"gradient_fraction": None, "n_pairs": int(P), "cycle_rank": None}
    if P == 0:
        return out, X
    nodes, inv = np.unique(np.r_[f, g], return_inverse=True)
    m = len(nodes)
    fi, gi = inv[:P], inv[P:]
    n_cc = connected_components(
        sp.csr_matrix((np.ones(P, np.int8), (fi, gi)), shape=(m, m)), directed=False)[0]
    out["cycle_rank"] = int(P - m + n_cc)
    total = float(np.dot(X, X))
    if total == 0:
        out["gradient_fraction"] = 1.0
        return out, X
    div = np.bincount(fi, X, minlength=m) - np.bincount(gi, X, minlength=m)   # (m,) B X
    phi = laplacian_solve(m, fi, gi, np.ones(P), div, device=device)
    grad = phi[fi] - phi[gi]                                   # (P,) gradient part
    # ||grad||^2 / ||X||^2 = <grad, X> / ||X||^2 for the projection; clip the rounding
    out["gradient_fraction"] = float(np.clip(np.dot(grad, X) / total, 0.0, 1.0))
    return out, X - grad


# --------------------------------------------------------------------------- entropy production


def _power_cpu(PT, pi, tol, max_iter):
    for _ in range(max_iter):
        nxt = 0.5 * (pi + PT @ pi)
        nxt /= nxt.sum()
        done = np.abs(nxt - pi).sum() < tol
        pi = nxt
        if done:
            break
    return pi


def _power_torch(n, src, dst, p, pi, tol, max_iter, dev):
    import torch

    from dbgpu.graph import in_sum, incidence

    order = np.argsort(src, kind="stable")
    inc = incidence(n, src[order], dst[order], dev, backend="torch")
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


def _dot(x, y) -> float:
    return float(np.einsum("i,i->", x, y))                     # not BLAS: see dbgpu.graph.ops


def _krylov_cpu(PT, guess, tol, max_iter):
    """pi from (I - P^T + 1 1^T / n) pi = 1 / n (non-singular for an irreducible chain)
    by BiCGSTAB from `guess`; None if it breaks down or does not converge. Two sparse
    products per iteration."""
    n = PT.shape[0]
    A = lambda x: x - PT @ x + x.sum() / n  # noqa: E731
    b = np.full(n, 1.0 / n)
    x = guess.astype(np.float64).copy()
    r = b - A(x)
    r0, p, v = r.copy(), np.zeros(n), np.zeros(n)
    rho = alpha = omega = 1.0
    stop = min(tol, 1e-12) * np.sqrt(_dot(b, b))
    for _ in range(max_iter):
        rho_new = _dot(r0, r)
        if rho_new == 0 or omega == 0:
            return None
        p = r + (rho_new / rho) * (alpha / omega) * (p - omega * v)
        v = A(p)
        alpha = rho_new / _dot(r0, v)
        s_ = r - alpha * v
        if np.sqrt(_dot(s_, s_)) <= stop:
            return x + alpha * p
        t = A(s_)
        tt = _dot(t, t)
        omega = _dot(t, s_) / tt if tt > 0 else 0.0
        x = x + alpha * p + omega * s_
        r = s_ - omega * t
        rho = rho_new
        if np.sqrt(_dot(r, r)) <= stop:
            return x if np.all(np.isfinite(x)) else None
    return None


def stationary(n: int, src: np.ndarray, dst: np.ndarray, p: np.ndarray, *,
               guess: np.ndarray | None = None, tol: float = 1e-13, max_iter: int = 20000,
               dense_max: int = 1000, device: str = "cpu"):
    """Stationary distribution (n,) of an irreducible chain P given as edges (src, dst, p).

    Dense direct solve for n <= dense_max; else (CPU) BiCGSTAB, falling back to power
    iteration on the lazy chain (I + P)/2 when it fails, or (CUDA) that power iteration
    in torch, started from `guess`. Returns (pi, residual ||pi P - pi||_1).
    """
    Pm = sp.csr_matrix((p, (src, dst)), shape=(n, n))
    PT = Pm.T.tocsr()
    if n <= dense_max:
        A = PT.toarray() - np.eye(n)
        A[-1, :] = 1.0
        b = np.zeros(n)
        b[-1] = 1.0
        pi = np.linalg.solve(A, b)
    else:
        g = np.full(n, 1.0 / n) if guess is None else guess / guess.sum()
        dev = analysis_device(device)
        if dev == "cpu":
            pi = _krylov_cpu(PT, g, tol, max_iter)
            if pi is None or np.abs(PT @ (pi / pi.sum()) - pi / pi.sum()).sum() > 1e3 * tol:
                pi = _power_cpu(PT, g, tol, max_iter)
        else:
            pi = _power_torch(n, src, dst, p, g, tol, max_iter, dev)
    pi = np.clip(pi, 0.0, None)
    pi /= pi.sum()
    resid = float(np.abs(PT @ pi - pi).sum())
    return pi, resid


def row_log_normalise(n: int, src: np.ndarray, log_w: np.ndarray):
    """log P(f,g) = log w - log sum_g' w(f->g') (E,), and log of each row's sum (n,),
    without underflow (each row shifted by its maximum). O(E)."""
    top = np.full(n, -np.inf)
    np.maximum.at(top, src, log_w)
    rel = np.exp(log_w - top[src])                             # (E,) in (0, 1]
    rows = np.bincount(src, weights=rel, minlength=n)
    with np.errstate(divide="ignore"):
        log_rows = top + np.log(rows)
    return log_w - log_rows[src], log_rows


def entropy_production(n: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None, *,
                       log_w: np.ndarray | None = None, guess_V: np.ndarray | None = None,
                       pairs: tuple | None = None, device: str = "cpu") -> dict:
    """Entropy production (nats per jump) of the jump chain of w (or log w) on n states.

    The graph (src, dst) must be strongly connected on its n states, without self edges.
    `guess_V` (n,), a fitted potential, warm-starts the stationary solve; `pairs`, the
    graph's `mutual_pairs` when the caller has them. O(E) memory.
    """
    if log_w is None:
        log_w = np.log(np.asarray(w, np.float64))
    log_p, log_rows = row_log_normalise(n, src, log_w)
    p = np.exp(log_p)                                          # (E,) row-normalised
    guess = None
    if guess_V is not None and n > 1000:                       # pi_f ~ rows_f exp(-V_f)
        lg = log_rows - guess_V
        guess = np.exp(lg - lg.max())
    pi, resid = stationary(n, src, dst, p, guess=guess, device=device)
    J = pi[src] * p                                            # (E,) stationary flux
    e_fg, e_gf = mutual_pairs(n, src, dst) if pairs is None else pairs
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pi = np.log(pi)
        lf = log_pi[src[e_fg]] + log_p[e_fg]
        lb = log_pi[src[e_gf]] + log_p[e_gf]
        terms = (J[e_fg] - J[e_gf]) * (lf - lb)
    terms = np.where(np.isfinite(lf) & np.isfinite(lb), terms, 0.0)
    one_way = np.ones(len(J), bool)
    one_way[e_fg] = False
    one_way[e_gf] = False
    return {"entropy_production": float(np.sum(terms)),
            "one_way_flux_fraction": float(J[one_way].sum() / J.sum()) if J.sum() > 0 else 0.0,
            "stationary_residual": resid, "n_states": int(n)}


# --------------------------------------------------------------------------- G^2


def reversible_fit(n: int, src: np.ndarray, dst: np.ndarray, count: np.ndarray, visits: np.ndarray, *,
                   V0: np.ndarray | None = None, device: str = "cpu"):
    """The reversible maximum-likelihood potential (Bradley–Terry with offsets
    log(n_f / n_g)) on a strongly connected count graph: (V (n,), edge logits z (E,),
    optimiser info). One Newton fit, O(E) per step; V0 warm-starts it."""
    offset = np.log(visits[src]) - np.log(visits[dst])          # (E,)
    V, _, info = minimise_action(n, src, dst, count.astype(np.float64), offset=offset, V0=V0,
                                 device=device)
    return V, V[src] - V[dst] + offset, info


def reversibility_test(n: int, src: np.ndarray, dst: np.ndarray, count: np.ndarray,
                       visits: np.ndarray, *, V0: np.ndarray | None = None, device: str = "cpu") -> dict:
    """Likelihood-ratio test of reversibility on a strongly connected count graph.

    (src, dst, count) (E,) are the edges among n states (all strongly connected),
    `visits` (n,) the queries from each state. See the module docstring.
    """
    V, z, info = reversible_fit(n, src, dst, count, visits, V0=V0, device=device)
    # every unordered pair once: its two directions (the second may be absent)
    e_fg, e_gf = mutual_pairs(n, src, dst)
    ll_model = np.dot(count, log_expit(z))                      # sum N log p over all edges
    m = count.astype(np.float64).copy()
    m[e_fg] += count[e_gf]
    m[e_gf] += count[e_fg]
    ll_sat = np.dot(count, np.log(count / m))
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


def _level(x) -> int | None:
    return None if not np.isfinite(x) else int(x)


def components_summary(states, comps, kept) -> dict:
    """The components as stats.json lists them (main first, then by size), each with its
    position and level relative to the main one. O(N) (one dict entry per state outside
    the main component)."""
    label, size, position = comps.label, comps.size, comps.position
    level = comps.level if comps.level is not None else np.full(len(size), np.nan)
    state_pos = np.where(kept, position[label], "dropped")                 # (N,)
    members = np.argsort(label, kind="stable")
    bounds = np.r_[0, np.cumsum(size)]
    listed = []
    for c in range(min(len(size), MAX_LISTED_COMPONENTS)):
        idx = members[bounds[c]:bounds[c + 1]]
        pos = "dropped" if not kept[idx].any() else str(position[c])
        listed.append({"size": int(size[c]), "position": pos,
                       "level": None if pos == "dropped" else _level(level[c]),
                       "states": [states[i] for i in idx[:MAX_NAMED_STATES]]})
    by_pos = {}
    for pos in ("above", "below", "unrelated", "dropped"):
        sel = state_pos == pos
        by_pos[pos] = {"states": int(sel.sum()), "components": int(len(np.unique(label[sel])))}
    outside = np.flatnonzero(label != 0)
    lv = level[label[outside]]
    ok = kept[outside] & np.isfinite(lv)
    return {
        "count": int(len(size)),
        "main_size": int(size[0]),
        "by_position": by_pos,
        "levels": {"above": int(max(lv[ok].max(initial=0), 0)), "below": int(max(-lv[ok].min(initial=0), 0))},
        "list": listed,
        "list_truncated": bool(len(size) > MAX_LISTED_COMPONENTS),
        "state_position": {states[i]: str(state_pos[i]) for i in outside},
        "state_level": {states[i]: int(lv[k]) for k, i in enumerate(outside) if ok[k]},
        "note": ("above: reaches the main component, potential +inf relative to it; below: "
                 "reached from it, -inf; unrelated: neither; dropped: removed by --threshold. "
                 "level: the longest chain of components from it to the main one (+k above) or "
                 "from the main one to it (-k below) in the condensation, so a state at +3 sits "
                 "above one at +2, which sits above one at +1"),
    }


# --------------------------------------------------------------------------- all of them


def _entropy_and_reversibility(edges, fit, e_fg, e_gf, *, device, reversibility: bool):
    n = len(edges.states)
    main = fit.components.label == 0
    mi = np.flatnonzero(main)
    if len(mi) <= 1:
        return ({"entropy_production": None, "one_way_flux_fraction": None,
                 "stationary_residual": None, "n_states": int(len(mi))}, None)
    local = np.full(n, -1, np.int64)
    local[mi] = np.arange(len(mi))
    me = main[edges.src] & main[edges.dst]
    s, d = local[edges.src[me]], local[edges.dst[me]]
    renum = np.cumsum(me) - 1                                   # edge index -> index among main edges
    keep = me[e_fg] & me[e_gf]
    ep = entropy_production(len(mi), s, d, log_w=edges.log_w[me], guess_V=fit.V[mi], device=device,
                            pairs=(renum[e_fg[keep]], renum[e_gf[keep]]))
    rev = None
    if reversibility and edges.count is not None:
        rev = reversibility_test(len(mi), s, d, edges.count[me], edges.visits[mi], V0=fit.V[mi],
                                 device=device)
    return ep, rev


def detailed_balance_stats(edges, fit, *, device: str = "cpu", points: bool = True,
                           reversibility: bool = True, seed: int = 0) -> tuple[dict, dict]:
    """Every statistic for an `Edges` graph and its `Fit`. Returns (stats, arrays) where
    arrays hold the per-pair points and the sampled loops the report plots (empty when
    `points` is False). O(E) memory except the dense loop path (O(m^2))."""
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

    hd, R = hodge(n, f, g, X, device=device)
    lp, loop_arrays = loops(n, f, g, lw[e_fg], lw[e_gf], var, residual=R, seed=seed, device=device,
                            points=points)
    ep, rev = _entropy_and_reversibility(edges, fit, e_fg, e_gf, device=device, reversibility=reversibility)
    stats = {"pairwise": pw, "loops": lp, "hodge": hd, "entropy_production": ep,
             "reversibility": rev}
    arrays = {}
    if points:
        arrays = {"pair_x": x, "pair_dV": y, "pair_var": pv if pv is not None else np.zeros(0),
                  "pair_f": f[main_pair], "pair_g": g[main_pair],
                  "loop_forward": loop_arrays["forward"], "loop_backward": loop_arrays["backward"],
                  "loop_var": loop_arrays.get("var", np.zeros(0))}
    return stats, arrays
