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


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dbgpu",
        description="Exact transition kernels of LLM-driven agents and tests of detailed balance.",
    )
    parser.add_argument("--version", action="version", version=f"dbgpu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
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
