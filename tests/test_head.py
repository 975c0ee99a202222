"""The precision policy (scoring/head.py): float32 log-probabilities from hidden states,
chunked over positions, the model's own logit transform, and the sampler on the same
distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dbgpu.errors import DbgpuError
from dbgpu.scoring.head import (OutputHead, decoder, head_logits, hidden_states, next_token_logits, output_head,
                                temperature_tuple, token_logprobs)


def _head(V=50, H=12, *, dtype=torch.float32, bias=False, softcap=None, scale=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(V, H, generator=g).to(dtype)
    b = torch.randn(V, generator=g) if bias else None
    return OutputHead(w, b, softcap=softcap, scale=scale)


def _reference(head, h, pos, tok, temperature):
    """float64 log-softmax of the float64 logits, written out (independent of head.py)."""
    z = h.double() @ head.weight.double().T
    if head.bias is not None:
        z = z + head.bias.double()
    if head.scale is not None:
        z = z * head.scale
    if head.softcap is not None:
        z = torch.tanh(z / head.softcap) * head.softcap
    lp = torch.log_softmax(z / temperature, -1)
    return lp[pos, tok]


@pytest.mark.parametrize("kw", [{}, {"bias": True}, {"softcap": 2.0}, {"scale": 0.25, "bias": True}])
def test_token_logprobs_against_float64_for_every_chunk_size(kw):
    head = _head(**kw)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 12, generator=g)
    pos = torch.tensor([3, 0, 8, 3, 5, 5, 1])                 # unordered, repeated positions
    tok = torch.tensor([4, 49, 0, 7, 7, 8, 30])
    ref = _reference(head, h, pos, tok, 0.7)
    for max_elements in (50, 3 * 50, 4 * 50 + 1, 10**6):    # 1, 3, 4 positions per chunk, or all
        lp = token_logprobs(head, h, pos, tok, temperature=0.7, max_elements=max_elements)
        assert lp.dtype == torch.float32
        torch.testing.assert_close(lp.double(), ref, atol=1e-6, rtol=1e-6)


def test_several_temperatures_from_one_set_of_logits_equal_each_temperature_alone():
    head = _head(bias=True, softcap=3.0)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(9, 12, generator=g)
    pos = torch.tensor([3, 0, 8, 3, 5, 5, 1])
    tok = torch.tensor([4, 49, 0, 7, 7, 8, 30])
    taus = (0.5, 1.0, 1.7)
    for max_elements in (50, 4 * 50 + 1, 10**6):
        lp = token_logprobs(head, h, pos, tok, temperature=taus, max_elements=max_elements)
        assert lp.shape == (3, 7) and lp.dtype == torch.float32
        for i, tau in enumerate(taus):
            alone = token_logprobs(head, h, pos, tok, temperature=tau, max_elements=max_elements)
            # the same float32 logits and operations, up to where the division by tau happens
            # (in place or not): a few float32 ulps of log-probs of order 10
            torch.testing.assert_close(lp[i], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(lp[i].double(), _reference(head, h, pos, tok, tau), atol=1e-6, rtol=1e-6)


def test_temperature_lists_are_checked():
    assert temperature_tuple(0.7) == (0.7,)
    assert temperature_tuple([0.5, 2]) == (0.5, 2.0)
    for bad, words in (([], "no temperature"), ([0.5, 0.5], "repeated"), ([1.0, -1.0], "positive")):
        with pytest.raises(DbgpuError, match=words):
            temperature_tuple(bad)


def test_bf16_weights_and_hidden_states_give_float32_logits_not_bf16_rounded_ones():
    """A bf16 model's own logits are rounded to bf16 (steps of 0.125 near 20); the head's are
    the float32 product of the same bf16 numbers (exact products, float32 sums)."""
    head = _head(V=300, H=64, dtype=torch.bfloat16)
    h = (torch.randn(5, 64, generator=torch.Generator().manual_seed(2)) * 3).bfloat16()
    exact = h.double() @ head.weight.double().T                                    # (5, V)
    ours = head_logits(head, h)
    bf16 = (h @ head.weight.T).double()                                            # the model's own
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() < 1e-4
    assert (bf16 - exact).abs().max() > 1e-2                                       # what it fixes


def test_vocabulary_tiles_of_a_low_precision_weight(monkeypatch):
    """A bf16 weight is copied to float32 a vocabulary tile at a time: tiles of 7 rows
    give the same logits as one float32 product."""
    import dbgpu.scoring.head as hd

    head = _head(V=30, H=8, dtype=torch.bfloat16)
    h = torch.randn(4, 8).bfloat16()
    whole = h.float() @ head.weight.float().T
    monkeypatch.setattr(hd, "_VOCAB_TILE_BYTES", 7 * 4 * 8)
    torch.testing.assert_close(head_logits(head, h), whole, atol=1e-6, rtol=0)


def test_the_cuda_gemm_with_float32_output_is_taken_for_low_precision_cuda_weights(monkeypatch):
    """The CUDA branch (one bf16 GEMM with float32 output, torch.mm(out_dtype=)), exercised on
    the CPU: a weight that says it is on CUDA goes through torch.mm(..., out_dtype=float32),
    and a torch without that argument falls back to the float32 copy."""
    import dbgpu.scoring.head as hd

    w = torch.randn(20, 8).bfloat16()
    h = torch.randn(3, 8).bfloat16()
    calls = []

    class CudaLike(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    def fake_mm(a, b, *, out_dtype=None):
        calls.append(out_dtype)
        return a.float() @ b.float()

    monkeypatch.setattr(hd.torch, "mm", fake_mm)
    z = hd._matmul32(h, w.as_subclass(CudaLike))
    assert calls == [torch.float32]
    torch.testing.assert_close(z.as_subclass(torch.Tensor), h.float() @ w.float().T, atol=1e-6, rtol=0)

    def old_mm(a, b):                                                  # no out_dtype argument
        return a @ b

    monkeypatch.setattr(hd.torch, "mm", old_mm)
    z = hd._matmul32(h, w.as_subclass(CudaLike))
    torch.testing.assert_close(z.as_subclass(torch.Tensor), h.float() @ w.float().T, atol=1e-6, rtol=0)


def test_head_equals_the_models_own_logits_and_hidden_states_skip_the_head(tiny_lms):
    for arch in ("llama", "qwen2", "gemma3"):
        model = tiny_lms(arch).model
        ids = torch.tensor([[5, 9, 200, 31, 7]])
        with torch.no_grad():
            theirs = model(input_ids=ids).logits[0]
        h, cache = hidden_states(model, input_ids=ids, use_cache=False)
        assert cache is None and h.shape == (1, 5, model.config.hidden_size)
        head = output_head(model)
        assert head.weight is model.get_output_embeddings().weight      # tied or not, the model's own
        torch.testing.assert_close(head_logits(head, h[0]), theirs, atol=1e-5, rtol=0)
        assert decoder(model) is model.model


def test_sampler_logits_are_the_scorers_distribution(tiny_lms):
    """next_token_logits / tau, softmaxed, is exp of token_logprobs at that position."""
    model = tiny_lms("qwen2").model
    head = output_head(model)
    h = hidden_states(model, input_ids=torch.tensor([[3, 4, 5, 6]]), use_cache=False)[0][0]  # (4, H)
    z = next_token_logits(head, h[-1:])                                         # (1, V)
    V = head.vocab_size
    lp = token_logprobs(head, h, torch.full((V,), 3), torch.arange(V), temperature=0.6)
    torch.testing.assert_close(torch.softmax(z / 0.6, -1)[0], lp.exp(), atol=1e-7, rtol=1e-5)
    assert abs(float(lp.double().exp().sum()) - 1) < 1e-5


def test_the_scorers_never_compute_full_vocabulary_logits_for_all_positions(tiny_lms, word_task, monkeypatch):
    """The model's own forward (with its lm_head) is never called by the scorers, and the head
    holds at most max_logits float32 logits at a time."""
    import dbgpu.scoring.head as hd
    from dbgpu.formatting import encode_states
    from dbgpu.scoring import score_matrix

    lm = tiny_lms("llama")
    enc = encode_states(lm.tokenizer, word_task, ["ATTITUDE", "BUZZY", "TURKEY"])
    expected = score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, method="plain")
    V = lm.model.config.vocab_size
    sizes = []
    real = hd.head_logits
    monkeypatch.setattr(hd, "head_logits", lambda head, h: sizes.append(h.shape[0]) or real(head, h))
    monkeypatch.setattr(lm.model, "forward", lambda *a, **k: pytest.fail("the lm head ran in the model dtype"))
    for method in ("plain", "tree"):
        sizes.clear()
        got = score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, method=method, max_logits=4 * V)
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
        assert sizes and max(sizes) <= 4, method
