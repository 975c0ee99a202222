"""Sampling agrees with the exact likelihoods: the exact kernel is the sampling agent's kernel."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import pooled_chisquare
from scipy.stats import chisquare

from dbgpu.formatting import continuation_text, encode, end_of_turn_text, prompt_text, stop_token_ids
from dbgpu.models import cache_kwarg, output_cache
from dbgpu.sampling import sample_answers
from dbgpu.scoring import score_matrix


KV_CACHES = ["dynamic", "static"]


@pytest.mark.parametrize("kv_cache", KV_CACHES)
@pytest.mark.parametrize("tau", [0.3, 0.8])
def test_first_token_frequencies_match_softmax(tiny_lms, word_task, kv_cache, tau):
    """One-token answers from the sampler follow softmax(z / tau) of a plain forward, at a
    low and a high temperature."""
    lm = tiny_lms("qwen2")
    tok = lm.tokenizer
    P = encode(tok, prompt_text(tok, word_task, "BUZZY"))
    n = 3000
    g = torch.Generator().manual_seed(0)
    samples = sample_answers(lm.model, [P] * n, temperature=tau, max_new_tokens=1, stop_ids=[],
                             pad_id=tok.pad_token_id, generator=g, kv_cache=kv_cache)
    with torch.no_grad():
        z = lm.model(input_ids=torch.tensor([P])).logits[0, -1].double()
    p = torch.softmax(z / tau, -1).numpy()
    counts = Counter(s.ids[0] for s in samples)
    (stat, pval), keep = pooled_chisquare(counts, dict(enumerate(p)), n)
    assert len(keep) >= 5 and pval > 1e-3, (stat, pval)


def test_pooled_chisquare_merges_a_small_leftover_into_the_last_bin():
    """Hand-checked: n = 100 over p = (0.5, 0.46, 0.04); 'other' (4 expected) is merged into
    the last kept outcome, so the bins are (50 | 46 + 4) against observed (55 | 45)."""
    (stat, pval), keep = pooled_chisquare({"a": 55, "b": 40, "c": 5}, {"a": 0.5, "b": 0.46, "c": 0.04}, 100)
    assert keep == ["a", "b"]
    assert stat == pytest.approx(25 / 50 + 25 / 50, rel=1e-12)       # (55-50)^2/50 + (45-50)^2/50


def test_sampler_is_deterministic_for_a_seed(tiny_lms, word_task):
    lm = tiny_lms("gemma3")
    tok = lm.tokenizer
    prompts = [encode(tok, prompt_text(tok, word_task, f)) for f in ["BUZZY", "TURKEY", "BUZZY"]]

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [s.ids for s in sample_answers(lm.model, prompts, temperature=1.0, max_new_tokens=5,
                                              stop_ids=stop_token_ids(tok), pad_id=tok.pad_token_id, generator=g)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("kv_cache", KV_CACHES)
def test_batched_sampling_matches_single_prompt_distribution(tiny_lms, word_task, kv_cache):
    """Mixed prompts in one batch (prefill dedup + cache gather) give each slot its own prompt's
    next-token distribution: the second token after a fixed first token follows a plain forward."""
    lm = tiny_lms("llama")
    tok = lm.tokenizer
    pa = encode(tok, prompt_text(tok, word_task, "BUZZY"))
    pb = encode(tok, prompt_text(tok, word_task, "EXCELLENT"))
    n, tau = 1500, 0.25
    g = torch.Generator().manual_seed(1)
    samples = sample_answers(lm.model, [pa, pb] * n, temperature=tau, max_new_tokens=2, stop_ids=[],
                             pad_id=tok.pad_token_id, generator=g, kv_cache=kv_cache)
    b_samples = samples[1::2]
    with torch.no_grad():
        z = lm.model(input_ids=torch.tensor([pb])).logits[0, -1].double()
    p = torch.softmax(z / tau, -1).numpy()
    (stat, pval), keep = pooled_chisquare(Counter(s.ids[0] for s in b_samples), dict(enumerate(p)), n)
    assert len(keep) >= 3 and pval > 1e-3, (stat, pval)


def _exact_probs(lm, task, source: str, words: list[str], tau: float, *, also: float | None = None) -> dict:
    """exp(log T) of `words` from `source` at tau; with `also`, scored in one pass with a
    second temperature (the multi-temperature scorer), tau's row returned."""
    tok = lm.tokenizer
    P = encode(tok, prompt_text(tok, task, source))
    C = [encode(tok, continuation_text(tok, task, w)) for w in words]
    taus = tau if also is None else [tau, also]
    logT = score_matrix(lm.model, [P], C, temperature=taus, pad_id=tok.pad_token_id)
    logT = logT[0] if also is None else logT[0, 0]
    return {w: float(np.exp(v)) for w, v in zip(words, logT)}


@pytest.mark.slow
def test_hf_generate_samples_agree_with_exact_kernel(smollm2, word_task):
    """transformers' own generate(), pure temperature sampling, against exp(log T)."""
    lm, task, tau, n = smollm2, word_task, 0.5, 400
    tok, model = lm.tokenizer, lm.model
    P = encode(tok, prompt_text(tok, task, "BUZZY"))
    stop = tok.convert_tokens_to_ids(end_of_turn_text(tok))
    with torch.no_grad():                              # prefill the shared prompt once
        cache = output_cache(model(input_ids=torch.tensor([P[:-1]]), use_cache=True))
    cache.batch_repeat_interleave(n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        out = model.generate(input_ids=torch.tensor([P] * n), attention_mask=torch.ones(n, len(P), dtype=torch.long),
                             do_sample=True, temperature=tau, top_k=0, top_p=1.0, min_p=None,
                             repetition_penalty=1.0, max_new_tokens=6, eos_token_id=stop,
                             pad_token_id=tok.pad_token_id, **{cache_kwarg(model): cache})
    answers = Counter()
    for row in out[:, len(P):].tolist():
        if stop in row:                                 # a complete answer: tokens up to the stop
            answers[tuple(row[:row.index(stop) + 1])] += 1
    words = sorted({task.parse(tok.decode(list(a[:-1]))) for a in answers} - {None})
    cont = {w: tuple(encode(tok, continuation_text(tok, task, w))) for w in words}
    observed = {w: answers.get(cont[w], 0) for w in words}
    probs = _exact_probs(lm, task, "BUZZY", words, tau)
    (stat, pval), keep = pooled_chisquare(observed, probs, n)
    assert sum(observed[w] for w in keep) > n / 4      # the test is not vacuous
    assert pval > 1e-3, (observed, {w: n * p for w, p in probs.items()}, stat, pval)


@pytest.mark.slow
@pytest.mark.parametrize("kv_cache", KV_CACHES)
def test_dbgpu_sampler_agrees_with_exact_kernel(smollm2, word_task, kv_cache):
    _sampler_agrees_with_exact_kernel(smollm2, word_task, kv_cache=kv_cache)


@pytest.mark.slow
def test_sampler_agrees_with_the_exact_kernel_at_a_second_temperature(smollm2, word_task):
    """tau = 0.4, its exact probabilities taken from a two-temperature pass of the scorer."""
    _sampler_agrees_with_exact_kernel(smollm2, word_task, kv_cache="dynamic", tau=0.4, also=0.6)


def _sampler_agrees_with_exact_kernel(lm, task, *, kv_cache: str, compile: bool = False, tau: float = 0.6,
                                      also: float | None = None):
    """Sampled complete answers from BUZZY's prompt against exp(log T) of the tree scorer."""
    n = 400
    tok = lm.tokenizer
    P = encode(tok, prompt_text(tok, task, "BUZZY"))
    g = torch.Generator(device=lm.device).manual_seed(5)
    samples = sample_answers(lm.model, [P] * n, temperature=tau, max_new_tokens=6,
                             stop_ids=[tok.convert_tokens_to_ids(end_of_turn_text(tok))],
                             pad_id=tok.pad_token_id, generator=g, kv_cache=kv_cache, compile=compile)
    done = [tuple(s.ids) for s in samples if s.stopped]
    words = sorted({task.parse(tok.decode(list(a))) for a in done} - {None})
    cont = {w: tuple(encode(tok, task.render(w))) for w in words}
    counts = Counter(done)
    observed = {w: counts.get(cont[w], 0) for w in words}
    probs = _exact_probs(lm, task, "BUZZY", words, tau, also=also)
    (stat, pval), keep = pooled_chisquare(observed, probs, n)
    assert sum(observed[w] for w in keep) > n / 4
    assert pval > 1e-3, (observed, {w: n * p for w, p in probs.items()}, stat, pval)


def _greedy_reference(model, prompt: list[int], *, steps: int, stop_ids: set, give_up_after: int | None):
    """Independent computation: argmax continuation by plain forwards of the whole sequence."""
    seq, out = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            t = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        out.append(t)
        seq.append(t)
        if t in stop_ids or (give_up_after is not None and len(out) == give_up_after):
            break
    return out


@pytest.mark.parametrize("kv_cache", KV_CACHES)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(tiny_lms, word_task, arch, kv_cache):
    """Near-greedy sampling (tau = 1e-3) is deterministic, so every row must equal its own
    plain-forward argmax continuation, whatever rows stop, are given up on or are dropped
    from the batch (and the KV cache) around it."""
    lm = tiny_lms(arch)
    tok = lm.tokenizer
    words = ["BUZZY", "TURKEY", "ATTITUDE", "PERSONAL", "BUZZY", "PROBLEMS"]
    prompts = [encode(tok, prompt_text(tok, word_task, w)) for w in words]
    free = [_greedy_reference(lm.model, p, steps=6, stop_ids=set(), give_up_after=None) for p in prompts]
    stop_ids = {free[0][1], free[2][3]}                  # row 0 stops at its 2nd token, row 2 at its 4th
    quit_row = 3                                         # abandoned after 2 tokens
    give_up = lambda rows: [r == free[quit_row][:2] for r in rows]  # noqa: E731
    expected = [_greedy_reference(lm.model, p, steps=6, stop_ids=stop_ids,
                                  give_up_after=2 if i == quit_row else None) for i, p in enumerate(prompts)]
    samples = sample_answers(lm.model, prompts, temperature=1e-3, max_new_tokens=6, stop_ids=sorted(stop_ids),
                             pad_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0),
                             give_up=give_up, kv_cache=kv_cache)
    assert len(expected[0]) == 2 and len(expected[2]) <= 4 and len(expected[quit_row]) == 2
    for i, (s, e) in enumerate(zip(samples, expected)):
        if e[-1] in stop_ids:
            assert (s.ids, s.stopped, s.stop_id) == (e[:-1], True, e[-1]), i
        else:
            assert (s.ids, s.stopped) == (e, False), i
        assert s.gave_up == (i == quit_row and s.ids == free[quit_row][:2])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_shared_prefix_prefill_equals_the_plain_one(tiny_lms, word_task, arch):
    """Prompts of different lengths around one state: running their common prefix once and
    shifting it row by row gives the plain left-padded prefill's logits and cache (checked
    through the next decode step too). gemma3's sliding window (8) is shorter than the
    prompts, so it must take the plain path and agree trivially."""
    from dbgpu.models import cache_kwarg
    from dbgpu.scoring.head import next_token_logits, output_head
    from dbgpu.scoring.prefix import prefill
    from dbgpu.scoring.trie import common_prefix_length

    lm = tiny_lms(arch)
    tok = lm.tokenizer
    prompts = [encode(tok, prompt_text(tok, word_task, w)) for w in ["BUZZY", "EXCELLENT", "AT", "PROBLEMS"]]
    assert len({len(p) for p in prompts}) == 4 and common_prefix_length(prompts) > 16
    results = []
    for min_shared in (16, 10**9):
        h, cache, mask, pos = prefill(lm.model, prompts, pad_id=tok.pad_token_id, min_shared=min_shared)
        logits = next_token_logits(output_head(lm.model), h)                    # (U, V) float32
        nxt = logits.argmax(-1, keepdim=True)                                   # (U, 1)
        mask2 = torch.cat([mask, torch.ones_like(nxt)], 1)
        with torch.no_grad():
            step = lm.model(input_ids=nxt, attention_mask=mask2, position_ids=pos[:, -1:] + 1, use_cache=True,
                            **{cache_kwarg(lm.model): cache}).logits[:, -1]
        results.append((logits, step))
    (a, a2), (b, b2) = results
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    torch.testing.assert_close(a2, b2, atol=2e-5, rtol=0)
    with torch.no_grad():                                    # and an unpadded forward of one prompt
        ref = lm.model(input_ids=torch.tensor([prompts[2]])).logits[0, -1]
    torch.testing.assert_close(a[2], ref, atol=2e-5, rtol=0)


def test_draw_tokens_follows_the_softmax_and_never_draws_impossible_tokens():
    from dbgpu.sampling import draw_tokens

    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])                # hand-chosen; the last is impossible
    logits = torch.log(p).expand(4000, -1) * 0.5                 # tau = 0.5 undoes the halving
    g = torch.Generator().manual_seed(3)
    draws = torch.cat([draw_tokens(logits, temperature=0.5, generator=g) for _ in range(10)])  # (40000,)
    counts = torch.bincount(draws, minlength=5)
    assert counts[4] == 0
    assert chisquare(counts[:4].numpy(), 40000 * p[:4].numpy()).pvalue > 1e-3, counts
    # deterministic for a generator state
    a = draw_tokens(logits, temperature=1.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, draw_tokens(logits, temperature=1.0, generator=torch.Generator().manual_seed(9)))


@pytest.mark.parametrize("arch, window", [("llama", None), ("qwen2", None), ("gemma3", None), ("gemma3", "longer")])
def test_static_cache_draws_the_dynamic_cache_answers(arch, window, word_task):
    """With no row compaction both loops draw one uniform per row per step, so for one
    generator state they must give the same answers token for token (their logits agree to
    float rounding). gemma3 with window 8 (< the prompts): the plain prefill straight into
    the static cache; with a window 16 tokens longer than the longest prompt (< prompt +
    answer): the shared prefill copied in, then the sliding layers' buffers roll during
    the decode."""
    from dbgpu.formatting import stop_token_ids
    from dbgpu.models import byte_tokenizer, load_model, random_model

    words = ["BUZZY", "TURKEY", "ATTITUDE", "BUZZY", "AT"]
    if window is None:
        lm = load_model(f"random:{arch}", device="cpu", seed=0)
        model, tok = lm.model, lm.tokenizer
    else:
        tok = byte_tokenizer(chat=False)
        window = max(len(encode(tok, prompt_text(tok, word_task, w))) for w in words) + 16
        model, tok = random_model(arch, seed=0, overrides={"sliding_window": window})
    prompts = [encode(tok, prompt_text(tok, word_task, w)) for w in words]
    runs = {}
    for kv in KV_CACHES:
        g = torch.Generator().manual_seed(3)
        runs[kv] = [(s.ids, s.stopped, s.stop_id) for s in sample_answers(
            model, prompts, temperature=1.0, max_new_tokens=40 if window else 12, stop_ids=stop_token_ids(tok),
            pad_id=tok.pad_token_id, generator=g, compact_at=0.0, kv_cache=kv)]
    assert runs["static"] == runs["dynamic"]
    assert len({tuple(r[0]) for r in runs["static"]}) > 1                   # not all the same answer
    if window is not None:                                                   # the decode went past the window
        assert max(len(r[0]) for r in runs["static"]) > 16


def test_kv_cache_choice_by_device_and_bad_values():
    from dbgpu.errors import DbgpuError
    from dbgpu.sampling import resolve_kv_cache

    assert resolve_kv_cache("auto", torch.device("cuda")) == "static"
    assert resolve_kv_cache("auto", torch.device("cpu")) == "dynamic"
    assert resolve_kv_cache("static", torch.device("cpu")) == "static"
    with pytest.raises(DbgpuError, match="unknown KV cache"):
        resolve_kv_cache("paged", torch.device("cpu"))


def test_compiled_decoding_is_refused_off_cuda(tiny_lms, word_task):
    from dbgpu.errors import DbgpuError

    lm = tiny_lms("llama")
    P = encode(lm.tokenizer, prompt_text(lm.tokenizer, word_task, "BUZZY"))
    with pytest.raises(DbgpuError, match="static KV cache on a CUDA"):
        sample_answers(lm.model, [P], temperature=1.0, max_new_tokens=2, stop_ids=[], pad_id=0,
                       generator=torch.Generator(), kv_cache="static", compile=True)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("kv_cache, compile", [("dynamic", False), ("static", False), ("static", True)])
def test_dbgpu_sampler_agrees_with_exact_kernel_on_cuda(model_cache, word_task, kv_cache, compile):
    """The chi-square test against exp(log T) on CUDA, in bf16, each decode loop."""
    from dbgpu.models import load_model

    lm = load_model("smollm2-135m", device="cuda", dtype="bfloat16", cache_dir=model_cache)
    _sampler_agrees_with_exact_kernel(lm, word_task, kv_cache=kv_cache, compile=compile)
