"""The Python API (`dbgpu.api`, promised at the top level): the same files and the same
one-line errors as the CLI, a light `import dbgpu`, `help(dbgpu)`, reprs and `.to_frame()`,
and the README's example run as it is written."""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers_fit import CLAUDE_COUNTS, write_claude_json

import dbgpu
from dbgpu.cli import main
from dbgpu.data import write_score_dir
from dbgpu.synthetic import dense_kernel, sample_dense_counts, state_names

README = Path(__file__).resolve().parents[1] / "README.md"
WORDS = ["ATTITUDE", "PERSONAL", "TURKEY"]
#: fields (at any depth) that record when, how fast and where a job ran, not what it found
RUN_FIELDS = ("seconds", "provenance")


def cli(argv, capsys):
    """main() as the console script runs it: exit status, stdout, stderr."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:                                # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def dense_score_dir(path: Path, n: int = 8, *, seed: int = 0, states=None) -> Path:
    _, logT = dense_kernel(n, seed=seed, noise=0.3)
    write_score_dir(path, states or state_names(n), logT)
    return path


def without(d, keys):
    """`d` with the named keys dropped from every dict in it, at any depth."""
    if isinstance(d, dict):
        return {k: without(v, keys) for k, v in d.items() if k not in keys}
    return [without(v, keys) for v in d] if isinstance(d, list) else d


def assert_same_fit(a: Path, b: Path) -> None:
    """Two fit directories hold the same result: potential.json (and uncertainty.json)
    byte for byte, stats.json apart from its timing and provenance, the same points."""
    assert (a / "potential.json").read_bytes() == (b / "potential.json").read_bytes()
    assert (a / "uncertainty.json").is_file() == (b / "uncertainty.json").is_file()
    if (a / "uncertainty.json").is_file():
        assert (a / "uncertainty.json").read_bytes() == (b / "uncertainty.json").read_bytes()
    sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))
    assert without(sa, RUN_FIELDS) == without(sb, RUN_FIELDS)
    with np.load(a / "fit_points.npz") as za, np.load(b / "fit_points.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for name in za.files:
            np.testing.assert_array_equal(za[name], zb[name])
    assert (a / "msm.json").read_bytes() == (b / "msm.json").read_bytes()
    with np.load(a / "msm_transitions.npz") as za, np.load(b / "msm_transitions.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for name in za.files:
            np.testing.assert_array_equal(za[name], zb[name])


# --------------------------------------------------------------------------- the package's front door


def test_import_dbgpu_is_light_and_loads_the_api_lazily():
    code = """
import json, sys
heavy = ("torch", "transformers", "numpy", "scipy", "matplotlib", "pandas")
loaded = lambda: sorted(m for m in heavy if m in sys.modules)
import dbgpu
after_import = (loaded(), "dbgpu.api" in sys.modules)
for name in dbgpu.__all__:
    getattr(dbgpu, name)
import pydoc
pydoc.render_doc(dbgpu)
print(json.dumps({"import": after_import, "names": loaded(), "api": "dbgpu.api" in sys.modules}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["import"] == [[], False]            # nothing heavy, and not even the API yet
    assert got["names"] == [] and got["api"]        # every name (and help) resolved without them


def test_every_name_is_the_api_object_even_after_every_submodule_is_imported():
    """A package attribute named like a submodule is replaced by that submodule when it is
    first imported: no promised name may be one (fit, report, explain, explore ...)."""
    import dbgpu.api as api

    for m in pkgutil.walk_packages(dbgpu.__path__, "dbgpu."):
        if m.name != "dbgpu.__main__":
            __import__(m.name)
    submodules = {name for _, name, _ in pkgutil.iter_modules(dbgpu.__path__)}
    assert not submodules & set(dbgpu.__all__)
    assert isinstance(dbgpu.fit, types.ModuleType)          # the hazard itself: dbgpu.fit is the module
    for name in dbgpu.__all__:
        value = getattr(dbgpu, name)
        assert not isinstance(value, types.ModuleType), name
        assert value is (getattr(api, name) if hasattr(api, name) else getattr(dbgpu, name))
    assert dbgpu.DbgpuError is __import__("dbgpu.errors").errors.DbgpuError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dbgpu.nope


def test_help_lists_every_name_with_a_one_line_summary():
    import pydoc

    doc = dbgpu.__doc__
    text = pydoc.render_doc(dbgpu, renderer=pydoc.plaintext)
    for name in dbgpu.__all__:
        lines = [ln for ln in doc.splitlines() if re.match(rf"    {re.escape(name)}(\(|\s)", ln)]
        assert len(lines) == 1, name
        summary = re.split(r"\s{2,}", lines[0].strip(), maxsplit=1)
        assert len(summary) == 2 and len(summary[1].split()) >= 3, lines[0]
        assert lines[0].strip() in text                    # help(dbgpu) shows it
        obj = getattr(dbgpu, name)
        if callable(obj):                                   # and each has its own docstring
            assert (obj.__doc__ or "").strip().splitlines()[0], name


# --------------------------------------------------------------------------- CLI and API: the same files


def test_fit_of_a_kernel_writes_what_the_cli_writes(tmp_path, capsys):
    src = dense_score_dir(tmp_path / "score")
    rc, out, err = cli(["fit", src, "--out", tmp_path / "cli", "--device", "cpu"], capsys)
    assert rc == 0, err
    k = dbgpu.Kernel.load(src)
    pot = dbgpu.potential(k, device="cpu")
    assert pot.save(tmp_path / "api") == tmp_path / "api"
    dbgpu.potential(str(src), device="cpu").save(tmp_path / "api-path")
    assert_same_fit(tmp_path / "cli", tmp_path / "api")
    assert_same_fit(tmp_path / "cli", tmp_path / "api-path")
    assert json.loads((tmp_path / "api" / "stats.json").read_text())["input"] == str(src)
    # what the CLI printed is the potential's own headline
    from dbgpu.commands.fit import fit_summary

    assert fit_summary(pot.stats) in out
    # and the report drawn through the API is the CLI's
    assert cli(["report", tmp_path / "cli"], capsys)[0] == 0
    assert dbgpu.draw_report(pot) == tmp_path / "api" / "report.md"
    timed = lambda d: re.sub(r"[0-9.e-]+ s \|", "T s |", (tmp_path / d / "report.md").read_text())  # noqa: E731
    assert timed("api") == timed("cli") and "T s |" in timed("cli")


def test_fit_of_counts_with_error_bars_and_null_writes_what_the_cli_writes(tmp_path, capsys):
    from dbgpu.synthetic import write_transitions_jsonl

    _, logT = dense_kernel(6, seed=2, noise=0.2)
    t = sample_dense_counts(logT, per_source=400, seed=1)
    log = write_transitions_jsonl(tmp_path / "t.jsonl", t.states, np.repeat(t.src, t.count), np.repeat(t.dst, t.count))
    opts = dict(weights="counts", laplace=True, bootstrap=3, null=3, seed=5)
    rc, _, err = cli(["fit", log, "--out", tmp_path / "cli", "--device", "cpu", "--weights", "counts", "--laplace",
                      "--bootstrap", "3", "--null", "3", "--seed", "5", "--quiet"], capsys)
    assert rc == 0, err
    pot = dbgpu.potential(log, device="cpu", **opts)
    pot.save(tmp_path / "api")
    assert_same_fit(tmp_path / "cli", tmp_path / "api")
    assert pot.sigma == json.loads((tmp_path / "cli" / "uncertainty.json").read_text())
    assert pot.stats["null"]["replicates"] == 3


def test_score_writes_what_the_cli_writes(tmp_path, capsys):
    args = ["--model", "random:llama", "--task", "word100", "--template", "terse", "--temperature", "0.7",
            "--device", "cpu", "--quiet"]
    rc, _, err = cli(["score", *args, "--state-list", ",".join(WORDS), "--out", tmp_path / "cli"], capsys)
    assert rc == 0, err
    kw = dict(template="terse", temperature=0.7, device="cpu", progress=False)
    k = dbgpu.kernel("random:llama", "word100", WORDS, **kw)
    assert k.path is None                                    # scored in a temporary directory, now gone
    k.save(tmp_path / "api")
    lm = dbgpu.load_model("random:llama", device="cpu")
    assert repr(lm).startswith("LM('random:llama': LlamaForCausalLM, 0.") and repr(lm).endswith("float32 on cpu)")
    task = dbgpu.get_task("word100", template="terse")
    dbgpu.kernel(lm, task, WORDS, temperature=0.7, progress=False, out=tmp_path / "api-out")
    for d in ("api", "api-out"):
        for name in ("states.json", "logT.npy", "prompts.json"):
            assert (tmp_path / d / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), (d, name)
    timing = ("seconds", "load_seconds", "loaded_from_cache", "scoring", "scoring_calls", "shards",
              "provenance", "created")
    mc, ma = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("cli", "api"))
    assert without(mc, timing) == without(ma, timing)
    assert ma["template"] == "terse" and ma["temperature"] == 0.7
    # the API's task object: the same prompts, recorded without the template's name
    mo = json.loads((tmp_path / "api-out" / "meta.json").read_text())
    assert mo["template"] is None and mo["template_sha256"] == mc["template_sha256"]


def test_explore_and_compare_call_their_jobs_as_the_cli_does(tmp_path, capsys, monkeypatch):
    """The CLI and the API hand the same arguments to the one job function."""
    import dbgpu.commands.compare as cc
    import dbgpu.commands.explore as ce

    calls = []
    monkeypatch.setattr(ce, "explore_job", lambda **kw: calls.append(kw) or {
        "first_step": 0, "steps": 1, "summary": ce.Tally(invalid_state=None).as_dict(), "discovered": ["BUZZY"],
        "log": str(tmp_path / "e" / "transitions.jsonl")})
    monkeypatch.setattr(cc, "compare_job", lambda **kw: calls.append(kw) or {})
    assert cli(["explore", "--model", "random:qwen2", "--task", "word100", "--steps", "3", "--out", tmp_path / "e",
                "--batch", "4", "--seed", "2", "--temperature", "0.5", "--answer-prefix", "", "--quiet"], capsys)[0] == 0
    dbgpu.exploration("random:qwen2", "word100", steps=3, out=str(tmp_path / "e"), batch=4, seed=2,
                      temperature=0.5, answer_prefix="", progress=False)
    assert cli(["compare", "--models", "random:llama,random:qwen2", "--state-list", ",".join(WORDS), "--out",
                tmp_path / "c", "--templates", "paper,terse", "--quiet"], capsys)[0] == 0
    dbgpu.compare(["random:llama", "random:qwen2"], WORDS, out=str(tmp_path / "c"), templates=["paper", "terse"],
                  progress=False)
    (e_cli, e_api, c_cli, c_api) = calls
    assert e_cli.pop("task").__dict__ == e_api.pop("task").__dict__ and e_api.pop("lm") is None
    assert e_cli == e_api
    assert c_cli == c_api


def test_exploration_runs_the_agent_and_lists_its_states(tmp_path, capsys):
    kw = dict(steps=2, batch=4, seed=3, device="cpu", max_new_tokens=4)
    run = dbgpu.exploration("random:llama", "word100", out=tmp_path / "api", progress=False, **kw)
    rc, _, err = cli(["explore", "--model", "random:llama", "--task", "word100", "--steps", "2", "--batch", "4",
                      "--seed", "3", "--device", "cpu", "--max-new-tokens", "4", "--out", tmp_path / "cli",
                      "--quiet"], capsys)
    assert rc == 0, err
    log = (tmp_path / "api" / "transitions.jsonl").read_bytes()
    assert log == (tmp_path / "cli" / "transitions.jsonl").read_bytes() and len(log.splitlines()) == 8
    assert run.log == tmp_path / "api" / "transitions.jsonl" and run.steps == 2 and run.task == "word100"
    assert run.summary["answers"] == 8 and "8 answers" in repr(run)
    rc, out, _ = cli(["states", tmp_path / "cli"], capsys)
    assert run.states() == json.loads(out)
    frame = run.to_frame()
    assert list(frame["source"]) == [json.loads(x)["source"] for x in log.splitlines()]


# --------------------------------------------------------------------------- objects


def test_kernel_round_trip_checks_and_summary(tmp_path):
    V, logT = dense_kernel(5, seed=1)
    k = dbgpu.Kernel(state_names(5), logT, meta={"model": "m", "task": "t", "temperature": 1.0, "dtype": "float32",
                                                 "device": "cpu", "method": "tree"})
    k.save(tmp_path / "k")
    back = dbgpu.Kernel.load(tmp_path / "k")
    np.testing.assert_array_equal(back.logT, logT)
    assert back.states == k.states and back.meta == k.meta and back.prompts is None and back.path == tmp_path / "k"
    np.testing.assert_allclose(k.coverage, np.exp(logT).sum(1))
    np.testing.assert_allclose(k.self_mass, 1e-3)
    r = repr(k)
    assert r.startswith("Kernel: 5 x 5 states, model m (float32 on cpu), task t, temperature 1.0")
    assert f"median {np.median(np.exp(logT).sum(1)):.3g}" in r and "saved in" in r
    assert "top 10 transitions" in k.summary()
    # the manifest vouches for the files: one changed afterwards is refused
    np.save(tmp_path / "k" / "logT.npy", logT + 1)
    with pytest.raises(dbgpu.DbgpuError, match="changed after `dbgpu score` wrote it"):
        dbgpu.Kernel.load(tmp_path / "k")
    with pytest.raises(dbgpu.DbgpuError, match=r"^logT has shape \(5, 5\), expected \(4, 4\) for 4 states$"):
        dbgpu.Kernel(state_names(4), logT)
    with pytest.raises(dbgpu.DbgpuError, match="^states lists a state more than once$"):
        dbgpu.Kernel(["A", "A"], np.zeros((2, 2)))
    with pytest.raises(dbgpu.DbgpuError, match="^logT contains NaN or"):
        dbgpu.Kernel(["A", "B"], np.full((2, 2), np.nan))


def test_potential_repr_load_and_unbounded_states(tmp_path, capsys):
    inp = write_claude_json(tmp_path / "claude.json")
    pot = dbgpu.potential(inp, device="cpu")
    assert pot.V["TURKEY"] is None and pot.V["BUZZY"] is None
    assert pot.V["PERSONAL"] - pot.V["ATTITUDE"] == pytest.approx(np.log(3879 / 66), abs=1e-8)
    assert pot.bounded == ["ATTITUDE", "PERSONAL", "PROBLEMS"] and pot.sigma is None
    assert pot.components["main_size"] == 3
    r = repr(pot)
    st = pot.stats
    assert r.startswith("Potential: 5 states, 3 bounded (main component 3 of 5; 3 components), 7 edges, "
                        "weights high_reject")
    assert f"least action: {st['action']:.6g}" in r
    assert f"r = {st['pairwise']['r']:.4g}" in r
    assert f"Hodge gradient fraction (1 = detailed balance): {st['hodge']['gradient_fraction']:.4g}" in r
    lowest = min(pot.bounded, key=pot.V.get)
    assert f"lowest potential (most probable): {lowest} {pot.V[lowest]:+.2f}" in r
    # saved, loaded back, saved again: the same files
    # the reversible Markov model (hand-checked in test_cli_fit): pi on the main component
    assert pot.pi["TURKEY"] is None and pot.pi["BUZZY"] is None
    assert pot.pi["ATTITUDE"] == pytest.approx(0.5, rel=1e-10)          # the fit's tolerance
    assert pot.msm_states == pot.bounded
    P = pot.P.toarray()
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-15)                # a few roundings per row
    pi = np.array([pot.pi[s] for s in pot.msm_states])
    np.testing.assert_allclose(pi[:, None] * P, (pi[:, None] * P).T, atol=1e-16)   # detailed balance
    pot.save(tmp_path / "a")
    back = dbgpu.Potential.load(tmp_path / "a")
    assert back.V == pot.V and back.stats == pot.stats and back.path == tmp_path / "a"
    assert back.pi == pot.pi and (back.P != pot.P).nnz == 0 and back.msm_states == pot.msm_states
    back.save(tmp_path / "b")
    assert_same_fit(tmp_path / "a", tmp_path / "b")
    # a list of (source, target) pairs is the same input
    pairs = [pair for pair, n in CLAUDE_COUNTS.items() for _ in range(n)]
    assert dbgpu.potential(pairs, device="cpu").V == pot.V


def test_to_frame_with_pandas(tmp_path):
    V, logT = dense_kernel(4, seed=3)
    k = dbgpu.Kernel(state_names(4), logT)
    df = k.to_frame()
    assert df.shape == (4, 4) and df.index.name == "source" and df.columns.name == "target"
    assert df.loc["S1", "S2"] == logT[1, 2]
    inp = write_claude_json(tmp_path / "claude.json")
    pot = dbgpu.potential(inp, device="cpu", weights="counts", laplace=True)
    f = pot.to_frame()
    assert list(f.index) == sorted(pot.bounded, key=pot.V.get) + ["BUZZY", "TURKEY"]   # lowest V first
    assert list(f.columns) == ["V", "bounded", "sigma"]
    assert f.loc["PERSONAL", "V"] == pot.V["PERSONAL"] and f.loc["PERSONAL", "sigma"] == pot.sigma["PERSONAL"]
    assert np.isnan(f.loc["TURKEY", "V"]) and not f.loc["TURKEY", "bounded"]


def test_to_frame_without_pandas_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)        # `import pandas` now raises ImportError
    k = dbgpu.Kernel(["A", "B"], np.log(np.full((2, 2), 0.5)))
    with pytest.raises(dbgpu.DbgpuError) as e:
        k.to_frame()
    assert "pip install pandas" in str(e.value) and "\n" not in str(e.value)


def test_reports_and_explanations_of_a_potential(tmp_path, capsys):
    states = dbgpu.get_task("word100").seed_states(12)
    _, logT = dense_kernel(12, seed=4, noise=0.2)
    pot = dbgpu.potential(dbgpu.Kernel(states, logT, meta={"task": "word100"}), device="cpu")
    assert pot.task == "word100"
    for f in (dbgpu.draw_report, dbgpu.explanation):
        with pytest.raises(dbgpu.DbgpuError, match=r"^this potential is not saved: pass out=DIR"):
            f(pot)
    doc = dbgpu.explanation(pot, out=tmp_path / "fit")      # saved there first; its task is known
    assert doc == json.loads((tmp_path / "fit" / "explain.json").read_text())
    assert doc["n_states"] == 12 and "ols" in doc
    rc, _, err = cli(["explain", tmp_path / "fit", "--task", "word100"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "fit" / "explain.json").read_text()) == doc
    report = dbgpu.draw_report(pot)                         # where it was saved
    assert report == tmp_path / "fit" / "report.md" and (tmp_path / "fit" / "graph.png").is_file()
    assert "## Explaining V by state features" in report.read_text()
    with pytest.raises(dbgpu.DbgpuError, match="^out= goes with a Potential"):
        dbgpu.draw_report(tmp_path / "fit", out=tmp_path / "x")


def test_compare_returns_the_comparison_it_wrote(tmp_path):
    cmp = dbgpu.compare(["random:llama", "random:qwen2"], WORDS, out=tmp_path / "c", device="cpu", progress=False)
    assert cmp.result == json.loads((tmp_path / "c" / "compare.json").read_text())
    assert len(cmp.pairs) == 1 and len(cmp.runs) == 2
    from dbgpu.commands.compare import compare_summary

    assert compare_summary(cmp.result).splitlines()[0] in repr(cmp)
    assert list(cmp.to_frame()["a"]) == [cmp.pairs[0]["a"]]


# --------------------------------------------------------------------------- bad input: the CLI's messages


@pytest.mark.parametrize("case", ["missing input", "bootstrap", "unknown task", "temperature", "duplicate",
                                  "report dir", "explore steps", "bad pairs", "bad source", "task type",
                                  "template on a task", "states type"])
def test_bad_input_raises_the_cli_message(case, tmp_path, capsys):
    nope = tmp_path / "nope"
    log = tmp_path / "t.jsonl"
    log.write_text('{"source": "A", "target": "B"}\n{"source": "B", "target": "A"}\n')
    score = ["score", "--model", "random:llama", "--device", "cpu", "--out", tmp_path / "s"]
    cases = {
        "missing input": (["fit", nope, "--out", tmp_path / "o"], lambda: dbgpu.potential(nope)),
        "bootstrap": (["fit", log, "--out", tmp_path / "o", "--bootstrap", "1"],
                      lambda: dbgpu.potential(log, bootstrap=1)),
        "unknown task": ([*score, "--task", "nosuch", "--state-list", "A,B"],
                         lambda: dbgpu.kernel("random:llama", "nosuch", ["A", "B"], device="cpu")),
        "temperature": ([*score, "--task", "word100", "--state-list", "BUZZY,TURKEY", "--temperature", "-1"],
                        lambda: dbgpu.kernel("random:llama", "word100", ["BUZZY", "TURKEY"], temperature=-1.0)),
        "duplicate": ([*score, "--task", "word100", "--state-list", "BUZZY,buzzy"],
                      lambda: dbgpu.kernel("random:llama", "word100", ["BUZZY", "buzzy"])),
        "report dir": (["report", nope], lambda: dbgpu.draw_report(nope)),
        "explore steps": (["explore", "--model", "random:llama", "--task", "word100", "--steps", "0", "--out",
                           tmp_path / "e"], lambda: dbgpu.exploration("random:llama", "word100", steps=0,
                                                                        out=tmp_path / "e")),
        "bad pairs": (None, lambda: dbgpu.potential([("A", "B", "C")])),
        "bad source": (None, lambda: dbgpu.potential(3.5)),
        "task type": (None, lambda: dbgpu.get_task(3)),
        "template on a task": (None, lambda: dbgpu.kernel("random:llama", dbgpu.get_task(), WORDS, template="terse")),
        "states type": (None, lambda: dbgpu.kernel("random:llama", "word100", {"BUZZY": 1})),
    }
    argv, call = cases[case]
    with pytest.raises(dbgpu.DbgpuError) as e:
        call()
    msg = str(e.value)
    assert msg and "\n" not in msg
    if argv is not None:
        rc, _, err = cli(argv, capsys)
        assert rc == 2 and err == f"dbgpu {argv[0]}: error: {msg}\n"
    for d in ("o", "s", "e"):
        assert not (tmp_path / d).exists()                # nothing written


# --------------------------------------------------------------------------- the README's example


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- python-api-example -->\n```python\n(.*?)```\n<!-- /python-api-example -->", text, re.S)
    assert m, "README.md lost its marked Python API example"
    return m.group(1)


def test_the_readme_example_imports_nothing_but_dbgpu():
    tree = ast.parse(readme_example())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports and all(isinstance(n, ast.Import) and [a.name for a in n.names] == ["dbgpu"] for n in imports)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, smollm2, model_cache, capsys):
    """The block runs in a plain python process from a temporary directory; the model's
    dequantised cache is the session's (the `smollm2` fixture filled it)."""
    home = tmp_path / "cache-home"
    home.mkdir()
    (home / "dbgpu").symlink_to(model_cache, target_is_directory=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(home)}
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    work = tmp_path / "work"
    work.mkdir()
    res = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = work / "runs" / "python-api"
    assert "Kernel: 6 x 6 states, model smollm2-135m" in res.stdout and "Potential: 6 states" in res.stdout
    assert res.stdout.rstrip().endswith(str(Path("runs/python-api/report.md")))
    pot = dbgpu.Potential.load(out)                          # whole: the manifest checks out
    assert (out / "report.md").is_file() and pot.task == "word100"
    # the directory is a score + fit: `dbgpu fit` on it gives the API's potential
    rc, _, err = cli(["fit", out, "--out", tmp_path / "cli", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert (tmp_path / "cli" / "potential.json").read_bytes() == (out / "potential.json").read_bytes()
