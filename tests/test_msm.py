"""The reversible Markov model of the fit (dbgpu.msm): hand-checked golden values, the
properties a user relies on (stochastic, stationary, reversible), and deeptime's
reversible maximum-likelihood MSM as an independent reference (test-only dependency:
the `test` extra)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from dbgpu.data import Kernel, exact_weights, make_edges
from dbgpu.fit import fit_potential
from dbgpu.msm import eigenvalues, implied_timescales, reversible_msm
from dbgpu.synthetic import dense_kernel, sampled_transitions, sparse_kernel


def _msm_of(n, src, dst, log_w):
    fit = fit_potential(n, src, dst, log_w=log_w)
    return fit, reversible_msm(n, src, dst, log_w, fit.V)


def _edges3(W):
    src, dst = np.nonzero(W)
    return src, dst, np.log(W[src, dst])


def test_golden_reversible_three_states():
    """w built reversible with u = (1, 1/2, 1/4) (y_01 = 1/2, y_02 = 1/4, y_12 = 1/8,
    w_fg = y_fg / u_f): by hand r = (3/4, 5/4, 3/2), pi ~ r u = (3/4, 5/8, 3/8)
    = (3/7, 5/14, 3/14), and P = w row-normalised."""
    W = np.array([[0, 1 / 2, 1 / 4], [1, 0, 1 / 4], [1, 1 / 2, 0]])
    fit, m = _msm_of(3, *_edges3(W))
    # tolerance: the fit stops at a relative gradient of 1e-12; pi and P inherit it
    np.testing.assert_allclose(m.pi, [3 / 7, 5 / 14, 3 / 14], rtol=1e-10)
    np.testing.assert_allclose(m.P.toarray(), [[0, 2 / 3, 1 / 3], [4 / 5, 0, 1 / 5], [2 / 3, 1 / 3, 0]],
                               atol=1e-10)
    np.testing.assert_allclose(fit.V - fit.V.mean(), np.log([1, 2, 4]) - np.log([1, 2, 4]).mean(), atol=1e-10)


def test_golden_pure_cycle_projects_to_the_symmetric_chain():
    """A pure cycle, w = 2 forward and 1 backward round 0 -> 1 -> 2 -> 0: by symmetry V = 0,
    so x_fg = (2 + 1) / 2 for every pair, pi = 1/3 each and P = 1/2 off the diagonal."""
    W = np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]], float)
    _, m = _msm_of(3, *_edges3(W))
    np.testing.assert_allclose(m.pi, 1 / 3, rtol=1e-12)       # rounding of a symmetric problem
    np.testing.assert_allclose(m.P.toarray(), (1 - np.eye(3)) / 2, atol=1e-12)
    ev = eigenvalues(m)                                        # P = (J - I)/2: 1, -1/2, -1/2
    np.testing.assert_allclose(ev, [1, -0.5, -0.5], atol=1e-12)
    np.testing.assert_allclose(implied_timescales(ev), 1 / np.log(2), rtol=1e-10)


def _check_reversible_chain(m, tol):
    P = m.P
    pi = m.pi
    assert np.all(P.diagonal() == 0)                           # self-transitions are not modelled
    np.testing.assert_allclose(np.asarray(P.sum(1)).ravel(), 1.0, atol=tol)
    np.testing.assert_allclose(P.T @ pi, pi, atol=tol * pi.max())
    F = sp.diags(pi) @ P                                       # pi_f P_fg
    assert abs(F - F.T).max() <= tol * F.max()
    assert abs(pi.sum() - 1) <= tol


@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_rows_sum_to_one_pi_is_stationary_and_detailed_balance_holds(noise):
    """Also for a kernel far from detailed balance (noise 0.7 nats), where the fit's own
    r_f u_f is stationary only to the fit's tolerance: P is built from x's row sums."""
    n = 40
    _, logT = dense_kernel(n, seed=3, noise=noise)
    e = exact_weights(Kernel(states=[str(i) for i in range(n)], logT=logT))
    _, m = _msm_of(n, e.src, e.dst, e.log_w)
    _check_reversible_chain(m, 1e-13)                         # a few float64 roundings per row
    # the fit's stationarity: log pi = log r - V + const, to its gradient tolerance (1e-12 relative)
    assert m.stationarity_residual < 1e-9


def test_reversible_kernel_gives_the_jump_chain_and_pi_r_exp_minus_V():
    """For an exactly reversible kernel the model is the jump chain T(f,g)/r_f itself,
    with pi ~ r exp(-V_true) (the lazy chain's exp(-V) times the chance of a move)."""
    n = 25
    V, logT = dense_kernel(n, seed=4)
    e = exact_weights(Kernel(states=[str(i) for i in range(n)], logT=logT))
    _, m = _msm_of(n, e.src, e.dst, e.log_w)
    T = np.exp(logT)
    np.fill_diagonal(T, 0)
    r = T.sum(1)
    np.testing.assert_allclose(m.P.toarray(), T / r[:, None], atol=1e-12)   # the fit's tolerance
    pi = r * np.exp(-V)
    np.testing.assert_allclose(m.pi, pi / pi.sum(), rtol=1e-10)


def test_outside_the_main_component_nothing_is_modelled():
    """A state only reached (4) and one only leaving (3) stay out of the model."""
    W = np.zeros((5, 5))
    W[0, 1], W[1, 0], W[1, 2], W[2, 1], W[2, 0], W[0, 2] = 1, 2, 1, 3, 1, 1
    W[3, 0], W[0, 4] = 5, 5
    _, m = _msm_of(5, *_edges3(W))
    assert m.members.tolist() == [0, 1, 2]
    _check_reversible_chain(m, 1e-13)


def test_underflowing_weights_do_not_break_the_model():
    """Every w = exp(log w) underflows float64 (log w from -1,000 to -1,050 nats): the
    model is still built, from log w and V alone."""
    lw = np.array([-1000.0, -1020.0, -1020.0, -1050.0])        # 0->1, 1->0, 1->2, 2->1
    src, dst = np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1])
    _, m = _msm_of(3, src, dst, lw)
    assert np.all(np.isfinite(m.pi)) and np.all(m.pi > 0)
    _check_reversible_chain(m, 1e-13)
    # the chain 0 - 1 - 2 is a tree, so reversible exactly: x_fg = w_fg u_f, P(1, .) =
    # (w_10, w_12) / (w_10 + w_12) = (1, 1) / 2 and pi ~ (x_01, x_01 + x_12, x_12) = (1, 2, 1) / 4.
    # tolerance 1e-9: the fit resolves the 30-nat log-ratio 2->1 only to ~e^-28 relative
    np.testing.assert_allclose(m.P.toarray(), [[0, 1, 0], [0.5, 0, 0.5], [0, 1, 0]], atol=1e-9)
    np.testing.assert_allclose(m.pi, [0.25, 0.5, 0.25], rtol=1e-9)


# --------------------------------------------------------------------------- deeptime

deeptime = pytest.importorskip("deeptime", reason="deeptime is the test extra's reference MSM")
from deeptime.markov import TransitionCountModel  # noqa: E402
from deeptime.markov.msm import MaximumLikelihoodMSM  # noqa: E402


def _deeptime(C, *, sparse: bool):
    logging.getLogger("deeptime").setLevel(logging.ERROR)
    # maxerr 1e-14 (its default 1e-8 stops early): deeptime's relative change per sweep
    est = MaximumLikelihoodMSM(reversible=True, sparse=sparse, maxerr=1e-14, maxiter=10 ** 6, use_lcc=True)
    return est.fit(TransitionCountModel(C)).fetch_model()


def test_exact_dense_kernel_equals_deeptime():
    """Counts = exp(logT) off the diagonal of a dense kernel away from detailed balance
    (noise 0.5 nats): pi, P and the leading eigenvalues equal deeptime's."""
    n = 60
    _, logT = dense_kernel(n, seed=5, noise=0.5)
    e = exact_weights(Kernel(states=[str(i) for i in range(n)], logT=logT))
    _, m = _msm_of(n, e.src, e.dst, e.log_w)
    C = np.exp(logT)
    np.fill_diagonal(C, 0.0)
    d = _deeptime(C, sparse=False)
    # tolerance 1e-9: deeptime stops at a relative change of 1e-14 per sweep, its fixed
    # point contracts fast on a dense kernel; dbgpu's gradient is below 1e-12 relative
    # (measured: 4e-14 in log pi, 4e-15 in P)
    np.testing.assert_allclose(np.log(m.pi), np.log(d.stationary_distribution), atol=1e-9)
    np.testing.assert_allclose(m.P.toarray(), d.transition_matrix, atol=1e-10)
    np.testing.assert_allclose(eigenvalues(m, k=5), d.eigenvalues(5), atol=1e-9)


def test_sampled_sparse_chain_equals_deeptime_with_counts_equal_to_the_weights():
    """A sampled sparse chain (paper protocol, 300 states, 30,000 queries) with
    `--weights counts`: the model equals deeptime's on the same weights w = N/n_f (sparse
    count matrix), on the same largest strongly connected set; with the raw counts N as
    weights it equals deeptime on N; and the two differ (visits n_f are unequal), which
    is what docs/msm.md says `--weights counts` estimates."""
    n = 300
    _, src, dst, logT = sparse_kernel(n, seed=2)
    t = sampled_transitions(n, src, dst, logT, queries=30_000, seed=3)
    e = make_edges(t, weights="counts")
    _, m = _msm_of(n, e.src, e.dst, e.log_w)
    d = _deeptime(sp.csr_matrix((e.w, (e.src, e.dst)), shape=(n, n)), sparse=True)
    assert np.array_equal(d.count_model.state_symbols, m.members)   # the same main component
    # tolerance 1e-9 as above (measured: 6e-13 in log pi, 5e-14 in P)
    np.testing.assert_allclose(np.log(m.pi), np.log(d.stationary_distribution), atol=1e-9)
    assert abs(m.P - sp.csr_matrix(d.transition_matrix)).max() < 1e-10

    raw = e.count.astype(np.float64)
    _, m_raw = _msm_of(n, e.src, e.dst, np.log(raw))
    d_raw = _deeptime(sp.csr_matrix((raw, (e.src, e.dst)), shape=(n, n)), sparse=True)
    np.testing.assert_allclose(np.log(m_raw.pi), np.log(d_raw.stationary_distribution), atol=1e-9)
    # visits range over about 70..130 here: the two estimators differ by far more than rounding
    assert np.abs(np.log(m.pi) - np.log(m_raw.pi)).max() > 0.05


def test_raw_count_mle_with_the_stay_mass_is_the_reversibility_fit():
    """deeptime on the raw counts with each source's other answers (self, invalid) on the
    diagonal is the reversible MLE of the sampled kernel T itself; its stationary
    distribution is exp(-V) of stats.json's `reversibility` fit (Bradley–Terry with
    offsets log(n_f/n_g), `dbgpu.stats.reversible_fit`): docs/msm.md, "which counts"."""
    from dbgpu.stats import reversible_fit

    n = 300
    _, src, dst, logT = sparse_kernel(n, seed=2)
    t = sampled_transitions(n, src, dst, logT, queries=30_000, seed=3)
    e = make_edges(t, weights="counts")
    fit = fit_potential(n, e.src, e.dst, log_w=e.log_w)
    main = np.flatnonzero(fit.components.label == 0)
    local = np.full(n, -1)
    local[main] = np.arange(len(main))
    me = (local[e.src] >= 0) & (local[e.dst] >= 0)
    s, d = local[e.src[me]], local[e.dst[me]]
    V_rev, _, info = reversible_fit(len(main), s, d, e.count[me], t.visits[main])
    assert info["converged"]
    N = sp.csr_matrix((e.count[me].astype(float), (s, d)), shape=(len(main),) * 2).toarray()
    C = N + np.diag(t.visits[main] - N.sum(1))                 # stay mass on the diagonal
    dm = _deeptime(C, sparse=False)
    assert len(dm.count_model.state_symbols) == len(main)
    lu = -V_rev - np.logaddexp.reduce(-V_rev)
    # tolerance 1e-9 as above (measured: 6e-12)
    np.testing.assert_allclose(np.log(dm.stationary_distribution), lu, atol=1e-9)


def test_lanczos_eigenvalues_equal_a_dense_solve_of_P():
    """Above DENSE_EIG_MAX states the eigenvalues come from Lanczos on the symmetrised
    matrix: they equal numpy's dense eigenvalues of P itself (non-symmetric, independent)."""
    from dbgpu.msm import DENSE_EIG_MAX
    from dbgpu.synthetic import metropolis_kernel

    n = 800
    assert n > DENSE_EIG_MAX
    _, src, dst, logT = metropolis_kernel(n, seed=4, degree=6.0)
    _, m = _msm_of(n, src, dst, logT)
    ev = eigenvalues(m, k=6)
    dense = np.linalg.eigvals(m.P.toarray())
    assert np.abs(dense.imag).max() < 1e-8                      # reversible: a real spectrum
    dense = np.sort(dense.real)
    want = np.r_[dense[-1], sorted(dense[:-1], key=lambda x: -abs(x))[:5]]
    # tolerance 1e-8: eigsh is asked for 1e-10 relative, numpy's non-symmetric solver is
    # accurate to about 1e-12 on a well-conditioned reversible P
    np.testing.assert_allclose(ev, want, atol=1e-8)
