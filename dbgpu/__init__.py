"""dbgpu: exact transition kernels of LLM-driven agents and tests of detailed balance.

Python API (only these top-level names are promised; every module below them may move):

    load_model(name, *, device, dtype, cache_dir)  load a model and its tokenizer once, for kernel / exploration
    get_task(spec, *, template, answer_prefix)     a built-in task (word100, formula) or a plugin, with its prompt
    kernel(model, task, states, ...)               the exact kernel log T of a state set (dbgpu score) -> Kernel
    Kernel                                         log T (N x N), states, prompts, meta; .save(dir), Kernel.load(dir)
    potential(source, *, weights, reject, ...)     least-action potential and statistics (dbgpu fit) -> Potential
    Potential                                      V per state (None: unbounded), sigma, stats; .save, .load
    draw_report(source, *, out)                    figures (PNG, PDF) and report.md of a fit (dbgpu report)
    explanation(source, *, task, folds, seed)      V regressed on the task's state features (dbgpu explain)
    exploration(model, task, *, steps, out, ...)   run the sampling agent, logging every query (dbgpu explore)
    Exploration                                    an explore run: log, summary, discovered states; .states()
    compare(models, states, *, out, ...)           one state set under several models x templates (dbgpu compare)
    Comparison                                     the compared potentials: pairs, runs, spread of V
    DbgpuError                                     bad input: the one-line message the CLI prints
    DbgpuWarning                                   something to know about the input that does not stop the work
    __version__                                    the installed dbgpu version

    import dbgpu
    k = dbgpu.kernel("smollm2-135m", "word100", ["ATTITUDE", "PERSONAL", "TURKEY"])
    pot = dbgpu.potential(k)
    print(pot)

Kernel, Potential, Exploration and Comparison print a summary and have `.to_frame()`
(pandas, an optional extra). The functions run the same job functions as the CLI
commands (dbgpu.commands), so both write the same files and raise the same one-line
errors. The stages, data flowing one way (each one a small module):

    models -> tasks -> scoring / sampling -> data -> fit -> stats -> report

with `commands` (one module per CLI command), then `api`, then `cli` on top. Importing
dbgpu is light: the API loads on first use, numpy / torch / transformers when a function
needs them. See README.md and SPEC.md.
"""

from dbgpu.errors import DbgpuError, DbgpuWarning
from dbgpu.version import __version__

#: the promised names; those not bound above load from dbgpu.api on first access
__all__ = ["load_model", "get_task", "kernel", "Kernel", "potential", "Potential", "draw_report", "explanation",
           "exploration", "Exploration", "compare", "Comparison", "DbgpuError", "DbgpuWarning", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from dbgpu import api

        value = getattr(api, name)
        globals()[name] = value                       # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'dbgpu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
