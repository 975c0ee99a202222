"""Least-action potential: vectorised torch, float64, on CPU or CUDA.

The action over a weighted directed graph (edges f->g with weight w > 0, no self edges)

    S(V) = (1/N_src) * sum_{f->g} w(f->g) * K(V(f) - V(g)),   K(x) = log(1 + exp(-x)),

with `N_src` the number of distinct source states among the edges (states with at least
one out-edge). `1/N_src` only scales S; it changes no minimiser.

Boundedness. S is convex; it has a minimiser exactly on each strongly connected
component (SCC) of the graph, unique up to a constant per SCC (its Hessian is the graph
Laplacian with edge weights `w K''(x) > 0`). An edge between two SCCs can be driven to
`K -> 0` by moving the upstream component up and the downstream one down without end:
relative to each other, states in different SCCs have unbounded potential. So we fit
every SCC on its internal edges (all at once, one block-diagonal problem), report the
potential of the largest SCC (the "main" one) with zero mean there, and null (NaN here)
for every other state. `action` is the infimum of S over all potentials: the internal
minima of all SCCs, inter-component edges contributing 0 in the limit.

Underflow: a weight may be given as log w (`fit_potential(..., log_w=...)`); the fit then
works on `w / max(w)` computed as `exp(log w - max log w)`, so an exact kernel whose every
probability underflows float64 (log T < -745) is fitted all the same. An edge more than
~745 nats below the largest cannot be represented even so: it is left out of the fit and
counted (`info["underflow_dropped"]`), never clamped to a made-up weight.

Optimiser (default, `method="newton"`): Newton's method with the Hessian as a weighted
graph Laplacian, each step solved inexactly by conjugate gradients with a Jacobi
preconditioner (Eisenstat–Walker forcing term), damped Levenberg–Marquardt style by
adding `lam * w/4` to the edge curvatures (lam >= 1 gives a majorising model: a sure
descent step where K is flat; lam -> 0 near the optimum: pure Newton); stops when every
node's gradient is below `tol` times its total incident weight. Also
`method="lbfgs"`: torch L-BFGS with strong-Wolfe line search, on the same diagonally
rescaled variables (kept for comparison; see benchmarks/bench_fit.py).

Determinism: node sums over edges never use atomics (`dbgpu.graph`), so a run on the
same device and inputs is bit-for-bit repeatable.

Backends: numpy on the CPU (no torch import), torch on CUDA (`dbgpu.graph`).

Cost: O(E) memory (about ten float64 edge arrays at once); each Newton step is one CG
solve of O(E) per iteration (the 1M-state / 10M-edge benchmark converges in tens of
steps; a dense 5,000-state kernel, 25M edges, in about ten).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.graph import (Components, Incidence, analysis_device, center, divergence, edge_diff, from_device,
                         in_sum, incidence, laplacian_matvec, ops, out_sum, pcg, prepare, strong_components,
                         to_device)

TINY = np.finfo(np.float64).tiny

# --------------------------------------------------------------------------- K and friends


def K(x):
    """K(x) = log(1 + exp(-x)), stable for any x (numpy array or torch tensor)."""
    if isinstance(x, np.ndarray):
        return np.logaddexp(0.0, -x)
    import torch

    return torch.clamp(-x, min=0) + torch.log1p(torch.exp(-x.abs()))


# --------------------------------------------------------------------------- action


def _terms(inc: Incidence, V, w, offset=None):
    """The action's gradient (n,), the edge curvatures w K''(x) (E,) and sigmoid(-x) =
    -K'(x) (E,), at x = V[src] - V[dst] (+ offset)."""
    x = edge_diff(inc, V)
    if offset is not None:
        x = x + offset
    s = ops(inc).sigmoid(-x)                                    # (E,)
    ws = w * s
    return divergence(inc, -ws), ws * (1 - s), s


def _action_value(inc: Incidence, V, w, offset=None) -> float:
    """Unnormalised action sum(w K(x)) at V."""
    x = edge_diff(inc, V)
    if offset is not None:
        x = x + offset
    return ops(inc).dot(w, ops(inc).softplus_neg(x))


def action_terms(inc: Incidence, V, w, offset=None):
    """Unnormalised action sum(w K(x)), its gradient (n,), and the edge curvatures (E,)."""
    g, c, _ = _terms(inc, V, w, offset)
    return _action_value(inc, V, w, offset), g, c


def action(V, src, dst, w, *, n_src: int | None = None) -> float:
    """S(V) for numpy inputs; `n_src` defaults to the distinct sources."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    V = np.asarray(V, dtype=np.float64)
    total = float(np.dot(np.asarray(w, np.float64), K(V[src] - V[dst])))
    return total / (n_src if n_src is not None else len(np.unique(src)))


def action_and_grad(V, src, dst, w, *, n_src: int | None = None):
    """S(V) and its analytic gradient dS/dV (n,), for numpy inputs (tests, tools)."""
    V = np.asarray(V, dtype=np.float64)
    inc = incidence(len(V), src, dst, "cpu")
    f, g, _ = action_terms(inc, V, np.asarray(w, np.float64))
    m = n_src if n_src is not None else len(np.unique(src))
    return f / m, g / m


def hessian_vector(V, v, src, dst, w, *, n_src: int | None = None) -> np.ndarray:
    """H v for the Hessian of S at V: the weighted Laplacian with weights w K''(x)."""
    inc = incidence(len(V), src, dst, "cpu")
    _, c, _ = _terms(inc, np.asarray(V, np.float64), np.asarray(w, np.float64))
    hv = divergence(inc, c * edge_diff(inc, np.asarray(v, np.float64)))
    m = n_src if n_src is not None else len(np.unique(src))
    return hv / m


# --------------------------------------------------------------------------- optimisers


def _newton(inc, w, offset, deg, V, *, tol, max_iter, max_cg, lam: float = 1.0):
    """Damped (Levenberg–Marquardt) Newton–CG on the Laplacian structure, from V.

    Each step solves L(c + lam w/4) p = -g by PCG, where L(c) is the Hessian (edge
    curvatures c = w K''(x)). Since K'' <= 1/4, lam >= 1 makes the quadratic model an
    upper bound of the action (a guaranteed descent step even where K is flat); lam
    shrinks toward 0 (pure Newton, quadratic convergence) while the model predicts the
    actual decrease well (ratio test), and grows when it does not. The actual decrease
    is summed edge by edge as K(x + d) - K(x) = log1p(sigmoid(-x) expm1(-d)), exact to
    rounding even at the optimum.
    """
    o = ops(inc)
    if not inc.is_torch:                      # a bad trial step overflows expm1: it is rejected
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return _newton_loop(inc, w, offset, deg, V, o, tol=tol, max_iter=max_iter, max_cg=max_cg, lam=lam)
    return _newton_loop(inc, w, offset, deg, V, o, tol=tol, max_iter=max_iter, max_cg=max_cg, lam=lam)


def _newton_loop(inc, w, offset, deg, V, o, *, tol, max_iter, max_cg, lam):
    g, c, s = _terms(inc, V, w, offset)
    it, cg_total, gmax = 0, 0, float("inf")
    for it in range(max_iter + 1):
        gmax = float((abs(g) / deg).max()) if inc.n else 0.0
        if gmax <= tol or it == max_iter:
            break
        ce = c + (0.25 * lam) * w if lam else c                   # (E,) damped curvatures
        matvec, diag = laplacian_matvec(inc, ce)
        eta = min(0.5, math.sqrt(gmax))                           # forcing term
        p, k = pcg(matvec, -g, o.clamp_min(diag, TINY), inc, rtol=eta, maxiter=max_cg)
        del ce, matvec
        cg_total += k
        dp = edge_diff(inc, p)                                    # (E,)
        pred = -(o.dot(g, p) + 0.5 * o.dot(c * dp, dp))           # model decrease
        actual = -o.dot(w, o.log1p(s * o.expm1(-dp)))
        del dp
        rho = actual / pred if pred > 0 else -1.0
        if actual > 0:                                            # accept: the action went down
            V = V + p
            g, c, s = _terms(inc, V, w, offset)
        if rho > 0.75:
            lam = 0.0 if lam < 1e-6 else lam / 4
        elif rho < 0.25:
            lam = max(4 * lam, 1e-4)
            if lam > 1e12:                                        # no progress possible
                break
    return V, it, gmax, cg_total


def _lbfgs(inc, w, offset, deg, V0, *, tol, max_iter):
    import torch

    scale = deg.rsqrt()                                           # V = scale * u
    u = (V0 / scale).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                            tolerance_grad=tol * deg.min().item() ** 0.5,
                            tolerance_change=1e-16, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        with torch.no_grad():
            f, g, _ = action_terms(inc, scale * u, w, offset)
        u.grad = g * scale
        return torch.as_tensor(f, dtype=torch.float64)

    opt.step(closure)
    with torch.no_grad():
        V = scale * u.detach()
        g, _, _ = _terms(inc, V, w, offset)
    n_iter = opt.state[opt._params[0]].get("n_iter", 0)
    return V, n_iter, (g.abs() / deg).max().item(), 0


def minimise_action(n: int, src, dst, w, *, offset=None, V0=None, device="cpu", method="newton",
                    tol=1e-12, max_iter=None, backend: str | None = None, damping: float = 1.0):
    """Minimise sum(w K(V_src - V_dst + offset)) on a graph whose weakly connected pieces
    are all strongly connected (bounded problem), from V0 (default 0). Returns (V (n,)
    numpy, unnormalised minimum, info dict). V has zero mean over each weakly connected
    piece. `damping`: the Newton solver's first Levenberg–Marquardt lam (1: safe from
    anywhere; 0: pure Newton, for a start known to be close). O(E) memory; numpy on the CPU, torch on CUDA (and for method "lbfgs", or with
    backend="torch": the CUDA code path on any device)."""
    dev = analysis_device(device)
    if method not in ("newton", "lbfgs"):
        raise DbgpuError(f"unknown fit method {method!r} (expected newton or lbfgs)")
    backend = "torch" if method == "lbfgs" else backend
    inc, new, order = prepare(n, src, dst, dev, backend=backend)
    w = np.asarray(w, np.float64)
    w_scale = float(w.mean()) if len(w) else 1.0                  # optimise w / mean(w)
    wt = to_device(inc, w / w_scale, order)
    off = None if offset is None else to_device(inc, offset, order)
    deg = ops(inc).clamp_min(out_sum(inc, wt) + in_sum(inc, wt), TINY)
    V = np.zeros(n) if V0 is None else np.nan_to_num(np.asarray(V0, np.float64))
    V = to_device(inc, V if new is None else V[np.argsort(new)])
    t0 = time.perf_counter()
    if method == "newton":
        V, it, gmax, cg = _newton(inc, wt, off, deg, V, tol=tol, max_iter=max_iter or 200,
                                  max_cg=max(200, min(n, 5000)), lam=damping)
    else:
        V, it, gmax, cg = _lbfgs(inc, wt, off, deg, V, tol=tol, max_iter=max_iter or 20000)
    V = center(inc, V)                                            # zero mean per piece
    f = _action_value(inc, V, wt, off)
    Vn = from_device(inc, V, new)                                 # back to the caller's order
    info = {"method": method, "device": dev, "iterations": int(it), "cg_iterations": int(cg),
            "grad_max_rel": float(gmax), "converged": bool(gmax <= tol),
            "seconds": time.perf_counter() - t0}
    return Vn, f * w_scale, info


# --------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class Fit:
    """The least-action fit of a weighted graph."""

    V: np.ndarray              # (N,) float64, zero mean over the main SCC, NaN elsewhere
    V_within: np.ndarray       # (N,) each SCC's own zero-mean potential (0 for singletons)
    components: Components
    action: float              # infimum of S over all potentials
    action_main: float         # the main SCC's internal edges' share of it
    n_src: int                 # distinct source states: the action's 1/N_src
    info: dict                 # optimiser: method, device, iterations, converged, seconds;
                               # log_w_max and underflow_dropped when fitted from log w


#: pair_start's curvature weights span at most e^30: pairs far below the largest (an exact
#: kernel's log T spans ~80 nats under a random model) would leave the Laplacian
#: numerically singular and the start far off
PAIR_START_RANGE = 30.0
#: pure Newton from the pair start gets this many steps (it needs about 5-20 where the start
#: is good) before the fit starts again from 0 with the safe damping
PAIR_START_STEPS = 60


def pair_start(n: int, src, dst, log_w, *, min_mutual: float = 0.9) -> np.ndarray | None:
    """A starting potential (n,) close to the minimum when most edges have their reverse:
    the least-squares fit of V_f - V_g to the pairs' log-ratios, each pair weighted by the
    curvature of its own action at its optimum, w_fg w_gf / (w_fg + w_gf) (the action's
    quadratic approximation, one-way edges left out): one Laplacian solve, O(P) per CG
    iteration. None when fewer than `min_mutual` of the edges lie on mutual pairs."""
    from dbgpu.graph import laplacian_solve, mutual_pairs

    e_fg, e_gf = mutual_pairs(n, src, dst)
    if len(e_fg) == 0 or 2 * len(e_fg) < min_mutual * len(src):
        return None
    f, g = src[e_fg], dst[e_fg]
    a, b = log_w[e_fg], log_w[e_gf]
    X = a - b                                                  # (P,) log-ratios
    log_c = np.minimum(a, b) - np.log1p(np.exp(-np.abs(X)))    # log(w_fg w_gf / (w_fg + w_gf))
    c = np.exp(np.maximum(log_c - log_c.max(), -PAIR_START_RANGE))  # floored: a solvable Laplacian
    cX = c * X
    div = np.bincount(f, cX, minlength=n) - np.bincount(g, cX, minlength=n)
    return laplacian_solve(n, f, g, c, div, rtol=1e-6)


def _relative_weights(w, log_w):
    """(w / scale, log scale, kept edges): from w as given, or from log w without underflow."""
    if log_w is None:
        w = np.asarray(w, np.float64)
        return w, 0.0, None
    log_w = np.asarray(log_w, np.float64)
    shift = float(log_w.max()) if len(log_w) else 0.0
    rel = np.exp(log_w - shift)
    keep = rel > 0
    return rel, shift, (None if keep.all() else keep)


def fit_potential(n: int, src, dst, w=None, *, log_w=None, V0=None, device: str = "cpu",
                  method: str = "newton", tol: float = 1e-12, max_iter: int | None = None,
                  backend: str | None = None) -> Fit:
    """Least-action potential of the weighted graph (src, dst, w) on n states.

    Give the weights as `w` (> 0) or as `log_w` (finite; see the module docstring on
    underflow). Edges must join distinct states. Every SCC is fitted on its internal
    edges, from V0 (n,) when given (a warm start), else from `pair_start` when most edges
    have their reverse (exact kernels: pure Newton from there, about half the steps),
    else from 0. The main (largest) SCC's potential is returned in `V`, NaN elsewhere.
    O(E) time per Newton step and O(E) memory.
    """
    src = np.asarray(src, np.int64)
    dst = np.asarray(dst, np.int64)
    w, shift, keep = _relative_weights(w, log_w)
    lw = None if log_w is None else np.asarray(log_w, np.float64)
    dropped = 0
    if keep is not None:
        dropped = int((~keep).sum())
        src, dst, w, lw = src[keep], dst[keep], w[keep], lw[keep]
    if len(src) == 0:
        raise DbgpuError("empty graph: no edges to fit")
    if np.any(src == dst) or not np.all(w > 0):
        raise ValueError("fit_potential: edges must join distinct states and have w > 0")
    comps = strong_components(n, src, dst)
    lab = comps.label
    inner = lab[src] == lab[dst]                                   # (E,) edges inside an SCC
    n_src = len(np.unique(src))
    # compact numbering of the states in non-trivial SCCs
    members = np.flatnonzero(comps.size[lab] > 1)
    local = np.full(n, -1, np.int64)
    local[members] = np.arange(len(members))
    V_within = np.zeros(n)
    damping = 1.0
    if V0 is None and method == "newton":
        V0 = pair_start(n, src, dst, np.log(w) if lw is None else lw)
        damping = 1.0 if V0 is None else 0.0
    if len(members):
        edges = (len(members), local[src[inner]], local[dst[inner]], w[inner])
        opts = dict(device=device, method=method, tol=tol, max_iter=max_iter, backend=backend)
        first = {**opts, "max_iter": PAIR_START_STEPS} if damping == 0.0 and max_iter is None else opts
        Vl, f, info = minimise_action(*edges, V0=None if V0 is None else np.asarray(V0)[members],
                                      damping=damping, **first)
        if damping == 0.0 and not info["converged"]:              # the pair start misled pure Newton:
            Vr, fr, ir = minimise_action(*edges, V0=None, damping=1.0, **opts)   # the safe start
            if ir["converged"] or fr < f:
                Vl, f, info = Vr, fr, {**ir, "restarted": "pure Newton from the pair start did not converge"}
        V_within[members] = Vl
    else:
        f, info = 0.0, {"method": method, "device": analysis_device(device), "iterations": 0,
                        "cg_iterations": 0, "grad_max_rel": 0.0, "converged": True, "seconds": 0.0}
    main_edges = inner & (lab[src] == 0)
    if main_edges.sum() == inner.sum():                            # one non-trivial SCC: all of it
        action_main = f
    else:
        xm = V_within[src[main_edges]] - V_within[dst[main_edges]]
        action_main = float(np.dot(w[main_edges], K(xm)))
    V = np.where(lab == 0, V_within, np.nan)
    if log_w is not None:
        info = {**info, "log_w_max": shift, "underflow_dropped": dropped}
    scale = math.exp(shift) if shift < 709 else math.inf
    return Fit(V=V, V_within=V_within, components=comps, action=f * scale / n_src,
               action_main=action_main * scale / n_src, n_src=n_src, info=info)
