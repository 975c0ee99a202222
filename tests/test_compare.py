"""`dbgpu compare`: correlations of potentials across runs, reuse of score directories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dbgpu.commands.fit import fit_input
from dbgpu.cli import main
from dbgpu.commands.compare import compare_job
from dbgpu.comparison import compare_pair, log_ratios, shared_potentials
from dbgpu.io import read_json
from dbgpu.data import write_score_dir
from dbgpu.synthetic import state_names


def _run(tmp_path, name, states, logT):
    d = write_score_dir(tmp_path / name, states, logT)
    fit_input(d, d, device="cpu")
    return {"label": name, "states": states, "logT": logT, "potential": read_json(d / "potential.json")}


def _db_kernel(V):
    """Exact detailed balance with potential V: log T(f,g) - log T(g,f) = V(f) - V(g)."""
    return (V[:, None] - V[None, :]) / 2 - np.log(4 * len(V))


@pytest.mark.parametrize("rho", [1.0, 0.8, 0.3, -0.5])
def test_known_correlation_is_recovered(tmp_path, rho):
    n = 30
    rng = np.random.default_rng(1)
    a = rng.normal(size=n)
    u = rng.normal(size=n)
    a = (a - a.mean()) / a.std()
    u -= u.mean() + (u @ a) / (a @ a) * a                 # orthogonal to a
    u /= u.std()
    b = rho * a + np.sqrt(1 - rho ** 2) * u               # sample correlation exactly rho
    states = state_names(n)
    ra = _run(tmp_path, "a", states, _db_kernel(a))
    rb = _run(tmp_path, "b", states, _db_kernel(b))
    row = compare_pair(ra, rb)
    assert row["shared_bounded"] == n
    assert row["pearson_V"] == pytest.approx(rho, abs=1e-6)
    assert row["slope_V"] == pytest.approx(rho, abs=1e-6)           # both have unit variance
    assert row["pearson_logratio"] == pytest.approx(rho, abs=1e-6)  # log-ratios are V differences


def test_only_states_bounded_in_both_runs_are_compared(tmp_path):
    pa = {"A": 0.0, "B": 1.0, "C": None, "D": 2.0}
    pb = {"A": 5.0, "B": None, "C": 1.0, "D": 7.0}
    shared, va, vb = shared_potentials(pa, pb)
    assert shared == ["A", "D"]
    np.testing.assert_allclose(va, [-1.0, 1.0])
    np.testing.assert_allclose(vb, [-1.0, 1.0])
    logT = np.log(np.array([[0.5, 0.1, 0.2], [0.3, 0.4, 0.05], [0.1, 0.2, 0.3]]))
    np.testing.assert_allclose(log_ratios(["X", "Y", "Z"], logT, ["Z", "X"]),
                               [np.log(0.1 / 0.2), np.log(0.2 / 0.1)])


def test_same_model_and_template_compare_with_correlation_one(tmp_path, capsys):
    """Two scorings of one model and template (tree and plain methods) agree exactly."""
    for method in ("tree", "plain"):
        assert main(["score", "--model", "random:qwen2", "--task", "word100", "--state-list",
                     "ATTITUDE,BUZZY,EXCELLENT,TURKEY,PERSONAL", "--method", method,
                     "--out", str(tmp_path / method), "--quiet"]) == 0
    runs = []
    for method in ("tree", "plain"):
        d = tmp_path / method
        fit_input(d, d, device="cpu")
        runs.append({"label": method, "states": read_json(d / "states.json"), "logT": np.load(d / "logT.npy"),
                     "potential": read_json(d / "potential.json")})
    row = compare_pair(*runs)
    assert row["pearson_V"] > 1 - 1e-9 and row["spearman_V"] == pytest.approx(1.0)
    assert row["slope_V"] == pytest.approx(1.0, abs=1e-4)
    assert row["pearson_logratio"] > 1 - 1e-9


def test_compare_writes_its_table_and_reuses_scores(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    states = ["ATTITUDE", "BUZZY", "TURKEY", "PERSONAL"]
    kw = dict(models=["random:llama", "random:gemma3"], templates=["paper", "terse"], task_name="word100",
              states=states, out=out, device="cpu", progress=False, log=lambda *a: None)
    first = compare_job(**kw)
    assert len(first["runs"]) == 4 and len(first["pairs"]) == 6
    assert not any(r["reused"] for r in first["runs"])
    for name in ("compare.md", "compare.csv", "runs.csv", "compare.json", "potentials.png", "potentials.pdf",
                 "db_index.png", "spread.csv", "uncertainty.json", "manifest.json"):
        assert (out / name).is_file(), name
    unc = json.loads((out / "uncertainty.json").read_text())
    assert list(unc) == states and first["spread"]["states"] == sum(v is not None for v in unc.values())
    assert json.loads((out / "compare.json").read_text())["pairs"] == json.loads(json.dumps(first["pairs"]))
    assert (out / "compare.csv").read_text().count("\n") == 1 + 6

    # a second call scores nothing: loading a model or scoring would fail
    import dbgpu.commands.score
    import dbgpu.models

    def boom(*a, **k):
        raise AssertionError("re-scored")

    monkeypatch.setattr(dbgpu.models, "load_model", boom)
    monkeypatch.setattr(dbgpu.commands.score, "score_job", boom)
    again = compare_job(**kw)
    assert all(r["reused"] for r in again["runs"])
    assert again["pairs"] == first["pairs"]
    # another temperature is another measurement: not reused, and the log says why, once per run
    lines = []
    with pytest.raises(AssertionError, match="re-scored"):
        compare_job(**{**kw, "temperature": 0.7, "log": lines.append})
    assert any("not reusing" in x and "(another temperature)" in x for x in lines), lines


def test_reuse_compares_the_prompts_texts_whatever_release_hashed_them(tmp_path):
    """A run directory is matched on its prompts' texts (not on a hash an older dbgpu
    computed another way): the same texts in another key order are reused; one changed
    character is a reason to score again, and it is named."""
    from dbgpu.commands.compare import reuse_problem
    states = ["A", "B"]
    prompts = {"sources": {"A": "<s>say A", "B": "<s>say B"}, "targets": {"A": "A</s>", "B": "B</s>"}}
    d = tmp_path / "run"
    write_score_dir(d, states, np.log(np.full((2, 2), 0.25)), prompts=prompts, meta={"temperature": 1.0})
    reordered = {"targets": dict(reversed(prompts["targets"].items())), "sources": prompts["sources"]}
    assert reuse_problem(d, states=states, meta_wanted={"temperature": 1.0}, prompts=lambda: reordered) is None
    changed = {**prompts, "sources": {**prompts["sources"], "B": "<s>say B!"}}
    assert reuse_problem(d, states=states, meta_wanted={"temperature": 1.0}, prompts=lambda: changed) == "other prompts"
    assert reuse_problem(d, states=states, meta_wanted={"temperature": 0.7}) == "another temperature"
    assert reuse_problem(d, states=["B", "A"], meta_wanted={}) == "another state set"
    assert reuse_problem(tmp_path / "none", states=states, meta_wanted={}) == "nothing scored yet"


@pytest.mark.parametrize("args,message", [
    (["--models", "random:llama,no-such-model"], "unknown model"),
    (["--models", "random:llama"], "at least two runs"),
    (["--models", "random:llama,random:llama"], "twice"),
    (["--models", "random:llama,random:qwen2", "--templates", "paper,missing.txt"], "template file not found"),
    (["--models", "random:llama,random:qwen2", "--state-list", "BUZZY,B1"], "not a word"),
])
def test_compare_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    assert main(["compare", *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_compare_command_prints_every_pair(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--models", "random:llama,random:qwen2", "--templates", "paper,puzzle",
                 "--state-list", "BUZZY,TURKEY,ATTITUDE,PERSONAL", "--device", "cpu", "--out", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert stdout.count(" vs ") == 6 and "random:llama [puzzle]" in stdout
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["random-llama__paper", "random-llama__puzzle", "random-qwen2__paper", "random-qwen2__puzzle"]
    meta = json.loads((out / "runs" / "random-qwen2__puzzle" / "meta.json").read_text())
    assert meta["template"] == "puzzle" and meta["model"] == "random:qwen2"


def test_reuse_needs_the_same_prompts_method_and_dtype(tmp_path, monkeypatch):
    import dbgpu.commands.score
    import dbgpu.report
    from dbgpu.io import finish_outputs

    monkeypatch.setattr(dbgpu.report, "write_report", lambda d: None)     # each run's figures: not tested here
    out = tmp_path / "cmp"
    states = ["ATTITUDE", "BUZZY", "TURKEY"]
    kw = dict(models=["random:llama"], templates=["paper", "terse"], task_name="word100", states=states,
              out=out, device="cpu", progress=False, log=lambda *a: None)
    compare_job(**kw)
    real, scored = dbgpu.commands.score.score_job, []

    def counting(**k):
        scored.append(k["out"].name)
        return real(**k)

    monkeypatch.setattr(dbgpu.commands.score, "score_job", counting)
    run = out / "runs" / "random-llama__paper"
    prompts = json.loads((run / "prompts.json").read_text())
    prompts["sources"]["BUZZY"] = prompts["sources"]["BUZZY"].replace("BUZZY", "BUZZ")   # another rendering
    (run / "prompts.json").write_text(json.dumps(prompts))
    finish_outputs(run, "score", ["states.json", "logT.npy", "prompts.json", "meta.json"])  # a whole score
    compare_job(**kw)
    assert scored == ["random-llama__paper"]
    compare_job(**{**kw, "method": "plain"})
    assert scored[1:] == ["random-llama__paper", "random-llama__terse"]
    compare_job(**{**kw, "method": "plain", "dtype": "bfloat16"})
    assert len(scored) == 5
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["method"], meta["dtype"]) == ("plain", "bfloat16")


def test_spread_of_V_across_runs(tmp_path):
    from dbgpu.comparison import potential_spread, spread_uncertainty

    base = np.array([-1.0, 0.0, 1.0, 2.0])

    def runs_of(noise):
        runs = []
        for k, (scale, shift) in enumerate([(1.0, 0.0), (2.0, 5.0), (1.5, -3.0)]):
            pot = {s: float(v) for s, v in zip("ABCD", scale * (base + noise[k]) + shift)}
            pot["E"] = None if k == 1 else 0.0                      # not bounded in every run
            runs.append({"label": str(k), "potential": pot})
        return runs

    # one shape at three scales and gauges: no spread once both are aligned
    sp = potential_spread(runs_of(np.zeros((3, 4))))
    assert sp["states"] == 4 and [r["state"] for r in sp["rows"]] == list("ABCD")
    assert all(r["sd"] == pytest.approx(0.0, abs=1e-12) for r in sp["rows"])
    assert sp["rows"][0]["sd_gauge"] == pytest.approx(np.std([-1.5, -3.0, -2.25], ddof=1))   # A: scale * -1.5
    assert np.array(sp["scale"]) / sp["scale"][0] == pytest.approx([1.0, 2.0, 1.5])
    # one run moves one state: that state spreads most
    noise = np.zeros((3, 4))
    noise[2, 1] = 0.3
    sp = potential_spread(runs_of(noise))
    sd = [r["sd"] for r in sp["rows"]]
    assert np.argmax(sd) == 1 and sd[1] > 0.1
    unc = spread_uncertainty(sp, list("ABCDE"))
    assert unc["E"] is None and unc["B"] == pytest.approx(sd[1])
