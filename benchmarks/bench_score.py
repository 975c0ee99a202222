"""Exact-kernel scoring throughput: dbgpu's tree scorer vs the baselines, same pairs, one run.

    python benchmarks/bench_score.py                                  # SmolLM2, CPU, N = 48 and 100
    python benchmarks/bench_score.py --n 500 --tree-only --tree-rows 32 # the tree scorer alone (32 sources x 500), peak RSS
    python benchmarks/bench_score.py --n 48 --tree-only --nproc 1 2     # + `dbgpu score` on 1 and 2 ranks
    python benchmarks/bench_score.py --model random:qwen2-0.5b --device cuda --dtype bfloat16 --n 100 500

Methods, all on the same model, states and (context, continuation) texts:
  tree      dbgpu: shared-prefix KV cache + one continuation trie per source (all N^2 pairs)
  batched   dbgpu --method plain: every pair its own row, padded batches (optional, --batched)
  per-pair  one plain forward pass per pair, no batching, no cache (what a naive scorer does)
  lm-eval   lm-evaluation-harness HFLM.loglikelihood (batch 16), needs `pip install lm-eval`

The baselines are slow (tenths of a second per pair on a CPU), so unless --full they are
timed on a seeded random subset of pairs and their time for all N^2 pairs is
extrapolated from the mean time per pair (marked "est."). Values are compared with the
tree scorer on the pairs each baseline ran. Warm-up before every timing; on CUDA
`torch.cuda.synchronize()` brackets each timing and peak memory is reset per method.

Columns: tok/fwd = token positions per forward pass (tree: the largest batch; baselines:
one pair's sequence); peak MiB = CUDA memory allocated at the peak of that method, or on
the CPU the process's peak resident set size when the method ended (the model included;
the tree runs first, so its figure is its own).

MFU: the FLOPs any exact scorer must do (bench_peak.tree_flops: the linear layers over the
trie lower bound's positions, the head over N x (internal nodes + 1) positions, attention
over the keys the tree's dependencies need), the same for every method, over its seconds,
against the peak a bf16 x bf16 -> float32 GEMM reaches on this card at this model's head and
MLP shapes, measured at the start of the run (bench_peak.measure; `MFU`), and against the
datasheet's dense bf16 figure (`MFU sheet`). On the CPU the peak is measured in float32
with --measure-peak (off by default there).

Breakdown (tree scorer, unless --no-breakdown): the device's seconds per stage (CUDA events
around prefix, masks, forward, head, reduction, transfer; perf_counter on the CPU), then
one batch of sources (one forward per target chunk) run again under torch.profiler with
its host-device synchronisations counted (`count_syncs`): syncs per forward with their
call sites, and the top kernels of one forward (self device time per forward).

--nproc K1 K2 ...: the same state set scored by `dbgpu score` under torchrun with K ranks
of one thread each (gloo on the CPU), rows cut into blocks of --nproc-block rows shared by
the ranks; seconds = the scoring call's wall time on rank 0 (model loading excluded), and
whether the matrix equals the one-rank matrix bit for bit.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))          # bench_peak beside this file
from bench_peak import datasheet_peak, measure, tree_flops  # noqa: E402

from dbgpu.formatting import encode_states
from dbgpu.provenance import versions
from dbgpu.models import load_model
from dbgpu.scoring import ScoreStats, score_matrix, score_sequences
from dbgpu.tasks import get_task
from dbgpu.scoring.trie import trie_lower_bound

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def breakdown(lm, P, C, src, args) -> dict:
    """One batch of sources (the plan's rows per forward) scored again under torch.profiler
    with its synchronisations counted: {"syncs_per_forward", "sync_sites", "kernels" (of one
    forward), "forwards"}."""
    from torch.profiler import ProfilerActivity, profile

    from dbgpu.scoring.stats import count_syncs, top_kernels
    from dbgpu.scoring.tree import batch_plan

    device = lm.device
    _, _, plan = batch_plan(lm.model, [P[i] for i in src], C, max_logits=args.max_logits, attention=args.attention)
    rows = [P[i] for i in src[:max(1, plan.rows_per_forward)]]
    stats = ScoreStats()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, count_syncs(device) as syncs:
        score_matrix(lm.model, rows, C, method="tree", attention=args.attention, pad_id=lm.tokenizer.pad_token_id,
                     stats=stats,
                     max_logits=args.max_logits)
        sync(device)
    forwards = max(stats.forward_passes, 1)
    return {"forwards": forwards, "rows": len(rows), "syncs": syncs.syncs if syncs.supported else None,
            "syncs_per_forward": syncs.syncs / forwards if syncs.supported else None,
            "sync_sites": syncs.top(5), "kernels": top_kernels(prof, n=10, device_type=device.type, per=forwards)}


@torch.inference_mode()
def per_pair_loop(model, prompts, conts, pairs, device) -> np.ndarray:
    """One unbatched forward per pair; logits of the continuation positions by the same
    float32 head (so that in bf16 max|dlogT| measures the scorer, not the head)."""
    from dbgpu.scoring.head import head_logits, hidden_states, output_head

    head = output_head(model)
    out = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs):
        ids = torch.tensor([prompts[i] + conts[j]], device=device)
        h, _ = hidden_states(model, input_ids=ids, use_cache=False)
        logits = head_logits(head, h[0, len(prompts[i]) - 1:-1])                    # (C, V) float32
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(conts[j], device=device)[:, None])
        out[k] = lp.double().sum().item()
    return out


def lm_eval_scores(lm, sources, targets, states, pairs, *, batch_size: int) -> np.ndarray:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, device=str(lm.device),
              add_bos_token=False)
    reqs = [Instance(request_type="loglikelihood", doc={}, idx=k,
                     arguments=(sources[states[i]], targets[states[j]])) for k, (i, j) in enumerate(pairs)]
    return np.array([ll for ll, _ in hf.loglikelihood(reqs, disable_tqdm=True)])


def peak_rss() -> int:
    """The process's peak resident set size so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    value = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    return value, seconds, peak


def bench_temperatures(lm, P, C, src, args, device, *, scale: float) -> dict:
    """K temperatures from one pass of forwards against one temperature, timed alternately
    (one, K, one, K, ...; the fastest of each), on the same sources; the K kernels checked
    against separate single-temperature runs."""
    taus = args.temperatures
    model, pad, rows = lm.model, lm.tokenizer.pad_token_id, [P[i] for i in src]
    best = {"one": float("inf"), "many": float("inf")}
    many = None
    for _ in range(args.temperature_rounds):
        for kind in ("one", "many"):
            value, sec, peak = timed(lambda: score_matrix(model, rows, C, method="tree", attention=args.attention,
                                                          pad_id=pad,
                                                          temperature=1.0 if kind == "one" else taus,
                                                          max_logits=args.max_logits), device)
            best[kind] = min(best[kind], sec)
            if kind == "many":
                many, peak_many = value, peak
    diff = max(float(np.abs(many[i] - score_matrix(model, rows, C, method="tree", attention=args.attention,
                                                   pad_id=pad, temperature=t,
                                                   max_logits=args.max_logits)).max()) for i, t in enumerate(taus))
    return dict(method=f"tree {len(taus)}tau", pairs=len(src) * len(C) * len(taus), seconds=best["many"] * scale,
                est=scale != 1, tokens=0, peak=peak_many, max_diff=diff, tpf=0, flops=0,
                temperatures=list(taus), one_seconds=best["one"] * scale, ratio=best["many"] / best["one"],
                rounds=args.temperature_rounds)


def bench_n(lm, task, n: int, args, rng) -> list[dict]:
    tok, model, device = lm.tokenizer, lm.model, lm.device
    states = task.seed_states(n)
    enc = encode_states(tok, task, states)
    P, C = enc.prompt_ids, enc.cont_ids
    pad = tok.pad_token_id
    all_pairs = n * n
    bound = trie_lower_bound(P, C)
    from dbgpu.scoring.tree import batch_plan

    shape = batch_plan(model, P[:1], C[:1])[0]
    work = tree_flops(shape, P, C)                    # the problem's FLOPs, the same for every method
    rows = []

    # tree: warm up on a few sources, then all pairs (or --tree-rows seeded sources, all targets)
    score_matrix(model, P[:2], C[:4], method="tree", attention=args.attention, pad_id=pad, max_logits=args.max_logits)
    stats = ScoreStats()
    src = np.arange(n) if not args.tree_rows or args.tree_rows >= n else \
        np.sort(rng.choice(n, size=args.tree_rows, replace=False))
    tree, sec, peak = timed(lambda: score_matrix(model, [P[i] for i in src], C, method="tree",
                                                 attention=args.attention, pad_id=pad,
                                                 stats=stats, max_logits=args.max_logits,
                                                 progress=args.progress), device)
    scale = n / len(src)
    sec, stats.tokens = sec * scale, int(stats.tokens * scale)
    d = stats.as_dict()
    rows.append(dict(method="tree", pairs=len(src) * n, seconds=sec, est=scale != 1, tokens=stats.tokens,
                     peak=peak, max_diff=0.0, tpf=stats.extra["tokens_per_forward"], flops=work["total"],
                     flop_parts=work, forwards=stats.forward_passes, stage_clock=d["stage_clock"],
                     stages={k: v * scale for k, v in d["stage_device_seconds"].items()},
                     host_stages={k: v * scale for k, v in d["stage_seconds"].items()}))
    if scale != 1:                                    # a slice of sources: the whole run extrapolated
        _, _, whole = batch_plan(model, P, C, max_logits=args.max_logits, attention=args.attention)
        _, _, part = batch_plan(model, [P[i] for i in src], C, max_logits=args.max_logits, attention=args.attention)
        once = d["stage_device_seconds"].get("prefix", 0.0)          # the shared prefix runs once, not per source
        body = sec / scale - once                                      # the slice's own seconds
        rows[0]["extrapolation"] = {
            "sources_run": len(src), "sources": n, "by_sources_s": once + body * scale, "prefix_s": once,
            "forwards_run": stats.forward_passes - 1, "plan_forwards_slice": part.forwards,
            "plan_forwards": whole.forwards, "by_plan_s": once + body / max(part.forwards, 1) * whole.forwards}
        rows[0]["seconds"] = sec = rows[0]["extrapolation"]["by_sources_s"]
    if args.temperatures:
        rows.append(bench_temperatures(lm, P, C, src, args, device, scale=scale))
        rows[-1].update(tokens=rows[0]["tokens"], flops=rows[0]["flops"], tpf=rows[0]["tpf"])   # the same forwards
    if not args.no_breakdown:
        rows[0]["breakdown"] = breakdown(lm, P, C, src, args)
    if args.tree_only:
        for r in rows:
            r.update(n=n, lower_bound=bound, tree_seconds=rows[0]["seconds"])
        return rows

    subset = rng.choice(all_pairs, size=min(args.baseline_pairs, all_pairs), replace=False)
    pairs = np.stack([subset // n, subset % n], 1) if not args.full else \
        np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    ref = tree[pairs[:, 0], pairs[:, 1]]
    per_pair_tokens = np.mean([len(P[i]) + len(C[j]) for i, j in pairs])

    def add(method, fn, warm, batch=1):
        warm()
        vals, s, pk = timed(fn, device)
        scale = all_pairs / len(pairs)
        rows.append(dict(method=method, pairs=len(pairs), seconds=s * scale, est=scale != 1,
                         tokens=int(per_pair_tokens * all_pairs), peak=pk, tpf=round(per_pair_tokens * batch),
                         max_diff=float(np.abs(vals - ref).max()), flops=work["total"]))

    if args.batched:
        longest = max(len(P[i]) + len(C[j]) for i, j in pairs)
        add("batched", lambda: score_sequences(model, P, C, pairs, pad_id=pad),
            lambda: score_sequences(model, P, C, pairs[:4], pad_id=pad), batch=min(256, len(pairs), 16384 // longest))
    add("per-pair", lambda: per_pair_loop(model, P, C, pairs, device),
        lambda: per_pair_loop(model, P, C, pairs[:2], device))
    if not args.no_lm_eval:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            print("lm-eval not installed (pip install 'dbgpu[bench]'); skipping it", file=sys.stderr)
        else:
            add("lm-eval", lambda: lm_eval_scores(lm, enc.sources, enc.targets, states, pairs, batch_size=16),
                lambda: lm_eval_scores(lm, enc.sources, enc.targets, states, pairs[:4], batch_size=16),
                batch=min(16, len(pairs)))
    for r in rows:
        r.update(n=n, lower_bound=bound, tree_seconds=rows[0]["seconds"])
    return rows


def print_breakdown(rows: list[dict], device) -> None:
    """The tree scorer's time per stage (device seconds, all N^2 pairs), syncs per forward and
    the top kernels of one forward."""
    from dbgpu.scoring.stats import STAGES, kernel_table

    if not rows:
        return
    clock = "CUDA events" if rows[0].get("stage_clock") == "cuda_events" else "perf_counter"
    print(f"\ntree scorer, device seconds per stage ({clock}; all N^2 pairs), host-device syncs per forward:")
    print(f"{'N':>4} " + " ".join(f"{s:>9}" for s in STAGES) + f" {'other':>9} {'total':>9} {'syncs/fwd':>9}")
    for r in rows:
        st = r.get("stages") or {}
        other = r["seconds"] - sum(st.values())
        b = r.get("breakdown") or {}
        spf = f"{b['syncs_per_forward']:.1f}" if b.get("syncs_per_forward") is not None else "-"
        print(f"{r['n']:>4} " + " ".join(f"{st.get(s, 0.0):>9.3f}" for s in STAGES)
              + f" {max(other, 0.0):>9.3f} {r['seconds']:>9.3f} {spf:>9}")
    for r in rows:
        b = r.get("breakdown")
        if not b:
            continue
        sites = ", ".join(f"{site} x{k}" for site, k in b["sync_sites"]) or ("none" if b["syncs"] is not None
                                                                            else "not counted (no CUDA)")
        print(f"\nN = {r['n']}: one batch of {b['rows']} sources, {b['forwards']} forwards profiled; "
              f"sync call sites: {sites}; top kernels of one forward "
              f"({'self device' if device.type == 'cuda' else 'self CPU'} time per forward):")
        print(kernel_table(b["kernels"]))


def bench_nproc(args, n: int, task) -> list[dict]:
    """`dbgpu score` of the N seed states under torchrun with K ranks of one thread each, for K
    in args.nproc: rank 0's scoring wall seconds, and the matrix against the first K's."""
    rows, first = [], None
    with tempfile.TemporaryDirectory(prefix="bench-nproc-") as tmp:
        states = Path(tmp) / "states.json"
        states.write_text(json.dumps(task.seed_states(n)))
        for k in args.nproc:
            out = Path(tmp) / f"k{k}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}",
                   "-m", "dbgpu", "score", "--model", args.model, "--task", "word100", "--states", str(states),
                   "--device", "cpu", "--threads", "1", "--rows-per-block", str(args.nproc_block), "--quiet",
                   "--out", str(out)] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"torchrun with {k} ranks failed:\n{r.stderr[-2000:]}")
            wall = time.perf_counter() - t0
            meta = json.loads((out / "meta.json").read_text())
            logT = np.load(out / "logT.npy")
            first = logT if first is None else first
            call = meta["shards"]["calls"][-1]
            rows.append(dict(n=n, ranks=k, seconds=call["wall_seconds"], process_seconds=wall,
                             compute_seconds=meta["scoring"]["seconds"], equal=bool(np.array_equal(logT, first)),
                             tpf=meta["scoring"].get("tokens_per_forward"), blocks=meta["shards"]["blocks"]))
    return rows


def print_nproc(rows: list[dict]) -> None:
    print(f"\n{'N':>4} {'ranks':>5} {'blocks':>6} {'scoring s':>10} {'pairs/s':>9} {'speed-up':>8} "
          f"{'rank-seconds':>12} {'process s':>9} {'tok/fwd':>8} {'same matrix':>11}")
    base = rows[0]["seconds"]
    for r in rows:
        print(f"{r['n']:>4} {r['ranks']:>5} {r['blocks']:>6} {r['seconds']:>10.2f} {r['n'] ** 2 / r['seconds']:>9.1f} "
              f"{base / r['seconds']:>7.2f}x {r['compute_seconds']:>12.2f} {r['process_seconds']:>9.2f} "
              f"{r['tpf'] or '-':>8} {'yes' if r['equal'] else 'NO':>11}")
    print("ranks of one thread each (torchrun, gloo); scoring s = rank 0's wall time from the job's start to the "
          "assembled matrix (model loading excluded); rank-seconds = scoring seconds summed over ranks; "
          "process s = the launch's wall time, loading included")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, nargs="+", default=[48, 100], help="state-set sizes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--baseline-pairs", type=int, default=96, help="pairs the slow baselines run (extrapolated)")
    ap.add_argument("--full", action="store_true", help="run the baselines on all N^2 pairs")
    ap.add_argument("--batched", action="store_true", help="also time dbgpu --method plain")
    ap.add_argument("--no-lm-eval", action="store_true")
    ap.add_argument("--max-logits", type=int, default=None)
    ap.add_argument("--attention", choices=("dense", "sparse"), default="dense",
                    help="the tree scorer's attention (default dense; bench_attention_ab.py compares the two)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--tree-only", action="store_true", help="time the tree scorer alone (no baselines)")
    ap.add_argument("--tree-rows", type=int, default=None, metavar="K",
                    help="with --tree-only: score K seeded sources against all N targets and extrapolate to N^2 "
                         "(peak memory is a full run's: the batches are the same)")
    ap.add_argument("--nproc", type=int, nargs="*", default=None, metavar="K",
                    help="also score with `dbgpu score` under torchrun on K ranks of one thread each (CPU)")
    ap.add_argument("--nproc-block", type=int, default=8, help="rows per block for --nproc (default 8)")
    ap.add_argument("--measure-peak", action="store_true",
                    help="measure the GEMM peak on the CPU too (float32; always on CUDA)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the profiled batch (syncs, top kernels)")
    ap.add_argument("--temperatures", type=lambda t: tuple(float(x) for x in t.split(",")), default=None,
                    metavar="T1,T2,..", help="also time these temperatures from one pass against one temperature, "
                                             "alternately (row `tree Ktau`; max|dlogT| against separate runs)")
    ap.add_argument("--temperature-rounds", type=int, default=2, help="alternations for --temperatures (default 2)")
    args = ap.parse_args(argv)
    if args.tree_rows and not args.tree_only:
        ap.error("--tree-rows goes with --tree-only")

    lm = load_model(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    task = get_task("word100")
    device = lm.device
    v = versions()
    print(f"# bench_score: model {args.model} ({lm.info['model_type']}, {lm.info['n_params'] / 1e6:.0f}M params), "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'} "
          f"[{device}], dtype {str(lm.dtype).removeprefix('torch.')}, threads {torch.get_num_threads()}, "
          f"torch {v['torch']}, transformers {v['transformers']}, python {v['python']}, attention {args.attention}")
    rng = np.random.default_rng(args.seed)
    gemm = None
    if device.type == "cuda" or args.measure_peak:
        from dbgpu.models import text_config

        gemm = measure({args.model: text_config(lm.model)}, device=device,
                       tokens=32768 if device.type == "cuda" else 128, iters=10 if device.type == "cuda" else 2,
                       trials=3 if device.type == "cuda" else 1)
        print(f"GEMM peak measured here ({gemm['dtype']}, this model's head and MLP shapes): "
              f"{gemm['peak'] / 1e12:.2f} TFLOP/s at {gemm['peak_shape']}"
              + (f"; datasheet {gemm['datasheet'] / 1e12:.0f} TFLOP/s" if gemm["datasheet"] else ""))
    rows = []
    for n in args.n:
        rows += bench_n(lm, task, n, args, rng)
    peak = gemm["peak"] if gemm else None
    sheet = datasheet_peak(device)
    hdr = (f"{'N':>4} {'method':<9} {'pairs run':>9} {'seconds (all N^2)':>18} {'pairs/s':>9} {'tokens':>10} "
           f"{'tok/bound':>9} {'speed-up':>9} {'max|dlogT|':>10} {'MFU':>6} {'MFU sheet':>9} {'tok/fwd':>8} "
           f"{'peak MiB':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        secs = f"{r['seconds']:.2f}{' est.' if r['est'] else ''}"
        r["mfu"] = r["flops"] / r["seconds"] / peak if peak else None
        r["mfu_datasheet"] = r["flops"] / r["seconds"] / sheet if sheet else None
        mfu = f"{r['mfu']:.1%}" if peak else "-"
        mfu_sheet = f"{r['mfu_datasheet']:.1%}" if sheet else "-"
        pk = f"{r['peak'] / 2**20:.0f}" if r["peak"] is not None else "-"
        print(f"{r['n']:>4} {r['method']:<9} {r['pairs']:>9} {secs:>18} {r['n'] ** 2 / r['seconds']:>9.1f} "
              f"{r['tokens']:>10} {r['tokens'] / r['lower_bound']:>9.2f} {r['seconds'] / r['tree_seconds']:>8.1f}x "
              f"{r['max_diff']:>10.2e} {mfu:>6} {mfu_sheet:>9} {r['tpf']:>8} {pk:>9}")
    for r in rows:
        x = r.get("extrapolation")
        if x:
            print(f"N = {r['n']}: EXTRAPOLATED, not measured whole: {x['sources_run']} seeded sources of {x['sources']} "
                  f"scored against all {r['n']} targets; all N^2 pairs: {x['by_sources_s']:.1f} s by sources "
                  f"(x {x['sources'] / x['sources_run']:.1f}), {x['by_plan_s']:.1f} s by the plan's forward passes "
                  f"({x['plan_forwards_slice']} for the slice, {x['plan_forwards']} for the whole run)")
    for r in rows:
        if "ratio" in r:
            print(f"N = {r['n']}: {len(r['temperatures'])} temperatures ({', '.join(format(t, 'g') for t in r['temperatures'])}) "
                  f"from one pass {r['seconds']:.2f} s against one temperature {r['one_seconds']:.2f} s, timed "
                  f"alternately ({r['rounds']} rounds, fastest of each): ratio {r['ratio']:.3f}; each kernel against "
                  f"its own single-temperature run: max |dlogT| {r['max_diff']:.1e}")
    print_breakdown([r for r in rows if r["method"] == "tree"], device)
    print("speed-up = method seconds / tree seconds; tok/bound = token positions run / token-trie lower bound; "
          "max|dlogT| = largest difference from the tree scorer on the pairs the method ran; tok/fwd = token "
          "positions per forward; peak MiB = " + ("CUDA memory allocated at the method's peak" if device.type == "cuda"
                                                   else "the process's peak RSS when the method ended (model included)"))
    nproc = []
    for n in args.n if args.nproc else []:
        nproc += bench_nproc(args, n, task)
    if nproc:
        print_nproc(nproc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": v, "model": args.model, "device": str(device), "rows": rows, "nproc": nproc,
                       "gemm_peak": gemm, "tokenizer": lm.info.get("tokenizer")}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
