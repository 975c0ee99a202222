"""What the user sees while a command runs: progress bars and numbers in text outputs."""

from __future__ import annotations


def progress(*, total: int, enabled: bool, desc: str, unit: str = "it", leave: bool = False):
    """A tqdm bar on stderr; `enabled=False` gives a silent one with the same methods.

    Enabled bars still switch themselves off where stderr is not a terminal (tqdm's
    `disable=None`), so logs of batch jobs stay clean; a long job then writes one line per
    unit of work it finishes instead (`bar.disable` tells which).
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=leave,
                dynamic_ncols=True)


def eta(done: int, total: int, seconds: float) -> str:
    """'about 12 min left' at the rate so far ('' before any work is done)."""
    if done <= 0 or done >= total:
        return ""
    left = seconds * (total - done) / done
    return f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"


def fmt(x, spec: str = ".4g") -> str:
    """A number for a table or a summary line; None (a statistic that does not exist) as n/a."""
    return "n/a" if x is None else format(x, spec)
