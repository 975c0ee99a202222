"""Cutting a large trie into target chunks: the tree scorer with the plan's cost-based chunk
size (`plan.chunk_size`) against one chunk of the whole trie (the memory cap alone, as
before), alternately in one process, same model, same sources, same targets.

    python benchmarks/bench_chunks.py --n 500 --sources 8 --reps 2      # SmolLM2, CPU

K seeded sources against all N targets (the per-pair cost of a full run: every row is
scored against every chunk; but a full run batches more rows per forward than K sources
fill, and gains less: see results-chunks-cpu.md). Prints a table: seconds, pairs/s,
chunks, token positions, forward and head seconds, max |dlogT| against the first run.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    import transformers

    import dbgpu.scoring.plan as plan
    from dbgpu.devices import synchronize
    from dbgpu.formatting import encode_states
    from dbgpu.models import load_model
    from dbgpu.scoring import ScoreStats, score_matrix
    from dbgpu.tasks import get_task

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    task = get_task("word100")
    enc = encode_states(lm.tokenizer, task, task.seed_states(args.n))
    src = np.sort(np.random.default_rng(args.seed).choice(args.n, size=args.sources, replace=False))
    P, C, pad = [enc.prompt_ids[i] for i in src], enc.cont_ids, lm.tokenizer.pad_token_id
    by_cost = plan.chunk_size

    def run(one_chunk: bool):
        plan.chunk_size = (lambda shape, sizes, *, cap: cap) if one_chunk else by_cost
        stats = ScoreStats()
        synchronize(lm.device)
        t = time.perf_counter()
        out = score_matrix(lm.model, P, C, method="tree", pad_id=pad, stats=stats)
        synchronize(lm.device)
        return time.perf_counter() - t, out, stats

    print(f"# bench_chunks: {args.model}, device {lm.device}, dtype {lm.dtype}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}; "
          f"{args.sources} sources x {args.n} targets")
    score_matrix(lm.model, P[:1], C[:16], method="tree", pad_id=pad)                     # warm-up
    print(f"{'run':>12} {'rep':>3} {'seconds':>8} {'pairs/s':>8} {'chunks':>6} {'tokens':>7} {'forward s':>9} "
          f"{'head s':>7} {'max|dlogT|':>10}")
    ref, rows = None, {}
    for rep in range(args.reps):
        for one in (True, False):
            sec, out, st = run(one)
            ref = out if ref is None else ref
            d = st.as_dict()
            name = "one chunk" if one else "by cost"
            rows.setdefault(name, []).append(sec)
            print(f"{name:>12} {rep:>3} {sec:8.1f} {out.size / sec:8.1f} {d['target_chunks']:>6} {d['tokens']:>7} "
                  f"{d['stage_seconds']['forward']:9.1f} {d['stage_seconds']['head']:7.1f} "
                  f"{np.abs(out - ref).max():10.2e}", flush=True)
    plan.chunk_size = by_cost
    a, b = np.median(rows["one chunk"]), np.median(rows["by cost"])
    print(f"median: one chunk {a:.1f} s, by cost {b:.1f} s: {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
