"""The sampling agent's protocols, its log and its resume, checked against hand-worked rules."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import pooled_chisquare
from scipy.stats import chisquare

import dbgpu.sampling
from dbgpu.errors import DbgpuError
from dbgpu.commands.explore import explore_job
from dbgpu.explore import (LOG_NAME, Answers, Frontier, classify, model_answerer, repair_log, run_steps, scan_log,
                           visited_states)
from dbgpu.sampling import Sample

# Letter sums checked by hand: ATTITUDE 1+20+20+9+20+21+4+5 = 100, TURKEY 20+21+18+11+5+25 = 100,
# PERSONAL 16+5+18+19+15+14+1+12 = 100, BUZZY 2+21+26+26+25 = 100, HELLO 8+5+12+12+15 = 52.


@pytest.mark.parametrize("text,stopped,expected", [
    (" ATTITUDE", True, ("ATTITUDE", None)),
    (" attitude \n", True, ("ATTITUDE", None)),        # stripped and upper-cased
    (" HELLO", True, ("INVALID00", None)),             # a word, but sums to 52
    (" BUZZY", True, (None, "same_as_source")),
    (" Buzzy", True, (None, "same_as_source")),
    (" hello world", True, (None, "not_parsed")),
    (" ATTITUDE.", True, (None, "not_parsed")),
    ("", True, (None, "not_parsed")),
    (" ATTITUDE", False, (None, "truncated")),         # no end-of-turn token: not the whole answer
    (" ATTITUDE\n\nThe", False, (None, "not_parsed")),  # cut off, and no longer a word
])
def test_classify_follows_the_papers_rule(word_task, text, stopped, expected):
    assert classify(word_task, "BUZZY", text, stopped=stopped) == expected


def scripted(script):
    """answer(sources, seed) replaying script[step] = list of (text, stopped) per slot;
    records the sources it was asked about."""
    asked = []

    def answer(sources, sample_seed):
        row = script[len(asked)]
        asked.append(list(sources))
        return Answers(texts=[t for t, _ in row], stopped=[s for _, s in row], tokens=len(row))

    return answer, asked


def test_rejected_answers_are_logged_but_are_no_transitions(word_task):
    frontier = Frontier(start="BUZZY", batch=4, invalid_state="INVALID00")
    answer, _ = scripted([[(" 42", True), (" BUZZY", True), (" TURKEY", False), (" HELLO", True)]])
    (step, new), = run_steps(word_task, frontier, protocol="paper", seed=0, steps=range(1), answer=answer)
    assert [r["target"] for r in step.records] == [None, None, None, "INVALID00"]
    assert [r.get("rejected") for r in step.records] == [True, True, True, None]
    assert [r["answer"] for r in step.records] == [" 42", " BUZZY", " TURKEY", " HELLO"]
    assert [(r["step"], r["slot"]) for r in step.records] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert new == ["INVALID00"] and frontier.discovered == ["BUZZY", "INVALID00"]


def test_paper_sources_come_uniformly_from_the_discovered_states(word_task):
    """Sources are only ever states discovered in earlier steps (INVALID00 included), and
    uniform over them: here the set is {BUZZY, ATTITUDE, INVALID00} from step 2 on."""
    B, n_steps = 4, 302
    script = [[(" ATTITUDE", True)] + [(" no", True)] * 3, [(" HELLO", True)] + [(" no", True)] * 3]
    script += [[(" no", True)] * B] * (n_steps - 2)
    answer, asked = scripted(script)
    frontier = Frontier(start="BUZZY", batch=B, invalid_state="INVALID00")
    discovered = {"BUZZY"}
    for step, _ in run_steps(word_task, frontier, protocol="paper", seed=3, steps=range(n_steps), answer=answer):
        assert set(asked[-1]) <= discovered
        discovered |= {r["target"] for r in step.records if r["target"]}
    assert asked[0] == ["BUZZY"] * B
    assert set(asked[1]) <= {"BUZZY", "ATTITUDE"}
    counts = Counter(s for srcs in asked[2:] for s in srcs)
    assert set(counts) == {"BUZZY", "ATTITUDE", "INVALID00"}
    assert chisquare(list(counts.values())).pvalue > 1e-3, counts


def test_walkers_continue_from_their_own_last_valid_state(word_task):
    """Slot 0 moves on every valid word; slot 1 is rejected (stays); slot 2 answers a
    wrong-sum word (INVALID00 is logged, the walker stays at its last valid state)."""
    script = [
        [(" ATTITUDE", True), (" 42", True), (" HELLO", True)],
        [(" TURKEY", True), (" TURKEY", False), (" PERSONAL", True)],
        [(" PERSONAL", True), (" BUZZY", True), (" HELLO", True)],
        [(" x", True), (" x", True), (" x", True)],
    ]
    answer, asked = scripted(script)
    frontier = Frontier(start="BUZZY", batch=3, invalid_state="INVALID00")
    steps = list(run_steps(word_task, frontier, protocol="walk", seed=0, steps=range(4), answer=answer))
    assert asked == [["BUZZY", "BUZZY", "BUZZY"],
                     ["ATTITUDE", "BUZZY", "BUZZY"],
                     ["TURKEY", "BUZZY", "PERSONAL"],
                     ["PERSONAL", "BUZZY", "PERSONAL"]]
    assert steps[0][0].records[2]["target"] == "INVALID00"
    assert steps[2][0].records[1]["target"] is None            # BUZZY -> BUZZY: same as source


def test_steps_depend_only_on_seed_and_step(word_task):
    """One pass over steps 0..5 equals steps 0..2 then, from a frontier rebuilt from their
    records, steps 3..5: the draw and the sampling seed of a step come from (seed, step)."""
    words = [" ATTITUDE", " TURKEY", " PERSONAL", " HELLO", " 7"]

    def answer(sources, sample_seed):
        rng = np.random.default_rng(sample_seed)
        return Answers(texts=[words[i] for i in rng.integers(len(words), size=len(sources))],
                       stopped=[True] * len(sources))

    def run(ranges):
        records = []
        for r in ranges:
            frontier = Frontier(start="BUZZY", batch=5, invalid_state="INVALID00")
            frontier.absorb(records)
            records += [rec for st, _ in run_steps(word_task, frontier, protocol="paper", seed=11,
                                                  steps=r, answer=answer) for rec in st.records]
        return records

    whole = run([range(6)])
    assert whole == run([range(3), range(3, 6)])
    assert len({r["source"] for r in whole}) > 2                # the discovered set did grow


# ----------------------------------------------------------------------------- the log


def _line(step, slot, target="ATTITUDE"):
    rec = {"source": "BUZZY", "answer": " x", "target": target, "step": step, "slot": slot}
    if target is None:
        rec["rejected"] = True
    return json.dumps(rec) + "\n"


def test_scan_finds_whole_steps_and_repair_cuts_the_rest(tmp_path):
    path = tmp_path / LOG_NAME
    whole = "".join(_line(s, b) for s in range(2) for b in range(2))
    path.write_text(whole + _line(2, 0, None) + _line(2, 1)[:17])      # a partial step, a cut line
    scan = scan_log(path, batch=2)
    assert len(scan.records) == 4 and scan.next_step == 2
    assert (scan.cut_lines, scan.cut_tail) == (1, 17) and scan.keep_bytes == len(whole.encode())
    note = repair_log(path, scan)
    assert path.read_text() == whole
    assert "unterminated" in note and "1 lines of the incomplete step 2" in note
    assert not scan_log(path, batch=2).needs_repair


@pytest.mark.parametrize("bad,message", [
    ('{"source": "BUZZY", "answ\n', "line 2 is not valid JSON"),
    (_line(0, 0), "line 2: expected step 0 slot 1"),
    (_line(0, 1).replace('"target": "ATTITUDE"', '"target": null'), "null target"),
    ('[1, 2]\n', "not a JSON object"),
])
def test_a_bad_complete_line_is_an_error_not_a_repair(tmp_path, bad, message):
    path = tmp_path / LOG_NAME
    path.write_text(_line(0, 0) + bad + _line(1, 0) + _line(1, 1))
    with pytest.raises(DbgpuError, match=message):
        scan_log(path, batch=2)


def test_visited_states_are_ranked_by_answers(word_task):
    recs = [{"source": "BUZZY", "target": t} for t in
            ["TURKEY", None, "INVALID00", "ATTITUDE", "ATTITUDE", "INVALID00", "TURKEY", "ATTITUDE"]]
    assert visited_states(recs, start="BUZZY", task=word_task) == [
        ("ATTITUDE", 3), ("TURKEY", 2), ("BUZZY", 0)]
    assert visited_states(recs, start="BUZZY", task=word_task, min_count=3) == [("ATTITUDE", 3)]


# ----------------------------------------------------------------------------- the job, end to end


WORDS = [" ATTITUDE", " TURKEY", " PERSONAL", " HELLO", " BUZZY", " no!", " Turkey"]


@pytest.fixture
def scripted_sampler(monkeypatch, tiny_lms):
    """sample_answers replaced by draws from WORDS with the step's generator (about one
    answer in eight truncated): the job's resume logic meets real states and INVALID00."""
    tok = tiny_lms("llama").tokenizer
    eot = tok.convert_tokens_to_ids("<|im_end|>")

    def fake(model, prompts, *, temperature, max_new_tokens, stop_ids, pad_id, generator, give_up=None,
             kv_cache="auto", compile=False):
        pick = torch.randint(len(WORDS), (len(prompts),), generator=generator).tolist()
        cut = (torch.rand(len(prompts), generator=generator) < 0.125).tolist()
        return [Sample(ids=tok(WORDS[i], add_special_tokens=False).input_ids, stopped=not c,
                       stop_id=None if c else eot) for i, c in zip(pick, cut)]

    monkeypatch.setattr(dbgpu.sampling, "sample_answers", fake)
    return tiny_lms("llama")


def _explore(lm, word_task, out, steps, **kw):
    return explore_job(model="random:llama", task=word_task, steps=steps, out=out, batch=6, seed=5,
                       progress=False, lm=lm, **kw)


@pytest.mark.parametrize("protocol", ["paper", "walk"])
def test_two_calls_continue_where_the_first_stopped(tmp_path, word_task, scripted_sampler, protocol):
    lm = scripted_sampler
    _explore(lm, word_task, tmp_path / "one", 8, protocol=protocol)
    first = _explore(lm, word_task, tmp_path / "two", 4, protocol=protocol)
    second = _explore(lm, word_task, tmp_path / "two", 4, protocol=protocol)
    one = (tmp_path / "one" / LOG_NAME).read_text()
    two = (tmp_path / "two" / LOG_NAME).read_text()
    assert two == one and len(two.splitlines()) == 2 * 4 * 6
    recs = [json.loads(x) for x in two.splitlines()]
    assert [r["step"] for r in recs] == [s for s in range(8) for _ in range(6)]
    assert (first["first_step"], second["first_step"]) == (0, 4)
    # the second call started from the first call's discovered set
    assert set(first["discovered"]) <= set(second["discovered"])
    assert len(first["discovered"]) > 2 and "INVALID00" in first["discovered"]
    if protocol == "paper":
        assert {r["source"] for r in recs[24:30]} <= set(first["discovered"])
        assert any(r["source"] == "INVALID00" for r in recs)
    meta = json.loads((tmp_path / "two" / "explore.json").read_text())
    assert [c["first_step"] for c in meta["calls"]] == [0, 4]
    assert meta["settings"]["protocol"] == protocol and meta["settings"]["batch"] == 6


def test_resume_repairs_a_crash_and_writes_what_an_uninterrupted_run_writes(tmp_path, word_task,
                                                                             scripted_sampler, capsys):
    lm = scripted_sampler
    _explore(lm, word_task, tmp_path / "ref", 6)
    _explore(lm, word_task, tmp_path / "crash", 4)
    log = tmp_path / "crash" / LOG_NAME
    text = log.read_text()
    lines = text.splitlines(keepends=True)
    log.write_text("".join(lines[:3 * 6 + 2]) + lines[3 * 6 + 2][:9])  # step 3: two lines and a cut one
    capsys.readouterr()
    res = _explore(lm, word_task, tmp_path / "crash", 3)
    err = capsys.readouterr().err
    assert "repaired" in err and "incomplete step 3" in err and "unterminated" in err
    assert res["first_step"] == 3
    assert log.read_text() == (tmp_path / "ref" / LOG_NAME).read_text()


@pytest.mark.slow
def test_sampled_answers_agree_with_the_exact_kernel(smollm2, word_task):
    """Explore's own answerer (prompts, stop tokens, temperature, giving up, batch
    compaction, shared-prefix prefill of two distinct prompts) with sources BUZZY and TURKEY
    in every batch: per source, counts of each exact answer text render(g) against
    n * exp(log T(f, g)) from the scorer; words expected fewer than 5 times and every other
    answer (rejected, truncated, other words) pooled as "other"."""
    from dbgpu.formatting import continuation_text, encode, prompt_text
    from dbgpu.scoring import score_matrix

    lm, task, tau, B = smollm2, word_task, 0.7, 100
    tok = lm.tokenizer
    answer = model_answerer(lm, task, temperature=tau, max_new_tokens=6)
    sources = ["BUZZY", "TURKEY"] * (B // 2)
    texts = {"BUZZY": [], "TURKEY": []}
    for k in range(4):
        a = answer(sources, 1000 + k)
        for f, t, stopped in zip(sources, a.texts, a.stopped):
            texts[f].append(t if stopped else None)
    for f, answers in texts.items():
        n = len(answers)
        done = [t for t in answers if t is not None]
        words = sorted({task.parse(t) for t in done} - {None})
        observed = Counter(task.parse(t) for t in done if task.parse(t) and t == task.render(task.parse(t)))
        logT = score_matrix(lm.model, [encode(tok, prompt_text(tok, task, f))],
                            [encode(tok, continuation_text(tok, task, w)) for w in words],
                            temperature=tau, pad_id=tok.pad_token_id)[0]
        probs = dict(zip(words, np.exp(logT)))
        (stat, pval), keep = pooled_chisquare(observed, probs, n)
        assert sum(observed[w] for w in keep) > n / 8, (f, observed)   # not vacuous (self-repeats: ~45, ~75)
        assert pval > 1e-3, (f, observed, {w: n * p for w, p in probs.items()}, stat, pval)


@pytest.mark.parametrize("text,hopeless", [
    (" ATTITUDE", False), (" attitude \n", False), ("", False), ("  ", False),
    (" ATTITUDE\n\nThe", True), (" ATTI-", True), (" 4", True), (" Été", True), (" BUZZY.", True),
])
def test_answers_are_given_up_only_when_no_continuation_can_be_a_word(word_task, text, hopeless):
    from dbgpu.explore import cannot_become_a_state

    assert cannot_become_a_state(word_task, text) == hopeless
    # hand-checked: some continuation parses iff not hopeless
    assert any(word_task.parse(text + tail) for tail in ["", "A", "\n"]) == (not hopeless)
