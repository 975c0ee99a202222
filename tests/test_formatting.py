"""Prompt and continuation texts: chat template, BOS, answer prefix, end-of-turn token."""

from __future__ import annotations

import pytest

from dbgpu.formatting import bos_text, continuation_text, encode, end_of_turn_text, prompt_text, stop_token_ids


def test_chat_model_prompt_is_the_template_plus_prefix(tiny_lms, word_task):
    tok = tiny_lms("llama").tokenizer
    text = prompt_text(tok, word_task, "BUZZY")
    expected = tok.apply_chat_template(word_task.messages("BUZZY"), tokenize=False, add_generation_prompt=True)
    assert text == expected + "Word:"
    assert text.endswith("<|im_start|>assistant\nWord:")
    assert continuation_text(tok, word_task, "TURKEY") == " TURKEY<|im_end|>"
    assert encode(tok, continuation_text(tok, word_task, "TURKEY"))[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_base_model_prompt_is_plain_text_with_bos(tiny_lms, word_task):
    tok = tiny_lms("gemma3").tokenizer
    assert bos_text(tok) == "<bos>"
    text = prompt_text(tok, word_task, "BUZZY")
    assert text.startswith("<bos>") and text.endswith("\nWord:")
    ids = encode(tok, text)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert continuation_text(tok, word_task, "TURKEY") == " TURKEY<eos>"
    assert end_of_turn_text(tok) == "<eos>"


def test_stop_tokens_include_end_of_turn(tiny_lms):
    tok = tiny_lms("qwen2").tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok)


@pytest.mark.slow
def test_smollm2_chatml_end_of_turn(smollm2, word_task):
    tok = smollm2.tokenizer
    assert end_of_turn_text(tok) == "<|im_end|>"
    text = prompt_text(tok, word_task, "BUZZY")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\nWord:")
    cont = encode(tok, continuation_text(tok, word_task, "ATTITUDE"))
    assert cont[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(cont[:-1]) == " ATTITUDE"
    assert stop_token_ids(tok, smollm2.model) == [tok.convert_tokens_to_ids("<|im_end|>")]


# ----------------------------------------------------------------------------- the tokenization contract

STATES = ["TURKEY", "BUZZY", "ATTITUDE", "PROBLEMS"]


def _task(prefix):
    from dbgpu.tasks import get_task

    return get_task("word100", answer_prefix=prefix)


def _sentencepiece(task, *, extra_pieces=()):
    """A SentencePiece-style Unigram tokenizer built here: Metaspace pre-tokenizer that adds
    a prefix space to the first section (as Llama-2 / Mistral tokenizers do), BOS added by
    the tokenizer, every character of the prompts a piece, and the state words (with and
    without the word-start marker) as pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = [m["content"] for s in STATES for m in task.messages(s)] + ["Word:\n "]
    chars = sorted(set("".join(texts)) | set("▁"))
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(c, -10.0) for c in chars]
    vocab += [(p, -1.0) for s in STATES for p in (s, "▁" + s)] + [(p, -0.5) for p in extra_pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _byte_level_bpe(task):
    """A byte-level BPE (GPT-2 / Llama-3 / Qwen style) trained here on the prompts and states."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [m["content"] for s in STATES for m in task.messages(s)] + [f"Word: {s}" for s in STATES] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_sentencepiece_prefix_space_continuations_are_the_tokens_after_the_prompt():
    """Without an answer prefix the answer follows the prompt's newline directly: the model
    generates `TURKEY`, while the continuation tokenized on its own (the old rule) would
    start with the prefix-space piece `▁TURKEY`, a sequence the model never generates there."""
    from dbgpu.formatting import encode_states

    task = _task("")
    tok = _sentencepiece(task)
    enc = encode_states(tok, task, STATES)
    for f, p in zip(STATES, enc.prompt_ids):
        assert p == encode(tok, enc.sources[f]) and p[0] == tok.bos_token_id
        for g, c in zip(STATES, enc.cont_ids):
            assert p + c == encode(tok, enc.sources[f] + enc.targets[g])        # what the model sees
    c = enc.cont_ids[0]
    assert tok.convert_ids_to_tokens(c) == ["TURKEY", "</s>"]
    assert tok.convert_ids_to_tokens(encode(tok, enc.targets["TURKEY"])) == ["▁TURKEY", "</s>"]   # old rule


def test_sentencepiece_with_a_spaced_answer_agrees_with_the_old_rule():
    from dbgpu.formatting import encode_states

    task = _task("Word:")
    tok = _sentencepiece(task)
    enc = encode_states(tok, task, STATES)
    assert [encode(tok, enc.targets[g]) for g in STATES] == enc.cont_ids
    assert tok.convert_ids_to_tokens(enc.cont_ids[0]) == ["▁TURKEY", "</s>"]


@pytest.mark.parametrize("prefix", ["Word:", ""])
def test_byte_level_bpe_joint_and_separate_tokenization_agree(prefix):
    from dbgpu.formatting import encode_states

    task = _task(prefix)
    tok = _byte_level_bpe(task)
    enc = encode_states(tok, task, STATES)
    assert enc.cont_ids == [encode(tok, enc.targets[g]) for g in STATES]
    assert any(len(c) < len(enc.targets[g].encode()) for g, c in zip(STATES, enc.cont_ids)), "merges exist"


def test_a_merge_across_the_prompt_answer_boundary_is_an_error_naming_the_state():
    """A piece spanning the prompt's last character and the answer (`\\nBUZZY`) means the
    answer has no tokens of its own after the prompt."""
    from dbgpu.errors import DbgpuError
    from dbgpu.formatting import encode_states

    task = _task("")
    tok = _sentencepiece(task, extra_pieces=["\nBUZZY"])
    with pytest.raises(DbgpuError, match="state BUZZY: the tokenizer merges the end of the prompt"):
        encode_states(tok, task, STATES)


def test_chat_templates_see_a_fixed_date(tiny_lms, word_task):
    """A template that prints today's date (Llama-3.x style: date_string, else strftime_now)
    renders the same text on any day: the recorded TEMPLATE_DATE."""
    import datetime as dt

    from dbgpu.formatting import TEMPLATE_DATE, render_chat

    tok = tiny_lms("llama").tokenizer
    tpl = ("{{ strftime_now('%Y-%m-%d') }}|{{ date_string }}|{% for m in messages %}{{ m['content'] }}"
           "{% endfor %}")
    try:
        tok.chat_template = tpl
        text = render_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
        assert text == f"{TEMPLATE_DATE:%Y-%m-%d}|{TEMPLATE_DATE:%d %b %Y}|hi"
        other = render_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True,
                            today=dt.date(2031, 2, 3))
        assert other.startswith("2031-02-03|03 Feb 2031|")
        today = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        assert today.startswith(f"{dt.date.today():%Y-%m-%d}|")                 # restored afterwards
    finally:
        from dbgpu.models import CHATML_TEMPLATE

        tok.chat_template = CHATML_TEMPLATE
