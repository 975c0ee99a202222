"""Temperature as an axis: `score --temperature a,b,c` (one pass of forwards, DIR/tau-<tau>),
its resume, `run` and `compare --temperatures`, `kernel(temperature=[...])`, and the
temperature-axis statistics (`comparison.temperature_axis`) against hand-made potentials."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dbgpu.shards as shards
from dbgpu.cli import main
from dbgpu.comparison import alpha_spread, temperature_axis

STATES = "BUZZY,TURKEY,ATTITUDE,PERSONAL,PROBLEMS,EXCELLENT,PURSUE"          # 7 rows
SCORE = ["score", "--model", "random:llama", "--task", "word100", "--state-list", STATES, "--device", "cpu",
         "--quiet", "--rows-per-block", "2"]
TAUS = [0.5, 1.0, 2.0]


def _logT(d):
    return np.load(d / "logT.npy")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Each temperature scored on its own, as today: {tau: logT}."""
    out = {}
    for tau in TAUS:
        d = tmp_path_factory.mktemp("single") / "s"
        assert main([*SCORE, "--temperature", format(tau, "g"), "--out", str(d)]) == 0
        out[tau] = _logT(d)
    return out


def test_each_temperature_directory_equals_its_own_single_temperature_run(tmp_path, capsys, single):
    out = tmp_path / "s"
    assert main([*SCORE, "--temperature", "0.5,1,2", "--out", str(out)]) == 0
    assert "at 3 temperatures from one pass" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["tau-0.5", "tau-1", "tau-2", "temperatures.json"]
    for tau in TAUS:
        d = out / f"tau-{format(tau, 'g')}"
        meta = json.loads((d / "meta.json").read_text())
        assert meta["temperature"] == tau and meta["temperature_pass"]["temperatures"] == TAUS
        # the same forwards, batches and float32 head; the division by tau in place or not
        np.testing.assert_allclose(_logT(d), single[tau], atol=1e-5, rtol=0)
        assert main(["fit", str(d), "--out", str(d)]) == 0               # fit takes each unchanged
    doc = json.loads((out / "temperatures.json").read_text())
    assert doc["temperature"] == TAUS and sorted(doc["runs"]) == ["tau-0.5", "tau-1", "tau-2"]
    capsys.readouterr()
    assert main([*SCORE, "--temperature", "0.5,1,2", "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main([*SCORE, "--temperature", "0.5,1", "--out", str(out)]) == 2   # other temperatures: refused
    assert "temperature [0.5, 1.0, 2.0], not [0.5, 1.0]" in capsys.readouterr().err
    assert main([*SCORE, "--temperature", "0.5,1", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["tau-0.5", "tau-1", "temperatures.json"]


def test_an_interrupted_several_temperature_score_resumes_with_every_temperature(tmp_path, capsys, monkeypatch,
                                                                                 single):
    out = tmp_path / "s"
    real, count = shards.write_shard, {"n": 0}

    def write(*a, **k):                          # the job dies (as on Ctrl-C) once 2 shards are on disk
        if count["n"] == 2:
            raise KeyboardInterrupt
        count["n"] += 1
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(shards, "write_shard", write)
        assert main([*SCORE, "--temperature", "0.5,1,2", "--out", str(out)]) == 130
    on_disk = sorted((out / "shards").iterdir())
    assert len(on_disk) == 2
    with np.load(on_disk[0]) as z:
        assert z["logT"].shape[0] == 3                      # a shard holds every temperature's rows
    assert not (out / "tau-1").exists()
    capsys.readouterr()
    assert main([*SCORE, "--temperature", "0.5,1,2", "--out", str(out)]) == 0
    assert "3 rows this call" in capsys.readouterr().out    # 7 rows: 4 were on disk
    for tau in TAUS:
        np.testing.assert_allclose(_logT(out / f"tau-{format(tau, 'g')}"), single[tau], atol=1e-5, rtol=0)


def test_bad_temperature_lists_are_one_line_errors(tmp_path, capsys):
    for value, words in (("0.5,x", "not a number"), ("0.5,0.5", "repeated"), ("1,-2", "positive")):
        assert main([*SCORE, "--temperature", value, "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_kernel_api_returns_one_kernel_per_temperature(single):
    import dbgpu

    ks = dbgpu.kernel("random:llama", "word100", STATES.split(","), temperature=TAUS, device="cpu",
                      rows_per_block=2, progress=False)
    assert sorted(ks) == TAUS
    for tau, k in ks.items():
        assert k.meta["temperature"] == tau and k.path is None
        np.testing.assert_allclose(k.logT, single[tau], atol=1e-5, rtol=0)


def test_run_and_compare_with_a_temperature_axis(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--model", "random:llama", "--n-states", "5", "--temperature", "0.5,1,2", "--device", "cpu",
                 "--quiet", "--out", str(out)]) == 0
    for name in ("tau-0.5", "tau-1", "tau-2"):
        assert (out / name / "report.md").is_file() and (out / name / "potential.json").is_file()
    axis = json.loads((out / "temperature.json").read_text())
    assert [r["tau"] for r in axis["rows"]] == TAUS and axis["reference_tau"] == 1.0
    assert "## Temperature" in (out / "temperature.md").read_text() and (out / "temperature.png").is_file()

    cmp = tmp_path / "c"
    args = ["compare", "--models", "random:llama", "--temperatures", "0.5,1,2",
            "--n-states", "5", "--device", "cpu", "--quiet", "--out", str(cmp)]
    assert main(args) == 0
    result = json.loads((cmp / "compare.json").read_text())
    assert len(result["runs"]) == 3 and list(result["temperature_axis"]) == ["random:llama [default]"]
    assert [r["temperature"] for r in result["runs"]] == TAUS and len(result["pairs"]) == 3
    assert "## Temperature" in (cmp / "compare.md").read_text() and (cmp / "temperature.csv").is_file()
    capsys.readouterr()
    assert main(args) == 0                                  # each model x template's pass is reused
    assert capsys.readouterr().out.count("reusing the scores") == 1


# ------------------------------------------------------------------ the temperature axis


def _run(tau, V, *, beta=1.0, hodge=1.0):
    return {"tau": tau, "potential": dict(zip("abcdef", V)),
            "stats": {"pairwise": {"slope": beta, "r": 1.0}, "hodge": {"gradient_fraction": hodge}}}


def test_a_thermodynamic_temperature_gives_alpha_one():
    """beta_tau V_tau = V_1 / tau exactly: slope bV = 1 / tau and alpha = 1 (hand-made)."""
    V1 = np.array([0.0, 1.0, -2.0, 0.5, 3.0, -1.5])
    runs = [_run(t, V1 / t) for t in (2.0, 0.5, 1.0, 1.5)]           # unsorted on purpose
    ax = temperature_axis(runs)
    assert ax["reference_tau"] == 1.0 and [r["tau"] for r in ax["rows"]] == [0.5, 1.0, 1.5, 2.0]
    for r in ax["rows"]:
        assert r["slope_bV"] == pytest.approx(1 / r["tau"], rel=1e-12)   # least squares of an exact multiple
        assert r["pearson_V"] == pytest.approx(1.0, abs=1e-12) and r["spearman_V"] == pytest.approx(1.0)
    assert ax["alpha"] == pytest.approx(1.0, abs=1e-12) and ax["alpha_r2"] == pytest.approx(1.0, abs=1e-12)


def test_a_kernel_tau_leaves_alone_gives_alpha_zero_and_beta_scales_the_slope():
    V1 = np.array([0.0, 1.0, -2.0, 0.5, 3.0, -1.5])
    runs = [_run(t, V1, beta=1.0) for t in (0.5, 1.0, 2.0)]
    ax = temperature_axis(runs)
    assert ax["alpha"] == pytest.approx(0.0, abs=1e-12)
    runs[0]["stats"]["pairwise"]["slope"] = 3.0                       # beta_0.5 V_0.5 = 3 V_1
    assert temperature_axis(runs)["rows"][0]["slope_bV"] == pytest.approx(3.0, rel=1e-12)
    spread = alpha_spread({"a": {"alpha": 1.0}, "b": {"alpha": 0.6}, "c": {"alpha": None}})
    assert spread["mean"] == pytest.approx(0.8) and spread["sd"] == pytest.approx(np.std([1.0, 0.6], ddof=1))
