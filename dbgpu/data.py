"""Transitions and kernels in, weighted edges out.

Two kinds of input, each read into a small frozen record of plain numpy values:

- `Transitions` (sampled): the paper's two JSON shapes and `transitions.jsonl` from
  `dbgpu explore`. Distinct directed edges `(src, dst)` between distinct states with
  their counts `N(f->g)`, and per-source visits `n_f` (every query from `f`,
  self-transitions and invalid answers included).
- `Kernel` (exact): a `dbgpu score` directory, `states.json` + `logT.npy`
  (row = source f, column = target g); `write_score_dir` writes that format.

The weight functions turn either into `Edges`, the weighted directed graph that the fit
and the statistics consume (self-transitions never appear in it):

- `high_reject_weights`: the paper's `w = min(1, N/N0)`, `N0 = 20000 / n_states`.
  Misbehaves above 20,000 states: `N0 < 1`, so every observed edge gets `w = 1` and the
  counts no longer matter (the paper's own code drops every edge there). We compute the
  definition as written and warn.
- `low_reject_weights`: `w = min(1, N/N0)`, `N0` = out-count of f (its recorded
  transitions to other states, i.e. `w = N(f->g) / sum_g' N(f->g')`); every state with
  `N0 <= threshold` is dropped with all its edges (its potential is reported as null).
  With `threshold=0` (our default) nothing but states without out-transitions is
  dropped, and those have no out-edges anyway.
- `count_weights`: `w = N(f->g) / n_f`, the estimated kernel `T(f,g)`; the least-action
  fit is then a Bradley–Terry fit with fractional "wins" `T(f,g)`, which for an
  isolated pair gives exactly the reversible maximum-likelihood ratio. Caveat: the
  paper's JSON files record no rejected answer (self or invalid), so there `n_f` counts
  recorded answers only and `N/n_f` estimates T conditioned on a valid new state, which
  breaks detailed balance wherever that probability differs between states;
  `transitions.jsonl` keeps the null rows and gives the unconditioned T. (high_reject,
  whose `N0` is the same for every state, estimates T up to one constant when sources
  are drawn uniformly, as in the paper's protocol.)
- `exact_weights`: `w = T(f,g) = exp(logT)` for every pair with finite `logT`. `log_w` is
  the exact `logT`; where `exp` underflows float64 (logT < -745) `w` is 0 and the edge
  is counted in `Edges.n_underflow`: the fit and the statistics work from `log_w`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError, DbgpuWarning
from dbgpu.io import begin_outputs, check_outputs, finish_outputs, read_json, read_jsonl, write_json_atomic, write_npy_atomic

#: the paper's total number of queries, which sets `N0 = 20000 / n_states` in high_reject
PAPER_QUERIES = 20000


@dataclass(frozen=True)
class Transitions:
    """A sampled input: counts between distinct states, and visits per source."""

    states: list[str]      # (N,) in order of first appearance in the input
    src: np.ndarray        # (E,) int64, distinct edges, sorted by (src, dst), src != dst
    dst: np.ndarray        # (E,) int64
    count: np.ndarray      # (E,) int64 >= 1: N(f->g)
    visits: np.ndarray     # (N,) int64: n_f, every query from f (self and invalid included)
    n_self: int            # queries answered with the source itself
    n_invalid: int         # queries with a null target (rejected / invalid answer)
    kind: str              # "paper-json-1" | "paper-json-2" | "transitions-jsonl"


@dataclass(frozen=True)
class Kernel:
    """An exact kernel: log T(f, g) for every ordered pair of states."""

    states: list[str]      # (N,)
    logT: np.ndarray       # (N, N) float64, row = source f, column = target g
    kind: str = "score-dir"


@dataclass(frozen=True)
class Edges:
    """The weighted directed graph between distinct states that fit and stats use."""

    states: list[str]            # (N,) every state of the input, input order
    src: np.ndarray              # (E,) int64, sorted by (src, dst), no self edges
    dst: np.ndarray              # (E,) int64
    w: np.ndarray                # (E,) float64 > 0
    log_w: np.ndarray            # (E,) float64, log w computed without underflow
    count: np.ndarray | None     # (E,) int64 N(f->g) for sampled inputs, else None
    visits: np.ndarray | None    # (N,) int64 n_f for sampled inputs, else None
    kept: np.ndarray             # (N,) bool: False for states dropped by a threshold
    mode: str                    # "exact" | "high_reject" | "low_reject" | "counts"
    n_underflow: int = 0         # edges whose w = exp(log w) is 0 in float64 (log w finite)


# --------------------------------------------------------------------------- counting


def count_queries(states: list[str], src: np.ndarray, dst: np.ndarray, *, kind: str) -> Transitions:
    """Count one record per query: `src` (Q,) and `dst` (Q,) state indices, dst -1 for an
    invalid answer. O(Q log Q)."""
    n = len(states)
    visits = np.bincount(src, minlength=n).astype(np.int64)             # (N,)
    valid = dst >= 0
    self_ = valid & (src == dst)
    edge = valid & ~self_
    keys, count = np.unique(src[edge] * n + dst[edge], return_counts=True)  # sorted (src, dst)
    return Transitions(
        states=states, src=(keys // n).astype(np.int64), dst=(keys % n).astype(np.int64),
        count=count.astype(np.int64), visits=visits,
        n_self=int(self_.sum()), n_invalid=int((~valid).sum()), kind=kind,
    )


def transitions_from_pairs(sources: list[str], targets: list[str | None], *, kind: str,
                           order: list[str] | None = None) -> Transitions:
    """Count one record per query (`targets[k]` None = invalid answer).

    States are numbered in the order of `order` when given (names may repeat; the first
    occurrence counts), then by first appearance in the records, source before target.
    """
    # every name in order of first appearance, at C speed: dicts keep insertion order
    inter: list = [None] * (2 * len(sources))
    inter[0::2] = sources
    inter[1::2] = targets
    ids = dict.fromkeys(order or ())
    ids.update(dict.fromkeys(inter))
    ids.pop(None, None)
    ids = {name: i for i, name in enumerate(ids)}
    src = np.fromiter(map(ids.__getitem__, sources), np.int64, len(sources))      # (Q,)
    ids[None] = -1
    dst = np.fromiter(map(ids.__getitem__, targets), np.int64, len(targets))
    del ids[None]
    return count_queries(list(ids), src, dst, kind=kind)


# --------------------------------------------------------------------------- importers


def _is_str_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(t, str) for t in x)


def _paper_shape1(path, obj: dict) -> Transitions:
    """`{source: [target, ...]}` counted without building one Python string per answer
    twice: names numbered in document order (each source, then its targets), checked to
    be strings once each. O(answers)."""
    lists = list(obj.values())
    for s, ts in obj.items():
        if type(ts) is not list:
            raise DbgpuError(f"{path}: paper JSON shape 1 expects {{source: [target, ...]}}, "
                             f"but the value for {s!r} is not a list of strings")
    names = dict.fromkeys(chain.from_iterable((s, *ts) for s, ts in obj.items()))
    if not all(type(k) is str for k in names):
        bad = next(s for s, ts in obj.items() if not all(type(t) is str for t in ts))
        raise DbgpuError(f"{path}: paper JSON shape 1 expects {{source: [target, ...]}}, "
                         f"but the value for {bad!r} is not a list of strings")
    ids = {name: i for i, name in enumerate(names)}
    n_answers = sum(map(len, lists))
    dst = np.fromiter(map(ids.__getitem__, chain.from_iterable(lists)), np.int64, n_answers)
    src = np.repeat(np.fromiter(map(ids.__getitem__, obj), np.int64, len(obj)),
                    np.fromiter(map(len, lists), np.int64, len(lists)))
    return count_queries(list(ids), src, dst, kind="paper-json-1")


def read_paper_json(path: str | os.PathLike) -> Transitions:
    """Read either of the paper's JSON shapes.

    Shape 1: `{"SOURCE": ["TARGET", ...], ...}`, one list entry per sampled answer.
    Shape 2: `[{"target_expression": g, "target_score": s, "source_expressions":
    [{"expression": f, "score": s}, ...]}, ...]`, one transition per source entry.
    """
    obj = read_json(path, what="paper JSON file")
    if isinstance(obj, dict):
        return _paper_shape1(path, obj)
    if isinstance(obj, list):
        sources: list[str] = []
        targets: list[str] = []
        for k, row in enumerate(obj):
            if not (isinstance(row, dict) and isinstance(row.get("target_expression"), str)
                    and isinstance(row.get("source_expressions"), list)):
                raise DbgpuError(f"{path}: paper JSON shape 2 expects a list of "
                                 f"{{target_expression, source_expressions}}; entry {k} is not one")
            for s in row["source_expressions"]:
                if not (isinstance(s, dict) and isinstance(s.get("expression"), str)):
                    raise DbgpuError(f"{path}: entry {k}: every source_expressions item needs "
                                     f"a string 'expression'")
                sources.append(s["expression"])
                targets.append(row["target_expression"])
        return transitions_from_pairs(sources, targets, kind="paper-json-2")
    raise DbgpuError(f"{path}: unrecognised JSON shape: expected {{source: [targets]}} "
                     f"or [{{target_expression, source_expressions}}]")


def read_transitions_jsonl(path: str | os.PathLike) -> Transitions:
    """Read `transitions.jsonl` rows `{"source", "answer", "target", ...}`.

    `target` null (or `"rejected": true`) is an invalid answer: it counts toward the
    source's visits but is no edge. An unterminated last line is a write cut short (a
    crash): ignored with a warning unless it is a whole JSON object (a file that merely
    lacks its final newline). A terminated line that does not parse, or lacks a string
    'source', is corruption: an error naming the line.
    """
    lines = read_jsonl(path, what="transitions file")
    rows = list(enumerate(lines.records))
    if lines.tail:
        tail = Path(path).read_bytes()[lines.size - lines.tail:]
        try:
            rows.append((len(lines.records), json.loads(tail.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError):
            warnings.warn(f"{path}: ignoring the truncated last line {len(lines.records) + 1}", DbgpuWarning,
                          stacklevel=2)
    sources: list[str] = []
    targets: list[str | None] = []
    for i, row in rows:
        if row is None:                               # a blank line
            continue
        if not isinstance(row, dict) or not isinstance(row.get("source"), str):
            raise DbgpuError(f"{path}: line {i + 1} has no string 'source'")
        t = row.get("target")
        if t is not None and not isinstance(t, str):
            raise DbgpuError(f"{path}: line {i + 1}: 'target' must be a string or null")
        if row.get("rejected") is True:
            t = None
        sources.append(row["source"])
        targets.append(t)
    return transitions_from_pairs(sources, targets, kind="transitions-jsonl")


def read_score_dir(path: str | os.PathLike) -> Kernel:
    """Read a `dbgpu score` directory: `states.json` (N states) and `logT.npy` (N x N),
    after checking its manifest (`dbgpu.io.check_outputs`: whole or refused)."""
    path = Path(path)
    if not path.is_dir():
        raise DbgpuError(f"score directory not found: {path}")
    check_outputs(path, "score")
    states = read_json(path / "states.json", what="states file")
    check_states(states, where=path / "states.json")
    f = path / "logT.npy"
    if not f.is_file():
        raise DbgpuError(f"kernel file not found: {f}")
    try:
        logT = np.load(f, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/EOFError/OSError for bad files
        raise DbgpuError(f"cannot read {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return Kernel(states=list(states), logT=check_logT(logT, len(states), where=f))


def check_states(states, *, where) -> None:
    """A state list as a kernel needs it: strings, each once (`where` names it in errors)."""
    if not _is_str_list(states):
        raise DbgpuError(f"{where} must be a JSON list of state strings")
    if len(set(states)) != len(states):
        raise DbgpuError(f"{where} lists a state more than once")


def check_logT(logT: np.ndarray, n: int, *, where) -> np.ndarray:
    """A kernel's log T for n states: (n, n) floating point, no NaN or +inf; as float64."""
    if logT.ndim != 2 or logT.shape != (n, n):
        raise DbgpuError(f"{where} has shape {logT.shape}, expected ({n}, {n}) for {n} states")
    if not np.issubdtype(logT.dtype, np.floating):
        raise DbgpuError(f"{where} has dtype {logT.dtype}, expected float64")
    logT = logT.astype(np.float64, copy=False)
    if np.isnan(logT).any() or np.isposinf(logT).any():
        raise DbgpuError(f"{where} contains NaN or +inf")
    return logT


def write_score_dir(path: str | os.PathLike, states: list[str], logT: np.ndarray, *,
                    prompts: dict | None = None, meta: dict | None = None) -> Path:
    """The `dbgpu score` contract: states.json, logT.npy, then prompts.json and meta.json
    when given (meta.json last), each file written atomically, between `begin_outputs`
    and `finish_outputs` (the manifest: a crash leaves the directory unreadable as a
    finished score; an older fit or report there becomes stale)."""
    out = begin_outputs(path, "score", invalidates=("fit", "report", "explain"))
    write_json_atomic(out / "states.json", list(states))
    write_npy_atomic(out / "logT.npy", np.asarray(logT, dtype=np.float64))
    files = ["states.json", "logT.npy"]
    if prompts is not None:
        write_json_atomic(out / "prompts.json", prompts)
        files.append("prompts.json")
    if meta is not None:
        write_json_atomic(out / "meta.json", meta)
        files.append("meta.json")
    finish_outputs(out, "score", files)
    return out


def read_input(path: str | os.PathLike) -> Transitions | Kernel:
    """Read any input, telling its kind from the path.

    A directory is a score directory (needs `logT.npy` and `states.json`); `*.jsonl`
    is a transitions file; `*.json` is a paper JSON file (either shape).
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "logT.npy").exists():
            raise DbgpuError(f"{p} is a directory without logT.npy (expected a dbgpu score output)")
        return read_score_dir(p)
    if not p.exists():
        raise DbgpuError(f"input not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return read_transitions_jsonl(p)
    if suffix == ".json":
        return read_paper_json(p)
    raise DbgpuError(f"cannot tell the kind of input {p}: expected a paper .json file, "
                     f"a transitions .jsonl file or a score directory")


# --------------------------------------------------------------------------- weights


def _edges(t: Transitions, w: np.ndarray, log_w: np.ndarray, keep_edge: np.ndarray,
           kept: np.ndarray, mode: str) -> Edges:
    return Edges(states=t.states, src=t.src[keep_edge], dst=t.dst[keep_edge],
                 w=w[keep_edge], log_w=log_w[keep_edge], count=t.count[keep_edge],
                 visits=t.visits, kept=kept, mode=mode)


def high_reject_weights(t: Transitions, *, queries: int = PAPER_QUERIES) -> Edges:
    """The paper's high_reject: `w = min(1, N/N0)`, `N0 = queries / n_states`."""
    n = len(t.states)
    n0 = queries / n
    if n0 < 1:
        warnings.warn(f"high_reject with {n} states: N0 = {queries}/{n} = {n0:.3g} < 1 saturates "
                      f"every weight at 1 (counts ignored); consider --weights counts",
                      DbgpuWarning, stacklevel=2)
    ratio = t.count / n0                                           # (E,)
    w = np.minimum(1.0, ratio)
    log_w = np.minimum(0.0, np.log(t.count) - np.log(n0))
    return _edges(t, w, log_w, np.ones(len(w), bool), np.ones(n, bool), "high_reject")


def low_reject_weights(t: Transitions, *, threshold: float = 0) -> Edges:
    """The paper's low_reject: `N0` = out-count of f, states with `N0 <= threshold` dropped."""
    n = len(t.states)
    out = np.bincount(t.src, weights=t.count, minlength=n)         # (N,) N0 per state
    kept = out > threshold
    n0 = out[t.src]                                                # (E,)
    w = np.minimum(1.0, t.count / n0)
    log_w = np.minimum(0.0, np.log(t.count) - np.log(n0))
    keep_edge = kept[t.src] & kept[t.dst]
    return _edges(t, w, log_w, keep_edge, kept, "low_reject")


def count_weights(t: Transitions) -> Edges:
    """The estimated kernel `w = N(f->g) / n_f` (n_f = every query from f)."""
    n_f = t.visits[t.src].astype(np.float64)                       # (E,)
    w = t.count / n_f
    log_w = np.log(t.count) - np.log(n_f)
    return _edges(t, w, log_w, np.ones(len(w), bool), np.ones(len(t.states), bool), "counts")


def exact_weights(k: Kernel) -> Edges:
    """`w = T(f,g) = exp(logT)` on every off-diagonal pair with finite logT."""
    n = len(k.states)
    off = np.isfinite(k.logT)
    np.fill_diagonal(off, False)
    src, dst = np.nonzero(off)                                     # row-major: sorted (src, dst)
    log_w = k.logT[off]                                            # (E,) the same order
    return Edges(states=k.states, src=src.astype(np.int64), dst=dst.astype(np.int64),
                 w=np.exp(log_w), log_w=log_w, count=None, visits=None,
                 kept=np.ones(n, bool), mode="exact")


WEIGHT_MODES = ("paper", "counts")
REJECT_MODES = ("high", "low")


def make_edges(data: Transitions | Kernel, *, weights: str = "paper", reject: str = "high",
               threshold: float = 0) -> Edges:
    """Weight an input: exact kernels always use T; sampled inputs use `weights`
    ("paper" with `reject` "high"/"low", or "counts"). Raises DbgpuError on an unknown
    mode or when no edge between distinct states is left."""
    if weights not in WEIGHT_MODES:
        raise DbgpuError(f"unknown weights mode {weights!r} (expected one of {', '.join(WEIGHT_MODES)})")
    if reject not in REJECT_MODES:
        raise DbgpuError(f"unknown reject mode {reject!r} (expected one of {', '.join(REJECT_MODES)})")
    if len(data.states) == 0 or (isinstance(data, Transitions) and len(data.src) == 0):
        raise DbgpuError("empty graph: no transitions between distinct states "
                         f"({len(data.states)} states)")
    if isinstance(data, Kernel):
        e = exact_weights(data)
    elif weights == "counts":
        e = count_weights(data)
    elif reject == "high":
        e = high_reject_weights(data)
    else:
        e = low_reject_weights(data, threshold=threshold)
    # exp(log T) may underflow to 0 for a finite log T: the edge stays (log_w is exact) and
    # the fit works from log w; counted here, never clamped to a made-up weight
    e = replace(e, n_underflow=int(np.count_nonzero(e.w == 0)))
    if len(e.src) == 0:
        raise DbgpuError("empty graph: no transitions between distinct states "
                         f"({len(data.states)} states)")
    return e
