"""The package's architecture, checked: the folder listing is the data flow.

Every import of a dbgpu module (at module level or inside a function) must point DOWN
the layer list below, which is docs/layout.md read bottom-up; so the
import graph has no cycle. The analysis stages never import transformers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dbgpu

PACKAGE = Path(dbgpu.__file__).parent

# lowest first: a module may import only modules before it in this list
LAYERS = [
    "version", "errors", "console", "io", "devices", "distributed", "provenance", "shards",
    "models",
    "tasks.base", "tasks.expr", "tasks.word100", "tasks.formula", "tasks.loading", "tasks",
    "formatting",
    "scoring.trie", "scoring.plan", "scoring.stats", "scoring.head", "scoring.sparse", "scoring.prefix", "scoring.plain", "scoring.tree", "scoring",
    "sampling", "explore", "discover",
    "data", "graph", "fit", "stats", "msm", "uncertainty", "comparison", "explain", "report", "synthetic",
    "commands.score", "commands.fit", "commands.report", "commands.explain", "commands.run", "commands.compare",
    "commands.explore", "commands.discover", "commands.states", "commands",
    "api",
    "cli", "__main__", "",
]
ANALYSIS = {"data", "graph", "fit", "stats", "msm", "uncertainty", "comparison", "explain", "report", "synthetic"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_dbgpu_module(name: str) -> bool:
    return name.split(".")[0] == "dbgpu" and name.removeprefix("dbgpu").lstrip(".") in set(LAYERS)


def _imports(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (absolute imports only);
    `from pkg import mod` counts as importing pkg.mod, not pkg itself."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            out |= subs
            if not all(_is_dbgpu_module(m) for m in subs):
                out.add(node.module)
    return out


def _dbgpu_targets(names: set[str]) -> set[str]:
    """The dbgpu modules among imported names (a `from pkg import name` may name a module)."""
    known = set(LAYERS)
    return {n.removeprefix("dbgpu").lstrip(".") for n in names
            if n.split(".")[0] == "dbgpu" and n.removeprefix("dbgpu").lstrip(".") in known}


def test_every_module_has_a_layer():
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules == set(LAYERS), f"add to LAYERS: {modules - set(LAYERS)}; stale: {set(LAYERS) - modules}"


def test_imports_point_down_the_layers_so_there_is_no_cycle():
    rank = {m: i for i, m in enumerate(LAYERS)}
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        me = _module_name(path)
        for target in _dbgpu_targets(_imports(path)):
            if target != me and rank[target] >= rank[me]:
                wrong.append(f"{me or 'dbgpu'} imports {target or 'dbgpu'}")
    assert not wrong, wrong


def test_the_analysis_stages_never_import_transformers():
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path) in ANALYSIS:
            assert not any(n.split(".")[0] == "transformers" for n in _imports(path)), path
            assert not _dbgpu_targets(_imports(path)) & {"models", "scoring", "sampling", "formatting"}, path


def test_the_checker_sees_a_bad_import(tmp_path):
    """Negative control: an upward import in a parsed file is found."""
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from dbgpu.cli import main\n    import dbgpu.commands.fit\n"
                   "from dbgpu import shards, __version__\n")
    assert _dbgpu_targets(_imports(bad)) == {"cli", "commands.fit", "shards", ""}


#: names the Python API (api.py, the package's front door) defines again on purpose: each
#: is the public face of a lower module's object (documented in dbgpu/api.py)
FRONT_DOOR = {"load_model", "get_task", "Kernel"}


def test_each_helper_is_defined_once():
    """A top-level function or class name is defined in one module of the package (a second
    definition drifts from the first: three `_now`s, two `prompts_sha256`s with different
    canonical JSON); only the API's front door repeats the names it wraps."""
    where: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                where.setdefault(node.name, []).append(_module_name(path))
    twice = {name: mods for name, mods in where.items() if len(mods) > 1
             and not (name in FRONT_DOOR and "api" in mods and len(mods) == 2)}
    assert not twice, f"defined in more than one module: {twice}"
