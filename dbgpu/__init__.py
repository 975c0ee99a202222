"""dbgpu: exact transition kernels of LLM-driven agents and tests of detailed balance.

Stages, data flowing one way (each one a small module):

    models -> tasks -> scoring / sampling -> data -> fit -> stats -> report

with `commands` (one module per CLI command) on top and `cli` a thin layer over them.
See README.md and SPEC.md.
"""

from dbgpu.version import __version__

__all__ = ["__version__"]
