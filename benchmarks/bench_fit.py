"""Benchmark: the whole `dbgpu fit` command against the paper's fitting algorithm.

Same synthetic data, same run. A detailed-balance kernel on a random graph with hubs
(dbgpu.synthetic.sparse_kernel) is sampled with the paper's protocol (uniform source,
target from the kernel) until the wanted number of recorded transitions, and written
as a paper JSON file (shape 1). Then

- dbgpu: `python -m dbgpu fit input.json --out ... --weights counts --threads 1`
  (one CPU thread, like the baseline; on CUDA the thread count hardly matters), timed as a
  subprocess from start to exit (interpreter start, imports, reading, fit, every
  statistic, writing);
- paper: benchmarks/paper_fit.py on the same weighted edges (w = N/n_f), timed for the
  fit alone (reading and weighting not counted: generous to the baseline).

The paper's L-BFGS-B with its default tolerances stops early (projected gradient below
pgtol = 1e-5: the gradient of S is O(1/N_src) small), at a higher action. So it is run
twice: as published ("paper"), and without the early stop (gtol = ftol = 0) until its
action is within --rel-gap of dbgpu's ("conv": the time the paper's algorithm needs
for an equal action).

Times are wall seconds and CPU seconds (user + system; the dbgpu child's from
getrusage): on a shared machine CPU time is the steadier measure, as both sides run
on one thread.

Both final actions are S = (1/N_src) sum w K(V_f - V_g) over all edges: the paper's at
its finite potential, dbgpu's its infimum (inter-component edges -> 0); the "main" column
restricts the sum to the edges inside the largest strongly connected component, the
states whose potential dbgpu reports.

    nice -n 10 python benchmarks/bench_fit.py                 # both sizes
    python benchmarks/bench_fit.py --sizes paper --skip-paper # dbgpu only
    python benchmarks/bench_fit.py --cuda-large               # 1M states / 10M edges
    python benchmarks/bench_fit.py --cuda-large --states 20000 --edges 200000 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dbgpu import synthetic as sy  # noqa: E402
from dbgpu.data import count_weights, read_paper_json  # noqa: E402
from dbgpu.devices import resolve_device  # noqa: E402
from dbgpu.fit import action, fit_potential  # noqa: E402
from paper_fit import paper_fit  # noqa: E402
from tables import print_table as table  # noqa: E402

SIZES = {  # name: (states, recorded transitions, mean degree of the kernel's graph)
    "paper": (7484, 50228, 6.0),
    "large": (50000, 500000, 8.0),
}


def _sample_states(n_gen: int, transitions: int, degree: float, seed: int):
    """Sample `transitions` recorded answers on an n_gen-state kernel: (states seen, f, g)."""
    V, src, dst, logT = sy.sparse_kernel(n_gen, seed=seed, degree=degree)
    T = np.exp(logT)
    cover = np.bincount(src, weights=T, minlength=n_gen).mean()
    f, g = sy.sample(n_gen, src, dst, T, queries=int(transitions / cover * 1.2) + 1000, seed=seed + 1)
    rec = np.flatnonzero(g >= 0)[:transitions]                 # the first recorded answers
    if len(rec) < transitions:
        raise SystemExit("sampler produced too few transitions; raise the query count")
    return len(np.unique(np.r_[f[rec], g[rec]])), f[rec], g[rec]


def make_input(path: Path, n: int, transitions: int, degree: float, seed: int) -> int:
    """Write a sampled paper JSON file in which about n states appear (the generator's
    state count is rescaled until the states actually visited number n within 0.2%);
    return the generator's state count."""
    n_gen = n
    for _ in range(3):                                          # secant steps on n_gen
        seen, f, g = _sample_states(n_gen, transitions, degree, seed)
        if abs(seen - n) <= n // 500:
            break
        n_gen = int(round(n_gen * n / seen))
    sy.write_paper_json(path, sy.state_names(n_gen), f, g)
    return n_gen


def run_dbgpu(inp: Path, out: Path, device: str, method: str, threads: int):
    """Run the command; return (wall seconds, CPU seconds of the child, stats.json)."""
    cmd = [sys.executable, "-m", "dbgpu", "fit", str(inp), "--out", str(out), "--weights",
           "counts", "--device", device, "--method", method, "--threads", str(threads)]
    u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)
    if r.returncode:
        raise SystemExit(f"dbgpu fit failed: {r.stderr}")
    return dt, cpu, json.loads((out / "stats.json").read_text())


def bench_size(name: str, args, work: Path) -> dict:
    n, transitions, degree = SIZES[name]
    inp = work / f"{name}.json"
    make_input(inp, n, transitions, degree, args.seed)
    t = read_paper_json(inp)
    e = count_weights(t)                                       # the same weights for both
    n_states = len(t.states)
    row = {"size": name, "states": n_states, "transitions": int(t.count.sum()),
           "edges": int(len(e.src))}
    dt, cpu, st = run_dbgpu(inp, work / f"{name}-fit", args.device, "newton", args.threads)
    row.update(dbgpu_s=dt, dbgpu_cpu=cpu, dbgpu_action=st["action"], dbgpu_action_main=st["action_main"],
               dbgpu_fit_s=st["fit"]["seconds"], dbgpu_iter=st["fit"]["iterations"],
               dbgpu_converged=st["fit"]["converged"], main=st["components"]["main_size"],
               device=st["fit"]["device"])
    if args.compare_lbfgs:
        dt2, _, st2 = run_dbgpu(inp, work / f"{name}-fit-lbfgs", args.device, "lbfgs", args.threads)
        row.update(lbfgs_s=dt2, lbfgs_action=st2["action"], lbfgs_iter=st2["fit"]["iterations"],
                   lbfgs_converged=st2["fit"]["converged"])
    if not args.skip_paper:
        Vp, Sp, info = paper_fit(n_states, e.src, e.dst, e.w)
        # the paper's potential on the main component's internal edges (same 1/N_src)
        fit = fit_potential(n_states, e.src, e.dst, e.w)       # only for the component labels
        lab = fit.components.label
        me = (lab[e.src] == 0) & (lab[e.dst] == 0)
        Sp_main = action(Vp, e.src[me], e.dst[me], e.w[me], n_src=fit.n_src)
        Vd = json.loads((work / f"{name}-fit" / "potential.json").read_text())
        Vd = np.array([np.nan if v is None else v for v in Vd.values()])
        m = lab == 0
        dv = (Vp[m] - Vp[m].mean()) - Vd[m]
        row.update(paper_s=info["seconds"], paper_action=Sp, paper_action_main=Sp_main,
                   paper_iter=info["iterations"], paper_evals=info["evaluations"],
                   paper_msg=info["message"], speedup=info["seconds"] / dt,
                   paper_cpu=info["cpu_seconds"], speedup_cpu=info["cpu_seconds"] / cpu,
                   max_abs_dV_main=float(np.abs(dv).max()))
        if not args.skip_converged:
            # the same algorithm without its early stop, timed to dbgpu's action
            target = st["action"] * (1 + args.rel_gap)
            _, Sc, ci = paper_fit(n_states, e.src, e.dst, e.w, target=target)
            row.update(conv_s=ci["seconds"], conv_evals=ci["evaluations"], conv_action=Sc,
                       conv_reached=ci["reached"], conv_speedup=ci["seconds"] / dt,
                       conv_cpu=ci["cpu_seconds"], conv_speedup_cpu=ci["cpu_seconds"] / cpu)
    return row


def print_header(device: str, threads: int | None = None) -> None:
    print(f"# dbgpu fit benchmark  {time.strftime('%Y-%m-%d %H:%M')}  host {platform.node()}")
    print(f"# device {device}  dtype float64  torch {torch.__version__}  numpy {np.__version__}  "
          f"scipy {scipy.__version__}  python {platform.python_version()}  "
          f"dbgpu threads {threads or torch.get_num_threads()}  load avg {os.getloadavg()[0]:.2f}")
    if torch.cuda.is_available():
        print(f"# cuda {torch.cuda.get_device_name(0)}")


def print_table(rows: list[dict]) -> None:
    cols = [("size", "{}"), ("states", "{}"), ("transitions", "{}"), ("edges", "{}"),
            ("main", "{}"), ("dbgpu_s", "{:.2f}"), ("dbgpu_cpu", "{:.2f}"), ("dbgpu_fit_s", "{:.3f}"),
            ("dbgpu_iter", "{}"), ("paper_s", "{:.1f}"), ("paper_cpu", "{:.1f}"), ("paper_iter", "{}"),
            ("speedup", "{:.1f}x"), ("speedup_cpu", "{:.1f}x"),
            ("dbgpu_action", "{:.10f}"), ("paper_action", "{:.10f}"),
            ("dbgpu_action_main", "{:.10f}"), ("paper_action_main", "{:.10f}"),
            ("max_abs_dV_main", "{:.3g}"), ("conv_s", "{:.1f}"), ("conv_cpu", "{:.1f}"),
            ("conv_evals", "{}"), ("conv_action", "{:.10f}"), ("conv_speedup", "{:.1f}x"),
            ("conv_speedup_cpu", "{:.1f}x"),
            ("lbfgs_s", "{:.2f}"), ("lbfgs_action", "{:.10f}"),
            ("lbfgs_iter", "{}")]
    table(rows, cols)
    for r in rows:
        if "paper_msg" in r:
            print(f"# {r['size']}: paper L-BFGS-B (default tolerances) stopped after "
                  f"{r['paper_iter']} iterations ({r['paper_evals']} evaluations): {r['paper_msg']}")
        if "conv_s" in r:
            print(f"# {r['size']}: paper L-BFGS-B without early stop "
                  f"{'reached' if r['conv_reached'] else 'did NOT reach'} dbgpu's action "
                  f"(+rel gap) after {r['conv_evals']} evaluations, {r['conv_s']:.1f} s")


def cuda_large(args) -> None:
    """1M states / 10M edges (or --states/--edges): the fit alone, seconds and peak memory."""
    dev = resolve_device(args.device)
    n, E = args.states, args.edges
    t0 = time.perf_counter()
    V, src, dst, logT = sy.sparse_kernel(n, seed=args.seed, degree=E / n)
    gen = time.perf_counter() - t0
    print_header(str(dev))
    print(f"# generated {n} states, {len(src)} directed edges in {gen:.1f} s (exact weights)")
    w = np.exp(logT)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    fit = fit_potential(n, src, dst, w, device=str(dev))
    dt = time.perf_counter() - t0
    m = fit.components.label == 0
    r = np.corrcoef(fit.V[m], V[m])[0, 1]
    peak = (f"{torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB GPU"
            if dev.type == "cuda" else
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process)")
    print(f"| states | edges | main | device | fit s | Newton it | CG it | converged | action | "
          f"corr(V, truth) | peak memory |")
    print(f"| {n} | {len(src)} | {int(m.sum())} | {dev} | {dt:.2f} | {fit.info['iterations']} | "
          f"{fit.info['cg_iterations']} | {fit.info['converged']} | {fit.action:.10f} | {r:.6f} | "
          f"{peak} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="paper,large", help="comma list of: " + ", ".join(SIZES))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="dbgpu fit --threads (default 1: the one core the paper's loop uses)")
    ap.add_argument("--skip-paper", action="store_true", help="dbgpu only")
    ap.add_argument("--compare-lbfgs", action="store_true", help="also run dbgpu fit --method lbfgs")
    ap.add_argument("--skip-converged", action="store_true",
                    help="skip the paper's algorithm run without early stop to dbgpu's action")
    ap.add_argument("--rel-gap", type=float, default=1e-9,
                    help="'equal action': within this relative gap of dbgpu's (default 1e-9)")
    ap.add_argument("--cuda-large", action="store_true", help="1M states / 10M edges, fit only")
    ap.add_argument("--states", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=10_000_000)
    ap.add_argument("--work", default=None, help="directory for the data (default: a temp dir)")
    args = ap.parse_args()
    if args.cuda_large:
        cuda_large(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fit_"))
    work.mkdir(parents=True, exist_ok=True)
    print_header(str(resolve_device(args.device)), args.threads)
    rows = []
    for name in args.sizes.split(","):
        rows.append(bench_size(name.strip(), args, work))
        print(f"# {name}: done", file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
