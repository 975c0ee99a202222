"""Least action: K, gradient, Hessian, the minimiser, components, gauge, determinism."""

import math

import numpy as np
import pytest
import torch

from dbgpu import synthetic as sy
from dbgpu.fit import (
    K,
    action,
    action_and_grad,
    fit_potential,
    hessian_vector,
    minimise_action,
)
from dbgpu.graph import laplacian_solve, strong_components


def random_graph(n=12, m=40, seed=0):
    rng = np.random.default_rng(seed)
    key = np.unique(rng.integers(0, n, m) * n + rng.integers(0, n, m))
    src, dst = key // n, key % n
    keep = src != dst
    return src[keep], dst[keep], rng.uniform(0.1, 2.0, keep.sum()), rng.normal(0, 2, n)


def test_K_matches_naive_and_is_stable():
    x = torch.tensor([-800.0, -30.0, -1.0, 0.0, 1.0, 30.0, 800.0], dtype=torch.float64)
    naive = [(-v if v < -700 else math.log1p(math.exp(-v))) for v in x.tolist()]
    np.testing.assert_allclose(K(x).numpy(), naive, rtol=1e-15, atol=1e-300)
    assert K(x)[3].item() == pytest.approx(math.log(2))


def test_gradient_matches_central_differences():
    src, dst, w, V = random_graph()
    S, g = action_and_grad(V, src, dst, w)
    assert S == pytest.approx(action(V, src, dst, w))
    h = 1e-6
    fd = np.array([(action(V + h * np.eye(len(V))[i], src, dst, w)
                    - action(V - h * np.eye(len(V))[i], src, dst, w)) / (2 * h)
                   for i in range(len(V))])
    np.testing.assert_allclose(g, fd, atol=1e-8)
    assert abs(g.sum()) < 1e-14                            # shifts of V change nothing


def test_hessian_vector_matches_gradient_differences():
    src, dst, w, V = random_graph(seed=1)
    v = np.random.default_rng(2).normal(size=len(V))
    h = 1e-6
    fd = (action_and_grad(V + h * v, src, dst, w)[1] - action_and_grad(V - h * v, src, dst, w)[1]) / (2 * h)
    np.testing.assert_allclose(hessian_vector(V, v, src, dst, w), fd, atol=1e-8)


def test_isolated_pairs_give_the_log_ratio():
    # two independent pairs in one SCC-free layout: A<->B, C<->D, plus A->C (one way)
    src, dst = np.array([0, 1, 2, 3, 0]), np.array([1, 0, 3, 2, 2])
    w = np.array([3.0, 0.5, 0.2, 0.9, 1.0])
    fit = fit_potential(4, src, dst, w)
    assert fit.V[0] - fit.V[1] == pytest.approx(math.log(3.0 / 0.5), abs=1e-10)
    assert fit.V[0] + fit.V[1] == pytest.approx(0, abs=1e-12)   # zero mean on the main SCC
    assert np.isnan(fit.V[2]) and np.isnan(fit.V[3])            # the other SCC: unbounded
    # infimum: each pair at its own minimum, the one-way edge contributes nothing
    x1, x2 = math.log(3.0 / 0.5), math.log(0.2 / 0.9)
    pair = lambda a, b, x: a * math.log1p(math.exp(-x)) + b * math.log1p(math.exp(x))  # noqa: E731
    assert fit.action == pytest.approx((pair(3.0, 0.5, x1) + pair(0.2, 0.9, x2)) / fit.n_src)
    assert fit.n_src == 4


def test_exact_detailed_balance_kernel_is_recovered():
    V, src, dst, logT = sy.sparse_kernel(400, seed=3, degree=6)
    fit = fit_potential(400, src, dst, np.exp(logT))
    m = fit.components.label == 0
    assert m.sum() > 300
    assert np.corrcoef(fit.V[m], V[m])[0, 1] > 0.999999
    np.testing.assert_allclose(fit.V[m], V[m] - V[m].mean(), atol=1e-8)
    assert fit.info["converged"]


def test_invariance_to_state_order():
    V, src, dst, logT = sy.sparse_kernel(300, seed=4, degree=4)
    logT = logT + np.random.default_rng(5).normal(0, 0.3, len(logT))   # not exactly DB
    w = np.exp(logT)
    a = fit_potential(300, src, dst, w)
    perm = np.random.default_rng(6).permutation(300)                   # new index of each state
    b = fit_potential(300, perm[src], perm[dst], w)
    np.testing.assert_allclose(b.V[perm], a.V, atol=1e-9, equal_nan=True)
    assert b.action == pytest.approx(a.action, rel=1e-12)


def test_components_positions():
    # main {0,1,2} (cycle); 3 -> 0 (above); 2 -> 4 (below); 5 <-> 6 with 6 -> 3 (above via 3)
    src = np.array([0, 1, 2, 3, 2, 5, 6, 6, 7])
    dst = np.array([1, 2, 0, 0, 4, 6, 5, 3, 8])
    c = strong_components(9, src, dst)
    pos = c.position[c.label]
    assert list(pos) == ["main", "main", "main", "above", "below", "above", "above",
                         "unrelated", "unrelated"]
    assert c.size[0] == 3 and c.label[0] == 0


def test_fit_is_deterministic():
    V, src, dst, logT = sy.sparse_kernel(500, seed=7, degree=5)
    w = np.exp(logT + np.random.default_rng(8).normal(0, 0.5, len(logT)))
    a, b = fit_potential(500, src, dst, w), fit_potential(500, src, dst, w)
    assert np.array_equal(a.V, b.V, equal_nan=True) and a.action == b.action


def test_lbfgs_reaches_the_same_minimum():
    V, src, dst, logT = sy.sparse_kernel(200, seed=9, degree=5)
    w = np.exp(logT + np.random.default_rng(10).normal(0, 0.5, len(logT)))
    a = fit_potential(200, src, dst, w)
    b = fit_potential(200, src, dst, w, method="lbfgs")
    assert b.action == pytest.approx(a.action, rel=1e-8)
    np.testing.assert_allclose(b.V, a.V, atol=1e-3, equal_nan=True)


def test_offsets_and_laplacian_solve():
    # with offsets o, the pair minimum moves to V_f - V_g = log(w_fg/w_gf) - o
    V, f, _ = minimise_action(2, [0, 1], [1, 0], [2.0, 1.0], offset=[0.5, -0.5])
    assert V[0] - V[1] == pytest.approx(math.log(2.0) - 0.5, abs=1e-10)
    # path graph 0-1-2 with unit weights: L x = b solved against numpy
    L = np.array([[1.0, -1, 0], [-1, 2, -1], [0, -1, 1]])
    b = np.array([1.0, 0.5, -1.5])
    x = laplacian_solve(3, [0, 1], [1, 2], [1.0, 1.0], b)
    np.testing.assert_allclose(L @ x, b, atol=1e-12)
    assert abs(x.sum()) < 1e-12


@pytest.mark.cuda
def test_cpu_and_cuda_give_the_same_potential():
    V, src, dst, logT = sy.sparse_kernel(2000, seed=11, degree=6)
    w = np.exp(logT + np.random.default_rng(12).normal(0, 0.5, len(logT)))
    a = fit_potential(2000, src, dst, w, device="cpu")
    b = fit_potential(2000, src, dst, w, device="cuda")
    c = fit_potential(2000, src, dst, w, device="cuda")
    np.testing.assert_allclose(b.V, a.V, atol=1e-9, equal_nan=True)
    assert b.action == pytest.approx(a.action, rel=1e-12)
    assert np.array_equal(b.V, c.V, equal_nan=True)                      # deterministic on GPU


def test_torch_code_path_on_the_cpu_matches_numpy():
    """The CUDA code path (torch tensors, segment sums over sorted edges), run on the CPU."""
    V, src, dst, logT = sy.sparse_kernel(300, seed=13, degree=5)
    w = np.exp(logT + np.random.default_rng(14).normal(0, 0.5, len(logT)))
    c = strong_components(300, src, dst)
    m = c.label == 0
    loc = np.cumsum(m) - 1
    e = m[src] & m[dst]
    a, fa, _ = minimise_action(int(m.sum()), loc[src[e]], loc[dst[e]], w[e])
    b, fb, _ = minimise_action(int(m.sum()), loc[src[e]], loc[dst[e]], w[e], backend="torch")
    np.testing.assert_allclose(b, a, atol=1e-9)
    assert fb == pytest.approx(fa, rel=1e-12)


def test_fit_from_log_weights_survives_underflow():
    """Every probability below float64's range (log T ~ -2000): fitted from log w, the
    potential is the one of the unshifted kernel; the action scales by exp(shift)."""
    V, src, dst, logT = sy.sparse_kernel(200, seed=15, degree=5)
    logT = logT + np.random.default_rng(16).normal(0, 0.5, len(logT))
    ref = fit_potential(200, src, dst, np.exp(logT))
    low = fit_potential(200, src, dst, log_w=logT - 2000.0)
    assert np.all(np.exp(logT - 2000.0) == 0)
    np.testing.assert_allclose(low.V, ref.V, atol=1e-9, equal_nan=True)
    assert low.info["underflow_dropped"] == 0 and low.info["log_w_max"] == pytest.approx(logT.max() - 2000)
    # one edge 800 nats below the rest cannot be held relative to them: left out, counted
    logT2 = logT.copy()
    logT2[0] -= 800.0
    out = fit_potential(200, src, dst, log_w=logT2)
    assert out.info["underflow_dropped"] == 1
    keep = np.arange(len(src)) != 0
    np.testing.assert_allclose(out.V, fit_potential(200, src[keep], dst[keep], np.exp(logT[keep])).V,
                               atol=1e-9, equal_nan=True)


def test_warm_start_reaches_the_same_minimum():
    V, src, dst, logT = sy.sparse_kernel(300, seed=17, degree=5)
    w = np.exp(logT + np.random.default_rng(18).normal(0, 0.5, len(logT)))
    cold = fit_potential(300, src, dst, w)
    warm = fit_potential(300, src, dst, w, V0=cold.V_within + 0.01)
    np.testing.assert_allclose(warm.V, cold.V, atol=1e-9, equal_nan=True)
    assert warm.info["iterations"] < cold.info["iterations"]


@pytest.mark.parametrize("backend", [None, "torch"])
def test_a_target_dominated_exact_kernel_converges_to_the_minimum(backend):
    """A random model's kernel: log T[f, g] is mostly a property of the target g, spanning
    ~80 nats (seen on an H200: the pair start sent pure Newton to |V| ~ 1e12). The fit must
    converge to the action's minimum: the gradient of sum w K(V_f - V_g) vanishes there,
    checked here by finite differences of the action written out in the test."""
    from scipy.optimize import approx_fprime

    n, rng = 60, np.random.default_rng(0)
    a = -120 + 15 * rng.standard_t(3, n)                             # (n,) target effects
    logT = a[None, :] + rng.normal(0, 3, (n, n)) + rng.normal(0, 1, n)[:, None]
    src, dst = np.nonzero(~np.eye(n, dtype=bool))
    fit = fit_potential(n, src, dst, log_w=logT[src, dst], device="cpu", backend=backend)
    assert fit.info["converged"] and np.all(np.isfinite(fit.V)) and np.ptp(fit.V) < 200
    w = np.exp(logT[src, dst] - logT.max())

    def action(V):
        return float(np.dot(w, np.logaddexp(0.0, -(V[src] - V[dst])))) / w.sum()

    g = approx_fprime(fit.V, action, 1e-6)
    assert np.abs(g).max() < 1e-6 * max(1.0, np.abs(fit.V).max())
    worse = [action(fit.V + 1e-3 * rng.normal(size=n)) for _ in range(5)]
    assert min(worse) >= action(fit.V)
