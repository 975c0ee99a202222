"""Calibration: do the error bars cover the truth, are the null p-values uniform?

Not a timing benchmark: synthetic chains with a known potential, sampled with the
paper's protocol, analysed as `dbgpu fit` does (`--weights counts` unless said):

1. Coverage of sigma: the share of main-component states with |V_fit - V_true| < k sigma
   (k = 1, 2; nominal 68.3% and 95.4%), for the Laplace sigma and the bootstrap sigma,
   over several sampled chains (`dbgpu.synthetic.sparse_kernel`, 300 states, 3,000 queries
   per state).
2. Null p-values: a 20-state chain in detailed balance (`dense_kernel`, 3,000 queries per
   state) over many seeds: the share of p-values below 0.05 and 0.10 (nominal 5%, 10%) and
   their mean (nominal 0.5) per statistic; the same chain with cycle flux (`curl`).
3. The Metropolis chain of issue 14 (3,000 states, 300,000 proposals, exact detailed
   balance): the observed statistics against their null, with the paper's weights and
   with counts.

    python benchmarks/calibrate_uncertainty.py            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbgpu import synthetic as sy  # noqa: E402
from dbgpu import uncertainty as u  # noqa: E402
from dbgpu.data import make_edges  # noqa: E402
from dbgpu.fit import fit_potential  # noqa: E402
from dbgpu.stats import detailed_balance_stats  # noqa: E402


def chain(seed: int, *, n: int = 300, per_state: int = 3000, weights: str = "counts"):
    V, src, dst, logT = sy.sparse_kernel(n, seed=100, degree=8)
    t = sy.sampled_transitions(n, src, dst, logT, queries=n * per_state, seed=seed)
    e = make_edges(t, weights=weights)
    fit = fit_potential(n, e.src, e.dst, log_w=e.log_w)
    m = fit.components.label == 0
    return t, e, fit, np.where(m, V - V[m].mean(), np.nan)


def coverage(args) -> None:
    rows = {"laplace": [], "bootstrap": []}
    for seed in range(args.seeds):
        t, e, fit, truth = chain(seed)
        err = np.abs(fit.V - truth)
        sl, _ = u.laplace(e, fit)
        rows["laplace"].append((err, sl))
        if seed < args.boot_seeds:
            sb, _ = u.bootstrap_potentials(t, fit, replicates=args.boot, seed=seed, weights="counts",
                                           reject="high", threshold=0)
            rows["bootstrap"].append((err, sb))
    print("\n## 1. Coverage of sigma (300-state chains, 3,000 queries per state, --weights counts)\n")
    print("| method | chains | states | within 1 sigma (68.3%) | within 2 sigma (95.4%) | median sigma |")
    print("|---|---|---|---|---|---|")
    for name, pairs in rows.items():
        err = np.concatenate([e for e, _ in pairs])
        sig = np.concatenate([s for _, s in pairs])
        ok = np.isfinite(err) & np.isfinite(sig)
        c1, c2 = np.mean(err[ok] < sig[ok]), np.mean(err[ok] < 2 * sig[ok])
        extra = f" (B = {args.boot})" if name == "bootstrap" else ""
        print(f"| {name}{extra} | {len(pairs)} | {ok.sum()} | {100 * c1:.1f}% ± {100 * np.sqrt(c1 * (1 - c1) / ok.sum()):.1f} "
              f"| {100 * c2:.1f}% | {np.median(sig[ok]):.3f} |")


def nulls(args) -> None:
    print(f"\n## 2. Null p-values (20-state chains, 3,000 queries per state, B = {args.null} replicates)\n")
    print("| chain | seeds | statistic | p < 0.05 | p < 0.10 | mean p | median p |")
    print("|---|---|---|---|---|---|---|")
    for curl, seeds in ((0.0, args.null_seeds), (0.1, args.curl_seeds), (0.5, args.curl_seeds)):
        ps = [sy.null_p_values(s, curl=curl, replicates=args.null)[0] for s in range(seeds)]
        label = "detailed balance" if curl == 0 else f"cycle flux, curl {curl}"
        for k in ps[0]:
            v = np.array([p[k] for p in ps])
            print(f"| {label} | {seeds} | {k} | {100 * np.mean(v < 0.05):.0f}% | {100 * np.mean(v < 0.10):.0f}% | "
                  f"{v.mean():.2f} | {np.median(v):.2f} |")


def metropolis(args) -> None:
    print(f"\n## 3. Metropolis chain in detailed balance (3,000 states, 300,000 proposals, B = {args.null})\n")
    V, src, dst, logT = sy.metropolis_kernel(3000, seed=0, degree=8)
    t = sy.sampled_transitions(3000, src, dst, logT, queries=300_000, seed=1)
    print("| weights | statistic | observed | null mean ± sd | p |")
    print("|---|---|---|---|---|")
    for w in ("paper", "counts"):
        e = make_edges(t, weights=w)
        fit = fit_potential(3000, e.src, e.dst, log_w=e.log_w)
        st, _ = detailed_balance_stats(e, fit, points=False)
        nul = u.null_distribution(t, fit, st, replicates=args.null, seed=0, weights=w, reject="high", threshold=0)
        for k, v in nul["statistics"].items():
            print(f"| {w} | {k} | {v['observed']:.4f} | {v['null_mean']:.4f} ± {v['null_sd']:.4f} | "
                  f"{v['p_value']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="chains for the Laplace coverage")
    ap.add_argument("--boot-seeds", type=int, default=4, help="chains for the bootstrap coverage")
    ap.add_argument("--boot", type=int, default=100, help="bootstrap replicates")
    ap.add_argument("--null", type=int, default=50, help="null replicates")
    ap.add_argument("--null-seeds", type=int, default=40)
    ap.add_argument("--curl-seeds", type=int, default=10)
    ap.add_argument("--skip-metropolis", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"# dbgpu calibration of error bars and null distributions  {time.strftime('%Y-%m-%d %H:%M')}  "
          f"host {platform.node()}  numpy {np.__version__}")
    coverage(args)
    nulls(args)
    if not args.skip_metropolis:
        metropolis(args)
    print(f"\n# {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
