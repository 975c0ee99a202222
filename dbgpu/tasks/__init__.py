"""Built-in tasks by name, their prompt templates, and what every state set goes through."""

from __future__ import annotations

import hashlib
from pathlib import Path

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


def read_template(path: str | Path | None, *, task: str | None = None) -> str | None:
    """A prompt template: the name of one of the task's built-in templates, or a file."""
    if path is None:
        return None
    if task is not None and str(path) in TEMPLATES.get(task, {}):
        return TEMPLATES[task][str(path)]
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DbgpuError(f"template file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DbgpuError(f"cannot read template file {path}: {e}") from None


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


__all__ = ["Task", "TASKS", "TEMPLATES", "get_task", "fill_template", "read_template", "template_sha256",
           "canonical_states"]
