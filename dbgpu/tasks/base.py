"""The Task protocol: an agent's state space and how states become prompts and answers.

A task knows nothing about models. `dbgpu.formatting` turns `messages(f)` into the exact
prompt text for a given tokenizer (chat template or plain text) and appends the answer
prefix; the scored continuation is `render(g)` followed by the model's end-of-turn token.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Task(Protocol):
    name: str
    template: str               # the user prompt template, with a {state} slot
    answer_prefix: str          # opens the answer; part of the prompt, never scored
    invalid_state: str | None   # where well-formed answers that fail `valid` go (or None)
    start_state: str            # where exploration starts

    def messages(self, f: str) -> list[dict[str, str]]:
        """Chat messages showing state f and asking for a new state."""

    def render(self, g: str) -> str:
        """The exact answer text for state g, as it follows the prompt (prefix excluded)."""

    def parse(self, text: str) -> str | None:
        """Canonical state of a generated answer, or None if it is not a well-formed answer."""

    def hopeless(self, text: str) -> bool:
        """Whether a partial answer is rejected however it continues (lets sampling stop it
        early). A task without such a rule may leave it out: then answers always run on."""

    def valid(self, g: str) -> bool:
        """Whether state g satisfies the task's condition."""

    def check_state(self, s: str) -> str:
        """Canonical form of a user-given state; raises DbgpuError if it cannot be scored."""

    def seed_states(self, n: int) -> list[str]:
        """A default state set of n valid states."""


def fill_template(template: str, state: str) -> str:
    """Put `state` into a user prompt template: Jinja (`{{ state }}`) or plain `{state}`."""
    if "{{" in template or "{%" in template:
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        return env.from_string(template).render(state=state)
    return template.replace("{state}", state)
