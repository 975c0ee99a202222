"""The sampling agent: show a state, sample answers, parse them into new states, repeat.

    dbgpu explore --model M --task T --steps K --out DIR [--protocol paper|walk] [--batch B]

Each step draws B sources, samples one answer per source through ONE batched
`sample_answers` call, classifies every answer and appends one JSON line per query to
`DIR/transitions.jsonl`:

    {"source": "BUZZY", "answer": " ATTITUDE", "target": "ATTITUDE", "step": 3, "slot": 0}
    {"source": "BUZZY", "answer": " BUZZY", "target": null, "step": 3, "slot": 1, "rejected": true}

Classification (the paper's rule, SPEC "The paper's two agents"): the answer is parsed
by the task (word100: stripped, upper-cased, purely alphabetic); an answer that does
not parse, equals its source, or hit `max_new_tokens` without an end-of-turn token
(truncated: its text is not the whole answer) is rejected: `target` null,
`"rejected": true`, no transition. A parsed answer that fails `task.valid` is the
task's single invalid state (word100: INVALID00), a transition like any other.

Protocols:
  paper  the paper's: the discovered set starts as {start}; every query's source is
         drawn uniformly from the states discovered so far, INVALID00 included once
         it has been answered. The B sources of a step are drawn from the set as it
         stood before the step (B = 1 is the paper's sequential protocol exactly).
  walk   B independent walkers, all starting at `start`; walker b is slot b and
         moves to its answer when that is a valid state; after a rejected or
         invalid answer it stays where it is (it continues from its last valid state).

INVALID00 as a source: its prompt shows the state's own label (task.messages(
"INVALID00")), never the wrong-sum word that led there. That keeps the chain a Markov
chain on the state set (one prompt, one answer distribution per state), which is what
the fit and the exact kernel assume; showing the last invalid word would make
INVALID00's outgoing transitions depend on hidden history.

Reproducibility: step s draws its sources and samples its answers with generators
seeded from (seed, s) alone, so a run cut into several calls writes the same log as
one call (same model, device and dtype).

Resume and repair: a second call on the same DIR checks that explore.json's settings
match (one-line error otherwise), rebuilds the discovered set / the walkers from the
log, and numbers its steps on. The log is written one step at a time (one write,
flush, fsync), so a crash can leave at most an unterminated last line and an
incomplete last step. On resume both are cut back to the end of the last complete
step (reported on stderr), and that step is run again: with its RNG derived from
(seed, step) it writes the very lines that were cut (same device), so nothing is lost
or duplicated. A malformed line anywhere else is an error, never repaired.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.io import os_error, read_json, read_jsonl, write_all
from dbgpu.tasks import Task, task_spec

PROTOCOLS = ("paper", "walk")
LOG_NAME = "transitions.jsonl"
SETTINGS_NAME = "explore.json"

# Defaults for SmolLM2-135M with the task's `Word:` prefix, measured (see README):
# temperature 1 gives the most accepted (non-rejected) answers per query, since lower
# temperatures mostly repeat the source word (rejected); it is also `score`'s default,
# so a run's counts estimate the kernel that `score` computes. 10 new tokens hold every
# word summing to 100 among wordfreq's top 200k (at most 7 tokens upper-cased) plus a
# trailing newline and the end-of-turn token.
DEFAULT_BATCH = 32
DEFAULT_TEMPERATURE = 1.0
DEFAULT_MAX_NEW_TOKENS = 10

# Settings a run directory is bound to: a resume must repeat them exactly.
BINDING = ("model", "task", "template", "answer_prefix", "protocol", "batch", "start",
           "temperature", "max_new_tokens", "seed")


# --------------------------------------------------------------------------- classification


def classify(task: Task, source: str, text: str, *, stopped: bool) -> tuple[str | None, str | None]:
    """(target, why rejected) of one answer: exactly one of the two is None.

    why: "truncated" (no end-of-turn token: cut off while it could still have become a
    state), "not_parsed" (not a state, and cut-off text that can no longer become one),
    "same_as_source". The label only explains; every reason rejects the answer.
    """
    if not stopped:
        return None, "truncated" if (task.parse(text) is not None or not text.strip()) else "not_parsed"
    g = task.parse(text)
    if g is None:
        return None, "not_parsed"
    if g == source:
        return None, "same_as_source"
    if not task.valid(g) and task.invalid_state is not None:
        return task.invalid_state, None
    return g, None


def log_record(*, source: str, answer: str, target: str | None, step: int, slot: int) -> dict:
    """One line of transitions.jsonl (key order as in SPEC)."""
    rec = {"source": source, "answer": answer, "target": target, "step": step, "slot": slot}
    if target is None:
        rec["rejected"] = True
    return rec


# --------------------------------------------------------------------------- protocol state


@dataclass
class Frontier:
    """What the log so far implies for the next step: the discovered states (in order of
    discovery, start first) and each walker's current state."""

    start: str
    batch: int
    invalid_state: str | None
    discovered: list[str] = field(default_factory=list)
    walkers: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.discovered = self.discovered or [self.start]
        self.walkers = self.walkers or [self.start] * self.batch
        self._seen = set(self.discovered)

    def absorb(self, records: list[dict]) -> list[str]:
        """Take in a step's records (or a whole log, in order); returns the new states."""
        new = []
        for r in records:
            g = r["target"]
            if g is not None and g not in self._seen:
                self._seen.add(g)
                self.discovered.append(g)
                new.append(g)
            if g is not None and g != self.invalid_state:
                self.walkers[r["slot"]] = g
        return new


def step_seeds(seed: int, step: int) -> tuple[int, int]:
    """(source-draw seed, sampling seed) for one step, from (seed, step) alone."""
    a, b = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint64)
    return int(a), int(b)


def draw_sources(protocol: str, frontier: Frontier, *, seed: int) -> list[str]:
    """The step's B sources: uniform over the discovered set (paper) or the walkers (walk)."""
    if protocol == "walk":
        return list(frontier.walkers)
    idx = np.random.default_rng(seed).integers(len(frontier.discovered), size=frontier.batch)  # (B,)
    return [frontier.discovered[i] for i in idx]


# --------------------------------------------------------------------------- steps


@dataclass
class Answers:
    """What a model answered for a step's sources, slot by slot."""

    texts: list[str]            # raw generated text, stop token excluded
    stopped: list[bool]         # ended with an end-of-turn / EOS token
    tokens: int = 0             # generated tokens, stop tokens included


@dataclass
class Step:
    records: list[dict]
    why: list[str | None]       # per slot: None (a transition) or why it was rejected
    tokens: int


def classify_step(task: Task, sources: list[str], answers: Answers, *, step: int) -> Step:
    """A step's log records from its sources and answers."""
    records, why = [], []
    for slot, (f, text, stopped) in enumerate(zip(sources, answers.texts, answers.stopped, strict=True)):
        g, w = classify(task, f, text, stopped=stopped)
        records.append(log_record(source=f, answer=text, target=g, step=step, slot=slot))
        why.append(w)
    return Step(records=records, why=why, tokens=answers.tokens)


def run_steps(task: Task, frontier: Frontier, *, protocol: str, seed: int, steps: range, answer):
    """The protocol loop: yields (Step, new states) per step, the frontier updated.

    answer(sources, sample_seed) -> Answers is the model (or, in tests, a script).
    """
    for step in steps:
        source_seed, sample_seed = step_seeds(seed, step)
        sources = draw_sources(protocol, frontier, seed=source_seed)
        result = classify_step(task, sources, answer(sources, sample_seed), step=step)
        yield result, frontier.absorb(result.records)


def cannot_become_a_state(task: Task, text: str) -> bool:
    """Whether a partial answer is rejected however it goes on (then it need not go on):
    the task's own `hopeless` rule where it has one; otherwise never."""
    hopeless = getattr(task, "hopeless", None)
    return bool(hopeless(text)) if hopeless is not None else False


def model_answerer(lm, task: Task, *, temperature: float, max_new_tokens: int, kv_cache: str = "auto",
                   compile: bool = False):
    """answer(sources, sample_seed) -> Answers: one batched `sample_answers` call per step
    (kv_cache, compile: its decode loop, see `dbgpu.sampling`).

    Prompt ids are computed once per state (chat templates are slow). Answers that can no
    longer become a state are abandoned as soon as that is certain (`cannot_become_a_state`):
    the log then holds their text up to that point, and they are rejected as they would
    have been anyway; the batch decodes only the answers still open.
    """
    import torch

    from dbgpu.formatting import prompt_ids as encode_prompt
    from dbgpu.formatting import stop_token_ids
    from dbgpu.sampling import sample_answers

    tok = lm.tokenizer
    stop_ids = stop_token_ids(tok, lm.model)
    prompt_ids: dict[str, list[int]] = {}

    def give_up(rows: list[list[int]]) -> list[bool]:                          # rows: (L, t) ids so far
        return [cannot_become_a_state(task, t) for t in tok.batch_decode(rows, skip_special_tokens=False)]

    def answer(sources: list[str], sample_seed: int) -> Answers:
        for f in sources:
            if f not in prompt_ids:
                prompt_ids[f] = encode_prompt(tok, task, f)
        gen = torch.Generator(device=lm.device).manual_seed(sample_seed)
        samples = sample_answers(lm.model, [prompt_ids[f] for f in sources], temperature=temperature,
                                 max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                                 pad_id=tok.pad_token_id, generator=gen,
                                 give_up=give_up if hasattr(task, "hopeless") else None,
                                 kv_cache=kv_cache, compile=compile)
        return Answers(texts=tok.batch_decode([s.ids for s in samples], skip_special_tokens=False),
                       stopped=[s.stopped for s in samples],
                       tokens=sum(len(s.ids) + s.stopped for s in samples))

    return answer


# --------------------------------------------------------------------------- the log


@dataclass
class LogScan:
    records: list[dict]         # the complete steps' records, in order
    keep_bytes: int             # file size up to the end of the last complete step
    size: int                   # the file's size
    cut_lines: int              # complete lines of an incomplete last step
    cut_tail: int               # bytes of an unterminated last line
    next_step: int              # the number of complete steps

    @property
    def needs_repair(self) -> bool:
        return self.keep_bytes != self.size


def _check_record(rec, i: int, *, batch: int, path: Path) -> None:
    where = f"{path} line {i + 1}"
    if not isinstance(rec, dict):
        raise DbgpuError(f"{where} is not a JSON object")
    for key, kind in (("source", str), ("answer", str), ("step", int), ("slot", int)):
        if not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
            raise DbgpuError(f"{where} has no {kind.__name__} {key!r}")
    t = rec.get("target", 0)
    if t is not None and not isinstance(t, str):
        raise DbgpuError(f"{where}: 'target' must be a string or null")
    if (t is None) != (rec.get("rejected") is True):
        raise DbgpuError(f"{where}: a null target must come with \"rejected\": true and only then")
    if (rec["step"], rec["slot"]) != divmod(i, batch):
        raise DbgpuError(f"{where}: expected step {i // batch} slot {i % batch} (batch {batch}), "
                         f"found step {rec['step']} slot {rec['slot']}")


def scan_log(path: Path, *, batch: int) -> LogScan:
    """Read and check transitions.jsonl; find how much of it is whole steps.

    An unterminated last line and an incomplete last step are left to the caller to
    cut (`repair_log`); any malformed or out-of-order complete line is an error.
    """
    lines = read_jsonl(path, what="transitions log", missing_ok=True)
    for i, rec in enumerate(lines.records):
        if rec is None:
            raise DbgpuError(f"{path} line {i + 1} is blank: the log is corrupt")
        _check_record(rec, i, batch=batch, path=path)
    n = len(lines.records)
    whole = n - n % batch
    keep = lines.ends[whole - 1] if whole else 0
    return LogScan(lines.records[:whole], keep, lines.size, n - whole, lines.tail, whole // batch)


def repair_log(path: Path, scan: LogScan) -> str:
    """Cut the log back to its last complete step; a line saying what was cut."""
    try:
        with open(path, "r+b") as f:
            f.truncate(scan.keep_bytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise os_error(path, e, doing="repair") from None
    parts = []
    if scan.cut_tail:
        parts.append(f"an unterminated last line ({scan.cut_tail} bytes)")
    if scan.cut_lines:
        parts.append(f"{scan.cut_lines} lines of the incomplete step {scan.next_step}")
    return " and ".join(parts)


def append_records(f, records: list[dict]) -> None:
    """Append one step's lines to an unbuffered binary file, then fsync: the step is on
    disk whole, or (a failed write: a full disk, EIO; an interrupt) cut back to where it
    began, so the log always ends at a complete step. A failed write is a DbgpuError
    naming the file."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    start = f.seek(0, os.SEEK_END)
    try:
        write_all(f.fileno(), data)
        os.fsync(f.fileno())
    except BaseException as e:
        try:
            os.ftruncate(f.fileno(), start)
            os.fsync(f.fileno())
        except OSError:
            pass                                    # a resume repairs what is left
        if isinstance(e, OSError):
            raise os_error(f.name, e, doing="append to") from None
        raise


# --------------------------------------------------------------------------- settings


def run_settings(*, model: str, task: Task, protocol: str, batch: int, start: str, temperature: float,
                 max_new_tokens: int, seed: int) -> dict:
    return {"model": model, "task": task_spec(task), "template": getattr(task, "template", None),
            "answer_prefix": task.answer_prefix, "protocol": protocol, "batch": batch, "start": start,
            "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}


def check_same_settings(stored: dict, new: dict, *, path: Path) -> None:
    """A resume must repeat the settings the directory was started with."""
    for key in BINDING:
        if stored.get(key) != new[key]:
            if key in ("template", "answer_prefix"):
                what = f"a different {key.replace('_', ' ')}"
            else:
                what = f"{key} {stored.get(key)!r}, not {new[key]!r}"
            raise DbgpuError(f"{path.parent} was explored with {what} ({path.name}); "
                             f"repeat its settings or use another --out")


def read_settings(out: Path) -> dict | None:
    path = out / SETTINGS_NAME
    if not path.exists():
        if (out / LOG_NAME).exists():
            raise DbgpuError(f"{out / LOG_NAME} has no {SETTINGS_NAME} beside it: "
                             f"not a dbgpu explore directory")
        return None
    doc = read_json(path, what="explore settings")
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        raise DbgpuError(f"{path} has no 'settings' object")
    return doc


def check_start(task: Task, start: str | None) -> str:
    s = task.check_state(task.start_state if start is None else start)
    if not task.valid(s):
        raise DbgpuError(f"start state {s} is not a valid state of task {task.name}")
    return s


# --------------------------------------------------------------------------- reading a run


def read_run(path: str | Path) -> tuple[dict, list[dict]]:
    """(settings, records of the complete steps) of an explore directory (or its log file)."""
    p = Path(path)
    out = p.parent if p.suffix == ".jsonl" else p
    if not out.is_dir():
        raise DbgpuError(f"explore directory not found: {out}")
    doc = read_settings(out)
    if doc is None:
        raise DbgpuError(f"{out} has no {SETTINGS_NAME}: not a dbgpu explore directory")
    batch = doc["settings"].get("batch")
    if not isinstance(batch, int) or batch < 1:
        raise DbgpuError(f"{out / SETTINGS_NAME} has no valid 'batch'")
    return doc["settings"], scan_log(out / LOG_NAME, batch=batch).records


def visited_states(records: list[dict], *, start: str, task: Task, min_count: int = 0) -> list[tuple[str, int]]:
    """The discovered valid states with their counts (accepted answers landing on them),
    most answered first, ties in order of discovery; those answered fewer than
    `min_count` times are left out (the start state counts only its answers too)."""
    discovered = dict.fromkeys([start] + [r["target"] for r in records if r["target"] is not None])
    counts = Counter(r["target"] for r in records if r["target"] is not None)
    order = [s for s in discovered if s != task.invalid_state and task.valid(s)]
    ranked = sorted(order, key=lambda s: -counts[s])          # stable: ties keep discovery order
    return [(s, counts[s]) for s in ranked if counts[s] >= min_count]


