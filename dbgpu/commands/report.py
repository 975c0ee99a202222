"""`dbgpu report`: figures (PNG, PDF) and report.md for a directory holding a fit."""

from __future__ import annotations

import os
from pathlib import Path


def report_job(dir: str | os.PathLike) -> Path:
    """Draw the figures and write report.md into `dir` (see `dbgpu.report`), as the
    directory's only writer; the report's path."""
    from dbgpu.errors import DbgpuError
    from dbgpu.io import locked_dir
    from dbgpu.report import write_report

    if not Path(dir).is_dir():
        raise DbgpuError(f"report directory not found: {dir}")
    with locked_dir(dir):
        return write_report(dir)
