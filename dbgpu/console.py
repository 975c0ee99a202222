"""What the user sees while a command runs: progress bars and numbers in text outputs."""

from __future__ import annotations


def progress(*, total: int, enabled: bool, desc: str, unit: str = "it", leave: bool = False):
    """A tqdm bar on stderr; `enabled=False` gives a silent one with the same methods.

    Enabled bars still switch themselves off where stderr is not a terminal (tqdm's
    `disable=None`), so logs of batch jobs stay clean.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=leave,
                dynamic_ncols=True)


def fmt(x, spec: str = ".4g") -> str:
    """A number for a table or a summary line; None (a statistic that does not exist) as n/a."""
    return "n/a" if x is None else format(x, spec)
