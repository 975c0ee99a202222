"""Tasks: the protocol, the built-in tasks, plugin loading, templates, and what every state
set goes through."""

from __future__ import annotations

import hashlib

from dbgpu.errors import DbgpuError
from dbgpu.tasks.base import Task, check_task, fill_template, protocol_problems
from dbgpu.tasks.formula import TEMPLATES as FORMULA_TEMPLATES
from dbgpu.tasks.loading import (BUILTIN, ENTRY_POINT_GROUP, get_task, plugin_entry_points, read_template,
                                 resolve_factory, task_spec, task_templates)
from dbgpu.tasks.word100 import TEMPLATES as WORD100_TEMPLATES

TASKS = BUILTIN
# built-in prompt templates per built-in task (every task also carries its own: task.templates)
TEMPLATES = {"word100": WORD100_TEMPLATES, "formula": FORMULA_TEMPLATES}


def template_sha256(task: Task) -> str:
    """Identifies the prompt template a score directory was made with."""
    return hashlib.sha256(task.template.encode("utf-8")).hexdigest()


def canonical_states(task: Task, states: list[str]) -> list[str]:
    """The task's canonical form of each state; an empty list or a duplicate is an error."""
    if not states:
        raise DbgpuError("the state list is empty")
    out = [task.check_state(s) for s in states]
    seen = set()
    for s in out:
        if s in seen:
            raise DbgpuError(f"state {s} appears twice in the state list")
        seen.add(s)
    return out


__all__ = ["Task", "TASKS", "TEMPLATES", "BUILTIN", "ENTRY_POINT_GROUP", "get_task", "fill_template",
           "read_template", "template_sha256", "canonical_states", "check_task", "protocol_problems",
           "plugin_entry_points", "resolve_factory", "task_spec", "task_templates"]
