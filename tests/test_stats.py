"""Detailed-balance statistics against brute force, hand values and synthetic chains."""

import itertools
import json
import math

import numpy as np
import pytest

from dbgpu.data import write_score_dir
from dbgpu import synthetic as sy
from dbgpu.commands.fit import fit_input
from dbgpu.stats import (
    entropy_production,
    hodge,
    loops,
    pairwise,
    reversibility_test,
    stationary,
    triangles,
)
from dbgpu.graph import mutual_pairs


def test_mutual_pairs_brute_force():
    rng = np.random.default_rng(0)
    n = 15
    key = np.unique(rng.integers(0, n, 80) * n + rng.integers(0, n, 80))
    src, dst = key // n, key % n
    src, dst = src[src != dst], dst[src != dst]
    e_fg, e_gf = mutual_pairs(n, src, dst)
    edges = set(zip(src.tolist(), dst.tolist()))
    want = {(a, b) for a, b in edges if a < b and (b, a) in edges}
    assert set(zip(src[e_fg].tolist(), dst[e_fg].tolist())) == want
    assert np.array_equal(src[e_gf], dst[e_fg]) and np.array_equal(dst[e_gf], src[e_fg])


def test_triangles_brute_force():
    rng = np.random.default_rng(1)
    n = 30
    a, b = rng.integers(0, n, 150), rng.integers(0, n, 150)
    keep = a != b
    lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    key = np.unique(lo * n + hi)
    lo, hi = key // n, key % n
    adj = set(zip(lo.tolist(), hi.tolist()))
    want = {t for t in itertools.combinations(range(n), 3)
            if (t[0], t[1]) in adj and (t[1], t[2]) in adj and (t[0], t[2]) in adj}
    u, v, w = triangles(n, lo, hi, chunk=17)              # small chunks: the chunk loop runs
    got = {tuple(sorted(t)) for t in zip(u.tolist(), v.tolist(), w.tolist())}
    assert got == want and len(u) == len(want) > 10


def test_pairwise_hand_values():
    x = np.array([1.0, -2.0, 0.5])
    y = np.array([0.9, -2.1, 0.7])
    out = pairwise(x, y, np.array([0.1, 0.2, 0.1]))
    wt = 1 / np.array([0.1, 0.2, 0.1])
    beta = np.sum(wt * x * y) / np.sum(wt * y * y)
    assert out["slope"] == pytest.approx(beta)
    # Pearson r of the symmetric cloud (each pair both ways)
    assert out["r"] == pytest.approx(np.corrcoef(np.r_[x, -x], np.r_[y, -y])[0, 1])
    assert out["chi2"] == pytest.approx(np.sum(wt * (x - beta * y) ** 2))
    assert out["ndf"] == 2
    assert pairwise(x, y)["chi2"] is None                  # exact kernels: no errors


def test_loops_on_a_triangle():
    # 0 -> 1 -> 2 -> 0 with log w forward 0.5, 0.2, -1.0 and backward -0.3, 0.1, 0.4
    f, g = np.array([0, 1, 0]), np.array([1, 2, 2])
    lw_fg = np.array([0.5, 0.2, 0.4])                      # 0->1, 1->2, 0->2
    lw_gf = np.array([-0.3, 0.1, -1.0])                    # 1->0, 2->1, 2->0
    out, arr = loops(3, f, g, lw_fg, lw_gf, np.array([0.1, 0.2, 0.3]))
    assert out["count"] == 1 and out["sample"] == 1
    F, B = arr["forward"][0], arr["backward"][0]
    # the two loop sums in either orientation; 1e-12: three float64 additions of O(1) terms
    assert sorted([F, B]) == pytest.approx(sorted([0.5 + 0.2 - 1.0, 0.4 + 0.1 - 0.3]), abs=1e-12)
    assert out["chi2"] == pytest.approx((F - B) ** 2 / 0.6)
    assert out["rms"] == pytest.approx(abs(F - B)) and arr["var"][0] == pytest.approx(0.6)


def test_hodge_gradient_curl_and_mixture():
    f, g = np.array([0, 1, 0]), np.array([1, 2, 2])
    phi = np.array([0.3, -1.0, 2.0])
    assert hodge(3, f, g, phi[f] - phi[g])[0]["gradient_fraction"] == pytest.approx(1.0)
    curl = np.array([1.0, 1.0, -1.0])                      # 0->1->2->0 circulation
    assert hodge(3, f, g, curl)[0]["gradient_fraction"] == pytest.approx(0.0, abs=1e-12)
    X = phi[f] - phi[g] + curl                             # orthogonal parts add in squares
    grad2 = np.sum((phi[f] - phi[g]) ** 2)
    out, resid = hodge(3, f, g, X)
    assert out["gradient_fraction"] == pytest.approx(grad2 / (grad2 + 3))
    assert out["cycle_rank"] == 1
    np.testing.assert_allclose(resid, curl, atol=1e-12)    # the residual is the curl part


def test_entropy_production_of_a_driven_ring():
    # ring of 3, forward jump probability p, backward q: pi uniform, sigma = (p - q) log(p/q)
    p, q = 0.7, 0.3
    src, dst = np.array([0, 1, 2, 1, 2, 0]), np.array([1, 2, 0, 0, 1, 2])
    w = np.array([p, p, p, q, q, q]) * 0.2                 # any row scale
    out = entropy_production(3, src, dst, w)
    assert out["entropy_production"] == pytest.approx((p - q) * math.log(p / q))
    rev = entropy_production(3, src, dst, np.array([1, 2, 3, 1, 2, 3.0]) * 0 + 1)
    assert rev["entropy_production"] == pytest.approx(0.0, abs=1e-15)


def main_chain(n, *, noise=0.0):
    """The jump chain (n_main, src, dst, p) of a sparse kernel's main component."""
    from dbgpu.graph import strong_components

    V, src, dst, logT = sy.sparse_kernel(n, seed=2, degree=6)
    c = strong_components(n, src, dst)
    m = c.label == 0
    loc = np.cumsum(m) - 1
    e = m[src] & m[dst]
    k = int(m.sum())
    s, d = loc[src[e]], loc[dst[e]]
    w = np.exp(logT[e] + np.random.default_rng(1).normal(0, noise, e.sum()))
    return k, s, d, w / np.bincount(s, w, minlength=k)[s]


def test_stationary_iterative_matches_dense():
    n, s, d, p = main_chain(300)
    a, ra = stationary(n, s, d, p)
    b, rb = stationary(n, s, d, p, dense_max=0)            # the iterative path (BiCGSTAB)
    np.testing.assert_allclose(b, a, atol=1e-12)
    assert ra < 1e-13 and rb < 1e-11
    import torch

    from dbgpu.stats import _power_torch                  # the CUDA code path, run on CPU

    c = _power_torch(n, s, d, p, np.full(n, 1 / n), 1e-14, 20000, torch.device("cpu"))
    np.testing.assert_allclose(c, a, atol=1e-12)


def test_reversibility_test_tree_is_saturated():
    # a tree of pairs: the reversible model fits every pair exactly, G2 = 0, dof = 0
    src, dst = np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1])
    out = reversibility_test(3, src, dst, np.array([30, 10, 5, 20]), np.array([100, 80, 60]))
    assert out["G2"] == pytest.approx(0, abs=1e-9) and out["dof"] == 0 and out["p_value"] is None


# --------------------------------------------------------------------------- synthetic chains


def run_dense(tmp_path, *, sampled=False, **kw):
    """Fit a 24-state synthetic kernel through `fit_input`: the exact kernel as a score
    directory, or sampled (20,000 queries per source, multinomial) as transitions.jsonl."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    n = 24
    states = sy.state_names(n)
    V, logT = sy.dense_kernel(n, seed=1, **kw)
    if sampled:
        t = sy.sample_dense_counts(logT, per_source=20_000, seed=0)
        src = np.repeat(t.src, t.count)
        dst = np.repeat(t.dst, t.count)
        invalid = np.repeat(np.arange(n), t.visits - np.bincount(t.src, t.count, minlength=n).astype(int))
        inp = sy.write_transitions_jsonl(tmp_path / "t.jsonl", states, np.r_[src, invalid],
                                         np.r_[dst, np.full(len(invalid), -1)])
        stats = fit_input(inp, tmp_path, weights="counts", device="cpu")
    else:
        write_score_dir(tmp_path, states, logT)
        stats = fit_input(tmp_path, tmp_path, device="cpu")
    pot = json.loads((tmp_path / "potential.json").read_text())
    return V, np.array([pot[s] for s in states]), stats


def test_exact_kernel_with_detailed_balance(tmp_path):
    V, fitted, st = run_dense(tmp_path)
    assert np.corrcoef(fitted, V)[0, 1] > 0.999
    np.testing.assert_allclose(fitted, V, atol=1e-8)
    assert st["pairwise"]["slope"] == pytest.approx(1.0, abs=1e-8)
    assert st["pairwise"]["rms_residual"] < 1e-8
    assert st["loops"]["count"] == math.comb(24, 3) and st["loops"]["rms"] < 1e-12
    assert st["hodge"]["gradient_fraction"] == pytest.approx(1.0, abs=1e-12)
    assert st["entropy_production"]["entropy_production"] == pytest.approx(0.0, abs=1e-14)
    assert st["reversibility"] is None and st["pairwise"]["chi2"] is None


def test_noisy_exact_kernel(tmp_path):
    V, fitted, st = run_dense(tmp_path, noise=0.05)
    assert np.corrcoef(fitted, V)[0, 1] > 0.999
    assert 0.98 < st["hodge"]["gradient_fraction"] < 1.0
    assert 0 < st["entropy_production"]["entropy_production"] < 0.01


def test_sampled_counts_with_detailed_balance(tmp_path):
    V, fitted, st = run_dense(tmp_path, sampled=True)
    assert st["n_queries"] == 24 * 20_000 and st["n_invalid"] > 0
    assert np.corrcoef(fitted, V)[0, 1] > 0.999
    assert 0.7 < st["loops"]["chi2_ndf"] < 1.3
    assert 0.7 < st["pairwise"]["chi2_ndf"] < 1.3
    assert st["pairwise"]["slope"] == pytest.approx(1.0, abs=0.05)
    assert st["hodge"]["gradient_fraction"] > 0.98
    assert st["entropy_production"]["entropy_production"] < 0.01
    rev = st["reversibility"]
    assert rev["dof"] == 276 - 23 and rev["p_value"] > 1e-3


def sampled_stats(**kw):
    """The same sampled chain as run_dense(sampled=True), analysed in memory."""
    from dbgpu.data import count_weights
    from dbgpu.fit import fit_potential
    from dbgpu.stats import detailed_balance_stats

    _, logT = sy.dense_kernel(24, seed=1, **kw)
    e = count_weights(sy.sample_dense_counts(logT, per_source=20_000, seed=0))
    return detailed_balance_stats(e, fit_potential(24, e.src, e.dst, e.w))[0]


def test_cycle_flux_is_detected(tmp_path):
    db, cyc = sampled_stats(), sampled_stats(curl=0.5)
    assert cyc["hodge"]["gradient_fraction"] < db["hodge"]["gradient_fraction"] - 0.2
    assert cyc["entropy_production"]["entropy_production"] > 10 * db["entropy_production"]["entropy_production"]
    assert cyc["loops"]["chi2_ndf"] > 5 and cyc["reversibility"]["p_value"] < 1e-10
    _, _, exact_cyc = run_dense(tmp_path / "exact", curl=0.5)
    assert exact_cyc["hodge"]["gradient_fraction"] < 0.8
    assert exact_cyc["entropy_production"]["entropy_production"] > 0.05


# --------------------------------------------------------------------------- loops at scale


def brute_loops(n, f, g, lw_fg, lw_gf, var):
    """Every 3-cycle listed by hand: (count, sum d^2, sum of loop variances, {triangle: (F, B)})."""
    lw, vv = {}, {}
    for k, (a, b) in enumerate(zip(f.tolist(), g.tolist())):
        lw[(a, b)], lw[(b, a)] = lw_fg[k], lw_gf[k]
        vv[(a, b)] = vv[(b, a)] = var[k]
    T, sd2, slv, pts = 0, 0.0, 0.0, {}
    for a, b, c in itertools.combinations(range(n), 3):
        if (a, b) in lw and (b, c) in lw and (a, c) in lw:
            F = lw[(a, b)] + lw[(b, c)] + lw[(c, a)]
            B = lw[(a, c)] + lw[(c, b)] + lw[(b, a)]
            T, sd2, slv = T + 1, sd2 + (F - B) ** 2, slv + vv[(a, b)] + vv[(b, c)] + vv[(a, c)]
            pts[(a, b, c)] = (F, B)
    return T, sd2, slv, pts


def random_pairs(n, density, seed):
    rng = np.random.default_rng(seed)
    pairs = [p for p in itertools.combinations(range(n), 2) if rng.random() < density]
    f, g = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return f, g, rng.normal(size=len(f)), rng.normal(size=len(f)), rng.uniform(0.1, 1.0, len(f))


@pytest.mark.parametrize("n, density, method", [
    (n, d, m) for n, d in [(12, 1.0), (16, 0.6), (30, 0.2), (60, 0.05)]
    for m in ["auto", "complete", "dense", "sparse"] if m != "complete" or d == 1.0])
def test_loop_moments_match_every_cycle_listed_by_hand(n, density, method):
    """Count, sum (F - B)^2 and sum of loop variances by the trace algebra (complete,
    dense) and by chunked enumeration equal the brute-force list, with missing pairs."""
    f, g, lfg, lgf, var = random_pairs(n, density, seed=n)
    T, sd2, slv, _ = brute_loops(n, f, g, lfg, lgf, var)
    out, _ = loops(n, f, g, lfg, lgf, var, method=method, points=False)
    assert T > 0 and out["count"] == T
    assert out["sum_d2"] == pytest.approx(sd2, rel=1e-10)
    assert out["sum_var"] == pytest.approx(slv, rel=1e-10)
    assert out["chi2_ndf"] == pytest.approx(sd2 / slv, rel=1e-10)   # pooled chi-square
    assert out["rms"] == pytest.approx(math.sqrt(sd2 / T), rel=1e-10)
    # a gradient added to X changes no loop sum: the Hodge residual gives the same moments
    phi = np.random.default_rng(1).normal(size=n)
    out2, _ = loops(n, f, g, lfg + phi[f], lgf + phi[g], var, residual=(lfg - lgf) - 0.0, method=method,
                    points=False)
    assert out2["sum_d2"] == pytest.approx(sd2, rel=1e-10)


def test_sparse_enumeration_in_small_chunks():
    f, g, lfg, lgf, var = random_pairs(40, 0.3, seed=3)
    T, sd2, slv, _ = brute_loops(40, f, g, lfg, lgf, var)
    from dbgpu.stats import _moments_sparse

    nodes, inv = np.unique(np.r_[f, g], return_inverse=True)
    mom, tri = _moments_sparse(len(nodes), inv[:len(f)], inv[len(f):], lfg - lgf, var, sample=10, seed=0,
                               chunk=7)                     # many chunks: the reservoir merges them
    assert mom["count"] == T and mom["sum_d2"] == pytest.approx(sd2) and mom["sum_var"] == pytest.approx(slv)
    assert len(tri) == 10 and len({tuple(sorted(t)) for t in tri.tolist()}) == 10


@pytest.mark.parametrize("n, density", [(14, 1.0), (60, 0.08)])
def test_loop_sample_is_seeded_real_and_drawn_once_each(n, density):
    """The figure's loops: real 3-cycles with the right forward/backward sums, no
    repeats, the same for the same seed; all of them when there are fewer than asked."""
    f, g, lfg, lgf, var = random_pairs(n, density, seed=7)
    T, _, _, pts = brute_loops(n, f, g, lfg, lgf, var)
    out, arr = loops(n, f, g, lfg, lgf, var, sample=20, seed=5)
    assert out["sample"] == len(arr["forward"]) == min(20, T)
    # each sampled loop is one of the real 3-cycles: its F - B matches a brute-force cycle's,
    # in either orientation, to 1e-9 (sums of three O(1) log-ratios in another order: ~1e-15;
    # distinct cycles of these random weights differ by far more)
    brute = np.array([s * (F - B) for F, B in pts.values() for s in (1, -1)])
    got = np.asarray(arr["forward"]) - np.asarray(arr["backward"])
    assert np.all(np.abs(got[:, None] - brute[None, :]).min(1) < 1e-9)
    again, arr2 = loops(n, f, g, lfg, lgf, var, sample=20, seed=5)
    np.testing.assert_array_equal(arr["forward"], arr2["forward"])
    if T > 20:
        _, arr3 = loops(n, f, g, lfg, lgf, var, sample=20, seed=6)
        assert not np.array_equal(arr["forward"], arr3["forward"])
    _, every = loops(n, f, g, lfg, lgf, var, sample=10 ** 6, seed=0)
    assert len(every["forward"]) == T


def test_loop_sample_is_uniform_on_a_complete_graph():
    """Rejection sampling on a dense graph hits every triangle equally often."""
    from scipy.stats import chisquare

    from dbgpu.stats import _sample_dense

    n = 8
    f, g = np.array(list(itertools.combinations(range(n), 2))).T
    hits = np.zeros((n, n, n))
    for seed in range(300):
        for a, b, c in _sample_dense(n, f, g, sample=5, seed=seed).tolist():
            hits[a, b, c] += 1
    counts = hits[hits > 0]
    assert len(counts) == math.comb(n, 3)
    assert chisquare(counts).pvalue > 1e-3


def test_dense_loops_on_the_torch_path_match_numpy():
    """The CUDA code path (torch matrices), run on the CPU."""
    from dbgpu.stats import _moments_dense

    f, g, lfg, lgf, var = random_pairs(20, 0.5, seed=2)
    a = _moments_dense(20, f, g, lfg - lgf, var, device="cpu")
    b = _moments_dense(20, f, g, lfg - lgf, var, device="cpu", backend="torch")
    assert a["count"] == b["count"] and b["sum_d2"] == pytest.approx(a["sum_d2"], rel=1e-12)
    assert b["sum_var"] == pytest.approx(a["sum_var"], rel=1e-12)


def test_mutual_pairs_on_a_large_sparse_graph():
    """The sorted-merge path (n^2 far above 16 E) against a set of edges."""
    rng = np.random.default_rng(4)
    n = 100_000
    a, b = rng.integers(0, 300, 400), rng.integers(0, 300, 400)
    src, dst = np.r_[a, b] * 333, np.r_[b, a] * 333                  # every pair both ways, spread out
    keep = src != dst
    key = np.unique(src[keep] * n + dst[keep])
    extra = np.array([5 * n + 7, 9 * n + 11])                        # one-way edges
    key = np.unique(np.r_[key, extra])
    src, dst = key // n, key % n
    e_fg, e_gf = mutual_pairs(n, src, dst)
    edges = set(zip(src.tolist(), dst.tolist()))
    want = {(x, y) for x, y in edges if x < y and (y, x) in edges}
    assert set(zip(src[e_fg].tolist(), dst[e_fg].tolist())) == want and len(want) > 100
    assert np.array_equal(src[e_gf], dst[e_fg]) and np.array_equal(dst[e_gf], src[e_fg])


def test_entropy_production_from_log_weights_does_not_underflow():
    p, q = 0.7, 0.3
    src, dst = np.array([0, 1, 2, 1, 2, 0]), np.array([1, 2, 0, 0, 1, 2])
    lw = np.log(np.array([p, p, p, q, q, q])) - 2000.0      # exp() underflows to 0
    out = entropy_production(3, src, dst, log_w=lw)
    assert out["entropy_production"] == pytest.approx((p - q) * math.log(p / q))


def test_stationary_by_krylov_and_power_iteration_agree():
    from dbgpu.stats import _krylov_cpu, _power_cpu

    n, s, d, p = main_chain(3000, noise=0.5)                 # off detailed balance
    pi, resid = stationary(n, s, d, p)                         # n > 1000: BiCGSTAB
    assert resid < 1e-12
    import scipy.sparse as sparse

    PT = sparse.csr_matrix((p, (d, s)), shape=(n, n))
    ref = _power_cpu(PT, np.full(n, 1 / n), 1e-15, 100000)
    np.testing.assert_allclose(pi, ref, atol=1e-11)
    assert _krylov_cpu(PT, np.full(n, 1 / n), 1e-13, 5000) is not None


# --------------------------------------------------------------------------- ordered components


def test_component_levels_order_states_outside_the_main_one():
    """A "Gemini-style" graph: a main component and chains of states that only flow into
    it (BUZZY -> FLURRY -> GRUMPY -> main, and a shortcut BUZZY -> main), plus one state
    it flows into and one beyond that: levels +3, +2, +1 and -1, -2."""
    from dbgpu.graph import strong_components

    names = ["A", "B", "C", "BUZZY", "FLURRY", "GRUMPY", "SHORT", "LOW", "LOWER", "ALONE"]
    ix = {s: i for i, s in enumerate(names)}
    edges = [("A", "B"), ("B", "C"), ("C", "A"), ("BUZZY", "FLURRY"), ("FLURRY", "GRUMPY"), ("GRUMPY", "A"),
             ("BUZZY", "A"), ("SHORT", "B"), ("C", "LOW"), ("LOW", "LOWER"), ("A", "LOWER")]
    src = np.array([ix[a] for a, _ in edges])
    dst = np.array([ix[b] for _, b in edges])
    c = strong_components(len(names), src, dst)
    level = dict(zip(names, c.level[c.label]))
    assert [level[s] for s in ("BUZZY", "FLURRY", "GRUMPY", "SHORT", "A")] == [3, 2, 1, 1, 0]
    assert (level["LOW"], level["LOWER"]) == (-1, -2)        # the longest chain, not the shortcut
    assert np.isnan(level["ALONE"])


def test_gemini_style_case_through_dbgpu_fit(tmp_path):
    """The same ordering reaches stats.json and report.md from a paper JSON file."""
    from dbgpu.report import write_report

    main = {"ATTITUDE": ["PERSONAL"] * 5, "PERSONAL": ["ATTITUDE"] * 7 + ["PROBLEMS"] * 3,
            "PROBLEMS": ["ATTITUDE"] * 4}
    chain = {"BUZZY": ["FLURRY"] * 5 + ["ATTITUDE"], "FLURRY": ["GRUMPY"] * 6, "GRUMPY": ["PERSONAL"] * 4}
    p = tmp_path / "gemini.json"
    p.write_text(json.dumps({**chain, **main}))
    st = fit_input(p, tmp_path / "fit", device="cpu")
    comp = st["components"]
    assert comp["state_level"] == {"BUZZY": 3, "FLURRY": 2, "GRUMPY": 1}
    assert comp["levels"] == {"above": 3, "below": 0}
    assert comp["list"][0]["level"] == 0 and sorted(c["level"] for c in comp["list"]) == [0, 1, 2, 3]
    text = write_report(tmp_path / "fit").read_text()
    assert text.index("`BUZZY`: above, level +3") < text.index("`FLURRY`: above, level +2") \
        < text.index("`GRUMPY`: above, level +1")
