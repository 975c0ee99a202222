"""`dbgpu explain` and `dbgpu run --task formula` as a user runs them."""

from __future__ import annotations

import json

import numpy as np

from dbgpu.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_formula_prints_its_summary_and_explains_V(tmp_path, capsys):
    from dbgpu.tasks.formula import SEEDS

    out = tmp_path / "run"
    (tmp_path / "states.json").write_text(json.dumps(list(SEEDS[:7]) + ["x*param2 + param1"]))
    code, stdout, err = run_cli(capsys, "run", "--task", "formula", "--model", "random:llama", "--states",
                                tmp_path / "states.json", "--out", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    assert json.loads((out / "states.json").read_text()) == list(SEEDS[:7]) + ["param1 + param2*x"]
    assert "coverage" in stdout and "self" in stdout and "top 10 transitions" in stdout
    assert "param1*x" in stdout and "explaining V by" in stdout and "leading features" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["task"] == "formula" and meta["answer_prefix"] == "y ="
    doc = json.loads((out / "explain.json").read_text())
    assert doc["task"] == "formula" and doc["n_states"] == 8
    assert "score" in doc["features"] and "parameters" in doc["features"]
    assert (out / "explain.png").is_file() and (out / "explain.pdf").is_file()
    assert "## Explaining V by state features" in (out / "report.md").read_text()
    # V in explain.json is potential.json's, state for state
    pot = json.loads((out / "potential.json").read_text())
    assert doc["V"] == [pot[s] for s in doc["states"]]

    code, stdout, err = run_cli(capsys, "explain", out, "--folds", 3, "--seed", 1)
    assert code == 0, err
    assert json.loads((out / "explain.json").read_text())["folds"] == 3

    # a new fit makes the explanation stale: the report leaves it out until explain runs again
    assert run_cli(capsys, "fit", out, "--out", out, "--device", "cpu")[0] == 0
    assert run_cli(capsys, "report", out)[0] == 0
    assert "## Explaining V" not in (out / "report.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["outputs"]["explain"]["stale"]
    assert run_cli(capsys, "explain", out)[0] == 0
    assert "## Explaining V by state features" in (out / "report.md").read_text()


def _explore_dir(path, states, counts):
    """A hand-written explore directory: transitions f -> g repeated counts[f][g] times."""
    path.mkdir()
    recs = [{"source": f, "answer": f" {g}", "target": g} for f, row in counts.items() for g, n in row.items()
            for _ in range(n)]
    recs = [{**r, "step": i, "slot": 0} for i, r in enumerate(recs)]
    (path / "transitions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (path / "explore.json").write_text(json.dumps({"settings": {"task": "word100", "batch": 1, "start": states[0]},
                                                   "calls": []}))


def test_explain_a_fit_of_an_explore_log_finds_the_task_beside_the_log(tmp_path, capsys):
    words = ["ATTITUDE", "PERSONAL", "PROBLEMS", "TURKEY", "BUZZY", "EXCELLENT"]
    rng = np.random.default_rng(0)
    counts = {f: {g: int(rng.integers(1, 30)) for g in words if g != f} for f in words}
    _explore_dir(tmp_path / "ex", words, counts)
    fit = tmp_path / "fit"
    assert run_cli(capsys, "fit", tmp_path / "ex" / "transitions.jsonl", "--out", fit, "--device", "cpu")[0] == 0
    code, out, err = run_cli(capsys, "explain", fit)
    assert code == 0, err
    doc = json.loads((fit / "explain.json").read_text())
    assert doc["task"] == "word100" and sorted(doc["states"]) == sorted(words)
    assert {"length", "zipf", "vowels"} <= set(doc["features"]) | set(doc["dropped"])
    i = doc["states"].index("BUZZY")
    assert doc["values"]["length"][i] == 5.0


def test_explain_bad_input_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(capsys, "explain", tmp_path / "nope")
    assert code == 2 and "not found" in err and err.count("\n") == 1
    d = tmp_path / "bare"
    d.mkdir()
    (d / "potential.json").write_text(json.dumps({"ATTITUDE": 0.0, "BUZZY": 1.0, "TURKEY": None}))
    code, out, err = run_cli(capsys, "explain", d)
    assert code == 2 and "pass --task" in err
    code, out, err = run_cli(capsys, "explain", d, "--task", "word100")
    assert code == 2 and "at least 4 states" in err
    code, out, err = run_cli(capsys, "explain", d, "--task", "word100", "--folds", 1)
    assert code == 2 and "--folds" in err
    assert not (d / "explain.json").exists()
