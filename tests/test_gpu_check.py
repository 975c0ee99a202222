"""scripts/gpu_check.py (`make gpu-check`) on the CPU: its plan, its budget, its results files,
its guarded steps, and the attention A/B step's smoke form. Nothing here needs a GPU: the step runner and the clock
are fakes where the budget is concerned (no test depends on machine speed)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                      # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gc():
    return _load("scripts/gpu_check.py")


def test_the_plan_prints_the_priority_steps_with_estimates_within_8_minutes(gc, capsys):
    assert gc.main(["--plan"]) == 0
    out = capsys.readouterr().out
    steps = re.findall(r"^  (\S+)\s+~\s*(\d+) s \(limit\s+(\d+) s, total ~\s*(\d+) s, (fits|past)", out, re.M)
    names = [s[0] for s in steps]
    assert names[:6] == ["kernel-8b", "mfu-qwen2-0.5b", "mfu-llama-1b", "attention-ab", "sample-static",
                         "cuda-tests"]                              # what matters most first
    assert {"score-qwen2", "plan", "fit-1m", "architectures"} <= set(names)   # then the earlier checks
    fitting = [int(total) for _, _, _, total, fits in steps if fits == "fits"]
    assert len(fitting) >= 6 and fitting[-1] <= 450 <= 8 * 60        # the budget leaves 30 s for start-up
    assert "extrapolated" in out and "1,608" in out and "budget 450 s" in out
    assert "--tree-rows 32" in out and "--kv-caches dynamic,static" in out


def _fake_steps(gc, reason=None):
    S = gc.Step
    return [S("a", "first", ["a.py"], None, 100, 150, needs=()), S("b", "second", ["b.py"], None, 100, 300, needs=()),
            S("guarded", "needs an option", ["g.py"], None, 10, 20, needs=(), requires=lambda: reason),
            S("c", "third", ["c.py"], None, 100, 150, needs=()), S("d", "fourth", ["d.py"], None, 50, 100, needs=())]


def test_the_budget_cuts_and_skips_and_each_result_is_written_as_its_step_ends(gc, tmp_path, capsys):
    """Budget 260 s: a (100 s) runs; b may run only the 160 s left (its limit 300 is cut
    and, as it takes all of them, reported cut); the guarded step is skipped for its
    reason; c and d find the budget spent. Each step's file exists before the next starts,
    and the summary is rewritten as the run goes."""
    now = [0.0]
    seen = []

    def runner(argv, limit):
        name = argv[0].removesuffix(".py")
        written = sorted(p.name for p in tmp_path.glob("results-*-cuda.md"))
        seen.append((name, limit, written))
        took = min(limit, 100 if name == "a" else 200)
        now[0] += took
        return (None if took == limit else 0), f"output of {name}", took

    rows, failed, total = gc.run_plan(_fake_steps(gc, reason="no --attention option"), gpu="FAKE GPU", budget=260,
                                      runner=runner, clock=lambda: now[0], results_dir=tmp_path)
    assert [(n, lim) for n, lim, _ in seen] == [("a", 150), ("b", 160)]
    assert seen[1][2] == ["results-a-cuda.md", "results-gpu-check-cuda.md"]      # a's file before b starts
    status = {n: st for n, st, _ in rows}
    assert status == {"a": "ok", "b": "cut at the budget", "guarded": "skipped (no --attention option)",
                      "c": "skipped (budget spent)", "d": "skipped (budget spent)"}
    assert failed == 1 and total == 260
    assert "output of b" in (tmp_path / "results-b-cuda.md").read_text()
    summary = (tmp_path / "results-gpu-check-cuda.md").read_text()
    assert "| c | skipped (budget spent) | 0 |" in summary and "still running" not in summary
    assert "skipped: the budget is spent" in capsys.readouterr().out


def test_without_cuda_nothing_is_written_and_cuda_only_steps_are_skipped(gc, tmp_path):
    steps = _fake_steps(gc)
    steps[0].smoke = ["a-smoke.py"]
    ran = []
    rows, failed, _ = gc.run_plan(steps, gpu=None, budget=1000, runner=lambda argv, limit: (ran.append(argv), (0, "", 1.0))[1],
                                  clock=lambda: 0.0, results_dir=tmp_path)
    assert ran == [["a-smoke.py"]] and failed == 0
    assert dict((n, st) for n, st, _ in rows)["b"] == "skipped (needs CUDA)"
    assert not list(tmp_path.iterdir())


def test_the_attention_ab_smoke_run_finds_sparse_equal_to_dense(gc):
    """gpu_check's attention-ab smoke form (bench_attention_ab.py, tiny CPU model, one round,
    in one process, 3 x 3 pairs checked against per-pair forwards): it runs both paths, sparse
    equals dense to float rounding and both equal the per-pair forward (float32: 2e-5 nats,
    the issue's tolerance), read from the table it prints."""
    smoke = next(s for s in gc.steps() if s.name == "attention-ab").smoke
    r = subprocess.run([sys.executable, *smoke], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    rows = {row[cells[0].index("attention")]: dict(zip(cells[0], row)) for row in cells[1:]}
    assert set(rows) == {"dense", "sparse"}, r.stdout
    assert float(rows["dense"]["max_diff"]) == 0.0                     # dense is the reference: itself
    assert float(rows["sparse"]["max_diff"]) <= 2e-5, r.stdout
    assert all(float(rows[a]["vs_per_pair"]) <= 2e-5 for a in rows), r.stdout


# ----------------------------------------------------------------------------- bench_peak


@pytest.fixture(scope="module")
def bp():
    return _load("benchmarks/bench_peak.py")


def test_gemm_shapes_are_the_heads_and_the_mlps(bp):
    from dbgpu.models import random_config

    config, _ = random_config("qwen2-0.5b")
    shapes = bp.gemm_shapes(config, tokens=32768)
    # the head's float32 chunk: 2^28 logits / 151,936 = 1,766 rows (hand-computed)
    assert shapes == [("head", 1766, 896, 151936), ("mlp-up", 32768, 896, 4864), ("mlp-down", 32768, 4864, 896)]


def test_the_gemm_timing_runs_in_float32_on_the_cpu(bp):
    """The code path only (fp32 on the CPU, tiny shapes); timings are not asserted."""
    from dbgpu.models import random_config

    config, _ = random_config("llama")
    r = bp.measure({"random:llama": config}, device="cpu", tokens=32, iters=1, trials=1)
    assert r["dtype"] == "float32 x float32 -> float32" and r["datasheet"] is None
    assert [x["gemm"] for x in r["rows"]] == ["head", "mlp-up", "mlp-down"]
    assert all(x["out"] == "float32" and x["tflops"] > 0 for x in r["rows"]) and r["peak"] > 0


def _brute_force_keys(prompts, conts):
    """Independent count: every distinct prefix of every prompt + continuation[:-1] is a
    trie node that is fed; a node at position t attends to t + 1 keys."""
    nodes = {tuple((p + c)[:k]) for p in prompts for c in conts for k in range(1, len(p) + len(c))}
    return sum(len(n) for n in nodes)


def test_minimal_attention_keys_equal_a_brute_force_count(bp):
    prompts = [[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6, 7], [9]]
    conts = [[10, 11, 12], [10, 11], [10, 13], [14]]
    assert bp.minimal_keys(prompts, conts) == _brute_force_keys(prompts, conts)


def test_tree_flops_count_the_models_linear_weights(bp, word_task):
    """The linear part is 2 x the decoder's projection weights per trie-lower-bound token:
    checked against the weights of the built model's nn.Linear layers (minus the head)."""
    import torch

    from dbgpu.formatting import encode_states
    from dbgpu.models import random_config
    from dbgpu.scoring.plan import model_shape
    from dbgpu.scoring.trie import build_trie, trie_lower_bound

    config, tok = random_config("qwen2-0.5b")
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "lm_head")
    enc = encode_states(tok, word_task, word_task.seed_states(5))
    flops = bp.tree_flops(model_shape(config, dtype="bfloat16"), enc.prompt_ids, enc.cont_ids)
    assert flops["linear"] == 2 * linear * trie_lower_bound(enc.prompt_ids, enc.cont_ids)
    assert flops["head"] == 2 * 896 * 151936 * 5 * (build_trie(enc.cont_ids).n_internal + 1)
    per_key = 4 * 24 * 14 * 64
    assert flops["attention"] == per_key * _brute_force_keys(enc.prompt_ids, enc.cont_ids)
    assert flops["total"] == flops["linear"] + flops["head"] + flops["attention"]


# ----------------------------------------------------------------------------- the GPU bundle


def test_the_bundle_serves_the_word_states_and_smollm2_tokens_from_itself_alone(tmp_path, model_cache, word_task):
    """scripts/gpu_bundle.py: every bundled package imports from the bundle (not this venv),
    wordfreq trimmed to English still gives the word task's first 1,608 states, the bundled
    SmolLM2 tokenizer (random:ARCH+DIR) gives the package's token ids, compiled extensions
    are left out, and the whole fits the device tool's 64 MiB carry with room for the repo."""
    from dbgpu.formatting import encode, prompt_text
    from dbgpu.models import alias_tokenizer

    gb = _load("scripts/gpu_bundle.py")
    out = tmp_path / "bundle"
    m = gb.build(out, cache_dir=model_cache)
    assert set(m["packages"]) == set(gb.PACKAGES) and m["bytes"] < 16 * 2**20
    assert not [f for f in out.rglob("*") if f.suffix in (".so", ".pyd")]
    assert m["packages"]["wcwidth"]["left_out"]                              # its optional C module
    data = {f.name for f in (out / "site" / "wordfreq" / "data").iterdir()}
    assert data and all("_en." in n for n in data)
    code = ("import json, sys\n"
            f"names = {list(gb.PACKAGES)!r}\n"
            "mods = {n: __import__(n) for n in names}\n"
            "from dbgpu.tasks.word100 import frequent_words\n"
            "from dbgpu.models import random_tokenizer\n"
            "from dbgpu.formatting import encode\n"
            f"tok, rec = random_tokenizer('random:llama+{out / 'tokenizers' / 'smollm2-135m'}')\n"
            "print(json.dumps({'files': {n: m.__file__ for n, m in mods.items()}, 'states': frequent_words(1608),"
            " 'ids': encode(tok, sys.argv[1]), 'kind': rec['kind']}))\n")
    text = prompt_text(alias_tokenizer("smollm2-135m", cache_dir=model_cache), word_task, "BUZZY")
    env = {"PYTHONPATH": f"{ROOT}:{out / 'site'}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    got = __import__("json").loads(r.stdout)
    assert all(f.startswith(str(out / "site")) for f in got["files"].values()), got["files"]
    assert got["states"] == word_task.seed_states(1608)
    assert got["ids"] == encode(alias_tokenizer("smollm2-135m", cache_dir=model_cache), text)
    assert got["kind"] == "directory"
