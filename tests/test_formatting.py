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
