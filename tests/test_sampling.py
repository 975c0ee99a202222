"""Sampling agrees with the exact likelihoods: the exact kernel is the sampling agent's kernel."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import pooled_chisquare

from dbgpu.formatting import continuation_text, encode, end_of_turn_text, prompt_text, stop_token_ids
from dbgpu.models import cache_kwarg, output_cache
from dbgpu.sampling import sample_answers
from dbgpu.scoring import score_matrix


def test_first_token_frequencies_match_softmax(tiny_lms, word_task):
    """One-token answers from the sampler follow softmax(z / tau) of a plain forward."""
    lm = tiny_lms("qwen2")
    tok = lm.tokenizer
    P = encode(tok, prompt_text(tok, word_task, "BUZZY"))
    tau, n = 0.3, 3000
    g = torch.Generator().manual_seed(0)
    samples = sample_answers(lm.model, [P] * n, temperature=tau, max_new_tokens=1, stop_ids=[],
                             pad_id=tok.pad_token_id, generator=g)
    with torch.no_grad():
        z = lm.model(input_ids=torch.tensor([P])).logits[0, -1].double()
    p = torch.softmax(z / tau, -1).numpy()
    counts = Counter(s.ids[0] for s in samples)
    (stat, pval), keep = pooled_chisquare(counts, dict(enumerate(p)), n)
    assert len(keep) >= 5 and pval > 1e-3, (stat, pval)


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


def test_batched_sampling_matches_single_prompt_distribution(tiny_lms, word_task):
    """Mixed prompts in one batch (prefill dedup + cache gather) give each slot its own prompt's
    next-token distribution: the second token after a fixed first token follows a plain forward."""
    lm = tiny_lms("llama")
    tok = lm.tokenizer
    pa = encode(tok, prompt_text(tok, word_task, "BUZZY"))
    pb = encode(tok, prompt_text(tok, word_task, "EXCELLENT"))
    n, tau = 1500, 0.25
    g = torch.Generator().manual_seed(1)
    samples = sample_answers(lm.model, [pa, pb] * n, temperature=tau, max_new_tokens=2, stop_ids=[],
                             pad_id=tok.pad_token_id, generator=g)
    b_samples = samples[1::2]
    with torch.no_grad():
        z = lm.model(input_ids=torch.tensor([pb])).logits[0, -1].double()
    p = torch.softmax(z / tau, -1).numpy()
    (stat, pval), keep = pooled_chisquare(Counter(s.ids[0] for s in b_samples), dict(enumerate(p)), n)
    assert len(keep) >= 3 and pval > 1e-3, (stat, pval)


def _exact_probs(lm, task, source: str, words: list[str], tau: float) -> dict:
    tok = lm.tokenizer
    P = encode(tok, prompt_text(tok, task, source))
    C = [encode(tok, continuation_text(tok, task, w)) for w in words]
    logT = score_matrix(lm.model, [P], C, temperature=tau, pad_id=tok.pad_token_id)[0]
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
def test_dbgpu_sampler_agrees_with_exact_kernel(smollm2, word_task):
    lm, task, tau, n = smollm2, word_task, 0.6, 400
    tok = lm.tokenizer
    P = encode(tok, prompt_text(tok, task, "BUZZY"))
    g = torch.Generator().manual_seed(5)
    samples = sample_answers(lm.model, [P] * n, temperature=tau, max_new_tokens=6,
                             stop_ids=[tok.convert_tokens_to_ids(end_of_turn_text(tok))],
                             pad_id=tok.pad_token_id, generator=g)
    done = [tuple(s.ids) for s in samples if s.stopped]
    words = sorted({task.parse(tok.decode(list(a))) for a in done} - {None})
    cont = {w: tuple(encode(tok, task.render(w))) for w in words}
    counts = Counter(done)
    observed = {w: counts.get(cont[w], 0) for w in words}
    probs = _exact_probs(lm, task, "BUZZY", words, tau)
    (stat, pval), keep = pooled_chisquare(observed, probs, n)
    assert sum(observed[w] for w in keep) > n / 4
    assert pval > 1e-3, (observed, {w: n * p for w, p in probs.items()}, stat, pval)
