"""The reversible Markov state model that the least-action fit already is.

With `u = exp(-V)` the least action's stationarity condition (`dbgpu.fit`) reads, for
every state f of the main strongly connected component,

    sum_g (w_gf u_g - w_fg u_f) / (u_f + u_g) = 0,

which is the fixed point of the reversible maximum-likelihood Markov model with counts
`c = w` (Bowman et al. 2009, Prinz et al. 2011; deeptime's
`MaximumLikelihoodMSM(reversible=True)`):

    x_fg = (c_fg + c_gf) / (c_f / pi_f + c_g / pi_g),   c_f = sum_g c_fg,

once `pi_f = r_f u_f` with `r_f = sum_{g != f} w_fg` (the out-weight inside the main
component). So for the main component (n_main states, its internal edges only):

    x_fg = (w_fg + w_gf) u_f u_g / (u_f + u_g) = (w_fg + w_gf) / (exp(V_f) + exp(V_g))
    pi_f = sum_g x_fg  (= r_f u_f exactly at the fit's minimum), normalised to sum 1
    P_fg = x_fg / sum_g' x_fg'

x is symmetric, so P is reversible with respect to pi (`pi_f P_fg = pi_g P_gf`), its rows
sum to 1 and `pi P = pi`, all to rounding whatever the fit's tolerance; the diagonal is
zero (self-transitions are not analysed). `r_f u_f` differs from the row sums of x by
exactly the fit's gradient (`x_f - r_f u_f = u_f dS/dV_f` up to sign), reported as
`stationarity_residual` (the largest |log pi_f - log(r_f u_f / Z)|). docs/msm.md derives
all of this and says what the model is for each kind of weights.

Everything in log space (log w, V: no overflow or underflow), vectorised, O(E) time and
memory plus one sort of the edges. Eigenvalues of P: those of the symmetric matrix
`S = D^1/2 P D^-1/2 = x_fg / sqrt(pi_f pi_g)` (D = diag(pi)), dense up to
`DENSE_EIG_MAX` states, Lanczos (scipy eigsh) up to `SPARSE_EIG_MAX`, skipped above
(`eigenvalues(..., max_states=)` lifts the limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from dbgpu.graph import mutual_pairs
from dbgpu.stats import row_log_normalise

#: up to this many states the eigenvalues come from a dense symmetric solve (O(n^3))
DENSE_EIG_MAX = 500
#: up to this many states from Lanczos (scipy eigsh, O(E) per iteration); none above: on
#: the clustered spectra of random-graph chains Lanczos needs many restarts (measured on a
#: 2-core VM, Metropolis chain of degree 8: 0.8 s at 20,000 states, 112 s at 100,000,
#: against 0.3 s and 1.9 s for the fit itself)
SPARSE_EIG_MAX = 20_000
#: eigenvalues reported (the stationary 1 included)
N_EIGENVALUES = 10


@dataclass(frozen=True)
class ReversibleMsm:
    """The reversible Markov model of the main component (m states)."""

    members: np.ndarray            # (m,) int64: the main component's state indices, ascending
    pi: np.ndarray                 # (m,) float64, sums to 1: the stationary distribution
    P: sp.csr_matrix               # (m, m) float64: rows sum to 1, reversible w.r.t. pi, zero diagonal
    stationarity_residual: float   # max |log pi_f - log(r_f u_f / Z)|: the fit's gradient, relative


def _pairs(n: int, src: np.ndarray, dst: np.ndarray, log_w: np.ndarray):
    """Every unordered pair {a, b} joined by an edge, once: (a, b, log(w_ab + w_ba)) (P,),
    a missing direction contributing 0."""
    e_fg, e_gf = mutual_pairs(n, src, dst)
    one_way = np.ones(len(src), bool)
    one_way[e_fg] = False
    one_way[e_gf] = False
    a = np.r_[src[e_fg], src[one_way]]
    b = np.r_[dst[e_fg], dst[one_way]]
    ls = np.r_[np.logaddexp(log_w[e_fg], log_w[e_gf]), log_w[one_way]]
    return a, b, ls


def reversible_msm(n: int, src, dst, log_w, V) -> ReversibleMsm:
    """The reversible Markov model of a fitted potential on n states.

    `src, dst, log_w` (E,): the weighted edges the fit saw (no self edges); `V` (n,): the
    fitted potential, finite exactly on the main component (NaN elsewhere, as
    `Fit.V`). Only edges with both ends in the main component count. O(E log E).
    """
    src = np.asarray(src, np.int64)
    dst = np.asarray(dst, np.int64)
    log_w = np.asarray(log_w, np.float64)
    V = np.asarray(V, np.float64)
    members = np.flatnonzero(np.isfinite(V))
    m = len(members)
    local = np.full(n, -1, np.int64)
    local[members] = np.arange(m)
    inner = (local[src] >= 0) & (local[dst] >= 0) & np.isfinite(log_w)
    s, d, lw = local[src[inner]], local[dst[inner]], log_w[inner]
    if len(s) == 0:                                        # a lone state: no move to model
        return ReversibleMsm(members=members, pi=np.full(m, 1.0 / max(m, 1)),
                             P=sp.csr_matrix((m, m)), stationarity_residual=0.0)
    Vm = V[members] - V[members].min()                     # (m,) shifted: exp(V) stays finite near 0
    a, b, ls = _pairs(m, s, d, lw)
    log_x = ls - np.logaddexp(Vm[a], Vm[b])                # (P,) log x_ab = log x_ba
    rows = np.r_[a, b]                                     # (2P,) both directions
    cols = np.r_[b, a]
    log_xd = np.r_[log_x, log_x]
    log_P, log_xf = row_log_normalise(m, rows, log_xd)     # (2P,), (m,) log of x's row sums
    log_pi = log_xf - np.logaddexp.reduce(log_xf)
    # the prediction pi_f ~ r_f u_f, from the directed weights themselves
    _, log_r = row_log_normalise(m, s, lw)
    pred = log_r - Vm
    pred -= np.logaddexp.reduce(pred)
    P = sp.csr_matrix((np.exp(log_P), (rows, cols)), shape=(m, m))
    P.sort_indices()
    return ReversibleMsm(members=members, pi=np.exp(log_pi), P=P,
                         stationarity_residual=float(np.abs(log_pi - pred).max()))


def eigenvalues(msm: ReversibleMsm, *, k: int = N_EIGENVALUES,
                max_states: int = SPARSE_EIG_MAX) -> np.ndarray | None:
    """The k eigenvalues of P largest in modulus: the stationary 1 first, then by
    decreasing modulus (a bipartite chain's -1 second); None when the model has more than
    `max_states` states or
    Lanczos does not converge. P is reversible, so they are real: those of the symmetric
    S = D^1/2 P D^-1/2. Dense O(m^3) up to DENSE_EIG_MAX states, else O(E) per Lanczos
    iteration."""
    m = len(msm.pi)
    if m < 2 or m > max_states:
        return None
    q = np.sqrt(msm.pi)
    coo = msm.P.tocoo()
    S = sp.csr_matrix((coo.data * q[coo.row] / q[coo.col], (coo.row, coo.col)), shape=(m, m))
    S = (S + S.T) * 0.5                                    # symmetric up to rounding: made exact
    k = min(k, m)
    if m <= DENSE_EIG_MAX or k >= m - 1:
        ev = np.linalg.eigvalsh(S.toarray())
    else:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        try:
            ev = eigsh(S, k=k, which="LM", return_eigenvectors=False, tol=1e-10, maxiter=5000, v0=q)
        except ArpackNoConvergence:
            return None
    top = int(np.argmax(ev))                               # the stationary 1 (largest algebraic)
    rest = np.delete(ev, top)
    return np.r_[ev[top], rest[np.argsort(-np.abs(rest), kind="stable")]][:k]


#: |lambda| this close to 1 is 1 to rounding: an infinite timescale
UNIT_EIG_TOL = 1e-12


def implied_timescales(ev: np.ndarray) -> np.ndarray:
    """t_i = -1 / log|lambda_i| in jumps, for every eigenvalue after the stationary one;
    inf for |lambda| = 1 to rounding (the -1 of a periodic, bipartite chain such as a
    star), 0 for lambda = 0."""
    mag = np.abs(np.asarray(ev[1:], np.float64))
    with np.errstate(divide="ignore"):
        t = -1.0 / np.log(np.clip(mag, 0.0, 1.0))
    return np.where(mag >= 1.0 - UNIT_EIG_TOL, np.inf, t)


def msm_summary(msm: ReversibleMsm, *, weights: str) -> dict:
    """stats.json's `msm` section: size, residual, eigenvalues and implied timescales."""
    ev = eigenvalues(msm)
    ts = None if ev is None else implied_timescales(ev)
    return {
        "n_states": int(len(msm.pi)),
        "n_transitions": int(msm.P.nnz),
        "stationarity_residual": msm.stationarity_residual,
        "eigenvalues": None if ev is None else [float(e) for e in ev],
        "eigenvalues_note": None if ev is not None else (
            f"not computed: more than {SPARSE_EIG_MAX} states (dbgpu.msm.eigenvalues(..., max_states=) "
            "computes them)" if len(msm.pi) > SPARSE_EIG_MAX else "not computed: Lanczos did not converge"
            if len(msm.pi) > 1 else "a single state"),
        "implied_timescales": None if ts is None else [float(t) for t in ts],
        "counts": WEIGHT_MEANING.get(weights, weights),
        "note": "the reversible maximum-likelihood Markov model with counts c = w on the main "
                "component: pi_f ~ r_f exp(-V_f) (r_f = sum_{g != f} w_fg), "
                "P_fg = (w_fg + w_gf) / ((exp(V_f) + exp(V_g)) x_f), x_f = P's row normaliser; "
                "timescales in jumps, -1/log|lambda|; see docs/msm.md",
    }


#: what the MSM's counts c = w are, per weights mode (stats.json and the report say it)
WEIGHT_MEANING = {
    "exact": "w = T(f,g): the reversible MLE of uniformly sampled sources, infinitely many answers each",
    "counts": "w = N(f->g)/n_f: the visit-normalised counts (the raw-count MLE only when every n_f is equal)",
    "high_reject": "w = min(1, N/N0), N0 = 20000/n_states: the raw counts N capped at N0 (exactly the "
                   "raw-count MLE where no count exceeds N0)",
    "low_reject": "w = N(f->g)/N_f (N_f = out-count of f): every source's row weighted equally",
}
