"""The tree scorer's batch plan: hand-checked memory figures, the budgets it keeps, the
workstation goal (Qwen2-0.5B shape on the CUDA defaults), agreement with what the scorer
then does, and `--dry-run` (plan printed, no weights loaded, nothing written)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from dbgpu.scoring.plan import (Budget, ModelShape, TrieSizes, default_budget, forward_count, max_internal, memory,
                                model_shape, plan_batches, rows_per_forward, trie_sizes)

MiB = 2 ** 20


def _shape(**kw) -> ModelShape:
    base = dict(vocab=1000, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128,
                n_params=100_000, dtype_bytes=2)
    return ModelShape(**{**base, **kw})


def test_memory_golden():
    """Every part by hand: B=3 rows, Q=10 queries, K=30 keys (K16 = 32), P=20, 2-byte dtype."""
    m = memory(_shape(), rows=3, queries=10, keys=30, prefix=20, head_logits=1000)
    kv_per_position = 2 * 2 * 2 * 16 * 2                                  # layers x (k, v) x kv heads x dim x d
    assert m["weights"] == 200_000
    assert m["prefix_kv"] == 20 * kv_per_position
    assert m["masks"] == 1 * (1 + 3) * 10 * 32 * 2 + 10 * 30            # shared + one per padded row
    assert m["batch_kv"] == 3 * 30 * kv_per_position
    assert m["activations"] == 3 * 10 * (6 * 64 + 4 * 128 + 3 * (4 + 4) * 16) * 2 + 2 * 3 * 4 * 30 * 16 * 2
    assert m["head"] == 3 * 9 * 64 * 2 + 8 * 1000 + 2 ** 26                 # a chunk of 1000 logits
    assert memory(_shape(), rows=3, queries=10, keys=30, prefix=20, head_logits=10 ** 9)["head"] == \
        3 * 9 * 64 * 2 + 8 * 3 * 9 * 1000 + 2 ** 26                       # all 27 positions' logits at once
    assert m["peak"] == 200_000 + m["prefix_kv"] + m["masks"] + max(m["batch_kv"] + m["activations"], m["head"])
    eager = memory(_shape(eager=True), rows=3, queries=10, keys=30, prefix=20, head_logits=1000)
    assert eager["activations"] - m["activations"] == 3 * 4 * 10 * 30 * (4 + 2 * 2)   # the scores


def test_model_shape_from_a_config():
    cfg = SimpleNamespace(hidden_size=896, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                          num_hidden_layers=24, vocab_size=151936, tie_word_embeddings=True,
                          layer_types=["full_attention", "sliding_attention"])
    s = model_shape(cfg, dtype="bfloat16")
    assert (s.head_dim, s.dtype_bytes, s.mask_kinds, s.eager) == (64, 2, 2, False)
    # Qwen2-0.5B has 494M parameters (biases and norms, left out here, are ~0.1M)
    assert 493e6 < s.n_params < 495e6


def test_rows_keep_the_token_and_memory_budgets():
    shape = _shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, head_dim=64, n_params=494e6)
    kw = dict(queries=1200, keys=1400, prefix=200)
    free = Budget(tokens=32768, work_bytes=2 ** 40, head_logits=2 ** 20)
    assert rows_per_forward(shape, free, n_rows=1000, **kw) == 32768 // 1200
    assert rows_per_forward(shape, free, n_rows=5, **kw) == 5
    capped = Budget(tokens=32768, work_bytes=2 ** 40, head_logits=2 ** 20, max_rows=4)
    assert rows_per_forward(shape, capped, n_rows=1000, **kw) == 4
    tight = Budget(tokens=32768, work_bytes=300 * MiB, head_logits=2 ** 20)
    rows = rows_per_forward(shape, tight, n_rows=1000, **kw)
    used = lambda b: (lambda m: max(m["batch_kv"] + m["activations"], m["head"] - 2 ** 26) + m["masks"])(  # noqa: E731
        memory(shape, rows=b, head_logits=2 ** 20, **kw))
    assert 1 <= rows < 32768 // 1200
    assert used(rows) <= tight.work_bytes < used(rows + 1)                # the most that fit
    assert rows_per_forward(shape, Budget(tokens=100, work_bytes=1, head_logits=1), n_rows=9, **kw) == 1


def test_a_row_larger_than_the_budget_cuts_the_targets():
    budget = Budget(tokens=1000, work_bytes=2 ** 40, head_logits=2 ** 20)
    assert max_internal(_shape(), budget, suffix=40, prefix=100) == 960
    # a wide MLP makes attention negligible: the fewest chunks that fit, and no more
    shape = _shape(intermediate=10 ** 6)
    assert max_internal(shape, budget, suffix=40, prefix=100) == 960
    plan = plan_batches(shape, TrieSizes(n_sources=50, n_targets=50, prefix=100, suffix=40, internal=2500), budget)
    assert plan.target_chunks == 3 and plan.internal_per_chunk == 834 and plan.queries == 874
    assert plan.rows_per_forward == 1 and plan.forwards == 3 * 50


def test_a_large_trie_is_cut_where_that_saves_work():
    """Each row attends to its whole trie: attention grows as I^2, a cut repeats the suffix.
    _shape(): linear 2 layers x 2 x 36,864 = 147,456 FLOPs per query (36,864 = 64 x 8 x 16
    + 4 x 16 x 64 + 3 x 64 x 128 weights per layer), attention 4 x 2 x 4 x 16 = 512 per
    query and key, head 2 x 64 x 1000 = 128,000 per kept position."""
    from dbgpu.scoring.plan import MIN_CHUNK, chunk_size, row_flops

    shape = _shape()
    assert row_flops(shape, suffix=40, prefix=100, internal=278) == 318 * 147456 + 512 * 318 * 418 + 128000 * 279
    sizes = TrieSizes(n_sources=50, n_targets=50, prefix=100, suffix=40, internal=2500)
    # 3 chunks of 834 (the fewest that fit 960): 2.015 GFLOP per row; 9 of 278 (2500 // MIN_CHUNK = 9,
    # the most allowed): 1.356 GFLOP, 33% less; 8 of 313: 1.393
    assert MIN_CHUNK == 256 and chunk_size(shape, sizes, cap=960) == 278
    plan = plan_batches(shape, sizes, Budget(tokens=1000, work_bytes=2 ** 40, head_logits=2 ** 20))
    assert plan.target_chunks == 9 and plan.internal_per_chunk == 278 and plan.rows_per_forward == 3
    # a trie under 2 x MIN_CHUNK nodes is never cut for speed; nor where the saving is under 10%
    assert chunk_size(shape, TrieSizes(50, 50, 100, 40, 500), cap=10 ** 6) == 10 ** 6
    assert chunk_size(_shape(intermediate=10 ** 6), sizes, cap=10 ** 6) == 10 ** 6


def test_forward_count_golden():
    assert forward_count(6, rows=2, block_rows=128) == 3
    assert forward_count(10, rows=3, block_rows=4) == 2 + 2 + 1        # blocks of 4, 4, 2 sources
    assert forward_count(6, rows=10, block_rows=128) == 1


def test_qwen2_0_5b_shape_on_cuda_defaults_runs_at_least_16384_positions_per_forward(word_task):
    """The workstation goal: vocabulary 151,936, hidden 896, 500 word states, CUDA defaults.
    (Batches sized by logits gave 1-2 rows of ~3,200 positions here.)"""
    from dbgpu.formatting import encode_states
    from dbgpu.models import model_config

    config, tok, _ = model_config("random:qwen2-0.5b")
    assert (config.vocab_size, config.hidden_size) == (151936, 896)
    enc = encode_states(tok, word_task, word_task.seed_states(500))
    sizes = trie_sizes(enc.prompt_ids, enc.cont_ids)
    plan = plan_batches(model_shape(config, dtype="bfloat16"), sizes, default_budget("cuda"), block_rows=128)
    assert plan.target_chunks == 1
    assert plan.tokens_per_forward >= 16384
    assert plan.memory["peak"] < 8 * 2 ** 30
    # the same with the sizes a BPE tokenizer gives (~150 kept positions per row, as in the issue)
    small = TrieSizes(n_sources=500, n_targets=500, prefix=60, suffix=20, internal=150)
    assert plan_batches(model_shape(config, dtype="bfloat16"), small, default_budget("cuda")).tokens_per_forward >= 16384


def test_the_scorer_does_what_the_plan_says(tiny_lms, word_task):
    from dbgpu.formatting import encode_states
    from dbgpu.scoring import ScoreStats
    from dbgpu.scoring.tree import batch_plan, tree_score_matrix

    lm = tiny_lms("qwen2")
    states = word_task.seed_states(12)
    enc = encode_states(lm.tokenizer, word_task, states)
    seen = set()
    for tokens in (None, 1500, 600, 150):             # all rows at once, 6, 2, one row and target chunks
        _, budget, plan = batch_plan(lm.model, enc.prompt_ids, enc.cont_ids, batch_tokens=tokens)
        seen.add((plan.rows_per_forward, plan.target_chunks))
        stats = ScoreStats()
        tree_score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, batch_tokens=tokens, stats=stats)
        assert stats.extra["rows_per_forward"] == plan.rows_per_forward
        assert stats.extra["target_chunks"] == plan.target_chunks
        assert stats.extra["tokens_per_forward"] <= max(budget.tokens, plan.queries)
        assert stats.forward_passes == plan.forwards + 1, tokens            # + the shared prefix's pass
        assert stats.extra["plan"] == plan.as_dict()
    assert seen == {(12, 1), (6, 1), (2, 1), (1, 6)}


def test_dry_run_prints_the_plan_loads_no_weights_writes_nothing(tmp_path, capsys, monkeypatch):
    import dbgpu.models as models
    from dbgpu.cli import main

    def no_weights(*a, **k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(models, "random_model", no_weights)
    monkeypatch.setattr(models, "load_model", no_weights)
    out = tmp_path / "score"
    code = main(["score", "--model", "random:qwen2-0.5b", "--task", "word100", "--state-list",
                 "ATTITUDE,BUZZY,TURKEY", "--out", str(out), "--device", "cuda", "--dry-run"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "cuda defaults" in stdout and "rows per forward | 3 (limited by sources)" in stdout
    assert "predicted peak" in stdout and "bfloat16" in stdout
    assert not out.exists()
    code = main(["run", "--model", "random:qwen2-0.5b", "--n-states", "30", "--out", str(out), "--device", "cpu",
                 "--batch-tokens", "2048", "--dry-run"])
    stdout = capsys.readouterr().out
    assert code == 0 and "30 x 30" in stdout and "budget 2,048" in stdout and "cpu defaults" in stdout
    assert not out.exists()


def test_meta_records_the_plan_made_before_scoring(tmp_path, capsys):
    from dbgpu.cli import main

    out = tmp_path / "score"
    assert main(["score", "--model", "random:llama", "--task", "word100", "--state-list", "ATTITUDE,BUZZY,TURKEY",
                 "--out", str(out), "--batch-tokens", "300", "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    plan = meta["scoring"]["plan"]
    assert plan["method"] == "tree" and plan["device_type"] == "cpu" and plan["budget"]["tokens"] == 300
    assert plan["sizes"]["n_sources"] == 3 and plan["memory"]["peak"] > plan["memory"]["weights"] > 0
    assert meta["scoring"]["rows_per_forward"] == plan["rows_per_forward"]
    assert meta["scoring"]["tokens_per_forward"] <= max(300, plan["queries"])
    np.testing.assert_equal(np.isfinite(np.load(out / "logT.npy")), True)


@pytest.mark.parametrize("device, message", [("tpu", "unknown device"), ("cuda:x", "unknown device")])
def test_dry_run_device_errors_are_one_line(tmp_path, capsys, device, message):
    from dbgpu.cli import main

    code = main(["score", "--model", "random:llama", "--task", "word100", "--state-list", "ATTITUDE,BUZZY",
                 "--out", str(tmp_path / "o"), "--device", device, "--dry-run"])
    assert code == 2 and message in capsys.readouterr().err
