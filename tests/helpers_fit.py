"""Small inputs shared by the analysis tests (the paper's Claude-4 word case)."""

import json
from pathlib import Path

#: the paper's Claude-4 run (SPEC): 5 states, high_reject so N0 = 20000/5 = 4000
CLAUDE_COUNTS = {
    ("BUZZY", "ATTITUDE"): 3859, ("PERSONAL", "ATTITUDE"): 3879, ("PROBLEMS", "ATTITUDE"): 3558,
    ("TURKEY", "ATTITUDE"): 4122, ("ATTITUDE", "PERSONAL"): 66, ("ATTITUDE", "PROBLEMS"): 20,
    ("BUZZY", "TURKEY"): 238,
}


def write_claude_json(path: Path) -> Path:
    """The Claude case as a paper JSON file, shape 1 (one list entry per answer)."""
    d: dict[str, list[str]] = {}
    for (s, t), n in CLAUDE_COUNTS.items():
        d.setdefault(s, []).extend([t] * n)
    path.write_text(json.dumps(d))
    return path
