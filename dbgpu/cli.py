"""Command line: argument parsing and error reporting only; the work lives in the stages.

Each subcommand is a pair `_add_<name>(subparsers)` / `_cmd_<name>(args)`. Heavy
imports (torch, transformers) happen inside the handlers so that `dbgpu --help` and
input errors answer at once.
"""

from __future__ import annotations

import argparse
import sys

from dbgpu import __version__
from dbgpu.errors import DbgpuError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr, exit status 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


# --------------------------------------------------------------------------- commands


def _cmd_placeholder(args) -> int:  # replaced as the stages land
    raise DbgpuError(f"'{args.command}' is not implemented yet")


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit", help="least-action potential and detailed-balance statistics",
        description="Fit the least-action potential of a paper JSON file, a transitions.jsonl "
                    "or a score directory; write potential.json, stats.json and fit_points.npz.")
    p.add_argument("input", help="paper .json (either shape), transitions .jsonl, or a score directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--reject", choices=("high", "low"), default="high",
                   help="paper weights: high_reject N0 = 20000/n_states, or low_reject N0 = "
                        "out-count (default high)")
    p.add_argument("--threshold", type=float, default=0, metavar="N",
                   help="low_reject: drop states whose out-count is <= N (default 0)")
    p.add_argument("--weights", choices=("paper", "counts"), default="paper",
                   help="sampled inputs: the paper's min(1, N/N0), or counts N(f->g)/n_f "
                        "(default paper); exact kernels always use T")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the fit runs (default auto: CUDA when available)")
    p.add_argument("--method", choices=("newton", "lbfgs"), default="newton",
                   help="optimiser (default newton: Newton-CG on the graph Laplacian)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for torch (default 0: torch's default); 1 is fastest on a "
                        "machine whose cores are busy with other work")
    p.set_defaults(func=_cmd_fit)


def _cmd_fit(args) -> int:
    import warnings

    from dbgpu.analysis import fit_input

    if args.threads < 0:
        raise DbgpuError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)   # this process only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = fit_input(args.input, args.out, reject=args.reject, threshold=args.threshold,
                          weights=args.weights, device=args.device, method=args.method)
    for w in caught:
        print(f"dbgpu fit: warning: {w.message}", file=sys.stderr)
    pw, comp = stats["pairwise"], stats["components"]
    print(f"{stats['n_states']} states, {stats['n_edges']} edges; main component "
          f"{comp['main_size']} states ({comp['count']} components); action "
          f"{stats['action']:.6g}; pairwise r {_fmt(pw['r'])}, slope {_fmt(pw['slope'])}; "
          f"Hodge gradient fraction {_fmt(stats['hodge']['gradient_fraction'])}")
    print(f"wrote {args.out}/potential.json, stats.json, fit_points.npz")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="figures (PNG, PDF) and report.md for a fit directory",
                       description="Draw the figures and write report.md for a directory "
                                   "holding a `dbgpu fit` output.")
    p.add_argument("dir", help="directory with potential.json, stats.json, fit_points.npz")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from dbgpu.report import write_report

    print(f"wrote {write_report(args.dir)}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dbgpu",
        description="Exact transition kernels of LLM-driven agents and tests of detailed balance.",
    )
    parser.add_argument("--version", action="version", version=f"dbgpu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_fit(sub)
    _add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DbgpuError as e:
        print(f"dbgpu {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dbgpu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
