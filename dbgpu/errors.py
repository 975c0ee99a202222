"""The one exception type for bad input.

Anything a user can get wrong (a missing file, an unknown model, an impossible option)
raises `DbgpuError` with a one-line message naming the problem; the CLI prints it on
stderr and exits with status 2, without a traceback.
"""


class DbgpuError(Exception):
    """Bad input: the message is shown to the user as it is."""
