"""The command-line contracts (SPEC): files written by `dbgpu score`, `dbgpu run`, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import reference_logT

from dbgpu.cli import main
from dbgpu.models import load_model


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_writes_the_contract_files(tmp_path, capsys):
    out = tmp_path / "score"
    code, stdout, err = run_cli(capsys, "score", "--model", "random:qwen2", "--task", "word100",
                                "--state-list", "attitude,BUZZY,Excellent", "--out", out, "--quiet")
    assert code == 0, err
    states = json.loads((out / "states.json").read_text())
    assert states == ["ATTITUDE", "BUZZY", "EXCELLENT"]
    logT = np.load(out / "logT.npy")
    assert logT.dtype == np.float64 and logT.shape == (3, 3)
    prompts = json.loads((out / "prompts.json").read_text())
    assert list(prompts["sources"]) == states and list(prompts["targets"]) == states
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == "random:qwen2"
    assert meta["resolved"] == {"path": "random:qwen2", "gguf_file": None}
    assert meta["dtype"] == "float32" and meta["device"] == "cpu" and meta["temperature"] == 1.0
    assert meta["seconds"] > 0 and meta["tokens"] > 0
    assert not list(out.glob(".*tmp")), "no temporary files left behind"

    # The contract's own recipe: tokenize prompt + continuation together without added special
    # tokens; the continuation is what follows the prompt's own tokens; sum its log-probs.
    # Recomputed here with an independent forward pass.
    lm = load_model("random:qwen2", device="cpu")
    tok = lm.tokenizer
    for i, f in enumerate(states):
        for j, g in enumerate(states):
            p = tok(prompts["sources"][f], add_special_tokens=False).input_ids
            joint = tok(prompts["sources"][f] + prompts["targets"][g], add_special_tokens=False).input_ids
            assert joint[:len(p)] == p
            assert abs(logT[i, j] - reference_logT(lm.model, p, joint[len(p):])) < 2e-5
    assert prompts["targets"]["BUZZY"] == " BUZZY<|im_end|>"


def test_score_records_what_reproduces_it_and_profiles_its_stages(tmp_path, capsys):
    """meta.json's reproducibility record; --profile writes a Chrome trace with the scorer's
    stages and prints the time per stage."""
    import hashlib

    out, prof = tmp_path / "score", tmp_path / "prof"
    code, stdout, err = run_cli(capsys, "score", "--model", "random:gemma3", "--task", "word100", "--state-list",
                                "ATTITUDE,BUZZY", "--out", out, "--profile", prof, "--quiet")
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    prompts = json.loads((out / "prompts.json").read_text())
    env = meta["provenance"]
    assert set(env["versions"]) >= {"dbgpu", "torch", "transformers", "numpy", "scipy"}
    assert env["gpu"] is None and "cuda" in env and "cudnn" in env and env["command"]     # the process argv
    assert env["git"] is None or len(env["git"]["commit"]) == 40
    record = meta["model_record"]
    assert record["class"] == "Gemma3ForCausalLM" and record["seed"] == 0 and record["gguf_sha256"] is None
    assert record["chat_template_sha256"] is None                        # random:gemma3 has no template
    canonical = json.dumps(prompts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert meta["prompts_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert meta["chat_template_date"] == "2025-01-01" and meta["precision"]["head"] == "float32"
    stages = meta["scoring"]["stage_seconds"]
    assert set(stages) == {"prefix", "masks", "forward", "head", "reduction", "transfer"}
    assert sum(stages.values()) <= meta["scoring"]["seconds"]
    trace = json.loads((prof / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {f"dbgpu.{s}" for s in stages} <= names
    assert "| forward |" in stdout and "tokens/s" in stdout and (prof / "stages.md").is_file()
    # the device's time per stage (perf_counter on the CPU) and the top operators, in meta.json too
    assert set(meta["scoring"]["stage_device_seconds"]) == set(stages) and meta["scoring"]["stage_clock"] == "perf_counter"
    top = meta["profile"]["top_kernels"]
    assert top and all(k["ms"] >= 0 and k["calls"] >= 1 for k in top) and meta["profile"]["syncs"] is None
    assert any("mm" in k["name"] or "linear" in k["name"] for k in top)     # the matmuls dominate a forward
    text = (prof / "stages.md").read_text()
    assert "top kernels" in text and "synchronisations: not counted" in text


def test_score_reads_state_files_and_temperature(tmp_path, capsys):
    (tmp_path / "s.txt").write_text("# my states\nTURKEY\nPERSONAL\n")
    (tmp_path / "s.json").write_text('["TURKEY", "PERSONAL"]')
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--states", tmp_path / "s.txt",
                   "--out", a, "--temperature", "0.5", "--quiet")[0] == 0
    assert run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--states", tmp_path / "s.json",
                   "--out", b, "--temperature", "0.5", "--quiet")[0] == 0
    assert json.loads((a / "states.json").read_text()) == ["TURKEY", "PERSONAL"]
    np.testing.assert_array_equal(np.load(a / "logT.npy"), np.load(b / "logT.npy"))
    assert json.loads((a / "meta.json").read_text())["temperature"] == 0.5
    # a score directory is a state file too
    c = tmp_path / "c"
    assert run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--states", a,
                   "--out", c, "--quiet", "--temperature", "0.5")[0] == 0
    np.testing.assert_array_equal(np.load(a / "logT.npy"), np.load(c / "logT.npy"))


def test_template_and_answer_prefix_reach_the_prompt(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("Example word: {state}. Give another.")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "score", "--model", "random:gemma3", "--task", "word100", "--state-list", "BUZZY",
                           "--template", tmp_path / "t.txt", "--answer-prefix", "", "--out", out, "--quiet")
    assert code == 0, err
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts["sources"]["BUZZY"] == "<bos>Example word: BUZZY. Give another.\n"
    assert prompts["targets"]["BUZZY"] == "BUZZY<eos>"


@pytest.mark.parametrize("args,message", [
    (["--model", "no-such-model", "--state-list", "BUZZY"], "unknown model"),
    (["--model", "random:llama", "--task", "nope", "--state-list", "BUZZY"], "unknown task"),
    (["--model", "random:llama", "--state-list", ","], "empty"),
    (["--model", "random:llama", "--state-list", "BUZZY,42"], "not a word"),
    (["--model", "random:llama", "--state-list", "BUZZY,buzzy"], "twice"),
    (["--model", "random:llama", "--states", "MISSING.json"], "not found"),
    (["--model", "random:llama", "--states", "CORRUPT.json"], "not valid JSON"),
    (["--model", "random:llama", "--states", "DICT.json"], "list of strings"),
    (["--model", "random:llama", "--state-list", "BUZZY", "--temperature", "0"], "temperature"),
    (["--model", "random:llama", "--state-list", "BUZZY", "--template", "MISSING.txt"], "template file not found"),
    (["--model", "random:llama", "--state-list", "BUZZY", "--device", "tpu"], "device"),
    (["--model", "random:llama", "--state-list", "BUZZY", "--temperature", "hot"], "not a number or comma-separated numbers"),
    (["--model", "random:llama", "--state-list", "BUZZY", "--attention", "flash"], "invalid choice: 'flash'"),
    (["--model", "random:llama", "--state-list", "BUZZY", "--method", "plain", "--attention", "sparse"],
     "use it with --method tree"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    (tmp_path / "CORRUPT.json").write_text('["BUZZY", ')
    (tmp_path / "DICT.json").write_text('{"a": 1}')
    args = [str(tmp_path / a) if a.endswith((".json", ".txt")) else a for a in args]
    if "--task" not in args:
        args += ["--task", "word100"]
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "score", *args, "--out", out, "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_score_attention_sparse_equals_dense_and_is_recorded(tmp_path, capsys):
    """`dbgpu score --attention sparse`: the same matrix as the default dense attention
    (float32: 2e-5 nats, summation order), meta.json says which attention and how many keys
    a query saw (fewer than dense's), and a resume with the other attention is refused."""
    states = "ATTITUDE,BUZZY,EXCELLENT,TURKEY,PROBLEMS"
    metas, logT = {}, {}
    for att in ("dense", "sparse"):
        out = tmp_path / att
        code, _, err = run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--state-list", states,
                               "--attention", att, "--out", out, "--quiet")
        assert code == 0, err
        metas[att], logT[att] = json.loads((out / "meta.json").read_text()), np.load(out / "logT.npy")
    np.testing.assert_allclose(logT["sparse"], logT["dense"], atol=2e-5, rtol=0)
    for att, meta in metas.items():
        assert meta["attention"] == meta["scoring"]["attention"] == meta["job"]["attention"] == att
        assert meta["scoring"]["plan"]["attention"] == att
    d, s = metas["dense"]["scoring"], metas["sparse"]["scoring"]
    assert 0 < s["keys_per_query"] < d["keys_per_query"] == d["plan"]["keys"]
    assert s["plan"]["memory"]["masks"] == s["plan"]["memory"]["batch_kv"] == 0 < d["plan"]["memory"]["masks"]
    code, _, err = run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--state-list", states,
                           "--attention", "dense", "--out", tmp_path / "sparse", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "attention 'sparse', not 'dense'" in err


def test_dry_run_plans_the_sparse_attention(tmp_path, capsys):
    """--dry-run --attention sparse (score and run): keys per query are the prefix, suffix and
    ancestors (a few dozen), not the whole row; no masks and no batch KV cache."""
    for cmd in (["score", "--task", "word100", "--state-list", "ATTITUDE,BUZZY,TURKEY,PROBLEMS"],
                ["run", "--n-states", "30"]):
        code, stdout, err = run_cli(capsys, *cmd, "--model", "random:qwen2-0.5b", "--out", tmp_path / "o",
                                    "--device", "cuda", "--attention", "sparse", "--dry-run")
        assert code == 0, err
        assert "| attention / keys per query | sparse /" in stdout
        assert "| masks (shared by the rows) | 0 MiB |" in stdout and "| batch KV cache | 0 MiB |" in stdout
    assert not (tmp_path / "o").exists()


def test_out_dir_that_is_a_file_is_rejected(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = run_cli(capsys, "score", "--model", "random:llama", "--task", "word100",
                           "--state-list", "BUZZY", "--out", target, "--quiet")
    assert code == 2 and "not a directory" in err and target.read_text() == "x"


def test_usage_errors_are_one_line_too():
    r = subprocess.run([sys.executable, "-m", "dbgpu", "score", "--task", "word100"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "required" in r.stderr


def test_run_end_to_end_on_a_random_model(tmp_path):
    """`dbgpu run` as a user runs it (a subprocess), on a tiny model."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "dbgpu", "run", "--model", "random:llama", "--n-states", "5",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "coverage" in r.stdout and "top" in r.stdout and str(out) in r.stdout
    states = json.loads((out / "states.json").read_text())
    assert len(states) == 5
    logT = np.load(out / "logT.npy")
    assert np.all(np.logaddexp.reduce(logT, axis=1) <= 0)
    # the analysis half ran on the exact kernel: potential for every state, statistics, figures
    potential = json.loads((out / "potential.json").read_text())
    assert set(potential) == set(states) and all(v is not None for v in potential.values())
    assert abs(sum(potential.values())) < 1e-9                       # zero-mean gauge
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_states"] == 5 and stats["n_edges"] == 20 and stats["weights"] == "exact"
    for name in ("report.md", "db_scatter.png", "db_scatter.pdf", "graph.png", "potential_hist.png"):
        assert (out / name).is_file(), name
    assert "Hodge gradient fraction" in r.stdout and "lowest potential" in r.stdout


@pytest.mark.slow
def test_score_on_smollm2_matches_plain_forward(tmp_path, capsys, model_cache, smollm2):
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, "score", "--model", "smollm2-135m", "--task", "word100", "--state-list",
                           "ATTITUDE,TURKEY", "--out", out, "--cache-dir", model_cache, "--quiet")
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resolved"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    prompts = json.loads((out / "prompts.json").read_text())
    logT = np.load(out / "logT.npy")
    tok = smollm2.tokenizer
    for i, f in enumerate(["ATTITUDE", "TURKEY"]):
        for j, g in enumerate(["ATTITUDE", "TURKEY"]):
            p = tok(prompts["sources"][f], add_special_tokens=False).input_ids
            c = tok(prompts["targets"][g], add_special_tokens=False).input_ids
            assert abs(logT[i, j] - reference_logT(smollm2.model, p, c)) < 2e-3
    assert torch.all(torch.logsumexp(torch.from_numpy(logT), 1) <= 0)


def test_score_takes_n_states_as_run_does(tmp_path, capsys):
    from dbgpu.tasks import get_task

    seeds = get_task("word100").seed_states(5)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--n-states", 5,
                   "--out", a, "--quiet")[0] == 0
    assert json.loads((a / "states.json").read_text()) == seeds
    assert run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--state-list", ",".join(seeds),
                   "--out", b, "--quiet")[0] == 0
    # the same states scored the same way: equal to float rounding (1e-9 nats on sums of ~-30)
    np.testing.assert_allclose(np.load(a / "logT.npy"), np.load(b / "logT.npy"), rtol=0, atol=1e-9)
    code, _, err = run_cli(capsys, "score", "--model", "random:llama", "--task", "word100", "--n-states", 1,
                           "--out", tmp_path / "c", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--n-states must be at least 2" in err
    assert not (tmp_path / "c").exists()
