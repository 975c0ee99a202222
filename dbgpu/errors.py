"""The one exception type for bad input, its warning sibling, and the shared checks.

Anything a user can get wrong (a missing file, an unknown model, an impossible option)
raises `DbgpuError` with a one-line message naming the problem; the CLI prints it on
stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations


class DbgpuError(Exception):
    """Bad input: the message is shown to the user as it is."""


class Terminated(BaseException):
    """SIGTERM (what `timeout` and schedulers send), raised like KeyboardInterrupt so that
    every cleanup runs: the CLI answers it with one line and exit status 143."""


class DbgpuWarning(UserWarning):
    """Something the user should know about the input that does not stop the work."""


def check_temperature(temperature: float) -> float:
    """The sampling / scoring temperature tau: a positive finite number."""
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise DbgpuError(f"temperature must be positive, got {temperature}")
    return float(temperature)


def check_positive(name: str, value: int | float | None, *, allow_none: bool = False):
    """`value` > 0 (None allowed when `allow_none`), else a one-line error naming `name`."""
    if value is None and allow_none:
        return None
    if value is None or not value > 0:
        raise DbgpuError(f"{name} must be positive, got {value}")
    return value
