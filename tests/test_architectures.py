"""Real architectures as tiny random models built from their own config classes.

For each: the float32 head reproduces the model's own logits (its soft-capping / scaling
included), and the tree scorer and the plain scorer equal a per-pair forward written
here (`reference_logT`: the model's own full forward, log-softmax in float64) to 2e-5,
the tree scorer with both attention paths (the dense masks and `--attention sparse`),
with sliding windows (8 tokens) shorter than every prompt where the architecture has
them. Architectures the tree scorer cannot serve exactly are refused, naming --method plain.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import reference_logT

from dbgpu.errors import DbgpuError
from dbgpu.formatting import encode_states
from dbgpu.models import byte_tokenizer
from dbgpu.scoring import score_matrix
from dbgpu.scoring.head import OutputHead, check_head, output_head

STATES = ["ATTITUDE", "BUZZY", "EXCELLENT", "AT"]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, vocab_size=320)
WINDOW = 8


def _configs():
    import transformers as T

    llama3_rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    gemma3_text = dict(**TINY, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
                       layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=0.5)
    return {
        "llama-3": lambda: T.LlamaForCausalLM(T.LlamaConfig(**TINY, rope_parameters=llama3_rope)),
        "qwen2.5": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
            **TINY, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, tie_word_embeddings=True)),
        "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(
            **TINY, head_dim=16, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
        "gemma3-text": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**gemma3_text)),
        "gemma3-multimodal": lambda: T.Gemma3ForConditionalGeneration(T.Gemma3Config(
            text_config=gemma3_text, mm_tokens_per_image=4,
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14))),
        "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(
            **TINY, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16, final_logit_softcapping=0.5,
            attn_logit_softcapping=5.0)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**TINY, head_dim=16, sliding_window=WINDOW)),
        "phi-3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**TINY, sliding_window=WINDOW, pad_token_id=0,
                                                        bos_token_id=1, eos_token_id=2)),
        "olmo-2": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**TINY, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        "gpt-2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                                                        vocab_size=320, bos_token_id=1, eos_token_id=2)),
    }


def build(arch: str, *, seed: int = 0):
    """(model, byte-level chat tokenizer): fixed-seed random weights, float32, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _configs()[arch]().eval()
    return model, byte_tokenizer(chat=True)


ARCHS = list(_configs())


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_and_plain_equal_a_per_pair_forward(word_task, arch):
    model, tok = build(arch)
    enc = encode_states(tok, word_task, STATES)
    P, C = enc.prompt_ids, enc.cont_ids
    windows = [getattr(model.config.get_text_config(), "sliding_window", None)]
    if arch not in ("llama-3", "olmo-2", "gpt-2"):
        assert windows[0] == WINDOW < min(map(len, P)), "the window must be shorter than the prompts"
    ref = np.array([[reference_logT(model, p, c) for c in C] for p in P])
    plain = score_matrix(model, P, C, method="plain", pad_id=tok.pad_token_id)
    tree = score_matrix(model, P, C, method="tree", pad_id=tok.pad_token_id, max_rows=2)
    sparse = score_matrix(model, P, C, method="tree", attention="sparse", pad_id=tok.pad_token_id, max_rows=2)
    np.testing.assert_allclose(plain, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(tree, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(sparse, ref, atol=2e-5, rtol=0)        # attention without masks: same numbers
    assert np.all(np.logaddexp.reduce(tree, axis=1) < 0)


@pytest.mark.parametrize("arch", ["gemma3-text", "gemma2"])
def test_softcapping_is_reproduced_and_matters(arch):
    """Negative control: the head without the model's final-logit soft-capping differs."""
    model, _ = build(arch)
    head = output_head(model)
    assert head.softcap == 0.5 and head.source == "table"
    assert check_head(model, head) < 1e-5
    with pytest.raises(DbgpuError, match="transforms the logits"):
        check_head(model, OutputHead(head.weight, head.bias))


def test_the_multimodal_wrapper_applies_no_softcap_and_reads_its_text_config():
    """Gemma3ForConditionalGeneration's forward applies no soft-capping (its text config
    names one); its top-level config has no layer types, the masks read the text config."""
    model, _ = build("gemma3-multimodal")
    assert output_head(model).softcap is None and check_head(model, output_head(model)) < 1e-5
    assert getattr(model.config, "layer_types", None) is None
    from dbgpu.models import text_config

    assert text_config(model).layer_types == ["sliding_attention", "full_attention"]


def test_tree_scorer_refuses_unverified_and_length_dependent_architectures(word_task):
    import transformers as T

    tok = byte_tokenizer(chat=True)
    enc = encode_states(tok, word_task, STATES[:2])
    torch.manual_seed(0)
    phi = T.PhiForCausalLM(T.PhiConfig(**{**TINY, "num_key_value_heads": 4}, pad_token_id=0)).eval()
    with pytest.raises(DbgpuError, match="not been verified on phi models; use --method plain"):
        score_matrix(phi, enc.prompt_ids, enc.cont_ids, method="tree")
    plain = score_matrix(phi, enc.prompt_ids, enc.cont_ids, method="plain")    # the head has a bias
    assert phi.lm_head.bias is not None
    np.testing.assert_allclose(plain[0, 1], reference_logT(phi, enc.prompt_ids[0], enc.cont_ids[1]), atol=2e-5)

    gemma = T.Gemma3ForCausalLM(T.Gemma3TextConfig(**TINY, head_dim=16, use_bidirectional_attention=True)).eval()
    with pytest.raises(DbgpuError, match="bidirectional attention.*--method plain"):
        score_matrix(gemma, enc.prompt_ids, enc.cont_ids, method="tree")


def test_length_dependent_rope_is_served_only_on_one_side_of_its_switch(word_task, monkeypatch):
    """Phi-3 longrope switches frequencies beyond original_max_position_embeddings: exact
    when the shared prefix already passes it, refused when only the full sequences do
    (and, negative control, wrong if it were not refused)."""
    import transformers as T

    import dbgpu.scoring.tree as tree
    from dbgpu.scoring.trie import common_prefix_length

    tok = byte_tokenizer(chat=True)
    enc = encode_states(tok, word_task, STATES[:3])
    P, C = enc.prompt_ids, enc.cont_ids
    shared = common_prefix_length(P)

    def phi3(original):
        rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [3.0] * 8}
        torch.manual_seed(0)
        return T.Phi3ForCausalLM(T.Phi3Config(**TINY, original_max_position_embeddings=original, rope_parameters=rope,
                                              pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()

    early = phi3(64)                                   # every forward is past the switch
    ref = np.array([[reference_logT(early, p, c) for c in C] for p in P])
    np.testing.assert_allclose(score_matrix(early, P, C, method="tree"), ref, atol=2e-5, rtol=0)
    late = phi3(shared + 1)                            # the prefix pass is before it, the pairs after
    with pytest.raises(DbgpuError, match="longrope rope changes its frequencies.*--method plain"):
        score_matrix(late, P, C, method="tree")
    monkeypatch.setattr(tree, "check_tree_supported", lambda *a, **k: None)
    ref = np.array([[reference_logT(late, p, c) for c in C] for p in P])
    assert np.abs(score_matrix(late, P, C, method="tree") - ref).max() > 1e-3


@pytest.mark.parametrize("cls", ["CohereForCausalLM", "GraniteForCausalLM"])
def test_logit_scaling_heads(cls):
    """Cohere multiplies the logits by logit_scale, Granite divides by logits_scaling."""
    import transformers as T

    config = getattr(T, cls.replace("ForCausalLM", "Config"))(
        **TINY, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        **({"logit_scale": 0.25} if cls.startswith("Cohere") else {"logits_scaling": 4.0}))
    torch.manual_seed(0)
    model = getattr(T, cls)(config).eval()
    head = output_head(model)
    assert head.scale == 0.25 and check_head(model, head) < 1e-5
    with pytest.raises(DbgpuError, match="transforms the logits"):
        check_head(model, OutputHead(head.weight, head.bias))


def test_an_unknown_class_is_probed_and_refused_when_its_logits_differ():
    """A class not in the table is checked against its own forward: a plain head passes,
    a scaled one is refused (here: Cohere under a name the table does not know)."""
    import transformers as T

    class MyCohere(T.CohereForCausalLM):
        pass

    class MyLlama(T.LlamaForCausalLM):
        pass

    torch.manual_seed(0)
    llama = MyLlama(T.LlamaConfig(**TINY)).eval()
    assert output_head(llama).source == "probe"
    cohere = MyCohere(T.CohereConfig(**TINY, logit_scale=0.25, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2)).eval()
    with pytest.raises(DbgpuError, match="MyCohere.*not supported"):
        output_head(cohere)
