"""The fast scorer (shared prefix + continuation trie) against the plain scorer and a
per-pair forward pass; its trie, its memory chunking, its out-of-memory back-off."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference_logT

from dbgpu.formatting import encode_states
from dbgpu.scoring import ScoreStats, score_matrix
from dbgpu.scoring.plan import DEVICE_DEFAULTS
from dbgpu.scoring.tree import tree_score_matrix
from dbgpu.scoring.trie import build_trie, common_prefix_length, path_nodes, trie_lower_bound

STATES = ["ATTITUDE", "BUZZY", "EXCELLENT", "TURKEY", "PROBLEMS", "PERSONAL", "PURSUE"]


def _ids(lm, task, states=STATES):
    enc = encode_states(lm.tokenizer, task, states)
    return enc.prompt_ids, enc.cont_ids


def test_trie_golden():
    conts = [[5, 6, 9], [5, 7, 9], [5, 6, 8, 9], [4, 9]]
    t = build_trie(conts)
    # nodes: 5, 5-6, 5-7, 5-6-8, 4 are internal (5); leaves: the four 9s after them
    assert t.n_internal == 5 and t.n_nodes == 9
    assert sorted(t.token[:t.n_internal].tolist()) == [4, 5, 6, 7, 8]
    for j, c in enumerate(conts):                       # each path spells its continuation
        nodes = path_nodes(t, j)[::-1]                  # root child first
        assert t.token[nodes].tolist() == c
        assert t.depth[nodes].tolist() == list(range(len(c)))
    assert np.all(t.parent[:t.n_internal] < np.arange(t.n_internal)), "parents come first"


def test_prefix_and_lower_bound_golden():
    prompts = [[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6]]
    assert common_prefix_length(prompts) == 2
    assert common_prefix_length([[1, 2, 3]]) == 2          # the last token is always scored
    # distinct prompt prefixes: 1, 12, 123, 1234, 125, 1236 = 6; trie internal nodes of conts: 7, 7-8 = 2
    assert trie_lower_bound(prompts, [[7, 8, 0], [7, 0]]) == 6 + 3 * 2


# (token budget, max rows, head logits as multiples of V): all rows in one batch; a budget
# smaller than any row (one row per forward, every target its own trie chunk); one row; three
# rows; target chunks from a small budget with a small head chunk; two rows and a small head chunk
BUDGETS = [(None, 256, None), (1, 256, None), (None, 1, None), (None, 3, None), (40, 256, 4), (90, 2, 6)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_tree_equals_plain_and_per_pair_forward(tiny_lms, word_task, arch):
    lm = tiny_lms(arch)
    P, C = _ids(lm, word_task)
    assert len({len(c) for c in C}) > 1
    if arch == "gemma3":       # the sliding window is shorter than the prompt: windows matter
        assert lm.model.config.sliding_window < min(map(len, P))
    plain = score_matrix(lm.model, P, C, method="plain")
    ref = np.array([[reference_logT(lm.model, p, c) for c in C[:3]] for p in P[:3]])
    np.testing.assert_allclose(plain[:3, :3], ref, atol=2e-5, rtol=0)
    golden = np.load(Path(__file__).parent / "data" / "tree_golden.npz")   # the scorer before token budgets
    assert golden["states"].tolist() == STATES
    V = lm.model.get_output_embeddings().weight.shape[0]
    chunks, rows = set(), set()
    for tokens, max_rows, logits in BUDGETS:
        stats = ScoreStats()
        tree = tree_score_matrix(lm.model, P, C, batch_tokens=tokens, max_rows=max_rows,
                                 max_logits=logits and logits * V, stats=stats)
        what = f"budget {tokens} tokens, {max_rows} rows, {logits} x V logits"
        np.testing.assert_allclose(tree, plain, atol=2e-5, rtol=0, err_msg=what)
        np.testing.assert_allclose(tree, golden[arch], atol=1e-5, rtol=0, err_msg=what)
        tpf = stats.extra["tokens_per_forward"]
        assert tpf <= (tokens or DEVICE_DEFAULTS["cpu"][0]) or stats.extra["rows_per_forward"] == 1, what
        chunks.add(stats.extra["target_chunks"])
        rows.add(stats.extra["rows_per_forward"])
    assert max(chunks) > 1, "a small token budget must split the targets"
    assert 1 in rows and max(rows) >= 3, "one row per forward and several"


def test_path_sums_equal_a_dense_path_matrix():
    """Parent-pointer sums against an independent dense 0/1 (nodes x targets) product."""
    from dbgpu.scoring.tree import path_sums, trie_layout

    conts = [[5, 6, 9], [5, 7, 9], [5, 6, 8, 9], [4, 9], [5, 6]]
    t = build_trie(conts)
    dense = np.zeros((t.n_nodes, len(conts)))
    for j, c in enumerate(conts):                       # walk each continuation from the root by tokens
        node = -1
        for tok in c:
            node = next(m for m in range(t.n_nodes) if t.parent[m] == node and t.token[m] == tok)
            dense[node, j] = 1.0
    lp = torch.randn(3, t.n_nodes, generator=torch.Generator().manual_seed(0))
    got = path_sums(lp, trie_layout(t, "cpu"))
    np.testing.assert_allclose(got.numpy(), lp.double().numpy() @ dense, atol=1e-12)


def test_sliding_window_mask_is_what_makes_gemma3_exact(tiny_lms, word_task, monkeypatch):
    """Negative control: a full mask on the sliding layers gives different numbers."""
    import dbgpu.scoring.tree as tree

    lm = tiny_lms("gemma3")
    P, C = _ids(lm, word_task, STATES[:3])
    plain = score_matrix(lm.model, P, C, method="plain")
    monkeypatch.setattr(tree, "_layer_windows", lambda config: {"full_attention": None, "sliding_attention": None})
    wrong = tree_score_matrix(lm.model, P, C)
    assert np.abs(wrong - plain).max() > 1e-3


def test_tree_temperature(tiny_lms, word_task):
    lm = tiny_lms("qwen2")
    P, C = _ids(lm, word_task, STATES[:3])
    np.testing.assert_allclose(score_matrix(lm.model, P, C, method="tree", temperature=0.4),
                               score_matrix(lm.model, P, C, method="plain", temperature=0.4), atol=2e-5)


@pytest.mark.parametrize("method", ["tree", "plain"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_several_temperatures_in_one_pass_equal_separate_runs(tiny_lms, word_task, arch, method):
    """Each temperature's kernel from one pass of forwards equals its own single-temperature
    run (and a per-pair forward at that temperature)."""
    lm = tiny_lms(arch)
    P, C = _ids(lm, word_task)
    taus = [0.5, 0.7, 1.0, 1.5]
    stats = ScoreStats()
    many = score_matrix(lm.model, P, C, method=method, temperature=taus, stats=stats,
                        **({"batch_tokens": 60} if method == "tree" else {}))
    assert many.shape == (4, len(P), len(C))
    one = ScoreStats()
    for i, tau in enumerate(taus):
        alone = score_matrix(lm.model, P, C, method=method, temperature=tau, stats=one if tau == 1.0 else None,
                             **({"batch_tokens": 60} if method == "tree" else {}))
        # the same forwards and float32 head; sums of ~10 float32 log-probs in float64
        np.testing.assert_allclose(many[i], alone, atol=1e-5, rtol=0, err_msg=f"tau {tau}")
    ref = reference_logT(lm.model, P[1], C[2], temperature=0.5)
    assert abs(many[0, 1, 2] - ref) <= 2e-5                  # the per-pair forward's tolerance above
    assert stats.forward_passes == one.forward_passes       # one pass of forwards for all four


def test_out_of_memory_backoff_keeps_every_row(tiny_lms, word_task, monkeypatch):
    lm = tiny_lms("llama")
    P, C = _ids(lm, word_task)
    expected = score_matrix(lm.model, P, C, method="plain")
    model = lm.model
    decoder = model.model                     # the scorers run the decoder; the head is dbgpu's
    original = decoder.forward
    seen = []

    @functools.wraps(original)
    def flaky(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if rows > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", flaky)
    stats = ScoreStats()
    got = tree_score_matrix(model, P, C, max_rows=64, stats=stats)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    assert stats.extra["oom_backoffs"] >= 1 and stats.extra["rows_per_forward"] <= 2
    assert seen[1] == len(P) and seen[-1] <= 2      # prefix pass, first full batch, then smaller
    assert stats.pairs == len(P) * len(C)


def test_other_errors_are_not_swallowed(tiny_lms, word_task, monkeypatch):
    lm = tiny_lms("llama")
    P, C = _ids(lm, word_task, STATES[:2])

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(lm.model.model, "forward", functools.wraps(lm.model.model.forward)(broken))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        tree_score_matrix(lm.model, P, C)


def test_work_is_close_to_the_trie_lower_bound(tiny_lms, word_task):
    lm = tiny_lms("qwen2")
    P, C = _ids(lm, word_task)
    tree, plain = ScoreStats(), ScoreStats()
    tree_score_matrix(lm.model, P, C, stats=tree)
    score_matrix(lm.model, P, C, method="plain", stats=plain)
    bound = trie_lower_bound(P, C)
    assert bound <= tree.tokens <= 1.1 * bound
    assert plain.tokens == sum(len(p) + len(c) for p in P for c in C)
    assert plain.tokens > 5 * tree.tokens


@pytest.mark.slow
def test_tree_on_smollm2_equals_plain(smollm2, word_task):
    P, C = _ids(smollm2, word_task, STATES[:4])
    tree = score_matrix(smollm2.model, P, C, method="tree", pad_id=smollm2.tokenizer.pad_token_id)
    plain = score_matrix(smollm2.model, P, C, method="plain", pad_id=smollm2.tokenizer.pad_token_id)
    np.testing.assert_allclose(tree, plain, atol=2e-3, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bf16_tree_equals_bf16_plain(word_task, arch):
    """In bf16 the two scorers differ only by the decoder's bf16 rounding in two layouts
    (the head is float32 in both): measured <= 3e-3 nats on these models."""
    from dbgpu.models import load_model

    lm = load_model(f"random:{arch}", device="cpu", dtype="bfloat16", seed=0)
    P, C = _ids(lm, word_task, STATES[:4])
    pad = lm.tokenizer.pad_token_id
    tree = score_matrix(lm.model, P, C, method="tree", pad_id=pad)
    plain = score_matrix(lm.model, P, C, method="plain", pad_id=pad)
    np.testing.assert_allclose(tree, plain, atol=1e-2, rtol=0)
    fp32 = load_model(f"random:{arch}", device="cpu", dtype="float32", seed=0)
    ref = score_matrix(fp32.model, P, C, method="plain", pad_id=pad)
    assert 1e-5 < np.abs(tree - ref).max() < 5e-2            # bf16 is not float32, but close


def test_target_chunks_keep_neighbouring_subtrees_together():
    """Targets are grouped in token order, so chunks share their prefixes: 2 chunks where the
    given order would need 4; one group keeps the given order."""
    from dbgpu.scoring.trie import target_chunks

    conts = [[5, 6, 9], [4, 9, 1], [5, 6, 8], [4, 9, 2]]      # prefixes (4,), (4, 9) and (5,), (5, 6)
    assert [c.tolist() for c in target_chunks(conts, max_internal=2)] == [[1, 3], [2, 0]]
    assert [c.tolist() for c in target_chunks(conts, max_internal=4)] == [[0, 1, 2, 3]]
    assert [c.tolist() for c in target_chunks(conts, max_internal=1)] == [[1], [3], [2], [0]]


# ----------------------------------------------------------------------------- host reads per forward
# On CUDA every read of a device value by the host (.item(), .tolist(), .cpu(), a host-to-device
# copy without non_blocking) waits for the GPU to finish what is queued, leaving it idle while
# the host prepares the next batch. The calls below are the ones that do; the probe counts
# those made by dbgpu's scoring code itself (transformers' own are counted by count_syncs on
# a GPU, gpu-check's breakdown).
_HOST_READS = [(torch.Tensor, "item"), (torch.Tensor, "tolist"), (torch.Tensor, "cpu"), (torch.Tensor, "numpy"),
               (torch.Tensor, "__bool__"), (torch.Tensor, "__int__"), (torch.Tensor, "__float__"),
               (torch, "as_tensor"), (torch, "tensor"), (torch, "from_numpy")]


def _count_host_reads(monkeypatch, run):
    """{(file, function, line): calls} of the _HOST_READS made directly by dbgpu/scoring code."""
    import sys
    from collections import Counter

    scoring = str(Path(__file__).resolve().parents[1] / "dbgpu" / "scoring")
    seen = Counter()

    def probe(owner, name):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            f = sys._getframe(1)
            if f.f_code.co_filename.startswith(scoring):
                seen[(Path(f.f_code.co_filename).name, f.f_code.co_name, f.f_lineno)] += 1
            return original(*args, **kwargs)
        return wrapper

    with monkeypatch.context() as m:
        for owner, name in _HOST_READS:
            m.setattr(owner, name, probe(owner, name))
        out = run()
    return out, seen


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_the_batch_loop_reads_only_each_batchs_result_from_the_device(tiny_lms, word_task, monkeypatch, attention):
    """The tree scorer's own code reads one thing per forward back from the device, the
    batch's log T (`Fetch.numpy`, after the next batch is queued), and copies nothing to it
    per forward: run with one row per forward and with all rows in one forward, every other
    host read happens as often in both (per call or per target chunk, not per batch)."""
    lm = tiny_lms("qwen2")
    P, C = _ids(lm, word_task)
    runs = {}
    for rows in (1, 64):
        stats = ScoreStats()
        got, seen = _count_host_reads(monkeypatch, lambda: tree_score_matrix(
            lm.model, P, C, max_rows=rows, stats=stats, attention=attention))
        runs[rows] = (got, seen, stats.forward_passes)
    (one, seen1, f1), (all_, seen64, f64) = runs[1], runs[64]
    assert f1 == 1 + len(P) and f64 == 2                     # the prefix's pass + the batches
    fetch = {k: n for k, n in seen1.items() if k[1] == "numpy" and k[0] == "tree.py"}
    assert sum(fetch.values()) == len(P)                      # one result read per batch of one row
    per_forward = {k: (seen1[k], seen64.get(k, 0)) for k in seen1 if k not in fetch and seen1[k] != seen64.get(k, 0)}
    assert per_forward == {}, per_forward
    np.testing.assert_allclose(one, all_, atol=2e-5, rtol=0)      # float32 batching rounding


def test_the_heads_host_counted_chunks_equal_the_device_counted_ones():
    """positions_below (the tree scorer's host count of head positions below each chunk start)
    against np.searchsorted on the explicit positions, and token_logprobs with it against
    token_logprobs reading the cut points from the device."""
    from dbgpu.scoring.head import OutputHead, token_logprobs
    from dbgpu.scoring.tree import positions_below

    rng = np.random.default_rng(0)
    keep, B = 7, 5
    pred = rng.integers(0, keep, size=11)                        # (M,) unsorted, repeated
    pos = (np.arange(B)[:, None] * keep + pred[None, :]).ravel()  # (B*M,) as the tree scorer lays them out
    starts = np.arange(0, B * keep + 4, 4)
    count = positions_below(np.sort(pred), rows=B, keep=keep)
    np.testing.assert_array_equal(count(starts), np.searchsorted(np.sort(pos), starts))
    assert count(np.array([0, 1, B * keep]))[[0, 2]].tolist() == [0, B * len(pred)]   # none below 0, all below the end

    g = torch.Generator().manual_seed(0)
    head = OutputHead(torch.randn(30, 6, generator=g), None)
    h = torch.randn(B * keep, 6, generator=g)
    tok = torch.as_tensor(rng.integers(0, 30, size=len(pos)))
    for max_elements in (30, 4 * 30, 10**6):                    # 1, 4 positions per chunk, or all
        ref = token_logprobs(head, h, torch.as_tensor(pos), tok, temperature=(1.0, 0.5), max_elements=max_elements)
        got = token_logprobs(head, h, torch.as_tensor(pos), tok, temperature=(1.0, 0.5), max_elements=max_elements,
                             count_below=count)
        # the same chunks, the same float32 ops (1e-6: rounding); a wrong cut scores other positions
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
