"""`dbgpu discover`: every answer of probability >= EPS from each state, to closure.

    dbgpu discover --model M --task T --min-prob EPS --out DIR [--start S | --states FILE]
                   [--max-states N] [--max-depth D] [--batch B]

The enumeration itself is `dbgpu.discover`; this module checks the options and the
directory, loads the model, searches the sources batch by batch (the valid states in
order of discovery, starts first), and writes:

- answers.jsonl: one line per complete answer found (append-only), in source order and,
  within a source, most probable first: source, answer (raw text, end-of-turn token
  excluded, as explore writes it), logprob (natural log, float64), target (the parsed
  state, the invalid state, or null when rejected), ids (its tokens), stop (the token that
  ended it), canonical (whether ids are the tokenizer's own tokens of prompt + answer +
  stop, i.e. what `score` would score for that text);
- discovered.json: the settings, per searched source where its mass went
  (`discover.source_masses`), the states in order of discovery, which were searched,
  whether the set is closed, and one record per call;
- states.json: the valid states found, in order of discovery, for `score --states`.

Resume: a batch's lines are appended in one write + fsync, then discovered.json (which
names the searched sources) is replaced atomically; a second call cuts answers.jsonl back
to the lines of the sources discovered.json names (said on stderr) and searches on. A
kill -9 loses at most the batch in progress; batches are formed from the searched
sources alone, so the resumed run writes what an uninterrupted one writes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError, check_temperature
from dbgpu.io import check_out_dir, locked_dir, os_error, read_json, read_jsonl, utc_now, write_json_atomic

ANSWERS = "answers.jsonl"
DISCOVERED = "discovered.json"
STATES = "states.json"
DEFAULT_BATCH = 4
BINDING = ("model", "task", "template", "answer_prefix", "temperature", "min_prob", "max_depth", "starts")


def check_discover_options(*, min_prob: float, temperature: float, max_depth: int, max_states: int | None,
                  batch: int) -> None:
    if not (isinstance(min_prob, (int, float)) and 0 < min_prob <= 1):
        raise DbgpuError(f"--min-prob must be in (0, 1], got {min_prob}")
    check_temperature(temperature)
    if max_depth < 1:
        raise DbgpuError(f"--max-depth must be at least 1, got {max_depth}")
    if max_states is not None and max_states < 1:
        raise DbgpuError(f"--max-states must be at least 1, got {max_states}")
    if batch < 1:
        raise DbgpuError(f"--batch must be at least 1, got {batch}")


def check_starts(task, starts: list[str] | None) -> list[str]:
    """The sources to start from: canonical, valid, no repeats (default: the task's start state)."""
    from dbgpu.explore import check_start

    out = [check_start(task, s) for s in (starts or [None])]
    if len(set(out)) != len(out):
        raise DbgpuError("a start state appears twice")
    return out


def settings_of(*, model: str, task, temperature: float, min_prob: float, max_depth: int, starts: list[str]) -> dict:
    from dbgpu.tasks import task_spec

    return {"model": model, "task": task_spec(task), "template": getattr(task, "template", None),
            "answer_prefix": task.answer_prefix, "temperature": temperature, "min_prob": min_prob,
            "max_depth": max_depth, "starts": starts}


def read_discover_run(out: Path, settings: dict) -> dict | None:
    """discovered.json of a run directory, checked against this call's settings (None: a new run)."""
    path = out / DISCOVERED
    if not path.exists():
        if (out / ANSWERS).exists() and (out / ANSWERS).stat().st_size:
            raise DbgpuError(f"{out / ANSWERS} has no {DISCOVERED} beside it: not a dbgpu discover directory")
        return None
    doc = read_json(path, what="discover record")
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict) \
            or not isinstance(doc.get("sources"), dict):
        raise DbgpuError(f"{path} is not a dbgpu discover record")
    for key in BINDING:
        if doc["settings"].get(key) != settings[key]:
            raise DbgpuError(f"{out} was discovered with {key} {doc['settings'].get(key)!r}, not "
                             f"{settings[key]!r} ({DISCOVERED}); repeat its settings or use another --out")
    return doc


def committed_bytes(out: Path, doc: dict | None) -> tuple[int, int, int]:
    """(bytes of answers.jsonl that belong to the sources discovered.json names, the file's
    size, lines after them). Lines of searched sources come first, in order, as many as
    recorded; anything else there is corruption (a one-line error)."""
    path = out / ANSWERS
    lines = read_jsonl(path, what="answers log", missing_ok=True)
    expected = [(f, rec["answers"]) for f, rec in (doc or {}).get("sources", {}).items()]
    n = sum(k for _, k in expected)
    if len(lines.records) < n:
        raise DbgpuError(f"{path} holds {len(lines.records)} complete lines but {DISCOVERED} records {n}: "
                         "the directory is corrupt")
    i = 0
    for f, k in expected:
        for r in lines.records[i:i + k]:
            if not isinstance(r, dict) or r.get("source") != f:
                raise DbgpuError(f"{path} line {i + 1}: expected an answer of {f}; the directory is corrupt")
            i += 1
    return (lines.ends[n - 1] if n else 0), lines.size, len(lines.records) - n


def cut_back(out: Path, keep: int) -> None:
    path = out / ANSWERS
    try:
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise os_error(path, e, doing="repair") from None


def _records(lm, task, source: str, prompt: str, own: list[int], enum, *, eot: dict) -> tuple[list[dict], list]:
    """answers.jsonl lines of one source (most probable first), and the targets of the
    enumeration's answers in its own order (what `source_masses` takes)."""
    tok = lm.tokenizer
    order = np.argsort(-enum.logprob, kind="stable")
    ids = [enum.ids[i] for i in order]
    stops = [enum.stop[i] for i in order]
    texts = tok.batch_decode(ids, skip_special_tokens=False) if ids else []
    stop_texts = [eot[s] for s in stops]
    joint = tok([prompt + t + s for t, s in zip(texts, stop_texts)], add_special_tokens=False).input_ids if ids else []
    from dbgpu.discover import answer_target

    targets = [answer_target(task, t) for t in texts]
    recs = [{"source": source, "answer": t, "logprob": float(enum.logprob[i]), "target": g, "ids": x,
             "stop": st, "canonical": j == own + x + [s]}
            for t, i, g, x, st, j, s in zip(texts, order, targets, ids, stop_texts, joint, stops)]
    by_index = [None] * len(targets)                   # the targets in the enumeration's own order
    for i, g in zip(order, targets):
        by_index[i] = g
    return recs, by_index


def summary_of(doc: dict) -> dict:
    """Figures of the whole run: states, searched, closed, the mass bound per source."""
    src = doc["sources"]
    ne = np.array([r["not_enumerated"] for r in src.values()]) if src else np.zeros(0)
    valid = np.array([r["valid"] for r in src.values()]) if src else np.zeros(0)
    depth = max([r["depth"] for r in src.values()] + [0])
    stat = lambda a, f: float(f(a)) if len(a) else None  # noqa: E731
    return {"states": len(doc["states"]), "searched": len(doc["searched"]),
            "pending": len(doc["states"]) - len(doc["searched"]), "closed": doc["closed"],
            "answers": int(sum(r["answers"] for r in src.values())), "depth": depth,
            "not_enumerated_median": stat(ne, np.median), "not_enumerated_worst": stat(ne, np.max),
            "valid_median": stat(valid, np.median), "valid_worst": stat(valid, np.min)}


def discover_summary_text(s: dict, call: dict, *, out: Path) -> str:
    g = lambda x: "n/a" if x is None else f"{x:.3g}"  # noqa: E731
    return "\n".join([
        f"searched {call['sources']} sources in {call['seconds']:.1f} s ({call['stats']['forwards']} forwards, "
        f"{call['stats']['tokens']} token positions); {s['answers']} answers >= eps in all",
        f"{s['states']} valid states, {s['searched']} searched, {s['pending']} pending"
        + (" (closed)" if s["closed"] else "") + f"; deepest answer or prefix {s['depth']} tokens",
        f"mass not enumerated per source: median {g(s['not_enumerated_median'])}, worst "
        f"{g(s['not_enumerated_worst'])}; on valid states: median {g(s['valid_median'])}, least "
        f"{g(s['valid_worst'])}",
        f"-> {out / ANSWERS}, {out / DISCOVERED}, {out / STATES}",
    ])


def kernel_matrix(states: list[str], lines: list[dict]) -> np.ndarray:
    """log T (N, N) float64 of the found answers: T(f, g) = the sum of the probabilities of
    every answer found from f that parses to g (every surface form and token sequence of g
    >= eps); -inf where none was found. A lower bound on the agent's kernel."""
    index = {s: i for i, s in enumerate(states)}
    T = np.zeros((len(states), len(states)), dtype=np.float64)
    rows = [(index[x["source"]], index[x["target"]], x["logprob"]) for x in lines
            if x["source"] in index and x["target"] in index]
    if rows:
        f, g, lp = (np.array(c) for c in zip(*rows))
        np.add.at(T, (f.astype(np.int64), g.astype(np.int64)), np.exp(lp.astype(np.float64)))
    with np.errstate(divide="ignore"):
        return np.log(T)


def write_kernel(out: Path, doc: dict, lm, task) -> Path:
    """out/kernel: a score directory (the `score` contract; `fit` takes it) of the lower-bound
    kernel on the searched valid states, its meta.json naming the kind and the mass bound."""
    from dbgpu.data import write_score_dir
    from dbgpu.formatting import continuation_text, prompt_text
    from dbgpu.version import __version__

    states = [s for s in doc["searched"] if s != task.invalid_state and task.valid(s)]
    if not states:
        raise DbgpuError("no valid state has been searched yet: there is no kernel to write")
    lines = read_jsonl(out / ANSWERS, what="answers log").records
    logT = kernel_matrix(states, lines)
    s, ne = doc["settings"], np.array([doc["sources"][f]["not_enumerated"] for f in states])
    bound = f"mass not enumerated per source: median {np.median(ne):.3g}, worst {ne.max():.3g}"
    meta = {"model": s["model"], "resolved": getattr(lm, "resolved", None), "task": s["task"],
            "template": s["template"], "answer_prefix": s["answer_prefix"], "temperature": s["temperature"],
            "dtype": str(lm.dtype).removeprefix("torch."), "device": str(lm.device),
            "method": f"discover lower-bound (every answer >= {s['min_prob']:g}; {bound})",
            "surface_forms": {"mode": "all found (>= eps)"}, "kernel": "discover lower bound", "min_prob": s["min_prob"],
            "max_depth": s["max_depth"], "not_enumerated": dict(zip(states, ne.tolist())),
            "closed": doc["closed"], "created": utc_now(), "versions": {"dbgpu": __version__}}
    prompts = {"sources": {f: prompt_text(lm.tokenizer, task, f) for f in states},
               "targets": {g: continuation_text(lm.tokenizer, task, g) for g in states}}
    return write_score_dir(out / "kernel", states, logT, prompts=prompts, meta=meta)


def discover_job(*, model: str, task, min_prob: float, out: str | Path, starts: list[str] | None = None,
                 temperature: float = 1.0, max_states: int | None = None, max_depth: int | None = None,
                 batch: int = DEFAULT_BATCH, device="auto", dtype="auto", cache_dir=None,
                 placement: dict | None = None, progress: bool = True, lm=None, kernel: bool = False,
                 stop_after: int | None = None, after_append=None) -> dict:
    """Search sources to closure (or max_states searched), appending to out/answers.jsonl and
    continuing a run already there. Returns this call's record with the run's summary.

    max_depth None: the task's `max_new_tokens` (explore's answer length) or 10.
    kernel: also write out/kernel, the lower-bound kernel as a score directory (`write_kernel`).
    stop_after: end the call after this many batches (a deterministic stop point, for
    tests and for a budget); after_append(): called once a batch's lines are on disk,
    before discovered.json names them (tests put a crash there)."""
    from dbgpu.discover import Closure, DepthStats, enumerate_answers, source_masses
    from dbgpu.explore import DEFAULT_MAX_NEW_TOKENS, append_records, cannot_become_a_state

    if max_depth is None:
        max_depth = getattr(task, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    check_discover_options(min_prob=min_prob, temperature=temperature, max_depth=max_depth, max_states=max_states,
                  batch=batch)
    starts = check_starts(task, starts)
    out = check_out_dir(out)
    settings = settings_of(model=model, task=task, temperature=temperature, min_prob=min_prob,
                           max_depth=max_depth, starts=starts)
    committed_bytes(out, read_discover_run(out, settings))              # before the lock: a refused call writes nothing
    with locked_dir(out):
        doc = read_discover_run(out, settings)
        keep, size, extra = committed_bytes(out, doc)
        if keep != size:
            cut_back(out, keep)
            print(f"dbgpu discover: repaired {out / ANSWERS}: cut {extra} lines and {size - keep} bytes of a "
                  "batch that was not finished; searching it again", file=sys.stderr)
        if lm is None:
            from dbgpu.models import load_model

            lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir, **(placement or {}))
        if doc is None:
            doc = {"settings": settings, "created": utc_now(), "states": list(starts), "searched": [],
                   "found_by": {}, "sources": {}, "closed": False, "calls": []}
        closure = Closure(states=list(doc["states"]), searched=list(doc["searched"]), found_by=dict(doc["found_by"]))
        call = _search(lm, task, closure, doc, out=out, settings=settings, max_states=max_states, batch=batch,
                       progress=progress, stop_after=stop_after, after_append=after_append,
                       enumerate_answers=enumerate_answers, source_masses=source_masses, stats=DepthStats(),
                       append_records=append_records, hopeless_text=cannot_become_a_state)
        if kernel:
            call["kernel"] = str(write_kernel(out, doc, lm, task))
    return {**call, "summary": doc["summary"], "states": list(doc["states"]), "out": str(out)}


def _search(lm, task, closure, doc: dict, *, out: Path, settings: dict, max_states, batch: int, progress: bool,
            stop_after, after_append, enumerate_answers, source_masses, stats, append_records, hopeless_text) -> dict:
    """The batches of one call: enumerate, append the lines, record the sources in discovered.json."""
    from dbgpu.console import progress as progress_bar
    from dbgpu.formatting import prompt_text, stop_token_ids
    from dbgpu.provenance import environment, model_record

    tok = lm.tokenizer
    stop_ids = stop_token_ids(tok, lm.model)
    eot = {s: tok.convert_ids_to_tokens(s) for s in stop_ids}
    hopeless = None
    if hasattr(task, "hopeless"):
        def hopeless(paths: list[list[int]]) -> list[bool]:                   # (n, d) ids so far
            return [hopeless_text(task, t) for t in tok.batch_decode(paths, skip_special_tokens=False)]
    call = {"first_source": len(closure.searched), "sources": 0, "batches": 0, "device": str(lm.device),
            "dtype": str(lm.dtype).removeprefix("torch."), "started": utc_now(), "max_states": max_states,
            "batch": batch, "provenance": environment(lm.device), "model_record": model_record(lm)}
    bar = progress_bar(total=0, enabled=progress, desc="discovering", unit="source")
    t0 = time.perf_counter()
    try:
        with open(out / ANSWERS, "ab", buffering=0) as f:
            while stop_after is None or call["batches"] < stop_after:
                sources = closure.next_sources(batch, max_states=max_states)
                if not sources:
                    break
                prompts = [prompt_text(tok, task, s) for s in sources]
                ids = tok(prompts, add_special_tokens=False).input_ids
                enums = enumerate_answers(lm.model, ids, min_prob=settings["min_prob"],
                                          temperature=settings["temperature"], max_depth=settings["max_depth"],
                                          stop_ids=stop_ids, hopeless=hopeless, pad_id=tok.pad_token_id or 0,
                                          stats=stats)
                lines, per_source = [], []
                for s, p, x, e in zip(sources, prompts, ids, enums):          # B sources
                    recs, targets = _records(lm, task, s, p, x, e, eot=eot)
                    lines += recs
                    per_source.append((s, source_masses(task, s, e, targets), targets))
                if lines:
                    append_records(f, lines)
                if after_append is not None:
                    after_append()
                for s, masses, targets in per_source:
                    valid = [g for g in targets if g is not None and g != task.invalid_state and task.valid(g)]
                    masses["new_states"] = closure.absorb(s, valid)
                    doc["sources"][s] = masses
                _commit(out, doc, closure)
                call["sources"] += len(sources)
                call["batches"] += 1
                bar.total = len(closure.states)
                bar.update(len(sources))
    finally:
        bar.close()
        call["seconds"] = time.perf_counter() - t0
        call["stats"] = stats.as_dict()
        doc["calls"].append(call)
        _commit(out, doc, closure)
    return call


def _commit(out: Path, doc: dict, closure) -> None:
    """discovered.json, then states.json (both atomic): discovered.json is the record of what is done."""
    doc["states"], doc["searched"], doc["found_by"] = list(closure.states), list(closure.searched), \
        dict(closure.found_by)
    doc["closed"] = closure.closed
    doc["summary"] = summary_of(doc)
    write_json_atomic(out / DISCOVERED, doc)
    write_json_atomic(out / STATES, list(closure.states))
