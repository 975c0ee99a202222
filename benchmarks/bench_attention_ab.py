"""`dbgpu score --attention sparse` against `--attention dense`, alternately, same model and states.

    python benchmarks/bench_attention_ab.py --model random:qwen2-0.5b --device cuda --n 500 --rounds 2
    python benchmarks/bench_attention_ab.py --model random:llama --device cpu --n 8 --rounds 1     # smoke

Each round runs `dbgpu score` once per attention path (dense first, then sparse), each a
fresh process on the same state set (the task's first N seed states), so that a
neighbour's load or a warm cache biases neither; the best round of each is reported:
scoring seconds (meta.json's scoring.seconds, model loading excluded), seconds per token
position, peak memory (CUDA: allocated; CPU: none recorded), and the largest |log T|
difference between the two matrices (sparse must equal dense to float rounding).

If this checkout's `dbgpu score` has no `--attention` option, it prints a notice and exits
0 without running anything (gpu_check then reports the step skipped).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def has_attention_option() -> bool:
    """Whether `dbgpu score` takes --attention (read from its --help, in a subprocess)."""
    r = subprocess.run([sys.executable, "-m", "dbgpu", "score", "--help"], cwd=ROOT, capture_output=True, text=True,
                       env=_env())
    return r.returncode == 0 and "--attention" in r.stdout


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def score_once(*, model: str, states: Path, attention: str, device: str, dtype: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "dbgpu", "score", "--model", model, "--task", "word100", "--states", str(states),
           "--device", device, "--dtype", dtype, "--attention", attention, "--quiet", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    if r.returncode != 0:
        raise SystemExit(f"dbgpu score --attention {attention} failed:\n{r.stderr[-2000:]}")
    meta = json.loads((out / "meta.json").read_text())
    sc = meta["scoring"]
    return {"attention": attention, "seconds": sc["seconds"], "tokens": sc["tokens"],
            "s_per_token": sc["seconds"] / max(sc["tokens"], 1), "peak_bytes": sc.get("peak_memory_bytes"),
            "keys_per_query": sc.get("keys_per_query") or sc.get("plan", {}).get("keys_per_query"),
            "logT": np.load(out / "logT.npy")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:qwen2-0.5b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n", type=int, nargs="+", default=[500])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    if not has_attention_option():
        print("skipped: this checkout's `dbgpu score` has no --attention option (sparse attention not merged yet)")
        return 0
    from dbgpu.tasks import get_task

    task = get_task("word100")
    print(f"# bench_attention_ab: {args.model}, device {args.device}, dtype {args.dtype}, {args.rounds} round(s)")
    print("| N | attention | best scoring s | s / token position | peak MiB | keys/query | max abs dlogT vs dense |")
    print("|---:|---|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory(prefix="attention-ab-") as tmp:
        for n in args.n:
            states = Path(tmp) / f"states-{n}.json"
            states.write_text(json.dumps(task.seed_states(n)))
            best: dict[str, dict] = {}
            for r in range(args.rounds):
                for att in ("dense", "sparse"):
                    m = score_once(model=args.model, states=states, attention=att, device=args.device,
                                   dtype=args.dtype, out=Path(tmp) / f"{att}-{n}-{r}")
                    print(f"  round {r}: N = {n}, {att}: {m['seconds']:.2f} s", flush=True)
                    if att not in best or m["seconds"] < best[att]["seconds"]:
                        best[att] = m
            ref = best["dense"]["logT"]
            for att in ("dense", "sparse"):
                m = best[att]
                pk = f"{m['peak_bytes'] / 2**20:.0f}" if m["peak_bytes"] else "-"
                diff = float(np.abs(m["logT"] - ref).max())
                print(f"| {n} | {att} | {m['seconds']:.2f} | {m['s_per_token']:.3e} | {pk} | "
                      f"{m['keys_per_query'] or '-'} | {diff:.2e} |")
            print(f"N = {n}: sparse / dense seconds {best['sparse']['seconds'] / best['dense']['seconds']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
