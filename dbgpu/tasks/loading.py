"""Tasks by name: built-in tasks, `package.module:Name` plugins and entry-point plugins.

    get_task("word100")                     a built-in task
    get_task("mypkg.tasks:Colors")          a class (or factory) importable as mypkg.tasks.Colors
    get_task("colors")                      registered by a package under the entry-point group
                                            `dbgpu.tasks`: [project.entry-points."dbgpu.tasks"]
                                            colors = "mypkg.tasks:Colors"

Built-in names come first, then `module:Name`, then entry points. The object named is
called with no arguments (plus `template=` / `answer_prefix=` when those options are
given) and must return an object satisfying the Task protocol (`dbgpu.tasks.base`);
otherwise a one-line DbgpuError names what is missing. `task_spec(task)` is the name
that re-creates a task later (recorded in meta.json and explore.json as "task").
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path

from dbgpu.errors import DbgpuError
from dbgpu.tasks.base import Task, check_task, check_template
from dbgpu.tasks.formula import Formula
from dbgpu.tasks.word100 import Word100

BUILTIN = {"word100": Word100, "formula": Formula}
ENTRY_POINT_GROUP = "dbgpu.tasks"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def plugin_entry_points() -> dict:
    """Installed task plugins: {name: EntryPoint} of the `dbgpu.tasks` group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _import_object(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DbgpuError(f"task {spec!r}: expected package.module:Name")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # a plugin's own import errors, whatever they are, become one line
        raise DbgpuError(f"task {spec!r}: cannot import {module_name!r} ({_first_line(e)})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DbgpuError(f"task {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve_factory(spec: str):
    """The class, factory or object a task name refers to (nothing is instantiated)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DbgpuError("no task given")
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" in spec:
        return _import_object(spec)
    eps = plugin_entry_points()
    if spec in eps:
        try:
            return eps[spec].load()
        except Exception as e:
            raise DbgpuError(f"task plugin {spec!r} ({eps[spec].value}) failed to load: {_first_line(e)}") from None
    plugins = f"; installed plugins: {', '.join(sorted(eps))}" if eps else ""
    raise DbgpuError(f"unknown task {spec!r} (known: {', '.join(BUILTIN)}{plugins}; "
                     f"or package.module:Name)")


def get_task(spec: str, *, template: str | None = None, answer_prefix: str | None = None) -> Task:
    """A task by name, optionally with a user prompt template and answer prefix."""
    factory = resolve_factory(spec)
    kwargs = {}
    if template is not None:
        if "{state}" not in template and "state" not in template:
            raise DbgpuError("prompt template has no {state} placeholder")
        kwargs["template"] = template
    if answer_prefix is not None:
        kwargs["answer_prefix"] = answer_prefix
    if not callable(factory):
        if kwargs:
            raise DbgpuError(f"task {spec!r} is an object, not a class: it takes no {' or '.join(kwargs)}")
        return check_task(factory, spec=spec)
    try:
        task = factory(**kwargs)
    except DbgpuError:
        raise
    except Exception as e:
        given = ", ".join(f"{k}=" for k in kwargs) or "no arguments"
        raise DbgpuError(f"task {spec!r} could not be created with {given}: {_first_line(e)}") from None
    return check_task(task, spec=spec)


def task_spec(task: Task) -> str:
    """The name that re-creates `task` with `get_task`: a built-in name, the entry-point
    name registered for its class, or module:Class."""
    cls = type(task)
    for name, builtin in BUILTIN.items():
        if cls is builtin:
            return name
    value = f"{cls.__module__}:{cls.__qualname__}"
    for name, ep in plugin_entry_points().items():
        if ep.value.replace(" ", "") == value:
            return name
    return value


def task_templates(task: Task | str) -> Mapping[str, str]:
    """A task's built-in prompt templates by name (a task object or a task name)."""
    if isinstance(task, str):
        task = get_task(task)
    return task.templates


def read_template(path: str | Path | None, *, task: Task | str | None = None) -> str | None:
    """A prompt template: the name of one of the task's built-in templates, or a file."""
    if path is None:
        return None
    if task is not None:
        templates = task_templates(task)
        if str(path) in templates:
            return check_template(templates[str(path)], source=f"{path!r} of the task")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DbgpuError(f"template file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DbgpuError(f"cannot read template file {path}: {e}") from None
    return check_template(text, source=str(path))
