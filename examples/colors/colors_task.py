"""A complete small dbgpu task plugin: name a colour, then another one.

States are colour names (upper case). The prompt shows one colour and asks for a
different one, one word; an answer is stripped and upper-cased, a state if it is purely
alphabetic, valid if it is one of COLORS, otherwise the single invalid state OTHER.

Use it without installing anything (the directory on the Python path):

    PYTHONPATH=examples/colors dbgpu score --model smollm2-135m --task colors_task:Colors \
        --state-list RED,GREEN,BLUE --out runs/colors

or install it (`pip install -e examples/colors`), which registers the entry point
`colors` in the `dbgpu.tasks` group (see pyproject.toml), and pass `--task colors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dbgpu.errors import DbgpuError

COLORS = ("RED", "GREEN", "BLUE", "YELLOW", "ORANGE", "PURPLE", "PINK", "BROWN", "BLACK", "WHITE",
          "GRAY", "VIOLET", "CYAN", "MAGENTA", "TEAL", "NAVY", "MAROON", "OLIVE", "BEIGE", "GOLD")
TEMPLATES = {
    "plain": "Here is a colour: {state}. Name a different colour. Answer with one word only.",
    "poem": "Roses are {state}... Which other colour would you paint them? One word only.",
}


@dataclass
class Colors:
    template: str = TEMPLATES["plain"]
    answer_prefix: str = "Colour:"
    name: str = "colors"
    invalid_state: str | None = "OTHER"
    start_state: str = "RED"
    templates: dict = field(default_factory=lambda: dict(TEMPLATES))
    max_new_tokens: int = 6                     # optional: explore's default answer length

    def messages(self, f: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.template.replace("{state}", f)}]

    def render(self, g: str) -> str:
        # the answer follows "Colour:", so its first token carries the space
        return f" {g}" if self.answer_prefix and not self.answer_prefix[-1].isspace() else g

    def parse(self, text: str) -> str | None:
        s = text.strip().upper()
        return s if s and s.isascii() and s.isalpha() else None

    def hopeless(self, text: str) -> bool:          # optional: lets sampling stop early
        return text.strip() != "" and self.parse(text) is None

    def valid(self, g: str) -> bool:
        return g in COLORS

    def check_state(self, s: str) -> str:
        g = self.parse(s)
        if g is None:
            raise DbgpuError(f"state {s!r} is not a colour name of ASCII letters")
        return g

    def seed_states(self, n: int = 8) -> list[str]:
        if n > len(COLORS):
            raise DbgpuError(f"the colors task has {len(COLORS)} seed states, not {n}")
        return list(COLORS[:n])

    def features(self, g: str) -> dict[str, float]:  # optional: for `dbgpu explain`
        return {"length": len(g), "vowels": sum(c in "AEIOU" for c in g),
                "primary": float(g in ("RED", "GREEN", "BLUE")), "rank": COLORS.index(g)}
