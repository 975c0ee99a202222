"""The tree scorer before and after a change, in one process, on the same model and states.

    git worktree add /tmp/before 7a10045        # or any checkout of the earlier scorer
    python benchmarks/bench_tree_ab.py --before /tmp/before --n 48 100 --budgets none 8192 16384

The earlier checkout's dbgpu/scoring/tree.py and trie.py are loaded under other module names
(the rest of dbgpu is this checkout's: head, prefix, models), so both run on one loaded
model, alternately, and their matrices are compared. Prints one JSON line per run: wall
and process CPU seconds (the CPU figure is steadier on a shared machine), pairs/s, forward
passes, rows and token positions per forward, time per stage, max |dlogT| from the first
run, and the load average when it ended.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def load_before(root: Path):
    """The earlier tree scorer as a module (its trie module renamed alongside)."""
    def load(name, path, replace=()):
        src = path.read_text()
        for a, b in replace:
            src = src.replace(a, b)
        mod = type(sys)(name)
        sys.modules[name] = mod
        exec(compile(src, str(path), "exec"), mod.__dict__)
        return mod

    load("before_trie", root / "dbgpu/scoring/trie.py")
    return load("before_tree", root / "dbgpu/scoring/tree.py",
                [("from dbgpu.scoring.trie import", "from before_trie import")])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a checkout of the earlier scorer")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, nargs="+", default=[48])
    ap.add_argument("--budgets", nargs="+", default=["none"], help="--batch-tokens values for the new scorer")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args(argv)

    from dbgpu.formatting import encode_states
    from dbgpu.models import load_model
    from dbgpu.scoring import ScoreStats
    from dbgpu.scoring.tree import tree_score_matrix
    from dbgpu.tasks import get_task

    before = load_before(Path(args.before))
    lm = load_model(args.model, device="cpu")
    task = get_task("word100")
    pad = lm.tokenizer.pad_token_id
    for n in args.n:
        enc = encode_states(lm.tokenizer, task, task.seed_states(n))
        P, C = enc.prompt_ids, enc.cont_ids
        before.tree_score_matrix(lm.model, P[:2], C[:4], pad_id=pad)            # warm-up, both
        tree_score_matrix(lm.model, P[:2], C[:4], pad_id=pad)
        runs = [("before", None, lambda st: before.tree_score_matrix(lm.model, P, C, pad_id=pad, stats=st))]
        for b in args.budgets:
            bt = None if b == "none" else int(b)
            runs.append(("after", bt, lambda st, bt=bt: tree_score_matrix(lm.model, P, C, batch_tokens=bt, pad_id=pad,
                                                                          stats=st)))
        ref = None
        for rep in range(args.reps):
            for name, bt, fn in runs:
                st = ScoreStats()
                wall, cpu = time.perf_counter(), time.process_time()
                out = fn(st)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                ref = out if ref is None else ref
                print(json.dumps(dict(
                    n=n, rep=rep, scorer=name, batch_tokens=bt, wall=round(wall, 2), cpu=round(cpu, 2),
                    pairs_s=round(n * n / wall, 1), forwards=st.forward_passes, rows=st.extra.get("rows_per_forward"),
                    tokens_per_forward=st.extra.get("tokens_per_forward", round(st.padded_tokens / st.forward_passes)),
                    max_dlogT=float(np.abs(out - ref).max()),
                    stages={k: round(v, 2) for k, v in st.stage_seconds.items()},
                    load=open("/proc/loadavg").read().split()[0])), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
