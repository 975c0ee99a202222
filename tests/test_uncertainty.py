"""Error bars on V (Laplace, bootstrap) and null distributions, on synthetic chains with a
known potential: coverage at the nominal rate, calibrated p-values, the resamplers."""

import json

import numpy as np
import pytest

from dbgpu import synthetic as sy
from dbgpu import uncertainty as u
from dbgpu.cli import main
from dbgpu.data import make_edges
from dbgpu.fit import fit_potential


def sampled_chain(seed, *, n=300, per_state=3000):
    """A detailed-balance kernel on a random graph, sampled with the paper's protocol."""
    V, src, dst, logT = sy.sparse_kernel(n, seed=100, degree=8)
    t = sy.sampled_transitions(n, src, dst, logT, queries=n * per_state, seed=seed)
    e = make_edges(t, weights="counts")
    fit = fit_potential(n, e.src, e.dst, log_w=e.log_w)
    m = fit.components.label == 0
    return t, e, fit, np.where(m, V - V[m].mean(), np.nan)        # the truth in the fit's gauge


def coverage(fit, sigma, truth):
    m = fit.components.label == 0
    ok = m & np.isfinite(sigma)
    return np.abs(fit.V[ok] - truth[ok]) < sigma[ok], int(ok.sum())


def test_laplace_sigma_covers_the_truth_at_its_nominal_rate():
    hits = []
    for seed in range(3):
        t, e, fit, truth = sampled_chain(seed)
        sigma, info = u.laplace(e, fit)
        assert info["how"] == "exact inverse"
        h, k = coverage(fit, sigma, truth)
        assert k > 250
        hits.append(h)
    rate = np.concatenate(hits).mean()                          # ~850 states
    assert 0.63 < rate < 0.73, rate


def test_bootstrap_sigma_covers_the_truth_and_agrees_with_laplace():
    hits = []
    for seed in range(2):
        t, e, fit, truth = sampled_chain(seed + 10)
        sb, info = u.bootstrap_potentials(t, fit, replicates=50, seed=seed, weights="counts", reject="high",
                                          threshold=0)
        assert info["replicates"] == 50 and info["states"] > 250
        hits.append(coverage(fit, sb, truth)[0])
        sl, _ = u.laplace(e, fit)
        ok = np.isfinite(sb)
        assert np.median(sl[ok] / sb[ok]) == pytest.approx(1.0, abs=0.1)
    rate = np.concatenate(hits).mean()
    assert 0.62 < rate < 0.74, rate


def test_laplace_by_random_projection_matches_the_exact_inverse():
    t, e, fit, _ = sampled_chain(0)
    mi = np.flatnonzero(fit.components.label == 0)
    loc = np.full(len(fit.V), -1)
    loc[mi] = np.arange(len(mi))
    me = (loc[e.src] >= 0) & (loc[e.dst] >= 0)
    args = (len(mi), loc[e.src[me]], loc[e.dst[me]], e.count[me].astype(float), e.visits[mi].astype(float),
            fit.V[mi])
    exact, how = u.laplace_sigma(*args)
    approx, how2 = u.laplace_sigma(*args, dense_max=0, probes=400, seed=1)
    assert how == "exact inverse" and how2.startswith("random projection")
    ratio = approx / exact
    assert abs(np.median(ratio) - 1) < 0.02 and np.all(np.abs(ratio - 1) < 0.2)


def test_laplace_needs_counts_and_counts_weights():
    t, _, fit, _ = sampled_chain(0, n=60, per_state=200)
    with pytest.raises(u.DbgpuError, match="--weights counts"):
        u.laplace(make_edges(t, weights="paper"), fit)


def test_multinomial_rows_sum_to_each_row_and_have_the_right_moments():
    rng = np.random.default_rng(0)
    row = np.array([0, 0, 0, 1, 2, 2])
    p = np.array([0.2, 0.3, 0.5, 1.0, 0.9, 0.1])
    n_row = np.array([50, 7, 30])
    draws = np.array([u.multinomial_rows(rng, n_row, row, p) for _ in range(4000)])   # (4000, 6)
    assert np.all(np.bincount(row, minlength=3) > 0)
    for r in range(3):
        assert np.all(draws[:, row == r].sum(1) == n_row[r])
    expected = n_row[row] * p
    np.testing.assert_allclose(draws.mean(0), expected, rtol=0.02, atol=0.05)
    np.testing.assert_allclose(draws.var(0), expected * (1 - p), rtol=0.08, atol=0.05)


def test_bootstrap_resampling_keeps_the_number_of_queries():
    t, _, _, _ = sampled_chain(0, n=60, per_state=200)
    rng = np.random.default_rng(3)
    b = [u.resample_queries(t, rng) for _ in range(200)]
    assert all(x.visits.sum() == t.visits.sum() for x in b)
    mean_visits = np.mean([x.visits for x in b], axis=0)
    np.testing.assert_allclose(mean_visits, t.visits, rtol=0.05)


def test_null_sample_keeps_the_visits_and_follows_the_reversible_kernel():
    t, _, _, _ = sampled_chain(0, n=60, per_state=400)
    model = u.reversible_model(t)
    cs, cd, T = model
    assert np.all(np.bincount(cs, T, minlength=60) <= 1 + 1e-9)
    # the maximum-likelihood kernel reproduces every source's observed out-count
    out_obs = np.bincount(t.src, t.count, minlength=60)
    np.testing.assert_allclose(np.bincount(cs, T, minlength=60) * t.visits, out_obs, rtol=1e-6)
    rng = np.random.default_rng(0)
    s = u.sample_null(t, model, rng)
    assert np.array_equal(s.visits, t.visits)
    assert np.all(np.bincount(s.src, s.count, minlength=60) <= t.visits)


def test_null_p_values_are_uniform_under_detailed_balance_and_small_with_cycle_flux():
    p = np.array([list(sy.null_p_values(seed)[0].values()) for seed in range(10)])       # (10, 5)
    assert 0.3 < p.mean() < 0.7, p.mean(0)
    assert (p < 0.05).mean() < 0.15 and (p > 0.5).mean() > 0.3
    for seed in range(2):
        pc, nul = sy.null_p_values(seed, curl=0.5)
        floor = 1 / 31
        assert pc["loops_chi2_ndf"] == pytest.approx(floor)
        assert pc["gradient_fraction"] == pytest.approx(floor)
        assert pc["entropy_production"] == pytest.approx(floor)
        s = nul["statistics"]["gradient_fraction"]
        assert s["observed"] < s["null_mean"] - 5 * s["null_sd"]


def write_chain_jsonl(path, n=40, per_state=400, seed=0):
    V, src, dst, logT = sy.sparse_kernel(n, seed=seed, degree=6)
    f, g = sy.sample(n, src, dst, np.exp(logT), queries=n * per_state, seed=seed)
    return sy.write_transitions_jsonl(path, sy.state_names(n), f, g)


def test_fit_cli_writes_uncertainty_and_null(tmp_path, capsys):
    inp = write_chain_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "fit"
    rc = main(["fit", str(inp), "--out", str(out), "--weights", "counts", "--laplace", "--bootstrap", "12",
               "--null", "6", "--seed", "3", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "uncertainty.json" in captured.out and "null (detailed balance, 6 replicates)" in captured.out
    pot = json.loads((out / "potential.json").read_text())
    sig = json.loads((out / "uncertainty.json").read_text())
    assert list(sig) == list(pot)
    assert all((sig[s] is None) == (pot[s] is None) for s in pot)             # sigma exactly where V
    assert all(x > 0 for x in sig.values() if x is not None)
    st = json.loads((out / "stats.json").read_text())
    assert st["uncertainty"]["method"] == "bootstrap" and st["uncertainty"]["bootstrap"]["seed"] == 3
    assert st["uncertainty"]["laplace"]["states"] == st["components"]["main_size"]
    assert set(st["null"]["statistics"]) == {"pairwise_r", "pairwise_slope", "loops_chi2_ndf",
                                             "gradient_fraction", "entropy_production"}
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "Against detailed balance (6 null replicates, seed 3)" in text and "| σ |" in text
    # the same seed gives the same error bars
    rc = main(["fit", str(inp), "--out", str(tmp_path / "again"), "--weights", "counts", "--bootstrap", "12",
               "--seed", "3", "--quiet"])
    assert rc == 0 and json.loads((tmp_path / "again" / "uncertainty.json").read_text()) == sig
    # a fit without error bars into the same directory leaves no stale uncertainty.json
    assert main(["fit", str(inp), "--out", str(out), "--weights", "counts", "--quiet"]) == 0
    assert not (out / "uncertainty.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--laplace"], "--laplace needs --weights counts"),
    (["--bootstrap", "1"], "at least 2 replicates"),
    (["--null", "-3"], "at least 2 replicates"),
])
def test_fit_cli_error_bar_options_bad_input(tmp_path, capsys, args, message):
    inp = write_chain_jsonl(tmp_path / "t.jsonl", n=20, per_state=50)
    out = tmp_path / "out"
    assert main(["fit", str(inp), "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_exact_kernels_have_no_sampling_error(tmp_path, capsys):
    from dbgpu.data import write_score_dir

    _, logT = sy.dense_kernel(10, seed=0)
    write_score_dir(tmp_path / "s", sy.state_names(10), logT)
    assert main(["fit", str(tmp_path / "s"), "--out", str(tmp_path / "f"), "--bootstrap", "5"]) == 2
    assert "dbgpu compare" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "s"), "--out", str(tmp_path / "f")]) == 0
    st = json.loads((tmp_path / "f" / "stats.json").read_text())
    assert st["uncertainty"]["method"] is None and "dbgpu compare" in st["uncertainty"]["note"]
