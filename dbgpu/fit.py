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

Cost: O(E) memory; each Newton step is one CG solve of O(E) per iteration (the 1M-state
/ 10M-edge benchmark converges in tens of steps).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from dbgpu.devices import resolve_device
from dbgpu.errors import DbgpuError
from dbgpu.graph import (Components, Incidence, center, divergence, edge_diff, in_sum, incidence, out_sum, pcg,
                         prepare, strong_components)

# --------------------------------------------------------------------------- K and friends


def K(x: torch.Tensor) -> torch.Tensor:
    """K(x) = log(1 + exp(-x)), stable for any x."""
    return torch.clamp(-x, min=0) + torch.log1p(torch.exp(-x.abs()))


# --------------------------------------------------------------------------- action


def _terms(inc: Incidence, V: torch.Tensor, w: torch.Tensor, offset=None):
    """Unnormalised action sum(w K(x)), its gradient (n,), the edge curvatures
    w K''(x) (E,) and sigmoid(-x) = -K'(x) (E,), at x = V[src] - V[dst] (+ offset)."""
    x = edge_diff(inc, V)
    if offset is not None:
        x = x + offset
    s = torch.sigmoid(-x)                                       # (E,)
    return (w * K(x)).sum(), divergence(inc, -w * s), w * s * (1 - s), s


def action_terms(inc: Incidence, V: torch.Tensor, w: torch.Tensor, offset=None):
    """Unnormalised action sum(w K(x)), its gradient (n,), and the edge curvatures (E,)."""
    return _terms(inc, V, w, offset)[:3]


def action(V, src, dst, w, *, n_src: int | None = None) -> float:
    """S(V) for numpy (or torch) inputs; `n_src` defaults to the distinct sources."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    V = torch.as_tensor(np.asarray(V, dtype=np.float64))
    x = V[torch.as_tensor(src)] - V[torch.as_tensor(dst)]
    total = (torch.as_tensor(np.asarray(w, dtype=np.float64)) * K(x)).sum().item()
    return total / (n_src if n_src is not None else len(np.unique(src)))


def action_and_grad(V, src, dst, w, *, n_src: int | None = None):
    """S(V) and its analytic gradient dS/dV (n,), for numpy inputs (tests, tools)."""
    src = np.asarray(src, dtype=np.int64)
    order = np.argsort(src, kind="stable")
    V = np.asarray(V, dtype=np.float64)
    inc = incidence(len(V), src[order], np.asarray(dst, dtype=np.int64)[order], "cpu")
    wt = torch.as_tensor(np.asarray(w, dtype=np.float64)[order])
    f, g, _ = action_terms(inc, torch.as_tensor(V), wt)
    m = n_src if n_src is not None else len(np.unique(src))
    return f.item() / m, g.numpy() / m


def hessian_vector(V, v, src, dst, w, *, n_src: int | None = None) -> np.ndarray:
    """H v for the Hessian of S at V: the weighted Laplacian with weights w K''(x)."""
    src = np.asarray(src, dtype=np.int64)
    order = np.argsort(src, kind="stable")
    inc = incidence(len(V), src[order], np.asarray(dst, dtype=np.int64)[order], "cpu")
    wt = torch.as_tensor(np.asarray(w, dtype=np.float64)[order])
    _, _, c = action_terms(inc, torch.as_tensor(np.asarray(V, np.float64)), wt)
    hv = divergence(inc, c * edge_diff(inc, torch.as_tensor(np.asarray(v, np.float64))))
    m = n_src if n_src is not None else len(np.unique(src))
    return hv.numpy() / m


# --------------------------------------------------------------------------- optimisers


def _newton(inc, w, offset, deg, piece_len, *, tol, max_iter, max_cg):
    """Damped (Levenberg–Marquardt) Newton–CG on the Laplacian structure.

    Each step solves L(c + lam w/4) p = -g by PCG, where L(c) is the Hessian (edge
    curvatures c = w K''(x)). Since K'' <= 1/4, lam >= 1 makes the quadratic model an
    upper bound of the action (a guaranteed descent step even where K is flat); lam
    shrinks toward 0 (pure Newton, quadratic convergence) while the model predicts the
    actual decrease well (ratio test), and grows when it does not. The actual decrease
    is summed edge by edge as K(x + d) - K(x) = log1p(sigmoid(-x) expm1(-d)), exact to
    rounding even at the optimum.
    """
    V = torch.zeros(inc.n, dtype=torch.float64, device=w.device)
    f, g, c, s = _terms(inc, V, w, offset)
    tiny = torch.finfo(torch.float64).tiny
    lam = 1.0
    it, steps, cg_total, gmax = 0, 0, 0, float("inf")
    for it in range(max_iter + 1):
        gmax = (g.abs() / deg).max().item()
        if gmax <= tol or it == max_iter:
            break
        ce = c + (0.25 * lam) * w if lam else c                   # (E,) damped curvatures
        diag = (out_sum(inc, ce) + in_sum(inc, ce)).clamp_min(tiny)
        eta = min(0.5, math.sqrt(gmax))                           # forcing term
        p, k = pcg(lambda v: divergence(inc, ce * edge_diff(inc, v)), -g, diag, piece_len,
                   rtol=eta, maxiter=max_cg)
        cg_total += k
        dp = edge_diff(inc, p)                                    # (E,)
        pred = -((g * p).sum() + 0.5 * (c * dp * dp).sum()).item()  # model decrease
        actual = -(w * torch.log1p(s * torch.expm1(-dp))).sum().item()
        rho = actual / pred if pred > 0 else -1.0
        if actual > 0:                                            # accept: the action went down
            V = V + p
            f, g, c, s = _terms(inc, V, w, offset)
            steps += 1
        if rho > 0.75:
            lam = 0.0 if lam < 1e-6 else lam / 4
        elif rho < 0.25:
            lam = max(4 * lam, 1e-4)
            if lam > 1e12:                                        # no progress possible
                break
    return V, f.item(), it, gmax, cg_total


def _lbfgs(inc, w, offset, deg, *, tol, max_iter):
    scale = deg.rsqrt()                                           # V = scale * u
    u = torch.zeros(inc.n, dtype=torch.float64, device=w.device, requires_grad=True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                            tolerance_grad=tol * deg.min().item() ** 0.5,
                            tolerance_change=1e-16, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        with torch.no_grad():
            f, g, _ = action_terms(inc, scale * u, w, offset)
        u.grad = g * scale
        return f

    opt.step(closure)
    with torch.no_grad():
        V = scale * u.detach()
        f, g, _ = action_terms(inc, V, w, offset)
    n_iter = opt.state[opt._params[0]].get("n_iter", 0)
    return V, f.item(), n_iter, (g.abs() / deg).max().item(), 0


def minimise_action(n: int, src, dst, w, *, offset=None, device="cpu", method="newton",
                    tol=1e-12, max_iter=None):
    """Minimise sum(w K(V_src - V_dst + offset)) on a graph whose weakly connected pieces
    are all strongly connected (bounded problem). Returns (V (n,) numpy, unnormalised
    minimum, info dict). V has zero mean over each weakly connected piece."""
    dev = resolve_device(device)
    inc, piece_len, new, order = prepare(n, src, dst, dev)
    wt = torch.as_tensor(np.asarray(w, np.float64)[order], device=dev)
    w_scale = wt.mean().item() if len(wt) else 1.0                 # optimise w / mean(w)
    wt = wt / w_scale
    off = None if offset is None else torch.as_tensor(np.asarray(offset, np.float64)[order], device=dev)
    deg = (out_sum(inc, wt) + in_sum(inc, wt)).clamp_min(torch.finfo(torch.float64).tiny)
    t0 = time.perf_counter()
    if method == "newton":
        V, f, it, gmax, cg = _newton(inc, wt, off, deg, piece_len, tol=tol,
                                     max_iter=max_iter or 200, max_cg=max(200, min(n, 5000)))
    elif method == "lbfgs":
        V, f, it, gmax, cg = _lbfgs(inc, wt, off, deg, tol=tol, max_iter=max_iter or 20000)
    else:
        raise DbgpuError(f"unknown fit method {method!r} (expected newton or lbfgs)")
    V = center(V, piece_len)                                      # zero mean per piece
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    Vn = V.cpu().numpy()[new]                                      # back to the caller's order
    info = {"method": method, "device": str(dev), "iterations": int(it), "cg_iterations": int(cg),
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
    info: dict                 # optimiser: method, device, iterations, converged, seconds


def fit_potential(n: int, src, dst, w, *, device: str = "cpu", method: str = "newton",
                  tol: float = 1e-12, max_iter: int | None = None) -> Fit:
    """Least-action potential of the weighted graph (src, dst, w) on n states.

    Edges must join distinct states and have w > 0. Every SCC is fitted on its internal
    edges; the main (largest) SCC's potential is returned in `V`, NaN elsewhere.
    """
    src = np.asarray(src, np.int64)
    dst = np.asarray(dst, np.int64)
    w = np.asarray(w, np.float64)
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
    if len(members):
        Vl, f, info = minimise_action(len(members), local[src[inner]], local[dst[inner]], w[inner],
                                      device=device, method=method, tol=tol, max_iter=max_iter)
        V_within[members] = Vl
    else:
        f, info = 0.0, {"method": method, "device": str(resolve_device(device)), "iterations": 0,
                        "cg_iterations": 0, "grad_max_rel": 0.0, "converged": True, "seconds": 0.0}
    main_edges = inner & (lab[src] == 0)
    xm = V_within[src[main_edges]] - V_within[dst[main_edges]]
    action_main = float(np.sum(w[main_edges] * (np.maximum(-xm, 0) + np.log1p(np.exp(-np.abs(xm))))))
    V = np.where(lab == 0, V_within, np.nan)
    return Fit(V=V, V_within=V_within, components=comps, action=f / n_src,
               action_main=action_main / n_src, n_src=n_src, info=info)
