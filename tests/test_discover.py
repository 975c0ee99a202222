"""Exact state discovery (dbgpu.discover, dbgpu discover): the enumeration against a
brute-force walk of every continuation, its log-probabilities against the scorer's, the
mass accounting, the closure bookkeeping, and the command's outputs, resume and errors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from dbgpu.discover import Closure, DepthStats, Enumeration, answer_target, enumerate_answers, source_masses
from dbgpu.models import random_model
from dbgpu.scoring.tree import tree_score_matrix

STOP, HOPELESS_TOKEN, V = 2, 13, 16


def peaked_model(arch: str, *, seed: int = 3, scale: float = 6.0):
    """A random model of 16 tokens whose head is scaled up, so that its answer tree has
    both likely and unlikely branches (random weights alone give near-uniform ones)."""
    model, _ = random_model(arch, seed=seed, vocab_size=V)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


def brute_force(model, prompt: list[int], *, eps: float, depth: int, temperature: float):
    """Every continuation of up to `depth` tokens (all V^d of them at depth d, except those
    already ended by the stop token or the hopeless token), each with one plain forward of
    prompt + continuation and a float64 log-softmax: (answers {ids + stop: logprob},
    hopeless, truncated, below-eps masses, the smallest distance of any log-prob to log eps)."""
    log_eps = math.log(eps)
    answers, hopeless, truncated, below, margin = {}, 0.0, 0.0, 0.0, math.inf
    open_ = [((), 0.0)]
    for d in range(depth):
        ids = torch.tensor([prompt + list(p) for p, _ in open_])                  # (n, T) no padding
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1].double()                 # (n, V)
        lp = torch.log_softmax(logits / temperature, dim=-1)
        nxt = []
        for (p, c), row in zip(open_, lp.tolist()):
            for t in range(V):
                cc = c + row[t]
                margin = min(margin, abs(cc - log_eps))
                if cc < log_eps:
                    below += math.exp(cc)
                elif t == STOP:
                    answers[p + (t,)] = cc
                elif t == HOPELESS_TOKEN:
                    hopeless += math.exp(cc)
                elif d + 1 == depth:
                    truncated += math.exp(cc)
                else:
                    nxt.append((p + (t,), cc))
        open_ = nxt
    return answers, hopeless, truncated, below, margin


PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 3, 4], [5, 6, 7, 8, 9, 12, 4], [5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 3, 3]]


@pytest.mark.parametrize("arch,temperature,eps", [("llama", 1.0, 2e-3), ("gemma3", 1.0, 2e-3), ("llama", 0.7, 3e-3)])
def test_enumeration_equals_a_brute_force_walk_and_the_scorer(arch, temperature, eps):
    """gemma3: sliding-window layers (window 8, shorter than the prompts) and soft-capping;
    three prompts of different lengths: a shared prefix, left padding, rows leaving the batch."""
    model = peaked_model(arch)
    depth = 4
    stats = DepthStats()
    found = enumerate_answers(model, PROMPTS, min_prob=eps, temperature=temperature, max_depth=depth,
                              stop_ids=[STOP], hopeless=lambda paths: [HOPELESS_TOKEN in p for p in paths],
                              stats=stats)
    assert stats.forwards == depth and len(stats.frontier) == depth
    total = 0
    for prompt, e in zip(PROMPTS, found):
        ref, hopeless, truncated, below, margin = brute_force(model, prompt, eps=eps, depth=depth,
                                                              temperature=temperature)
        # no continuation's log-prob lies within float32 rounding of log eps: membership is unambiguous
        assert margin > 1e-4
        mine = {tuple(ids) + (stop,): lp for ids, stop, lp in zip(e.ids, e.stop, e.logprob)}
        assert set(mine) == set(ref)                     # every answer >= eps found, none extra
        assert all(lp >= math.log(eps) for lp in e.logprob)
        total += len(ref)
        keys = sorted(ref)
        scored = tree_score_matrix(model, [prompt], [list(k) for k in keys], temperature=temperature)[0]
        for k, s in zip(keys, scored):
            # float32 log-softmax per token (the scorer's), summed over <= 4 tokens: ~1e-6;
            # the brute force is float64 from the same float32 logits of another forward
            assert mine[k] == pytest.approx(s, abs=1e-5)
            assert mine[k] == pytest.approx(ref[k], abs=1e-5)
        # float32 softmax sums over the vocabulary at each of ~100 nodes: ~1e-6 relative
        assert e.hopeless == pytest.approx(hopeless, abs=1e-5)
        assert e.truncated == pytest.approx(truncated, abs=1e-5)
        assert e.below == pytest.approx(below, abs=1e-5)
        assert e.accounted == pytest.approx(1.0, abs=1e-5)
        assert e.depth == depth
    assert total >= 10                                   # the trees are not trivial


def test_depth_one_and_a_single_token_prompt():
    """Edge cases: max_depth 1 (only the prompt pass), no shared prefix (one prompt of one token)."""
    model = peaked_model("llama")
    e1, = enumerate_answers(model, [[7]], min_prob=1e-3, max_depth=1, stop_ids=[STOP])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([[7]])).logits[0, -1].double(), -1)
    p = lp.exp()
    expect_stop = [(STOP,)] if p[STOP] >= 1e-3 else []
    assert [tuple(i) + (s,) for i, s in zip(e1.ids, e1.stop)] == expect_stop
    # after one token every other branch is either truncated (>= eps) or below eps; float32 softmax
    assert e1.truncated == pytest.approx(float(p[(p >= 1e-3) & (torch.arange(V) != STOP)].sum()), abs=1e-6)
    assert e1.accounted == pytest.approx(1.0, abs=1e-6)


def test_bad_arguments_are_one_line_errors():
    from dbgpu.errors import DbgpuError

    model = peaked_model("llama")
    for kw in ({"min_prob": 0.0, "max_depth": 3}, {"min_prob": 1.5, "max_depth": 3}, {"min_prob": 0.1, "max_depth": 0}):
        with pytest.raises(DbgpuError):
            enumerate_answers(model, [[3, 4]], stop_ids=[STOP], **kw)
    with pytest.raises(DbgpuError):
        enumerate_answers(model, [[]], min_prob=0.1, max_depth=2, stop_ids=[STOP])


# ----------------------------------------------------------------------------- closure and masses


def test_closure_searches_each_valid_state_once_in_order_of_discovery():
    c = Closure(states=["A", "B"])
    assert c.next_sources(1) == ["A"]
    assert c.absorb("A", ["C", "B", "C", "A"]) == ["C"]
    assert c.next_sources(5) == ["B", "C"]
    assert c.next_sources(5, max_states=2) == ["B"]
    assert c.absorb("B", ["D"]) == ["D"] and c.found_by == {"C": "A", "D": "B"}
    assert not c.closed and c.next_sources(5, max_states=2) == []
    c.absorb("C", [])
    c.absorb("D", [])
    assert c.closed and c.states == ["A", "B", "C", "D"] and c.searched == c.states
    with pytest.raises(Exception):
        c.absorb("A", [])


def test_source_masses_add_up(word_task):
    texts = [" BUZZY", " ATTITUDE", " LOVE", " two words"]
    targets = [answer_target(word_task, t) for t in texts]
    assert targets == ["BUZZY", "ATTITUDE", "INVALID00", None]
    lp = np.log([0.3, 0.2, 0.1, 0.05])
    e = Enumeration(ids=[[1]] * 4, stop=[0] * 4, logprob=lp, hopeless=0.15, truncated=0.05, below=0.15)
    m = source_masses(word_task, "BUZZY", e, targets)
    close = lambda a, b: abs(a - b) < 1e-12          # noqa: E731  float64 sums of 4 terms
    assert close(m["valid"], 0.5) and close(m["self"], 0.3) and close(m["invalid"], 0.1)
    assert close(m["rejected"], 0.2) and close(m["rejected_answers"], 0.05) and close(m["found"], 0.8)
    assert close(m["not_enumerated"], 0.2) and close(m["truncated"] + m["below_eps"], m["not_enumerated"])


# ----------------------------------------------------------------------------- the command


class Letters:
    """A test task: states are single capital letters, A-F valid, G-H the invalid state's,
    anything else rejected; a partial answer of two letters or a non-letter is hopeless."""

    name = "letters"
    template = "Here is a letter: {state}. Give another letter."
    templates: dict = {}
    answer_prefix = ""
    invalid_state = "INVALID"
    start_state = "A"

    def messages(self, f):
        return [{"role": "user", "content": self.template.replace("{state}", f)}]

    def render(self, g):
        return g

    def parse(self, text):
        s = text.strip()
        return s if len(s) == 1 and "A" <= s <= "H" else None

    def hopeless(self, text):
        return text.strip() != "" and self.parse(text) is None

    def valid(self, g):
        return len(g) == 1 and "A" <= g <= "F"

    def check_state(self, s):
        from dbgpu.errors import DbgpuError

        if self.parse(s) is None:
            raise DbgpuError(f"not a letter: {s!r}")
        return s.strip()

    def seed_states(self, n):
        return list("ABCDEF")[:n]


def letters_lm():
    """random:llama (byte-level tokenizer) with a head bias towards A-H and the end-of-turn
    token, and its weights scaled so that sources answer differently."""
    from dbgpu.formatting import stop_token_ids
    from dbgpu.models import load_model

    lm = load_model("random:llama", device="cpu", seed=0)
    old = lm.model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    boost = [lm.tokenizer.convert_tokens_to_ids(c) for c in "ABCDEFGH"] + stop_token_ids(lm.tokenizer, lm.model)
    with torch.no_grad():
        head.weight.copy_(old.weight * 3.0)
        head.bias.zero_()
        head.bias[boost] = 5.0
    lm.model.set_output_embeddings(head)
    return lm


@pytest.fixture(scope="module")
def byte_lm():
    return letters_lm()


@pytest.fixture(scope="module")
def letters():
    return Letters()


STARTS = ["A"]


def _run(lm, task, out, **kw):
    from dbgpu.commands.discover import discover_job

    return discover_job(model="random:llama", task=task, min_prob=2e-3, out=out, starts=STARTS, max_depth=4,
                        batch=2, lm=lm, progress=False, **kw)


class Crash(Exception):
    pass


def test_discover_outputs_and_resume_after_a_crash_give_the_uninterrupted_outputs(byte_lm, letters, tmp_path):
    whole = tmp_path / "whole"
    res = _run(byte_lm, letters, whole)
    doc = json.loads((whole / "discovered.json").read_text())
    lines = [json.loads(x) for x in (whole / "answers.jsonl").read_text().splitlines()]
    assert res["summary"]["closed"] and doc["searched"] == doc["states"][:len(doc["searched"])]
    assert json.loads((whole / "states.json").read_text()) == doc["states"][:len(doc["states"])]
    assert set(doc["sources"]) == set(doc["searched"]) and doc["states"][:1] == STARTS
    assert len(doc["states"]) >= 4                       # a closure of several sources, three batches
    assert sum(r["answers"] for r in doc["sources"].values()) == len(lines) > 0
    for f, m in doc["sources"].items():
        mine = [x for x in lines if x["source"] == f]
        assert all(x["logprob"] >= math.log(2e-3) for x in mine)
        # float64 sums of the same float64 log-probs
        assert m["found"] == pytest.approx(sum(math.exp(x["logprob"]) for x in mine) + m["hopeless"], abs=1e-12)
        # the accounting closes up to float32 softmax sums
        assert m["found"] + m["truncated"] + m["below_eps"] == pytest.approx(1.0, abs=1e-5)
        assert all(x["target"] == answer_target(letters, x["answer"]) for x in mine)
        # float64 sums of the same float64 log-probs
        assert m["valid"] == pytest.approx(sum(math.exp(x["logprob"]) for x in mine
                                               if x["target"] is not None and letters.valid(x["target"])), abs=1e-12)
        assert m["self"] == pytest.approx(sum(math.exp(x["logprob"]) for x in mine if x["target"] == f), abs=1e-12)
        assert m["invalid"] == pytest.approx(sum(math.exp(x["logprob"]) for x in mine
                                                 if x["target"] == "INVALID"), abs=1e-12)

    # crash once a batch's lines are on disk but before discovered.json names them, and
    # leave an unterminated line as a cut write would; then resume
    cut = tmp_path / "cut"
    _run(byte_lm, letters, cut, stop_after=1)
    n = [0]

    def crash():
        n[0] += 1
        if n[0] == 2:
            with open(cut / "answers.jsonl", "ab") as f:
                f.write(b'{"source": "half a li')
            raise Crash()

    with pytest.raises(Crash):
        _run(byte_lm, letters, cut, after_append=crash)
    partial = json.loads((cut / "discovered.json").read_text())
    assert 0 < len(partial["searched"]) < len(doc["searched"])
    _run(byte_lm, letters, cut)
    assert (cut / "answers.jsonl").read_bytes() == (whole / "answers.jsonl").read_bytes()
    assert (cut / "states.json").read_bytes() == (whole / "states.json").read_bytes()
    again = json.loads((cut / "discovered.json").read_text())
    assert again["sources"] == doc["sources"] and again["found_by"] == doc["found_by"]

    # a finished run called again searches nothing and changes no answer; --kernel writes the
    # lower-bound kernel as a score directory that fit takes
    res = _run(byte_lm, letters, cut, kernel=True)
    assert res["sources"] == 0
    assert (cut / "answers.jsonl").read_bytes() == (whole / "answers.jsonl").read_bytes()
    from dbgpu.commands.fit import fit_input
    from dbgpu.data import read_score_dir

    k = read_score_dir(cut / "kernel")
    assert k.states == [s for s in doc["searched"] if letters.valid(s)]
    for i, f in enumerate(k.states):
        for j, g in enumerate(k.states):
            p = sum(math.exp(x["logprob"]) for x in lines if x["source"] == f and x["target"] == g)
            # float64 sums of the same terms, in another order
            assert (k.logT[i, j] == -math.inf) if p == 0 else (k.logT[i, j] == pytest.approx(math.log(p), abs=1e-12))
    assert np.isfinite(k.logT).sum() > len(k.states)          # off-diagonal transitions were found
    stats = fit_input(cut / "kernel", tmp_path / "fit", progress=False)
    assert stats["n_states"] == len(k.states)


def test_discover_refuses_other_settings_and_bad_options(byte_lm, letters, tmp_path):
    from dbgpu.errors import DbgpuError

    out = tmp_path / "run"
    _run(byte_lm, letters, out, stop_after=1)
    before = (out / "answers.jsonl").read_bytes()
    from dbgpu.commands.discover import discover_job

    with pytest.raises(DbgpuError, match="min_prob"):
        discover_job(model="random:llama", task=letters, min_prob=1e-2, out=out, starts=STARTS, max_depth=4,
                     lm=byte_lm, progress=False)
    assert (out / "answers.jsonl").read_bytes() == before
    for kw in ({"min_prob": 0}, {"min_prob": 1e-2, "max_depth": 0}, {"min_prob": 1e-2, "starts": ["12"]},
               {"min_prob": 1e-2, "max_states": 0}, {"min_prob": 1e-2, "starts": ["G"]}):
        with pytest.raises(DbgpuError):
            discover_job(model="random:llama", task=letters, out=tmp_path / "new", lm=byte_lm, progress=False,
                         **{"max_depth": 4, **kw})
        assert not (tmp_path / "new").exists()


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from dbgpu.cli import main

    for argv in (["--min-prob", "0"], ["--min-prob", "2"], ["--min-prob", "0.1", "--max-depth", "0"],
                 ["--min-prob", "0.1", "--start", "LOVE"]):
        rc = main(["discover", "--model", "random:llama", "--task", "word100", "--out", str(tmp_path / "x"),
                   "--quiet", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "error" in err, (argv, err)
        assert not (tmp_path / "x").exists()


KILL_SCRIPT = """
import os, signal, sys
import test_discover as t
from dbgpu.commands.discover import discover_job
n = [0]
def kill_on_second_batch():
    n[0] += 1
    if n[0] == 2:                       # the batch's lines are on disk, discovered.json does not name them
        os.kill(os.getpid(), signal.SIGKILL)
discover_job(model="random:llama", task=t.Letters(), min_prob=2e-3, out=sys.argv[1], starts=t.STARTS, max_depth=4,
             batch=2, lm=t.letters_lm(), progress=False, after_append=kill_on_second_batch)
"""


def test_kill9_mid_run_then_resume_gives_the_uninterrupted_outputs(byte_lm, letters, tmp_path):
    """A real kill -9 of a discover process at a progress point (after a batch's append,
    before its record), then a resume."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _run(byte_lm, letters, whole)
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(cut)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    searched = json.loads((cut / "discovered.json").read_text())["searched"]
    assert searched == ["A"]                             # the first batch only (one source known then)
    lines = (cut / "answers.jsonl").read_text().splitlines()
    assert any(json.loads(x)["source"] != "A" for x in lines)   # the killed batch's lines are on disk
    _run(byte_lm, letters, cut)
    for name in ("answers.jsonl", "states.json"):
        assert (cut / name).read_bytes() == (whole / name).read_bytes()
    a, b = (json.loads((d / "discovered.json").read_text()) for d in (cut, whole))
    assert a["sources"] == b["sources"] and a["states"] == b["states"]


@pytest.mark.slow
def test_smollm2_found_answers_equal_the_scorer(smollm2, word_task):
    """The real model: every answer >= 1e-2 from BUZZY at tau 0.7 (a few answers, seconds)
    has the log-probability the tree scorer gives its token ids."""
    from dbgpu.formatting import prompt_ids, stop_token_ids

    tok = smollm2.tokenizer
    prompt = prompt_ids(tok, word_task, "BUZZY")
    e, = enumerate_answers(smollm2.model, [prompt], min_prob=1e-2, temperature=0.7, max_depth=10,
                           stop_ids=stop_token_ids(tok, smollm2.model), pad_id=tok.pad_token_id)
    assert len(e.ids) >= 1 and e.accounted == pytest.approx(1.0, abs=1e-5)   # float32 softmax sums
    scored = tree_score_matrix(smollm2.model, [prompt], [i + [s] for i, s in zip(e.ids, e.stop)],
                               temperature=0.7)[0]
    # another forward's float32 rounding through 30 layers: measured up to 4.4e-5 on 218 answers
    np.testing.assert_allclose(e.logprob, scored, atol=1e-4, rtol=0)
