"""The exact scorer against an independent per-pair forward pass, and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import reference_logT

from dbgpu.formatting import encode_states
from dbgpu.scoring import score_matrix, score_sequences

STATES = ["ATTITUDE", "BUZZY", "EXCELLENT", "TURKEY", "PROBLEMS"]   # ragged lengths


def _ids(lm, task, states):
    enc = encode_states(lm.tokenizer, task, states)
    return enc.prompt_ids, enc.cont_ids


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_scorer_equals_plain_forward_per_pair(tiny_lms, word_task, arch):
    lm = tiny_lms(arch)
    P, C = _ids(lm, word_task, STATES)
    assert len({len(c) for c in C}) > 1, "continuations should be ragged"
    logT = score_matrix(lm.model, P, C, pad_id=lm.tokenizer.pad_token_id)
    ref = np.array([[reference_logT(lm.model, p, c) for c in C] for p in P])
    assert logT.dtype == np.float64 and logT.shape == (len(STATES), len(STATES))
    np.testing.assert_allclose(logT, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batch_size_and_padding_side_do_not_change_results(tiny_lms, word_task, arch):
    lm = tiny_lms(arch)
    P, C = _ids(lm, word_task, STATES)
    base = score_matrix(lm.model, P, C, max_batch=1)          # no padding at all
    for side in ("left", "right"):
        for max_batch, budget in [(3, 1 << 20), (64, 1 << 20), (64, 2000)]:
            got = score_matrix(lm.model, P, C, max_batch=max_batch, batch_tokens=budget, padding_side=side,
                               pad_id=lm.tokenizer.pad_token_id)
            np.testing.assert_allclose(got, base, atol=1e-5, rtol=0, err_msg=f"{side} {max_batch} {budget}")


def test_temperature_divides_logits(tiny_lms, word_task):
    lm = tiny_lms("qwen2")
    P, C = _ids(lm, word_task, STATES[:3])
    got = score_matrix(lm.model, P, C, temperature=0.5)
    ref = np.array([[reference_logT(lm.model, p, c, temperature=0.5) for c in C] for p in P])
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)


def test_rows_are_subprobability_distributions(tiny_lms, word_task):
    lm = tiny_lms("llama")
    P, C = _ids(lm, word_task, STATES)
    logT = score_matrix(lm.model, P, C)
    assert np.all(np.logaddexp.reduce(logT, axis=1) <= 0.0)


def test_exhaustive_continuations_sum_to_one():
    """Over ALL continuations of a fixed length the probabilities sum to 1 (closure check)."""
    from dbgpu.models import random_model

    model, tok = random_model("llama", seed=3, vocab_size=16)
    prompt = [[1, 2, 3, 4, 5]]
    conts = [[a, b] for a in range(16) for b in range(16)]       # every 2-token continuation
    logT = score_matrix(model, prompt, conts, max_batch=50)
    assert abs(np.logaddexp.reduce(logT[0])) < 1e-5


def test_pairs_subset_matches_matrix(tiny_lms, word_task):
    lm = tiny_lms("llama")
    P, C = _ids(lm, word_task, STATES)
    full = score_matrix(lm.model, P, C)
    pairs = np.array([[4, 0], [0, 4], [2, 2]])
    np.testing.assert_allclose(score_sequences(lm.model, P, C, pairs), full[pairs[:, 0], pairs[:, 1]], atol=1e-5)


@pytest.mark.slow
def test_smollm2_scorer_equals_plain_forward(smollm2, word_task):
    states = ["ATTITUDE", "BUZZY", "TURKEY"]
    P, C = _ids(smollm2, word_task, states)
    logT = score_matrix(smollm2.model, P, C, pad_id=smollm2.tokenizer.pad_token_id)
    ref = np.array([[reference_logT(smollm2.model, p, c) for c in C] for p in P])
    np.testing.assert_allclose(logT, ref, atol=2e-3, rtol=0)
    assert np.all(np.logaddexp.reduce(logT, axis=1) <= 0.0)
