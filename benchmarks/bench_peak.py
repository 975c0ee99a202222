"""The card's own limit: a GEMM with float32 output timed at the head's and the MLP's shapes.

    python benchmarks/bench_peak.py --device cuda                 # bf16 x bf16 -> fp32, the default shapes
    python benchmarks/bench_peak.py --device cpu --tokens 256     # fp32 on the CPU (tests the code path)

On CUDA each shape runs as bf16 x bf16 with float32 output (`torch.mm(..., out_dtype=float32)`,
what the float32 head runs) and, for comparison, with bf16 output (what the decoder's
linear layers run); on the CPU in float32. Each GEMM is timed by the stage clock
(`dbgpu.scoring.stats.device_clock`: CUDA events on CUDA, perf_counter on the CPU) over
`--iters` back-to-back calls after a warm-up, best of `--trials`. The measured peak is the
best FLOP/s over all shapes; MFU elsewhere (bench_score.py, gpu_check) is reported against
it and against the datasheet's dense bf16 figure (DATASHEET_BF16).

Shapes, for each model (`--models`, random configs: only their shapes are read, no weights):
  head      M = min(tokens, 2^28 / V) float32 logits rows (the chunked head), K = hidden, N = vocab
  mlp-up    M = tokens, K = hidden, N = intermediate (gate and up projections)
  mlp-down  M = tokens, K = intermediate, N = hidden

Also the FLOP count MFU uses (`tree_flops`): the work any exact scorer of prompts x conts
must do, counted from the token tries, not from what a scorer happened to run:
  linear     2 x (attention + MLP projection weights) per token position of the trie lower bound
  head       2 x hidden x vocab per logit position (N x (internal nodes + 1))
  attention  4 x layers x heads x head_dim per (query, key) pair the tree's dependencies need:
             every node of the trie of all prompt + continuation sequences attends to its
             ancestors and itself (for a trie node: the prompt, shared prefix and suffix, and
             its ancestors). Sliding windows are ignored (an upper bound for them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dbgpu.provenance import versions  # noqa: E402
from dbgpu.scoring.stats import device_clock  # noqa: E402

#: dense bf16 tensor-core peak (no sparsity) of common cards, FLOP/s, from their datasheets
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12,
                  "A10G": 125e12, "L4": 121e12}
DEFAULT_MODELS = ("random:qwen2-0.5b", "random:llama-3.2-1b", "random:llama-3.1-8b")
HEAD_LOGITS = 2 ** 28                 # the head's float32 chunk on CUDA (scoring.head.default_max_elements)


def datasheet_peak(device) -> float | None:
    """The datasheet's dense bf16 FLOP/s of the CUDA device, None when unknown or on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DATASHEET_BF16.items() if k in name), None)


def gemm_shapes(config, *, tokens: int, head_logits: int = HEAD_LOGITS) -> list[tuple[str, int, int, int]]:
    """[(name, M, K, N)] of the head's and the MLP's GEMMs for a transformers text config."""
    H, V = config.hidden_size, config.vocab_size
    F = getattr(config, "intermediate_size", None) or 4 * H
    return [("head", max(1, min(tokens, head_logits // V)), H, V), ("mlp-up", tokens, H, F),
            ("mlp-down", tokens, F, H)]


def _mm(a, b, out_dtype):
    if out_dtype == torch.float32 and a.dtype != torch.float32:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a @ b


def time_gemm(M: int, K: int, N: int, *, device, dtype, out_dtype, iters: int = 10, trials: int = 3) -> float:
    """Seconds per (M, K) @ (K, N) GEMM in `dtype` with `out_dtype` output on `device`: the
    best of `trials` timings of `iters` back-to-back calls (device_clock), after a warm-up."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(M, K, device=device, generator=g).to(dtype)
    b = torch.randn(K, N, device=device, generator=g).to(dtype)
    clock = device_clock(device)
    _mm(a, b, out_dtype)                                           # warm-up (and cuBLAS heuristics)
    best = float("inf")
    for _ in range(trials):
        start = clock.mark()
        for _ in range(iters):
            out = _mm(a, b, out_dtype)
        end = clock.mark()
        best = min(best, clock.seconds(start, end) / iters)
    assert out.dtype == out_dtype
    return best


def measure(configs: dict, *, device, tokens: int, iters: int = 10, trials: int = 3) -> dict:
    """Every model's GEMM shapes timed: {"rows": [...], "peak": best FLOP/s, "peak_shape": ...,
    "dtype": ..., "datasheet": FLOP/s or None}. configs: {model name: text config}."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    outs = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    rows, seen = [], {}
    for model, config in configs.items():
        for name, M, K, N in gemm_shapes(config, tokens=tokens):
            for out in outs:
                key = (M, K, N, out)
                if key not in seen:
                    seen[key] = time_gemm(M, K, N, device=device, dtype=dtype, out_dtype=out, iters=iters,
                                          trials=trials)
                s = seen[key]
                rows.append({"model": model, "gemm": name, "M": M, "K": K, "N": N,
                             "out": str(out).removeprefix("torch."), "ms": s * 1e3, "tflops": 2 * M * K * N / s / 1e12})
    fp32_out = [r for r in rows if r["out"] == "float32"]
    best = max(fp32_out, key=lambda r: r["tflops"])
    return {"rows": rows, "peak": best["tflops"] * 1e12, "peak_shape": f"{best['model']} {best['gemm']}",
            "dtype": f"{str(dtype).removeprefix('torch.')} x {str(dtype).removeprefix('torch.')} -> float32",
            "datasheet": datasheet_peak(device)}


# ----------------------------------------------------------------------------- model FLOPs


def linear_params(shape) -> int:
    """Weights of one layer's attention and MLP projections (gated MLP), from a ModelShape."""
    return (shape.hidden * (shape.heads + 2 * shape.kv_heads) * shape.head_dim
            + shape.heads * shape.head_dim * shape.hidden + 3 * shape.hidden * shape.intermediate)


def minimal_keys(prompts: list[list[int]], conts: list[list[int]]) -> int:
    """(query, key) pairs that exact scoring of every prompt x every continuation needs: each
    internal node of the trie of all prompt + continuation sequences (the positions counted
    by `trie_lower_bound`) attends to its ancestors and itself, a node at position t to t + 1
    keys. Prompt nodes come from the prompts sorted (each adds the positions past its common
    prefix with the one before), continuation nodes from the continuations' trie: a node of
    depth d after a prompt of L tokens sits at position L + d. O(total prompt tokens + I)."""
    from dbgpu.scoring.trie import build_trie, common_prefix_length

    ordered = sorted(map(tuple, prompts))
    keys, prev = 0, ()
    for cur in ordered:
        start = common_prefix_length([list(prev), list(cur)], keep_last=False) if prev else 0
        keys += sum(range(start + 1, len(cur) + 1))                  # positions start .. len - 1
        prev = cur
    trie = build_trie(conts)
    depth = trie.depth[:trie.n_internal].astype(np.int64)
    L = np.array([len(p) for p in prompts], dtype=np.int64)
    return int(keys + (len(depth) * (L + 1) + depth.sum()).sum())


def tree_flops(shape, prompts: list[list[int]], conts: list[list[int]]) -> dict:
    """The FLOPs of the exact kernel of prompts x conts under a model of this ModelShape,
    counted as the module docstring says: {"linear", "head", "attention", "total"}."""
    from dbgpu.scoring.trie import build_trie, trie_lower_bound

    tokens = trie_lower_bound(prompts, conts)
    logits = len(prompts) * (build_trie(conts).n_internal + 1)
    out = {"linear": 2.0 * shape.layers * linear_params(shape) * tokens,
           "head": 2.0 * shape.hidden * shape.vocab * logits,
           "attention": 4.0 * shape.layers * shape.heads * shape.head_dim * minimal_keys(prompts, conts)}
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------- CLI


def write_results(result: dict, path: Path, *, device_name: str, command: str) -> None:
    v = versions()
    lines = [f"# GEMM peak: {result['dtype']}", "",
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {device_name}; torch {v['torch']}, "
             f"python {v['python']}.", "", f"    {command}", "",
             "| model | gemm | M | K | N | out | ms | TFLOP/s |", "|---|---|---:|---:|---:|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['gemm']} | {r['M']} | {r['K']} | {r['N']} | {r['out']} | {r['ms']:.3f} | "
              f"{r['tflops']:.1f} |" for r in result["rows"]]
    ds = result["datasheet"]
    lines += ["", f"measured peak (float32 output): {result['peak'] / 1e12:.1f} TFLOP/s ({result['peak_shape']})"
              + (f"; datasheet {ds / 1e12:.0f} TFLOP/s ({result['peak'] / ds:.0%} of it)" if ds else "")]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--tokens", type=int, default=None, help="rows of the MLP GEMMs (default 32,768 on CUDA, 256 on CPU)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the result to this JSON file")
    ap.add_argument("--results", default=None, help="write a results-*.md file here")
    args = ap.parse_args(argv)
    from dbgpu.devices import resolve_device
    from dbgpu.models import model_config

    device = resolve_device(args.device)
    tokens = args.tokens or (32768 if device.type == "cuda" else 256)
    configs = {m: model_config(m)[0] for m in args.models}
    configs = {m: (c.get_text_config() if hasattr(c, "get_text_config") else c) for m, c in configs.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    v = versions()
    print(f"# bench_peak: {name} [{device}], threads {torch.get_num_threads()}, torch {v['torch']}, "
          f"python {v['python']}; {tokens} token rows")
    result = measure(configs, device=device, tokens=tokens, iters=args.iters, trials=args.trials)
    print(f"{'model':<22} {'gemm':<9} {'M':>6} {'K':>6} {'N':>7} {'out':<9} {'ms':>9} {'TFLOP/s':>8}")
    for r in result["rows"]:
        print(f"{r['model']:<22} {r['gemm']:<9} {r['M']:>6} {r['K']:>6} {r['N']:>7} {r['out']:<9} {r['ms']:>9.3f} "
              f"{r['tflops']:>8.2f}")
    ds = result["datasheet"]
    print(f"measured peak ({result['dtype']}): {result['peak'] / 1e12:.2f} TFLOP/s at {result['peak_shape']}"
          + (f"; datasheet {ds / 1e12:.0f} TFLOP/s ({result['peak'] / ds:.0%} of it)" if ds else "; no datasheet figure"))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "device": name, "tokens": tokens, "versions": v}, indent=2))
    if args.results:
        write_results(result, Path(args.results), device_name=name, command="python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
