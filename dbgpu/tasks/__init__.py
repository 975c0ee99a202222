"""Built-in tasks, by name."""

from __future__ import annotations

from dbgpu.errors import DbgpuError
from dbgpu.tasks.base import Task, fill_template
from dbgpu.tasks.word100 import TEMPLATES as WORD100_TEMPLATES
from dbgpu.tasks.word100 import Word100

TASKS = {"word100": Word100}
# built-in prompt templates per task, selectable by name wherever a template file is accepted
TEMPLATES = {"word100": WORD100_TEMPLATES}


def get_task(name: str, *, template: str | None = None, answer_prefix: str | None = None) -> Task:
    """A task by name, optionally with a user prompt template and answer prefix."""
    if name not in TASKS:
        raise DbgpuError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    kwargs = {}
    if template is not None:
        if "{state}" not in template and "state" not in template:
            raise DbgpuError("prompt template has no {state} placeholder")
        kwargs["template"] = template
    if answer_prefix is not None:
        kwargs["answer_prefix"] = answer_prefix
    return TASKS[name](**kwargs)


__all__ = ["Task", "TASKS", "TEMPLATES", "get_task", "fill_template"]
