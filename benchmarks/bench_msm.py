"""Benchmark: the whole `dbgpu fit` against deeptime's reversible maximum-likelihood MSM.

The least-action fit IS the reversible maximum-likelihood Markov model with counts c = w
(docs/msm.md), so both programs solve the same equations on the same inputs:

- dense exact kernels (synthetic, `dbgpu.synthetic.dense_kernel`: detailed balance plus
  `noise` nats of independent Gaussian noise per entry, potential spread `sigma`), written
  as a score directory; deeptime gets the dense count matrix exp(logT) off the diagonal;
- a sampled 10,000-state chain (`dbgpu.synthetic.metropolis_kernel`, degree 8; and
  `sparse_kernel`, whose hubs leave most rows' mass outside the state set, so a smaller
  main component), 500,000 queries with the paper's protocol, written as
  transitions.jsonl and fitted with `--weights counts`;
  deeptime gets the same weights w = N(f->g)/n_f as a sparse count matrix
  (`sparse=True`). (deeptime on the raw counts N is a different model unless every n_f
  is equal: docs/msm.md.)

dbgpu: `python -m dbgpu fit INPUT --out DIR --threads 1 [--weights counts]`, timed as a
subprocess from start to exit (interpreter start, imports, reading, fit, every statistic,
the reversible model and its eigenvalues, writing); also its solver alone in-process
(`fit_potential` + `reversible_msm`). deeptime: `MaximumLikelihoodMSM(reversible=True)
.fit(TransitionCountModel(C))` alone, timed inside a worker subprocess (count matrix built
beforehand, imports not counted: generous to deeptime), killed at --cap seconds.

Accuracy: max_f |log pi_f - log pi_ref_f| over the main component, pi_ref = dbgpu's pi,
whose own error is certified by its stationarity residual (the fit's gradient: the
largest |log x_f - log(r_f u_f)|, printed). deeptime is run (1) as shipped (maxerr 1e-8,
maxiter 1e6) and (2) to the target accuracy (--target, default 1e-8): maxerr 1e-15 and
maxiter 100, 320, 1000, 3200, ..., 10^8 (each run from scratch, in one worker process) until its
error is below the target, or the worker is killed at --cap seconds; the table gives the
last finished run (its maxiter, seconds and error) and the ladder's total.

    nice -n 10 python benchmarks/bench_msm.py                    # every case
    python benchmarks/bench_msm.py --cases dense200 --cap 60
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tables import print_table  # noqa: E402

from dbgpu import synthetic as sy  # noqa: E402
from dbgpu.version import __version__  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: name -> (kind, states, options)
CASES = {
    "dense200": ("dense", 200, {"sigma": 1.0, "noise": 0.5}),
    "dense200-wide": ("dense", 200, {"sigma": 3.0, "noise": 2.0}),
    "dense1000": ("dense", 1000, {"sigma": 1.0, "noise": 0.5}),
    "dense1000-wide": ("dense", 1000, {"sigma": 3.0, "noise": 2.0}),
    "sampled10k": ("sampled", 10_000, {"degree": 8.0, "queries": 500_000}),
    "sampled10k-hubs": ("hubs", 10_000, {"degree": 8.0, "queries": 500_000}),
}


# --------------------------------------------------------------------------- inputs


def make_case(name: str, work: Path, seed: int):
    """(input path for `dbgpu fit`, extra CLI args, count-matrix file for deeptime, info)."""
    kind, n, o = CASES[name]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if kind == "dense":
        from dbgpu.data import write_score_dir

        _, logT = sy.dense_kernel(n, seed=seed, sigma=o["sigma"], noise=o["noise"])
        write_score_dir(d / "score", sy.state_names(n), logT)
        C = np.exp(logT)
        np.fill_diagonal(C, 0.0)
        np.save(d / "C.npy", C)
        off = logT[~np.eye(n, dtype=bool)]
        info = {"edges": n * (n - 1), "logT_range": float(off.max() - off.min()),
                "what": f"synthetic dense exact kernel, sigma {o['sigma']}, noise {o['noise']} nats"}
        return d / "score", [], d / "C.npy", info
    from dbgpu.data import make_edges, read_transitions_jsonl

    if kind == "hubs":
        _, src, dst, logT = sy.sparse_kernel(n, seed=seed, degree=o["degree"])
    else:
        _, src, dst, logT = sy.metropolis_kernel(n, seed=seed, degree=o["degree"])
    f, g = sy.sample(n, src, dst, np.exp(logT), queries=o["queries"], seed=seed + 1)
    inp = sy.write_transitions_jsonl(d / "transitions.jsonl", sy.state_names(n), f, g)
    e = make_edges(read_transitions_jsonl(inp), weights="counts")
    sp.save_npz(d / "C.npz", sp.csr_matrix((e.w, (e.src, e.dst)), shape=(len(e.states), len(e.states))))
    what = ("sparse_kernel (hubs; most answers fall outside the state set)" if kind == "hubs"
            else "metropolis_kernel (Metropolis-Hastings on a random graph)")
    info = {"edges": int(len(e.src)), "logT_range": float(e.log_w.max() - e.log_w.min()),
            "what": f"synthetic {what}, degree {o['degree']}, {o['queries']} queries (paper protocol: uniform "
                    "sources), --weights counts; edges and logT_range of the sampled w"}
    return inp, ["--weights", "counts"], d / "C.npz", info


# --------------------------------------------------------------------------- dbgpu


def run_dbgpu(inp: Path, extra: list[str], out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "dbgpu", "fit", str(inp), "--out", str(out), "--threads", "1",
                        "--device", "cpu", *extra], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"dbgpu fit failed: {p.stderr.strip()}")
    pi = json.loads((out / "msm.json").read_text())
    st = json.loads((out / "stats.json").read_text())
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "pi": pi, "residual": st["msm"]["stationarity_residual"], "fit_converged": st["fit"]["converged"],
            "main": st["msm"]["n_states"]}


def dbgpu_solver(inp: Path, extra: list[str]) -> float:
    """fit_potential + reversible_msm in-process, reading and weighting not counted."""
    import torch

    from dbgpu.data import make_edges, read_input
    from dbgpu.fit import fit_potential
    from dbgpu.msm import reversible_msm

    torch.set_num_threads(1)
    e = make_edges(read_input(inp), weights="counts" if extra else "paper")
    t0 = time.perf_counter()
    fit = fit_potential(len(e.states), e.src, e.dst, log_w=e.log_w, device="cpu")
    reversible_msm(len(e.states), e.src, e.dst, e.log_w, fit.V)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- deeptime


def deeptime_worker(cfile: str, ref_file: str, mode: str, target: float, out: str) -> None:
    """Fit deeptime on the count matrix in cfile: once as shipped (mode "default"), or on
    the maxiter ladder until max |log pi - log pi_ref| <= target (mode "ladder"); append
    one JSON line per fit to `out` (a kill keeps the lines written)."""
    import threadpoolctl

    logging.getLogger("deeptime").setLevel(logging.ERROR)
    from deeptime.markov import TransitionCountModel
    from deeptime.markov.msm import MaximumLikelihoodMSM

    C = sp.load_npz(cfile) if cfile.endswith(".npz") else np.load(cfile)
    log_ref = np.load(ref_file)                                # (n,) log pi_ref, NaN off the main component
    runs = [(1e-8, 10 ** 6)] if mode == "default" else []
    if mode == "ladder":                                       # 100, 320, 1000, 3200, ..., 10^8
        runs = [(1e-15, int(float(f"{10 ** (2 + k / 2):.2g}"))) for k in range(13)]
    for maxerr, maxiter in runs:
        est = MaximumLikelihoodMSM(reversible=True, sparse=sp.issparse(C), maxerr=maxerr, maxiter=maxiter,
                                   use_lcc=True)
        with threadpoolctl.threadpool_limits(1), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0, cpu0 = time.perf_counter(), time.process_time()
            m = est.fit(TransitionCountModel(C)).fetch_model()
            dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        sym = m.count_model.state_symbols
        same = len(sym) == int(np.isfinite(log_ref).sum()) and np.all(np.isfinite(log_ref[sym]))
        err = float(np.abs(np.log(m.stationary_distribution) - log_ref[sym]).max()) if same else float("inf")
        line = {"maxerr": maxerr, "maxiter": maxiter, "seconds": dt, "cpu": cpu, "err": err,
                "converged": not any("converge" in str(w.message) for w in caught)}
        with open(out, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        if err <= target:
            break


def run_deeptime(cfile: Path, ref_file: Path, mode: str, args, work: Path) -> tuple[list[dict], bool]:
    """The worker's fits (one per line) and whether it was killed at --cap seconds."""
    out = work / f"dt-{mode}.jsonl"
    out.unlink(missing_ok=True)
    killed = False
    try:
        subprocess.run([sys.executable, __file__, "--deeptime-worker", str(cfile), str(ref_file), mode,
                        repr(args.target), str(out)], check=True, timeout=args.cap,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    except subprocess.TimeoutExpired:
        killed = True
    lines = out.read_text().splitlines() if out.is_file() else []
    return [json.loads(x) for x in lines], killed


# --------------------------------------------------------------------------- one case


def bench_case(name: str, args, work: Path) -> dict:
    inp, extra, cfile, info = make_case(name, work, args.seed)
    states = json.loads((inp / "states.json").read_text()) if inp.is_dir() else None
    r = {"case": name, "states": CASES[name][1], **info}
    # alternate: dbgpu, deeptime default, dbgpu again (the better of two runs: a loaded machine)
    d1 = run_dbgpu(inp, extra, work / name / "fit")
    if states is None:
        states = list(d1["pi"])
    r.update(main=d1["main"], residual=d1["residual"], fit_converged=d1["fit_converged"])
    r["solver_s"] = dbgpu_solver(inp, extra)
    log_ref = np.array([np.log(d1["pi"][st]) if d1["pi"][st] is not None else np.nan for st in states])
    ref_file = work / name / "log_pi_ref.npy"
    np.save(ref_file, log_ref)
    dflt, killed = run_deeptime(cfile, ref_file, "default", args, work / name)
    d2 = run_dbgpu(inp, extra, work / name / "fit2")
    r["dbgpu_s"], r["dbgpu_cpu"] = min(d1["wall"], d2["wall"]), min(d1["cpu"], d2["cpu"])
    if not dflt:
        r["dt_default"] = f"> {args.cap:.0f} s (killed)"
    else:
        r["dt_default"] = f"{dflt[0]['seconds']:.3g} s"
        r["dt_default_err"] = dflt[0]["err"]
        r["dt_default_conv"] = dflt[0]["converged"]
    ladder, killed = run_deeptime(cfile, ref_file, "ladder", args, work / name)
    if ladder:
        last = ladder[-1]
        r["dt_iters"], r["dt_target_s"], r["dt_target_err"] = last["maxiter"], last["seconds"], last["err"]
    reached = bool(ladder) and ladder[-1]["err"] <= args.target
    r["dt_reached"] = reached if reached or killed else "gave up"
    r["ratio"] = r["dt_target_s"] / r["dbgpu_s"] if reached else None
    r["solver_ratio"] = r["dt_target_s"] / r["solver_s"] if reached else None
    r["dt_ladder_s"] = sum(x["seconds"] for x in ladder)
    return r


def print_header(args) -> None:
    import deeptime

    print(f"# bench_msm: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.node()}, "
          f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
          f"{platform.python_version()}; dbgpu {__version__}, deeptime {deeptime.__version__}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}; float64 on the CPU, one thread each; "
          f"target max|log pi - log pi_ref| <= {args.target:g}; cap {args.cap:g} s per deeptime case")


COLS = [("case", "{}"), ("states", "{}"), ("edges", "{}"), ("main", "{}"), ("logT_range", "{:.3g}"),
        ("dbgpu_s", "{:.2f}"), ("dbgpu_cpu", "{:.2f}"), ("solver_s", "{:.3f}"), ("residual", "{:.1e}"),
        ("dt_default", "{}"), ("dt_default_err", "{:.1e}"), ("dt_default_conv", "{}"),
        ("dt_target_s", "{:.3g}"), ("dt_iters", "{}"), ("dt_target_err", "{:.1e}"), ("dt_reached", "{}"),
        ("dt_ladder_s", "{:.3g}"), ("ratio", "{:.3g}"), ("solver_ratio", "{:.3g}")]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--deeptime-worker":
        deeptime_worker(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ", ".join(CASES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=1e-8, help="accuracy: max |log pi - log pi_ref|")
    ap.add_argument("--cap", type=float, default=120.0, help="seconds per deeptime case (default 120)")
    ap.add_argument("--work", default=None, help="directory for the data (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_msm_"))
    work.mkdir(parents=True, exist_ok=True)
    print_header(args)
    rows = []
    for name in args.cases.split(","):
        rows.append(bench_case(name.strip(), args, work))
        print(f"# {name}: done", file=sys.stderr, flush=True)
    for r in rows:
        print(f"# {r['case']}: {r['what']}")
    print_table(rows, COLS)


if __name__ == "__main__":
    main()
