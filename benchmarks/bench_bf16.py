"""What bf16 costs: the bf16 exact kernel against the float32 one, with and without dbgpu's
float32 head and float32 rotary buffers.

    .venv/bin/python benchmarks/bench_bf16.py                    # SmolLM2, 24 states, CPU
    python benchmarks/bench_bf16.py --device cuda --n 100

The float32 kernel (float32 weights, float32 head) is the reference. Four bf16 variants
of the same weights, each scored by the tree scorer on all N^2 pairs:

  dbgpu          float32 head, rotary buffers float32 (transformers' own bf16 loading)
  bf16 head      the output projection in bf16 (logits rounded to bf16), rotary float32
  bf16 rotary    float32 head, rotary buffers cast to bf16 (Module.to(bf16))
  old            both: what dbgpu did before the precision policy

For each: median and max |logT_bf16 - logT_fp32| over all pairs (off-diagonal and
diagonal), the same over the pairwise log-ratios log T(f,g) - log T(g,f) that detailed
balance is about, and the change in the least-action potential fitted on each kernel
(median and max |dV|, V zero-mean on the states, next to the spread of V itself).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@contextmanager
def bf16_head():
    """The output projection in the model dtype, logits then cast to float32 (the old head)."""
    import dbgpu.scoring.head as hd

    real = hd._matmul32
    hd._matmul32 = lambda h, w: (h @ w.T).float()
    try:
        yield
    finally:
        hd._matmul32 = real


def potential(states, logT) -> np.ndarray:
    from dbgpu.data import Kernel, make_edges
    from dbgpu.fit import fit_potential

    e = make_edges(Kernel(states=states, logT=logT))
    fit = fit_potential(len(states), e.src, e.dst, e.w, device="cpu")
    return fit.V


def compare(ref: np.ndarray, got: np.ndarray, V_ref: np.ndarray, V: np.ndarray) -> dict:
    d = np.abs(got - ref)
    ratio = lambda x: (x - x.T)[~np.eye(len(x), dtype=bool)]  # noqa: E731
    dr = np.abs(ratio(got) - ratio(ref))
    dV = np.abs(V - V_ref)
    return {"med": np.median(d), "max": d.max(), "ratio_med": np.median(dr), "ratio_max": dr.max(),
            "dV_med": np.nanmedian(dV), "dV_max": np.nanmax(dV)}


def main(argv=None) -> int:
    from dbgpu.formatting import encode_states
    from dbgpu.models import cast_parameters, load_model
    from dbgpu.provenance import versions
    from dbgpu.scoring import score_matrix
    from dbgpu.tasks import get_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=24, help="states (the word task's seed states)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)

    lm = load_model(args.model, device=args.device, dtype="float32", cache_dir=args.cache_dir)
    task = get_task("word100")
    states = task.seed_states(args.n)
    enc = encode_states(lm.tokenizer, task, states)
    P, C, pad = enc.prompt_ids, enc.cont_ids, lm.tokenizer.pad_token_id
    v = versions()
    print(f"# bench_bf16: {args.model}, {args.n} states ({args.n ** 2} pairs), device {lm.device}, "
          f"torch {v['torch']}, transformers {v['transformers']}; tree scorer; shared machine (timings indicative)")
    t0 = time.perf_counter()
    ref = score_matrix(lm.model, P, C, method="tree", pad_id=pad)
    print(f"# float32 kernel: {time.perf_counter() - t0:.1f} s; logT median {np.median(ref):.2f}, "
          f"range {ref.min():.1f} .. {ref.max():.1f}", flush=True)
    V_ref = potential(states, ref)
    fp32 = lm.model
    new = cast_parameters(copy.deepcopy(fp32), torch.bfloat16)           # transformers' bf16 loading
    old = copy.deepcopy(fp32).to(torch.bfloat16)                          # Module.to: buffers cast too
    variants = [("dbgpu: float32 head, float32 rotary", new, False),
                ("bf16 head, float32 rotary", new, True),
                ("float32 head, bf16 rotary", old, False),
                ("old: bf16 head, bf16 rotary", old, True)]
    rows = []
    for name, model, head16 in variants:
        t0 = time.perf_counter()
        if head16:
            with bf16_head():
                got = score_matrix(model, P, C, method="tree", pad_id=pad)
        else:
            got = score_matrix(model, P, C, method="tree", pad_id=pad)
        rows.append((name, compare(ref, got, V_ref, potential(states, got)), time.perf_counter() - t0))
        print(f"# {name}: {rows[-1][2]:.1f} s", flush=True)
    print(f"\nV (float32 kernel): spread (std) {np.nanstd(V_ref):.3f}, range {np.nanmax(V_ref) - np.nanmin(V_ref):.3f}\n")
    print("| bf16 variant | median abs dlogT | max abs dlogT | median abs d log-ratio | max abs d log-ratio "
          "| median abs dV | max abs dV |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r, _ in rows:
        print(f"| {name} | {r['med']:.4f} | {r['max']:.4f} | {r['ratio_med']:.4f} | {r['ratio_max']:.4f} "
              f"| {r['dV_med']:.4f} | {r['dV_max']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
