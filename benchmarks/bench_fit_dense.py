"""Benchmark: `dbgpu fit` on dense exact kernels, and fit + statistics at 1M states.

Dense: a synthetic exact kernel (`dbgpu.synthetic.dense_kernel(N, noise=0.3)`, every
ordered pair finite: N(N-1) edges) is written as a score directory, and the whole
command `python -m dbgpu fit DIR --out OUT` (interpreter start, imports, reading, fit,
every statistic, writing) runs as a child process: wall seconds, CPU seconds
(user + system) and peak RSS of that child (os.wait4). Goals (issue 14, 2 CPU cores):
N = 1,000 / 2,000 / 5,000 under 10 s / 30 s / 3 min with peak RSS under 1 / 2 / 8 GB.

Baseline, measured in the same run: the loop statistics the old way, by listing every
3-cycle (here the chunked enumeration, `dbgpu.stats.loops(method="sparse")`, which at
least keeps its memory bounded; the old code held every cycle and ran out of memory at
N = 1,000), against the moment algebra that `dbgpu fit` uses, on the same kernel
(`--baseline-max`, default 1,000 states: the enumeration grows as N^3).

Large (`--large`): the 1M-state / 10M-edge random graph with hubs of bench_fit.py
(`dbgpu.synthetic.sparse_kernel`, exact weights; `--noise s` adds N(0, s) to log T, off
detailed balance, so that the fit has work to do), fitted and measured in this process:
fit seconds, statistics seconds, CPU seconds, peak RSS.

    nice -n 10 python benchmarks/bench_fit_dense.py                  # 1,000 / 2,000 / 5,000
    python benchmarks/bench_fit_dense.py --sizes 1000 --large        # and the 1M-state graph
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

from dbgpu import synthetic as sy  # noqa: E402
from dbgpu.data import make_edges, read_score_dir, write_score_dir  # noqa: E402
from dbgpu.graph import analysis_device, mutual_pairs  # noqa: E402
from tables import print_table as table  # noqa: E402

GOALS = {1000: (10, 1.0), 2000: (30, 2.0), 5000: (180, 8.0)}    # seconds, GB


def run_child(cmd: list[str]) -> tuple[float, float, float, str]:
    """Run a command; (wall s, CPU s, peak RSS GB, stderr) of that child alone."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode()
    p.stdout.close()
    p.stderr.close()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed: {err}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 2 ** 20, err


def baseline_loops(d: Path) -> dict:
    """Loop moments by enumerating every 3-cycle vs by the algebra, in this process."""
    from dbgpu.stats import hodge, loops

    e = make_edges(read_score_dir(d))
    n = len(e.states)
    e_fg, e_gf = mutual_pairs(n, e.src, e.dst)
    f, g = e.src[e_fg], e.dst[e_fg]
    _, R = hodge(n, f, g, e.log_w[e_fg] - e.log_w[e_gf])
    out = {}
    for method in ("complete", "dense", "sparse"):
        t0 = time.perf_counter()
        lp, _ = loops(n, f, g, e.log_w[e_fg], e.log_w[e_gf], residual=R, method=method, points=False)
        out[method] = (time.perf_counter() - t0, lp["count"], lp["rms"])
    return out


def bench_dense(n: int, args, work: Path) -> dict:
    d = work / f"dense{n}"
    V, logT = sy.dense_kernel(n, seed=args.seed, noise=0.3)
    write_score_dir(d, sy.state_names(n), logT)
    del logT
    cmd = [sys.executable, "-m", "dbgpu", "fit", str(d), "--out", str(work / f"fit{n}"), "--device", args.device]
    load = os.getloadavg()[0]
    wall, cpu, rss, _ = run_child(cmd)
    st = json.loads((work / f"fit{n}" / "stats.json").read_text())
    goal_s, goal_gb = GOALS.get(n, (None, None))
    row = {"N": n, "edges": st["n_edges"], "wall_s": wall, "cpu_s": cpu, "peak_rss_gb": rss,
           "goal": f"{goal_s} s / {goal_gb} GB" if goal_s else "-",
           "met": (wall < goal_s and rss < goal_gb) if goal_s else None, "load": load,
           "fit_s": st["fit"]["seconds"], "newton_it": st["fit"]["iterations"],
           "loops": st["loops"]["count"], "loop_method": st["loops"]["method"],
           "gradient_fraction": st["hodge"]["gradient_fraction"], "device": st["fit"]["device"]}
    if n <= args.baseline_max:
        b = baseline_loops(d)
        row.update(loops_enum_s=b["sparse"][0], loops_dense_s=b["dense"][0], loops_complete_s=b["complete"][0],
                   loops_agree=bool(b["sparse"][1] == b["complete"][1] == b["dense"][1]
                                    and np.isclose(b["sparse"][2], b["complete"][2], rtol=1e-6)
                                    and np.isclose(b["dense"][2], b["complete"][2], rtol=1e-6)))
    return row


def bench_large(args) -> dict:
    """1M states / 10M edges: fit and every statistic in this process."""
    from dbgpu.data import Edges
    from dbgpu.fit import fit_potential
    from dbgpu.stats import detailed_balance_stats

    dev = analysis_device(args.device)
    t0 = time.perf_counter()
    V, src, dst, logT = sy.sparse_kernel(args.states, seed=args.seed, degree=args.edges / args.states)
    if args.noise:                                             # off detailed balance: a real fit
        logT = logT + np.random.default_rng(args.seed + 1).normal(0.0, args.noise, len(logT))
    gen = time.perf_counter() - t0
    n = args.states
    e = Edges(states=sy.state_names(n), src=src, dst=dst, w=np.exp(logT), log_w=logT, count=None,
              visits=None, kept=np.ones(n, bool), mode="exact")
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fit_potential(n, src, dst, log_w=logT, device=dev)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    st, _ = detailed_balance_stats(e, fit, device=dev)
    t_stats, c_stats = time.perf_counter() - t0, time.process_time() - c0
    m = fit.components.label == 0
    return {"states": n, "edges": len(src), "noise": args.noise, "generate_s": gen, "fit_s": t_fit, "stats_s": t_stats,
            "total_s": t_fit + t_stats, "cpu_s": c_fit + c_stats, "cg_it": fit.info["cg_iterations"], "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "newton_it": fit.info["iterations"], "corr_V": float(np.corrcoef(fit.V[m], V[m])[0, 1]),
            "pairs": st["hodge"]["n_pairs"], "loops": st["loops"]["count"], "loop_method": st["loops"]["method"],
            "gradient_fraction": st["hodge"]["gradient_fraction"],
            "entropy_production": st["entropy_production"]["entropy_production"], "device": dev}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,2000,5000")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-max", type=int, default=1000,
                    help="largest N whose loops are also enumerated one by one (the baseline)")
    ap.add_argument("--large", action="store_true", help="also the 1M-state / 10M-edge graph")
    ap.add_argument("--states", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=10_000_000)
    ap.add_argument("--noise", type=float, default=0.0,
                    help="large: add N(0, noise) to log T (off detailed balance; default 0: exact)")
    ap.add_argument("--work", default=None, help="directory for the data (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fit_dense_"))
    work.mkdir(parents=True, exist_ok=True)
    from dbgpu.provenance import versions

    print(f"# dbgpu fit on dense exact kernels  {time.strftime('%Y-%m-%d %H:%M')}  host {platform.node()}")
    print(f"# device {analysis_device(args.device)}  dtype float64  numpy {np.__version__}  scipy {scipy.__version__}  "
          f"python {platform.python_version()}  cpus {os.cpu_count()}  "
          f"versions {json.dumps(versions())}")
    rows = []
    for n in [int(x) for x in args.sizes.split(",") if x]:
        rows.append(bench_dense(n, args, work))
        print(f"# N={n}: done (load average before the run {rows[-1]['load']:.2f})", file=sys.stderr, flush=True)
    if rows:
        table(rows, [("N", "{}"), ("edges", "{}"), ("wall_s", "{:.1f}"), ("cpu_s", "{:.1f}"),
                     ("peak_rss_gb", "{:.2f}"), ("goal", "{}"), ("met", "{}"), ("load", "{:.2f}"),
                     ("fit_s", "{:.1f}"), ("newton_it", "{}"), ("loops", "{}"), ("loop_method", "{}"),
                     ("loops_complete_s", "{:.3f}"), ("loops_dense_s", "{:.2f}"), ("loops_enum_s", "{:.1f}"),
                     ("loops_agree", "{}"), ("gradient_fraction", "{:.4f}"), ("device", "{}")])
        print("# wall / cpu / peak RSS: the whole `python -m dbgpu fit` child process; load: 1-minute load "
              "average before it started (2 cores; above 2 other work shares them)")
        print("# loops_*_s: the loop moments alone, in this process: complete-graph algebra (what fit uses "
              "here), dense matrix products, and enumerating every 3-cycle (the baseline)")
    if args.large:
        load = os.getloadavg()[0]
        r = bench_large(args)
        r["load"] = load
        table([r], [("states", "{}"), ("edges", "{}"), ("noise", "{}"), ("fit_s", "{:.1f}"), ("stats_s", "{:.1f}"),
                    ("total_s", "{:.1f}"), ("cpu_s", "{:.1f}"), ("peak_rss_gb", "{:.2f}"), ("newton_it", "{}"),
                    ("cg_it", "{}"), ("corr_V", "{:.6f}"),
                    ("pairs", "{}"), ("loops", "{}"), ("loop_method", "{}"), ("gradient_fraction", "{:.6f}"),
                    ("entropy_production", "{:.3g}"), ("load", "{:.2f}"), ("device", "{}")])
        print("# large: fit + every statistic in this process (goal: under 120 s); generating the graph "
              f"took {r['generate_s']:.1f} s (not counted)")


if __name__ == "__main__":
    main()
