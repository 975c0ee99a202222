"""The paper's first agent: English words whose letters (A=1 ... Z=26) sum to exactly 100.

The prompt follows the paper's structure: letter values, worked examples written as
percentages (KNOWLEDGE 96, WORKHARD 98, LUCK 47, LOVE 54, MONEY 72), one example word
f "whose letters add up to 100%", a request for a new such word, the word only.
Validity is the paper's: alphabetic and summing to 100 (no dictionary); an alphabetic
answer with another sum is the single invalid state INVALID00.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dbgpu.errors import DbgpuError
from dbgpu.tasks.base import after_prefix, fill_template

TARGET = 100
INVALID = "INVALID00"
EXAMPLES = ("KNOWLEDGE", "WORKHARD", "LUCK", "LOVE", "MONEY")
RARE = set("JKQVXZ")          # the least frequent letters of English text


def letter_sum(word: str) -> int:
    """A=1 ... Z=26, case-insensitive; the word must be ASCII letters."""
    return sum(ord(c) - 64 for c in word.upper())


DEFAULT_TEMPLATE = (
    "Give the letters the values A=1%, B=2%, C=3%, ..., Z=26%; a word is worth the sum "
    "of its letters. For example, "
    + ", ".join(f"{w} = {letter_sum(w)}%" for w in EXAMPLES[:-1])
    + f" and {EXAMPLES[-1]} = {letter_sum(EXAMPLES[-1])}%.\n"
    "Here is a word whose letters add up to 100%: {state}\n"
    "Give a new English word whose letters add up to 100%. "
    "Answer with the word only, without explanation."
)


# Alternative wordings of the same request, to test whether the potential depends on the
# template (the paper's claim is that it does not, beyond a scale).
TEMPLATES = {
    "paper": DEFAULT_TEMPLATE,
    "terse": (
        "Letter values: A=1, B=2, ..., Z=26. {state} adds up to 100. "
        "Name another English word whose letter values add up to exactly 100. Reply with one word."
    ),
    "puzzle": (
        "Word puzzle. Score a word by adding the positions of its letters in the alphabet "
        "(A is 1, Z is 26): LOVE scores 54 and MONEY scores 72.\n"
        "The word {state} scores exactly 100.\n"
        "Find a different English word that also scores exactly 100. Write only that word."
    ),
}


def is_word(text: str) -> bool:
    return text.isascii() and text.isalpha()


@dataclass
class Word100:
    """The word task. `answer_prefix` (default "Word:") opens the answer so that small
    models answer with a bare word; "" gives the paper's bare prompt."""

    template: str = DEFAULT_TEMPLATE
    answer_prefix: str = "Word:"
    name: str = "word100"
    invalid_state: str | None = INVALID
    start_state: str = "BUZZY"
    templates: dict = field(default_factory=lambda: dict(TEMPLATES))

    def messages(self, f: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": fill_template(self.template, f)}]

    def render(self, g: str) -> str:
        return after_prefix(self.answer_prefix, g)

    def surface_forms(self, g: str) -> list[str]:
        """Upper, Title and lower case, each with and without the leading space the answer
        prefix implies (6 texts; fewer when they coincide)."""
        cases = (g.upper(), g.title(), g.lower())
        return list(dict.fromkeys(t for c in cases for t in (after_prefix(self.answer_prefix, c), c)))

    def parse(self, text: str) -> str | None:
        s = text.strip().upper()
        return s if s and is_word(s) else None

    def hopeless(self, text: str) -> bool:
        """A partial answer that no continuation can make parse: once the stripped text
        holds anything but ASCII letters (punctuation, a digit, a space between letters),
        every continuation keeps it, since a continuation only adds at the end."""
        return text.strip() != "" and self.parse(text) is None

    def valid(self, g: str) -> bool:
        return is_word(g) and letter_sum(g) == TARGET

    def check_state(self, s: str) -> str:
        g = self.parse(s)
        if g is None:
            raise DbgpuError(f"state {s!r} is not a word of ASCII letters")
        return g

    def seed_states(self, n: int = 24) -> list[str]:
        return frequent_words(n)

    def features(self, g: str) -> dict[str, float]:
        """Length, English frequency (wordfreq zipf, 0 when unknown) and letter statistics."""
        from wordfreq import zipf_frequency

        values = [ord(c) - 64 for c in g]
        return {"length": len(g), "zipf": zipf_frequency(g.lower(), "en"),
                "vowels": sum(c in "AEIOUY" for c in g) / len(g),
                "distinct_letters": len(set(g)) / len(g),
                "rare_letters": sum(c in RARE for c in g),
                "max_letter": max(values), "repeated_pairs": sum(a == b for a, b in zip(g, g[1:]))}


def frequent_words(n: int, *, lang: str = "en", pool: int = 200_000) -> list[str]:
    """The n most frequent words (wordfreq) whose letters sum to 100, upper-cased."""
    from wordfreq import top_n_list

    out = []
    for w in top_n_list(lang, pool):
        if len(w) > 1 and is_word(w) and letter_sum(w) == TARGET:
            out.append(w.upper())
            if len(out) == n:
                return out
    raise DbgpuError(f"only {len(out)} words summing to {TARGET} among the top {pool} of wordfreq/{lang}")


def in_dictionary(word: str, *, lang: str = "en") -> bool:
    """Optional dictionary check: does wordfreq know the word at all?"""
    from wordfreq import zipf_frequency

    return zipf_frequency(word.lower(), lang) > 0
