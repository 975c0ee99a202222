"""The paper's word task: letter sums, parsing, validity, seed states, templates."""

from __future__ import annotations

import pytest

from dbgpu.errors import DbgpuError
from dbgpu.tasks import get_task
from dbgpu.tasks.word100 import DEFAULT_TEMPLATE, INVALID, frequent_words, letter_sum


@pytest.mark.parametrize("word,value", [
    ("KNOWLEDGE", 96), ("WORKHARD", 98), ("LUCK", 47), ("LOVE", 54), ("MONEY", 72),   # the paper's examples
    ("ATTITUDE", 100), ("EXCELLENT", 100), ("PERSONAL", 100), ("PROBLEMS", 100),
    ("TURKEY", 100), ("BUZZY", 100), ("a", 1), ("Zz", 52),
])
def test_letter_sum_golden_values(word, value):
    assert letter_sum(word) == value


def test_prompt_follows_the_paper_structure():
    task = get_task("word100")
    text = task.messages("BUZZY")[0]["content"]
    for w, v in [("KNOWLEDGE", 96), ("WORKHARD", 98), ("LUCK", 47), ("LOVE", 54), ("MONEY", 72)]:
        assert f"{w} = {v}%" in text
    assert "whose letters add up to 100%: BUZZY" in text
    assert "word only" in text


@pytest.mark.parametrize("text,state", [
    ("ATTITUDE", "ATTITUDE"), (" attitude\n", "ATTITUDE"), ("Turkey", "TURKEY"),
    ("ATTITUDE.", None), ("two words", None), ("", None), ("  ", None), ("CAFÉ", None), ("A1", None),
])
def test_parse_is_the_papers_rule(text, state):
    assert get_task("word100").parse(text) == state


def test_valid_means_alphabetic_and_sum_100():
    task = get_task("word100")
    assert task.valid("BUZZY") and task.valid("ATTITUDE")
    assert not task.valid("LOVE") and not task.valid(INVALID)


def test_render_follows_the_answer_prefix():
    assert get_task("word100").render("TURKEY") == " TURKEY"             # after "Word:"
    assert get_task("word100", answer_prefix="").render("TURKEY") == "TURKEY"
    assert get_task("word100", answer_prefix="Word: ").render("TURKEY") == "TURKEY"


def test_seed_states_are_the_most_frequent_valid_words():
    from wordfreq import word_frequency

    words = frequent_words(30)
    assert len(words) == len(set(words)) == 30
    assert all(letter_sum(w) == 100 and w.isalpha() and w.isupper() for w in words)
    freqs = [word_frequency(w.lower(), "en") for w in words]
    assert freqs == sorted(freqs, reverse=True)
    assert {"PERSONAL", "PROBLEMS"} <= set(words)       # two of the paper's words are common
    assert get_task("word100").seed_states(24) == words[:24]


def test_templates_plain_and_jinja():
    plain = get_task("word100", template="Example: {state}. Another one?")
    assert plain.messages("BUZZY")[0]["content"] == "Example: BUZZY. Another one?"
    jinja = get_task("word100", template="Example: {{ state | lower }}!")
    assert jinja.messages("BUZZY")[0]["content"] == "Example: buzzy!"
    assert "{state}" in DEFAULT_TEMPLATE


def test_bad_task_inputs():
    with pytest.raises(DbgpuError, match="unknown task"):
        get_task("nope")
    with pytest.raises(DbgpuError, match="placeholder"):
        get_task("word100", template="no slot here")
    with pytest.raises(DbgpuError, match="not a word"):
        get_task("word100").check_state("A-1")


def test_builtin_templates_ask_the_same_question_differently():
    from dbgpu.tasks import read_template
    from dbgpu.tasks import TEMPLATES

    assert set(TEMPLATES["word100"]) == {"paper", "terse", "puzzle"}
    texts = {name: get_task("word100", template=read_template(name, task="word100")).messages("BUZZY")[0]["content"]
             for name in TEMPLATES["word100"]}
    assert len(set(texts.values())) == 3
    assert all("BUZZY" in t and "100" in t for t in texts.values())
    assert texts["paper"] == get_task("word100").messages("BUZZY")[0]["content"]
