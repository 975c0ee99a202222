"""`--attention sparse` against `--attention dense`, alternately in one process, same model and states.

    python benchmarks/bench_attention_ab.py --model smollm2-135m --n 48 500 1608 --sources 0 8 8   # CPU table
    python benchmarks/bench_attention_ab.py --model random:qwen2-0.5b --device cuda --dtype bfloat16 --n 500 --sources 64
    python benchmarks/bench_attention_ab.py --model random:llama --n 6 --rounds 1                # smoke
    python benchmarks/bench_attention_ab.py --n 500 --sources 8 --reference 6   # + per-pair forwards

The model is loaded once. For each N (the task's first N seed states) the same scorer `dbgpu
score` runs per row block (`score_matrix(method="tree")`) scores K seeded sources (`--sources`,
0 = all N) against all N targets, once per attention path per round, alternating the order
(dense, sparse; then sparse, dense; ...) so that neither always runs warm or after the
other's allocations, after one small warm-up call of each. Reported per path: the fastest
round and the median, token positions, seconds per token position, peak memory, the keys a
query attends to, the plan's target chunks and rows per forward, and the largest |log T|
difference from dense (float32: the scorers' 2e-5 nats). `--reference K`: the independent
check, K x K seeded pairs (K of the sources, K seeded targets) each run as one unbatched
forward of prompt + continuation (`bench_score.per_pair_loop`, the same float32 head), with
the largest |log T| difference of dense, sparse and the plain scorer from it.

Peak memory: on CUDA, torch.cuda.max_memory_allocated over the call; on the CPU, the growth of
the process's resident set above its level before the call (sampled every 2 ms from
/proc/self/statm, after gc and malloc_trim so that memory freed by the previous call is
returned first); a lower bound on what the call allocated. Printed: device, dtype, threads
and versions; timings are this machine's, not asserted anywhere.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dbgpu.devices import resolve_device, resolve_dtype  # noqa: E402
from dbgpu.formatting import encode_states  # noqa: E402
from dbgpu.provenance import versions  # noqa: E402
from dbgpu.scoring import ScoreStats, score_matrix  # noqa: E402

PATHS = ("dense", "sparse")


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _release() -> None:
    """Return freed memory to the system before a CPU measurement (glibc only; else nothing)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssPeak:
    """The largest resident set seen while the block runs, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss() or 0)
            time.sleep(self.interval)

    def __enter__(self):
        self.start = _rss() or 0
        self.peak = self.start
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss() or 0)


def score_once(model, prompts, conts, *, attention: str, pad: int, device) -> dict:
    """One timed score of prompts x conts: (logT, seconds, ScoreStats, peak bytes or None)."""
    stats = ScoreStats()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _release()
    with RssPeak() if device.type == "cpu" else _null() as rss:
        t0 = time.perf_counter()
        logT = score_matrix(model, prompts, conts, method="tree", attention=attention, pad_id=pad, stats=stats)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sec = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = rss.peak - rss.start if rss.start else None
    return {"logT": logT, "seconds": sec, "stats": stats, "peak": peak}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def reference_errors(lm, P, C, src, runs, *, k: int, rng) -> dict[str, float]:
    """max |log T - per-pair forward| over k x k seeded pairs, for each attention path (the
    first timed run's matrix) and for the plain scorer (`method="plain"`)."""
    from benchmarks.bench_score import per_pair_loop

    rows = np.arange(min(k, len(src)))                  # positions in the scored sources
    tgt = np.sort(rng.choice(len(C), size=min(k, len(C)), replace=False))
    pairs = [(int(src[a]), int(j)) for a in rows for j in tgt]
    ref = per_pair_loop(lm.model, P, C, pairs, lm.device).reshape(len(rows), len(tgt))
    plain = score_matrix(lm.model, [P[src[a]] for a in rows], [C[j] for j in tgt], method="plain",
                         pad_id=lm.tokenizer.pad_token_id)
    err = {att: float(np.abs(runs[att][0]["logT"][np.ix_(rows, tgt)] - ref).max()) for att in PATHS}
    err["plain"] = float(np.abs(plain - ref).max())
    return err


def bench_n(lm, task, n: int, k: int, *, rounds: int, rng, reference: int = 0) -> list[dict]:
    """Both attention paths on K seeded sources of the first n seed states x all n targets."""
    states = task.seed_states(n)
    enc = encode_states(lm.tokenizer, task, states)
    P, C = enc.prompt_ids, enc.cont_ids
    src = np.arange(n) if not k or k >= n else np.sort(rng.choice(n, size=k, replace=False))
    prompts = [P[i] for i in src]
    pad = lm.tokenizer.pad_token_id
    for att in PATHS:                                   # warm-up: first-call costs out of the timings
        score_matrix(lm.model, P[:2], C[:4], method="tree", attention=att, pad_id=pad)
    runs: dict[str, list[dict]] = {a: [] for a in PATHS}
    for r in range(rounds):
        for att in (PATHS if r % 2 == 0 else PATHS[::-1]):
            m = score_once(lm.model, prompts, C, attention=att, pad=pad, device=lm.device)
            runs[att].append(m)
            print(f"  N = {n}, {len(src)} sources, round {r + 1}: {att} {m['seconds']:.2f} s", flush=True)
    ref = runs["dense"][0]["logT"]
    per_pair = reference_errors(lm, P, C, src, runs, k=reference, rng=rng.spawn(1)[0]) if reference else {}
    if per_pair:
        print(f"  N = {n}: max |dlogT| against {min(reference, len(src))} x {min(reference, n)} per-pair forwards: "
              + ", ".join(f"{a} {e:.1e}" for a, e in per_pair.items()), flush=True)
    rows = []
    for att in PATHS:
        best = min(runs[att], key=lambda m: m["seconds"])
        st = best["stats"]
        plan = st.extra["plan"]
        peaks = [m["peak"] for m in runs[att] if m["peak"] is not None]
        rows.append({
            "n": n, "sources": len(src), "attention": att, "best_s": best["seconds"],
            "median_s": statistics.median(m["seconds"] for m in runs[att]), "tokens": st.tokens,
            "s_per_token": best["seconds"] / max(st.tokens, 1), "tokens_per_s": st.tokens / best["seconds"],
            "peak_mib": max(peaks) / 2 ** 20 if peaks else None, "plan_peak_mib": plan["memory"]["peak"] / 2 ** 20,
            "keys_per_query": st.extra["keys_per_query"], "chunks": st.extra["target_chunks"],
            "rows_per_forward": st.extra["rows_per_forward"],
            "max_diff": max(float(np.abs(m["logT"] - ref).max()) for m in runs[att]),
            "vs_per_pair": per_pair.get(att), "plain_vs_per_pair": per_pair.get("plain"),
        })
    return rows


COLS = [("n", "{}"), ("sources", "{}"), ("attention", "{}"), ("best_s", "{:.2f}"), ("median_s", "{:.2f}"),
        ("tokens", "{:,}"), ("s_per_token", "{:.2e}"), ("tokens_per_s", "{:,.0f}"), ("peak_mib", "{:,.0f}"),
        ("plan_peak_mib", "{:,.0f}"), ("keys_per_query", "{:,.0f}"), ("chunks", "{}"),
        ("rows_per_forward", "{}"), ("max_diff", "{:.1e}")]
REF_COLS = [("vs_per_pair", "{:.1e}")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--n", type=int, nargs="+", default=[48])
    ap.add_argument("--sources", type=int, nargs="+", default=[0], metavar="K",
                    help="seeded sources per N (one value for every N, or one per N; 0 = all)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", type=int, default=0, metavar="K",
                    help="also check K x K seeded pairs against one unbatched forward each (0: no)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if len(args.sources) not in (1, len(args.n)):
        ap.error("--sources takes one value or one per --n")
    if args.threads:
        torch.set_num_threads(args.threads)
    from benchmarks.tables import print_table
    from dbgpu.models import load_model
    from dbgpu.tasks import get_task

    device = resolve_device(args.device)
    lm = load_model(args.model, device=device, dtype=resolve_dtype(args.dtype, device), cache_dir=args.cache_dir)
    v = versions()
    name = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else (platform.processor() or "cpu")
    print(f"# bench_attention_ab {dt.date.today().isoformat()}: {args.model} ({lm.info['n_params'] / 1e6:.0f}M params), "
          f"{name} [{lm.device}], {os.cpu_count()} cores, threads {torch.get_num_threads()}, dtype "
          f"{str(lm.dtype).removeprefix('torch.')}, torch {v['torch']}, transformers {v['transformers']}, "
          f"python {v['python']}; {args.rounds} round(s), order alternating, seed {args.seed}")
    rng = np.random.default_rng(args.seed)
    task = get_task("word100")
    rows = []
    ks = args.sources * len(args.n) if len(args.sources) == 1 else args.sources
    for n, k in zip(args.n, ks):
        rows += bench_n(lm, task, n, k, rounds=args.rounds, rng=rng, reference=args.reference)
    print()
    print_table(rows, COLS + (REF_COLS if args.reference else []))
    for n in args.n:
        d, s = [next(r for r in rows if r["n"] == n and r["attention"] == a) for a in PATHS]
        mem = (f", peak memory {s['peak_mib'] / d['peak_mib']:.2f}x" if s["peak_mib"] and d["peak_mib"] else "")
        print(f"N = {n}: sparse / dense seconds per token position {s['s_per_token'] / d['s_per_token']:.2f} "
              f"(best of {args.rounds}), tokens {s['tokens'] / d['tokens']:.3f}x{mem}, keys per query "
              f"{s['keys_per_query']:,.0f} vs {d['keys_per_query']:,.0f}; max |dlogT| {s['max_diff']:.1e}"
              + (f"; against per-pair forwards: dense {d['vs_per_pair']:.1e}, sparse {s['vs_per_pair']:.1e}, "
                 f"plain {d['plain_vs_per_pair']:.1e}" if args.reference else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
