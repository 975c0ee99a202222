"""`dbgpu explore`: run the sampling agent for K steps, appending to DIR/transitions.jsonl.

The agent itself (protocols, classification, the log format, resume and repair) is
`dbgpu.explore`; this module checks the options and the directory, loads the model,
runs the steps, and records each call in explore.json with its summary.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dbgpu.errors import DbgpuError, check_temperature
from dbgpu.explore import (DEFAULT_BATCH, DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, LOG_NAME, PROTOCOLS,
                           SETTINGS_NAME, Frontier, Step, append_records, check_same_settings, check_start,
                           model_answerer, read_settings, repair_log, run_settings, run_steps, scan_log)
from dbgpu.io import check_out_dir, locked_dir, utc_now, write_json_atomic
from dbgpu.tasks import Task


@dataclass
class Tally:
    """Counts over one call, for the end-of-run summary."""

    invalid_state: str | None
    answers: int = 0
    tokens: int = 0
    seconds: float = 0.0
    why: Counter = field(default_factory=Counter)
    invalid: int = 0
    self_loops: int = 0             # accepted transitions f -> f (INVALID00 -> INVALID00)
    new_states: list[str] = field(default_factory=list)

    def add(self, step: Step, new: list[str]) -> None:
        self.answers += len(step.records)
        self.tokens += step.tokens
        self.why.update(w for w in step.why if w is not None)
        self.invalid += sum(r["target"] is not None and r["target"] == self.invalid_state for r in step.records)
        self.self_loops += sum(r["target"] == r["source"] for r in step.records)
        self.new_states += new

    def as_dict(self) -> dict:
        n = max(self.answers, 1)
        rejected = sum(self.why.values())
        return {
            "answers": self.answers,
            "rejected": rejected / n,
            "rejected_truncated": self.why["truncated"] / n,
            "rejected_not_parsed": self.why["not_parsed"] / n,
            "rejected_same_as_source": self.why["same_as_source"] / n,
            "invalid": self.invalid / n,
            "self_transitions": (self.why["same_as_source"] + self.self_loops) / n,
            "new_states": len(self.new_states),
            "new_state_fraction": len(self.new_states) / n,
            "seconds": self.seconds,
            "answers_per_second": self.answers / self.seconds if self.seconds else None,
            "tokens_per_second": self.tokens / self.seconds if self.seconds else None,
            "generated_tokens": self.tokens,
        }


def summary_text(s: dict, *, steps: tuple[int, int], n_discovered: int, path: Path) -> str:
    """The end-of-call report, a few lines."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rate = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    return "\n".join([
        f"steps {steps[0]}..{steps[1] - 1}: {s['answers']} answers in {s['seconds']:.1f} s, "
        f"{rate(s['answers_per_second'])} answers/s, {rate(s['tokens_per_second'])} generated tokens/s",
        f"rejected {pct(s['rejected'])} (truncated {pct(s['rejected_truncated'])}, "
        f"not a state {pct(s['rejected_not_parsed'])}, same as source {pct(s['rejected_same_as_source'])})",
        f"invalid {pct(s['invalid'])}; self-transitions {pct(s['self_transitions'])} "
        f"(same-as-source answers included); new states {s['new_states']} ({pct(s['new_state_fraction'])})",
        f"{n_discovered} states discovered in all -> {path}",
    ])


def check_options(*, steps: int, batch: int, protocol: str, temperature: float, max_new_tokens: int,
                  seed: int) -> None:
    if steps < 1:
        raise DbgpuError(f"--steps must be at least 1, got {steps}")
    if batch < 1:
        raise DbgpuError(f"--batch must be at least 1, got {batch}")
    if protocol not in PROTOCOLS:
        raise DbgpuError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    check_temperature(temperature)
    if max_new_tokens < 1:
        raise DbgpuError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if seed < 0:
        raise DbgpuError(f"--seed must be non-negative, got {seed}")


def _check_run(out: Path, settings: dict, *, batch: int):
    """(explore.json's document or None, the log's scan) of a run directory, checked
    against this call's settings."""
    stored = read_settings(out)
    if stored is not None:
        check_same_settings(stored["settings"], settings, path=out / SETTINGS_NAME)
    return stored, scan_log(out / LOG_NAME, batch=batch)


def _open_run(out: Path, settings: dict, scan, doc: dict | None) -> dict:
    """Create the directory, cut a crashed call's partial step (said on stderr), and
    write explore.json on a first call (`doc` None). Returns explore.json's document."""
    log = out / LOG_NAME
    if scan.needs_repair:
        print(f"dbgpu explore: repaired {log}: cut {repair_log(log, scan)}; "
              f"running step {scan.next_step} again", file=sys.stderr)
    if doc is None:
        doc = {"settings": settings, "created": utc_now(), "calls": []}
        write_json_atomic(out / SETTINGS_NAME, doc)
    return doc


def _explore_steps(task: Task, frontier: Frontier, answer, *, log: Path, protocol: str, seed: int, steps: range,
         batch: int, call: dict, tally: Tally, progress: bool) -> None:
    """The steps, each appended to the log (one write + fsync per step) as it ends; `call`
    and `tally` count what was done, also when interrupted."""
    from dbgpu.console import progress as progress_bar

    bar = progress_bar(total=len(steps) * batch, enabled=progress, desc="exploring", unit="answer")
    t0 = time.perf_counter()
    try:
        with open(log, "ab", buffering=0) as f:
            for result, new in run_steps(task, frontier, protocol=protocol, seed=seed, steps=steps, answer=answer):
                append_records(f, result.records)
                tally.add(result, new)
                call["steps"] += 1
                bar.update(batch)
                bar.set_postfix(states=len(frontier.discovered), refresh=False)
    finally:
        bar.close()
        tally.seconds = time.perf_counter() - t0


def _record_call(out: Path, doc: dict, call: dict, tally: Tally) -> None:
    """This call, with what it did, appended to explore.json (atomically)."""
    call["summary"] = tally.as_dict()
    doc["calls"].append(call)
    write_json_atomic(out / SETTINGS_NAME, doc)


def explore_job(*, model: str, task: Task, steps: int, out: str | Path, protocol: str = "paper",
                batch: int = DEFAULT_BATCH, start: str | None = None,
                temperature: float = DEFAULT_TEMPERATURE, max_new_tokens: int | None = None,
                seed: int = 0, device="auto", dtype="auto", cache_dir=None, placement: dict | None = None,
                progress: bool = True, lm=None, kv_cache: str = "auto") -> dict:
    """Run `steps` steps of `batch` queries, appending to out/transitions.jsonl (continuing
    a run already there). Returns this call's record: steps done, summary, discovered states.
    `max_new_tokens` None: the task's own `max_new_tokens` if it has one, else 10. placement:
    big-model dispatch options for `load_model` (device_map, max_memory, offload_dir).
    kv_cache: the sampler's decode loop (auto: static on CUDA, dynamic elsewhere; recorded
    in the call's record, not a binding setting)."""
    from dbgpu.formatting import TEMPLATE_DATE
    from dbgpu.sampling import KV_CACHES
    from dbgpu.provenance import environment, model_record

    if max_new_tokens is None:
        max_new_tokens = getattr(task, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS)

    # Everything that can be wrong with the input is checked before anything is written.
    check_options(steps=steps, batch=batch, protocol=protocol, temperature=temperature,
                  max_new_tokens=max_new_tokens, seed=seed)
    start = check_start(task, start)
    if kv_cache not in KV_CACHES:
        raise DbgpuError(f"unknown --kv-cache {kv_cache!r} (use {', '.join(KV_CACHES)})")
    out = check_out_dir(out)
    settings = run_settings(model=model, task=task, protocol=protocol, batch=batch, start=start,
                            temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    _check_run(out, settings, batch=batch)          # before the lock: a refused call writes nothing
    with locked_dir(out):
        stored, scan = _check_run(out, settings, batch=batch)   # again, as the only writer now
        if lm is None:
            from dbgpu.models import load_model

            lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir, **(placement or {}))
        doc = _open_run(out, settings, scan, stored)
        frontier = Frontier(start=start, batch=batch, invalid_state=task.invalid_state)
        frontier.absorb(scan.records)
        first = scan.next_step
        call = {"first_step": first, "steps": 0, "device": str(lm.device),
                "dtype": str(lm.dtype).removeprefix("torch."), "started": utc_now(),
                "provenance": environment(lm.device), "model_record": model_record(lm),
                "chat_template_date": TEMPLATE_DATE.isoformat()}
        from dbgpu.sampling import resolve_kv_cache

        call["kv_cache"] = resolve_kv_cache(kv_cache, lm.device)
        answer = model_answerer(lm, task, temperature=temperature, max_new_tokens=max_new_tokens,
                                kv_cache=call["kv_cache"])
        tally = Tally(invalid_state=task.invalid_state)
        try:
            _explore_steps(task, frontier, answer, log=out / LOG_NAME, protocol=protocol, seed=seed,
                 steps=range(first, first + steps), batch=batch, call=call, tally=tally, progress=progress)
        except BaseException:
            with contextlib.suppress(DbgpuError):   # the first error is the one to report
                _record_call(out, doc, call, tally)
            raise
        _record_call(out, doc, call, tally)
    return {**call, "discovered": list(frontier.discovered), "log": str(out / LOG_NAME)}
