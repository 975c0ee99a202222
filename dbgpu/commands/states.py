"""`dbgpu states`: the valid states an explore run discovered, as a list for `score --states`."""

from __future__ import annotations

from pathlib import Path

from dbgpu.errors import DbgpuError
from dbgpu.io import write_json_atomic


def states_job(path: str | Path, *, min_count: int = 0) -> list[tuple[str, int]]:
    """(state, count) of every discovered valid state, most answered first, keeping those
    answered at least `min_count` times."""
    from dbgpu.explore import read_run, visited_states
    from dbgpu.tasks import get_task

    if min_count < 0:
        raise DbgpuError(f"--min-count must be non-negative, got {min_count}")
    settings, records = read_run(path)
    task = get_task(settings.get("task", ""))
    found = visited_states(records, start=settings.get("start", task.start_state), task=task,
                           min_count=min_count)
    if not found:
        raise DbgpuError(f"no state of {path} was answered at least {min_count} times")
    return found


def write_states(states: list[str], out: str | Path) -> None:
    """The list as JSON, written atomically; its directory must exist."""
    if not Path(out).absolute().parent.is_dir():
        raise DbgpuError(f"cannot write {out}: its directory does not exist")
    try:
        write_json_atomic(out, states)
    except OSError as e:
        raise DbgpuError(f"cannot write {out}: {e.strerror or e}") from None
