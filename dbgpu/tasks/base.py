"""The Task protocol: an agent's state space and how states become prompts and answers.

A task knows nothing about models. `dbgpu.formatting` turns `messages(f)` into the exact
prompt text for a given tokenizer (chat template or plain text) and appends the answer
prefix; the scored continuation is `render(g)` followed by the model's end-of-turn token.

Any object with the attributes and methods below is a task: the built-in ones
(`word100`, `formula`) and plugins (`--task package.module:Name` or a name registered
under the `dbgpu.tasks` entry-point group; see `dbgpu.tasks.loading` and the README).
`hopeless`, `features` and `max_new_tokens` are optional.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from dbgpu.errors import DbgpuError

REQUIRED_ATTRIBUTES = ("name", "template", "templates", "answer_prefix", "invalid_state", "start_state")
REQUIRED_METHODS = ("messages", "render", "parse", "valid", "check_state", "seed_states")
OPTIONAL_METHODS = ("hopeless", "features", "surface_forms")


@runtime_checkable
class Task(Protocol):
    name: str
    template: str               # the user prompt template, with a {state} slot
    templates: Mapping[str, str]  # built-in templates by name (--template NAME); may be empty
    answer_prefix: str          # opens the answer; part of the prompt, never scored
    invalid_state: str | None   # where well-formed answers that fail `valid` go (or None)
    start_state: str            # where exploration starts

    def messages(self, f: str) -> list[dict[str, str]]:
        """Chat messages showing state f and asking for a new state."""

    def render(self, g: str) -> str:
        """The exact answer text for state g, as it follows the prompt (prefix excluded)."""

    def parse(self, text: str) -> str | None:
        """Canonical state of a generated answer, or None if it is not a well-formed answer."""

    def valid(self, g: str) -> bool:
        """Whether state g satisfies the task's condition."""

    def check_state(self, s: str) -> str:
        """Canonical form of a user-given state; raises DbgpuError if it cannot be scored."""

    def seed_states(self, n: int) -> list[str]:
        """A default state set of n valid states."""

    # Optional (looked up with getattr):
    #   hopeless(text) -> bool: a partial answer is rejected however it continues (lets
    #       sampling stop it early); without it answers always run on.
    #   features(g) -> dict[str, float]: numeric features of a valid state, the same names
    #       for every state, for `dbgpu explain`.
    #   max_new_tokens: int: explore's default answer length for this task.
    #   surface_forms(g) -> list[str]: answer texts (as `render` gives them, render(g) first)
    #       that `parse` maps to g, for `score --surface-forms all`; without it, [render(g)].


def protocol_problems(task) -> list[str]:
    """What keeps `task` from being a Task: missing members and wrong types (empty if none)."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(task, a)]
    missing += [m for m in REQUIRED_METHODS if not callable(getattr(task, m, None))]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    for attr in ("name", "template", "answer_prefix", "start_state"):
        if hasattr(task, attr) and not isinstance(getattr(task, attr), str):
            problems.append(f"{attr} is not a string")
    if hasattr(task, "invalid_state") and not isinstance(task.invalid_state, (str, type(None))):
        problems.append("invalid_state is neither a string nor None")
    templates = getattr(task, "templates", {})
    if not (isinstance(templates, Mapping) and all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in templates.items())):
        problems.append("templates is not a mapping of name -> template text")
    for m in OPTIONAL_METHODS:
        if hasattr(task, m) and not callable(getattr(task, m)):
            problems.append(f"{m} is not callable")
    return problems


def check_task(task, *, spec: str):
    """`task` itself if it satisfies the protocol; else a one-line DbgpuError naming what is missing."""
    problems = protocol_problems(task)
    if problems:
        raise DbgpuError(f"task {spec!r} does not satisfy the Task protocol: {'; '.join(problems)}")
    return task


def after_prefix(answer_prefix: str, text: str) -> str:
    """An answer as it follows the prefix: after a prefix such as "Word:" that does not end
    in whitespace, the answer's first token carries the space (" ATTITUDE")."""
    return f" {text}" if answer_prefix and not answer_prefix[-1].isspace() else text


def _is_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template or "{#" in template


def _sandbox():
    """jinja2's immutable sandbox (what transformers renders chat templates in): no
    attribute that starts with an underscore, no mutating methods, no `str.format` walks;
    a refused access raises jinja2's SecurityError when the template uses it."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def fill_template(template: str, state: str, **fields: str) -> str:
    """Put `state` (and any other named fields, e.g. a score) into a user prompt template:
    Jinja (`{{ state }}`, rendered in jinja2's sandbox) or plain `{state}` / `{name}`.
    A template the sandbox refuses, or one that does not render, is a one-line DbgpuError."""
    if _is_jinja(template):
        import jinja2
        from dbgpu.errors import DbgpuError

        try:
            return _sandbox().from_string(template).render(state=state, **fields)
        except jinja2.exceptions.SecurityError as e:
            raise DbgpuError(f"prompt template refused by jinja2's sandbox: {e}") from None
        except jinja2.exceptions.TemplateError as e:
            raise DbgpuError(f"prompt template does not render: {type(e).__name__}: {e}") from None
    for name, value in fields.items():
        template = template.replace("{" + name + "}", value)
    return template.replace("{state}", state)


def check_template(template: str, *, source: str) -> str:
    """`template` itself once jinja2's sandbox has parsed it and rendered it with a probe
    value in every name it uses (the state and any field a task adds); a template it refuses or
    cannot parse is a one-line DbgpuError naming `source`. Plain `{state}` templates pass."""
    if not _is_jinja(template):
        return template
    import jinja2
    import jinja2.meta
    from dbgpu.errors import DbgpuError

    try:
        env = _sandbox()
        names = jinja2.meta.find_undeclared_variables(env.parse(template)) - set(env.globals)
        env.from_string(template).render({name: "PROBE" for name in names})
    except jinja2.exceptions.SecurityError as e:
        raise DbgpuError(f"template {source}: refused by jinja2's sandbox ({e})") from None
    except jinja2.exceptions.TemplateError as e:
        raise DbgpuError(f"template {source}: {type(e).__name__}: {e}") from None
    return template


def surface_forms(task, g: str) -> list[str]:
    """The answer texts of state g that a surface-form-summed kernel adds up: the task's
    `surface_forms(g)` when it has one, else [render(g)]; render(g) first, no repeats, and
    each one checked to parse to g (else a one-line DbgpuError naming the form)."""
    from dbgpu.errors import DbgpuError

    forms = list(dict.fromkeys([task.render(g), *getattr(task, "surface_forms", lambda g: [])(g)]))
    for text in forms:
        if task.parse(text) != g:
            raise DbgpuError(f"task {task.name}: surface form {text!r} of {g} parses to {task.parse(text)!r}")
    return forms
