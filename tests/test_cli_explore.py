"""`dbgpu explore` and `dbgpu states` as a user runs them: files, resume, determinism, bad input."""

from __future__ import annotations

import json

import pytest

from dbgpu.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def explore(capsys, out, *extra, steps=2, batch=3, seed=0, model="random:llama"):
    return run_cli(capsys, "explore", "--model", model, "--task", "word100", "--steps", steps,
                   "--batch", batch, "--seed", seed, "--out", out, "--quiet", *extra)


def lines(out):
    return (out / "transitions.jsonl").read_text().splitlines()


def test_explore_writes_one_line_per_query_and_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = explore(capsys, out, "--max-new-tokens", 4)
    assert code == 0, err
    recs = [json.loads(x) for x in lines(out)]
    assert len(recs) == 2 * 3
    assert [(r["step"], r["slot"]) for r in recs] == [(s, b) for s in range(2) for b in range(3)]
    for r in recs:
        assert list(r)[:5] == ["source", "answer", "target", "step", "slot"]
        assert r["source"] == "BUZZY"                             # nothing else discovered yet
        assert (r["target"] is None) == r.get("rejected", False)
    meta = json.loads((out / "explore.json").read_text())
    assert meta["settings"]["model"] == "random:llama" and meta["settings"]["start"] == "BUZZY"
    assert meta["settings"]["max_new_tokens"] == 4 and meta["settings"]["temperature"] == 1.0
    assert meta["calls"][0]["summary"]["answers"] == 6
    call = meta["calls"][0]
    assert call["provenance"]["versions"]["torch"] and call["model_record"]["class"] == "LlamaForCausalLM"
    assert call["chat_template_date"] == "2025-01-01" and len(call["model_record"]["chat_template_sha256"]) == 64
    assert "answers/s" in stdout and "rejected" in stdout and "generated tokens/s" in stdout


def test_two_calls_equal_one_call_of_twice_the_steps(tmp_path, capsys):
    """A real (tiny random) model: the raw answers of a resumed run are the same text."""
    assert explore(capsys, tmp_path / "one", steps=4)[0] == 0
    assert explore(capsys, tmp_path / "two", steps=2)[0] == 0
    code, stdout, err = explore(capsys, tmp_path / "two", steps=2)
    assert code == 0, err
    assert "steps 2..3" in stdout
    assert lines(tmp_path / "two") == lines(tmp_path / "one")
    assert len(lines(tmp_path / "one")) == 2 * 2 * 3
    assert len({json.loads(x)["answer"] for x in lines(tmp_path / "one")}) > 6   # really sampled


def test_the_static_kv_cache_runs_the_same_agent(tmp_path, capsys):
    """--kv-cache static on the CPU: a log of the same shape and the loop recorded per call.
    (Draws differ from the dynamic loop's once finished rows leave the dynamic batch: the
    two consume the generator differently; test_sampling checks both against the softmax.)"""
    code, _, err = explore(capsys, tmp_path / "s", "--kv-cache", "static", steps=2)
    assert code == 0, err
    assert len(lines(tmp_path / "s")) == 2 * 3
    meta = json.loads((tmp_path / "s" / "explore.json").read_text())
    assert meta["calls"][0]["kv_cache"] == "static"
    assert explore(capsys, tmp_path / "d", steps=1)[0] == 0
    assert json.loads((tmp_path / "d" / "explore.json").read_text())["calls"][0]["kv_cache"] == "dynamic"


def test_same_seed_same_log_other_seed_other_log(tmp_path, capsys):
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        assert explore(capsys, tmp_path / name, "--protocol", "walk", seed=seed, model="random:gemma3")[0] == 0
    assert lines(tmp_path / "a") == lines(tmp_path / "b")
    assert lines(tmp_path / "a") != lines(tmp_path / "c")


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "-3"], "--steps must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--start", "42"], "not a word"),
    (["--start", "HELLO"], "not a valid state"),
    (["--start", "INVALID00"], "not a word"),
    (["--protocol", "greedy"], "invalid choice"),
    (["--temperature", "0"], "temperature must be positive"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--seed", "-1"], "--seed must be non-negative"),
    (["--model", "no-such-model"], "unknown model"),
    (["--steps", "two"], "invalid int"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    argv = ["explore", "--model", "random:llama", "--task", "word100", "--steps", "1", "--out", out, "--quiet"]
    code, _, err = run_cli(capsys, *argv, *args)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--batch", "4"], "batch 3, not 4"),
    (["--protocol", "walk"], "protocol 'paper', not 'walk'"),
    (["--model", "random:qwen2"], "model 'random:llama', not 'random:qwen2'"),
    (["--temperature", "0.5"], "temperature 1.0, not 0.5"),
    (["--seed", "9"], "seed 0, not 9"),
    (["--start", "TURKEY"], "start 'BUZZY', not 'TURKEY'"),
    (["--answer-prefix", ""], "different answer prefix"),
])
def test_resume_with_other_settings_is_refused(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert explore(capsys, out, steps=1)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "explore", "--model", "random:llama", "--task", "word100", "--steps", "1",
                           "--batch", "3", "--out", out, "--quiet", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert explore(capsys, out, steps=2)[0] == 0
    log = out / "transitions.jsonl"
    text = lines(out)
    text[2] = text[2][:20]
    log.write_text("\n".join(text) + "\n")
    before = log.read_bytes()
    code, _, err = explore(capsys, out, steps=1)
    assert code == 2 and err.count("\n") == 1 and "line 3 is not valid JSON" in err
    assert log.read_bytes() == before
    code, _, err = run_cli(capsys, "states", out)
    assert code == 2 and "line 3" in err


def test_a_log_without_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "transitions.jsonl").write_text("")
    code, _, err = explore(capsys, out, steps=1)
    assert code == 2 and "no explore.json" in err
    assert [p.name for p in out.iterdir()] == ["transitions.jsonl"]


def _hand_made_run(out, targets, *, batch=2):
    out.mkdir()
    settings = {"model": "random:llama", "task": "word100", "template": None, "answer_prefix": "Word:",
                "protocol": "paper", "batch": batch, "start": "BUZZY", "temperature": 1.0,
                "max_new_tokens": 10, "seed": 0}
    (out / "explore.json").write_text(json.dumps({"settings": settings, "calls": []}))
    recs = []
    for i, t in enumerate(targets):
        r = {"source": "BUZZY", "answer": f" {t}", "target": t, "step": i // batch, "slot": i % batch}
        if t is None:
            r["rejected"] = True
        recs.append(json.dumps(r))
    (out / "transitions.jsonl").write_text("\n".join(recs) + "\n")


def test_states_lists_the_discovered_valid_states_for_score(tmp_path, capsys):
    run = tmp_path / "run"
    _hand_made_run(run, ["TURKEY", None, "INVALID00", "ATTITUDE", "ATTITUDE", "TURKEY", "ATTITUDE", None])
    code, stdout, err = run_cli(capsys, "states", run)
    assert code == 0, err
    assert json.loads(stdout) == ["ATTITUDE", "TURKEY", "BUZZY"]
    assert json.loads(run_cli(capsys, "states", run / "transitions.jsonl", "--min-count", "3")[1]) == ["ATTITUDE"]
    states = tmp_path / "states.json"
    code, stdout, _ = run_cli(capsys, "states", run, "--min-count", "1", "--out", states)
    assert code == 0 and json.loads(states.read_text()) == ["ATTITUDE", "TURKEY"]
    # ready for `dbgpu score --states`
    code, _, err = run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--states", states,
                           "--out", tmp_path / "score", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "score" / "states.json").read_text()) == ["ATTITUDE", "TURKEY"]


@pytest.mark.parametrize("args,message", [
    (["--min-count", "9"], "no state"),
    (["--min-count", "-1"], "non-negative"),
    (["--out", "missing-dir/s.json"], "does not exist"),
])
def test_states_bad_input(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    _hand_made_run(run, ["TURKEY", None])
    args = [str(tmp_path / a) if a.endswith(".json") else a for a in args]
    code, _, err = run_cli(capsys, "states", run, *args)
    assert code == 2 and err.count("\n") == 1 and message in err
    code, _, err = run_cli(capsys, "states", tmp_path / "nowhere")
    assert code == 2 and "not found" in err
