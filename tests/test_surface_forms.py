"""Surface forms: T(f, g) summed over every answer text that parses to g (`--surface-forms
all`), against per-form reference forwards; the binding setting; and, on SmolLM2, the
parsed states the sampler draws against the summed kernel."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import pooled_chisquare, reference_logT
from dbgpu.cli import main
from dbgpu.errors import DbgpuError
from dbgpu.formatting import encode_states
from dbgpu.scoring import exact_kernel, sum_surface_forms
from dbgpu.tasks.base import surface_forms

STATES = ["BUZZY", "TURKEY", "ATTITUDE", "PURSUE"]


def test_sum_surface_forms_golden():
    """Groups [0, 2), [2, 3), [3, 6): log(e^a + e^b), c, log(e^d + e^e + e^f), by hand."""
    with np.errstate(divide="ignore"):                               # log 0 = -inf: an impossible form
        x = np.log(np.array([[0.1, 0.2, 0.3, 0.01, 0.02, 0.03],
                             [0.5, 0.0, 0.25, 0.0, 0.0, 0.125]]))
    got = sum_surface_forms(x, [0, 2, 3])
    np.testing.assert_allclose(np.exp(got), [[0.3, 0.3, 0.06], [0.5, 0.25, 0.125]], rtol=1e-12)
    same = sum_surface_forms(x[:, :3], [0, 1, 2])                     # one form each: unchanged
    assert same is x[:, :3] or np.array_equal(same, x[:, :3])


def test_word100_lists_six_forms_that_parse_to_the_state(word_task):
    forms = surface_forms(word_task, "BUZZY")
    assert forms == [" BUZZY", "BUZZY", " Buzzy", "Buzzy", " buzzy", "buzzy"]
    assert forms[0] == word_task.render("BUZZY") and all(word_task.parse(t) == "BUZZY" for t in forms)


def test_a_form_that_does_not_parse_is_refused(word_task, monkeypatch):
    monkeypatch.setattr(type(word_task), "surface_forms", lambda self, g: [g + "!"], raising=False)
    with pytest.raises(DbgpuError, match="surface form 'BUZZY!' of BUZZY parses to None"):
        surface_forms(word_task, "BUZZY")


def test_encoded_forms_are_grouped_by_state(tiny_lms, word_task):
    tok = tiny_lms("llama").tokenizer
    canon = encode_states(tok, word_task, STATES)
    enc = encode_states(tok, word_task, STATES, surface_forms="all")
    assert canon.form_ids is None and "target_forms" not in canon.prompts_json
    assert enc.prompts_json["target_forms"]["BUZZY"][0] == enc.targets["BUZZY"]
    assert enc.form_starts[0] == 0 and list(np.diff([*enc.form_starts, len(enc.form_ids)])) == [6] * 4
    for k, g in enumerate(STATES):                                   # the canonical form opens each group
        assert enc.form_ids[enc.form_starts[k]] == canon.cont_ids[k]
    with pytest.raises(DbgpuError, match="unknown surface forms"):
        encode_states(tok, word_task, STATES, surface_forms="some")


def test_summed_kernel_equals_per_form_reference_forwards(tiny_lms, word_task):
    """exp(logT_all[f, g]) = sum over g's forms of a plain forward's probability, and is at
    least the canonical kernel's."""
    lm = tiny_lms("qwen2")
    tok = lm.tokenizer
    canon, _, _ = exact_kernel(lm, word_task, STATES)
    summed, prompts, _ = exact_kernel(lm, word_task, STATES, surface_forms="all")
    enc = encode_states(tok, word_task, STATES, surface_forms="all")
    bounds = [*enc.form_starts, len(enc.form_ids)]
    for i in range(len(STATES)):
        for k in range(len(STATES)):
            ref = [reference_logT(lm.model, enc.prompt_ids[i], enc.form_ids[j])
                   for j in range(bounds[k], bounds[k + 1])]
            assert summed[i, k] == pytest.approx(np.logaddexp.reduce(ref), abs=2e-5)
    assert np.all(summed >= canon - 1e-9) and np.any(summed > canon + 1e-3)
    assert set(prompts["target_forms"]) == set(STATES)


def test_score_surface_forms_is_binding_and_recorded(tmp_path, capsys):
    out = tmp_path / "s"
    base = ["score", "--model", "random:llama", "--task", "word100", "--state-list", ",".join(STATES),
            "--device", "cpu", "--quiet", "--out", str(out)]
    assert main([*base, "--surface-forms", "all"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["surface_forms"] == {"mode": "all", "continuations": 24}
    assert meta["job"]["surface_forms"] == "all"
    assert "target_forms" in json.loads((out / "prompts.json").read_text())
    capsys.readouterr()
    assert main(base) == 2                                           # canonical now: refused
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "surface_forms 'all', not 'canonical'" in err
    assert main([*base, "--surface-forms", "most"]) == 2             # argparse: an unknown choice


@pytest.mark.slow
def test_parsed_states_drawn_by_the_sampler_follow_the_summed_kernel(smollm2, word_task):
    """The agent counts parsed states. Answers that are one of a state's listed forms (token
    for token) follow exp(summed logT) by a chi-square test; the share of parsed answers that
    no listed form covers is what the summed kernel still leaves out (reported, and small)."""
    from dbgpu.formatting import encode, end_of_turn_text, prompt_text
    from dbgpu.sampling import sample_answers

    from dbgpu.scoring import score_matrix

    lm, task, tau, n = smollm2, word_task, 0.6, 400
    tok = lm.tokenizer
    stop = tok.convert_tokens_to_ids(end_of_turn_text(tok))
    P = encode(tok, prompt_text(tok, task, "BUZZY"))
    samples = sample_answers(lm.model, [P] * n, temperature=tau, max_new_tokens=6, stop_ids=[stop],
                             pad_id=tok.pad_token_id, generator=torch.Generator().manual_seed(7))
    done = [(*s.ids, stop) for s in samples if s.stopped]           # answer tokens, then the stop token
    parsed = Counter(task.parse(tok.decode(list(a[:-1]))) for a in done)
    parsed.pop(None, None)
    enc = encode_states(tok, task, ["BUZZY", *sorted(set(parsed) - {"BUZZY"})], surface_forms="all")
    bounds = [*enc.form_starts, len(enc.form_ids)]
    form_of = {tuple(enc.form_ids[j]): g for k, g in enumerate(enc.states) for j in range(bounds[k], bounds[k + 1])}
    covered = Counter(form_of[a] for a in done if a in form_of)
    uncovered = sum(parsed.values()) - sum(covered.values())
    canonical = sum(a == tuple(enc.form_ids[j]) for a in done for j in enc.form_starts)
    row = score_matrix(lm.model, [enc.prompt_ids[0]], enc.form_ids, method="tree", temperature=tau,
                       pad_id=tok.pad_token_id)                      # (1, M): BUZZY's row only
    probs = dict(zip(enc.states, np.exp(sum_surface_forms(row, enc.form_starts)[0])))
    (stat, pval), keep = pooled_chisquare(covered, probs, n)
    print(f"parsed answers {sum(parsed.values())} of {n}, covered by a listed form {sum(covered.values())} "
          f"(by the canonical one {canonical}), "
          f"uncovered share {uncovered / max(1, sum(parsed.values())):.3f}; chi-square p {pval:.3g}")
    assert sum(covered[w] for w in keep) > n / 4                     # not vacuous
    assert pval > 1e-3, (covered, {w: n * p for w, p in probs.items()}, stat, pval)
    assert uncovered / sum(parsed.values()) < 0.2
