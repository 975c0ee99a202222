"""`dbgpu report`: figures (PNG, PDF) and report.md for a directory holding a fit."""

from __future__ import annotations

import os
from pathlib import Path


def report_job(dir: str | os.PathLike) -> Path:
    """Draw the figures and write report.md into `dir` (see `dbgpu.report`); its path."""
    from dbgpu.report import write_report

    return write_report(dir)
