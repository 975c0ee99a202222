"""dbgpu: exact transition kernels of LLM-driven agents and tests of detailed balance.

Stages, data flowing one way (each one a small module):

    models -> tasks -> scoring / sampling -> data -> fit -> stats -> report

with `cli` a thin layer on top. See README.md and SPEC.md.
"""

__version__ = "0.1.0"
