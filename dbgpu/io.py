"""Files in and out: atomic writers, one writer per directory, manifests, and readers that
turn every fault into one line.

Every writer goes to a temporary file in the destination's directory, flushes and
fsyncs it, then renames it over the destination (atomic on POSIX), so a reader never
sees a half-written output file; the file gets the mode `open()` would give it (0644
under umask 022), and a failed write (a full disk, EIO) is one `DbgpuError` naming the
path, the previous file left as it was. Every reader raises `DbgpuError` naming the
file and the problem. `locked_dir` makes a command the only writer of its output
directory. `read_jsonl` tells a crash remnant (an unterminated last line) from
corruption (any terminated line that does not parse).

Whole or absent: a command's outputs in a directory are vouched for by a manifest
written last. `manifest.json` holds one section per command that wrote into the
directory (score, fit, report, compare): `begin_outputs` marks the section incomplete
(and marks stale the sections that derive from it: a new score makes an old fit and
report there stale) before the first file is written; `finish_outputs` records every
file's size and SHA-256 and marks it complete; `check_outputs`, called by every reader,
refuses a section that is incomplete, stale, or whose files have changed since. So a
crash half-way leaves a directory that no dbgpu command will read as finished, and
several commands can share one directory (`dbgpu run` writes score, fit and report into
one; the resumable row shards of a score job are files a manifest does not list, which
is allowed). Outputs no dbgpu command ever vouched for (no manifest, or no section for
that command: written by hand or by an older dbgpu) are read as they are. Chosen over
building in a temporary sibling and renaming it into place because that cannot let a
second command add its files to a directory another one made.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import errno
import fcntl
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError


def ensure_out_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) if needed and check that it is a writable directory."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DbgpuError(f"cannot create output directory {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise DbgpuError(f"output path {out} is not a directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise DbgpuError(f"output directory {out} is not writable")
    return out


def check_out_dir(path: str | os.PathLike) -> Path:
    """Check, without creating anything, that `path` is or can become a writable directory."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise DbgpuError(f"output path {out} is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise DbgpuError(f"output directory {out} is not writable")
        return out
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DbgpuError(f"cannot create output directory {out}: {parent} is not writable")
    return out


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)          # elsewhere: the classic read-by-setting (single-threaded CLI)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the umask (0o644 under umask 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode `mkdir()` gives a new directory: 0o777 less the umask (0o755 under 022)."""
    return 0o777 & ~umask()


def os_error(path, e: OSError, *, doing: str = "write") -> DbgpuError:
    """One line for a failed file operation: `cannot write PATH: No space left on device`."""
    return DbgpuError(f"cannot {doing} {path}: {e.strerror or e}")


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short, e.g. near a full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`path` holds `data` or, if anything fails, exactly what it held before."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise os_error(path, e) from None
    try:
        try:
            os.fchmod(fd, file_mode())          # mkstemp makes 0600; give what open() would
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise os_error(path, e) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- manifests

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dbgpu-manifest-1"


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second: every timestamp dbgpu writes."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(out: Path) -> dict | None:
    f = out / MANIFEST
    if not f.exists():
        return None
    m = read_json(f, what="manifest")
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("outputs"), dict):
        raise DbgpuError(f"{f} is not a dbgpu manifest")
    return m


def begin_outputs(path: str | os.PathLike, command: str, *, invalidates: tuple[str, ...] = ()) -> Path:
    """Create the directory if needed and mark `command`'s outputs there as being written
    (incomplete until `finish_outputs`); the sections named in `invalidates` (outputs
    derived from these) are marked stale."""
    out = ensure_out_dir(path)
    m = _read_manifest(out) or {"format": MANIFEST_FORMAT, "outputs": {}}
    for c in invalidates:
        m["outputs"][c] = {"complete": False, "stale": f"`dbgpu {command}` rewrote its input at {utc_now()}"}
    m["outputs"][command] = {"complete": False, "started": utc_now()}
    write_json_atomic(out / MANIFEST, m)
    return out


def finish_outputs(path: str | os.PathLike, command: str, files: list[str], **extra) -> None:
    """Record `files` (names in the directory) with their size and SHA-256 and mark
    `command`'s outputs complete: the last write of a command."""
    from dbgpu.version import __version__

    out = Path(path)
    m = _read_manifest(out) or {"format": MANIFEST_FORMAT, "outputs": {}}
    started = m["outputs"].get(command, {}).get("started")
    m["outputs"][command] = {
        "complete": True, "started": started, "finished": utc_now(), "dbgpu_version": __version__,
        "files": {name: {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
                  for name in files},
        **extra,
    }
    write_json_atomic(out / MANIFEST, m)


def check_outputs(path: str | os.PathLike, command: str, *, verify: bool = True) -> dict | None:
    """The manifest section of `command` in `path` if it is complete and its files are as
    written (size and SHA-256; `verify=False`: size only); None if no dbgpu command of
    that name ever wrote there (no manifest, or no section: files made by hand or by an
    older dbgpu are read as they are). Raises DbgpuError naming what is wrong otherwise:
    interrupted, stale, or changed since."""
    out = Path(path)
    m = _read_manifest(out)
    sec = None if m is None else m["outputs"].get(command)
    if sec is None:
        return None
    if sec.get("stale"):
        raise DbgpuError(f"{out}: no current `dbgpu {command}` output there (stale: {sec['stale']}): "
                         f"run `dbgpu {command}` again")
    if not sec.get("complete"):
        raise DbgpuError(f"{out}: `dbgpu {command}` did not finish writing there (interrupted?): "
                         f"run it again")
    for name, rec in sec.get("files", {}).items():
        f = out / name
        if not f.is_file():
            raise DbgpuError(f"{f} is missing (listed in {out / MANIFEST})")
        if f.stat().st_size != rec["bytes"] or (verify and file_sha256(f) != rec["sha256"]):
            raise DbgpuError(f"{f} changed after `dbgpu {command}` wrote it (its size or SHA-256 "
                             f"differs from {out / MANIFEST})")
    return sec


def read_json(path: str | os.PathLike, *, what: str = "file"):
    """Read a JSON file, turning every way it can be wrong into a one-line DbgpuError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DbgpuError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DbgpuError(f"{what} {path} is a directory, expected a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DbgpuError(f"cannot read {what} {path}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DbgpuError(f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg})") from None


def json_safe(obj):
    """A JSON-safe copy: numpy scalars to Python, NaN / inf to None, keys to strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def csv_text(rows: list[dict]) -> str:
    """Rows of one shape as CSV text with a header (the first row's keys)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["a", "b"])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def parse_state_list(text: str) -> list[str]:
    """`A,B,C` -> ["A", "B", "C"] (blanks around names and empty names dropped)."""
    return [s.strip() for s in text.split(",") if s.strip()]


def read_states_file(path: str | os.PathLike) -> list[str]:
    """A state set from a JSON list, a score dir's states.json, or a text file (one per line)."""
    path = Path(path)
    if path.is_dir():
        path = path / "states.json"
    if path.suffix == ".json":
        states = read_json(path, what="states file")
        if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
            raise DbgpuError(f"states file {path} must hold a JSON list of strings")
        return states
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DbgpuError(f"states file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DbgpuError(f"cannot read states file {path}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# --------------------------------------------------------------------------- one writer per directory

LOCK_NAME = ".dbgpu.lock"
_held: dict[str, list] = {}        # realpath -> [open lock file, depth]: this process's locks


@contextlib.contextmanager
def locked_dir(path: str | os.PathLike):
    """Create `path` if needed and hold an exclusive lock on it for the block.

    The lock is `fcntl.flock` on `path/.dbgpu.lock`, so the kernel releases it when the
    process dies (kill -9 leaves no stale lock); the file keeps the holder's pid. A second
    process gets a one-line DbgpuError naming the directory and that pid, and has written
    nothing. Re-entrant within one process (`run` holds it while score and fit write the
    same directory). A directory this call created is removed again if the block fails
    before anything but the lock file was written in it.
    """
    out = Path(path)
    key = os.path.realpath(out)
    if key in _held:
        _held[key][1] += 1
        try:
            yield out
        finally:
            _held[key][1] -= 1
        return
    created = not out.exists()
    ensure_out_dir(out)
    f = _acquire(out)
    _held[key] = [f, 1]
    ok = False
    try:
        yield out
        ok = True
    finally:
        del _held[key]
        f.close()                                    # closing releases the flock
        if not ok and created:
            _remove_if_only_lock(out)


def _acquire(out: Path):
    lock = out / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as e:
        raise os_error(lock, e, doing="create the lock file") from None
    f = os.fdopen(fd, "r+b", buffering=0)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = f.read(32).decode("ascii", "replace").strip() or "unknown"
        f.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DbgpuError(f"{out} is in use by another dbgpu process (pid {holder}); "
                             f"wait for it to finish or use another output directory") from None
        raise os_error(lock, e, doing="lock") from None
    try:
        os.ftruncate(fd, 0)
        write_all(fd, f"{os.getpid()}\n".encode("ascii"))
    except OSError:
        pass                                         # the pid is informative only
    return f


def _remove_if_only_lock(out: Path) -> None:
    try:
        if [p.name for p in out.iterdir()] == [LOCK_NAME]:
            (out / LOCK_NAME).unlink()
            out.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------- JSON lines


@dataclass(frozen=True)
class JsonLines:
    """A JSON-lines file read whole: the objects of its terminated lines, where each line
    ends (byte offsets), the file's size, and the bytes of an unterminated last line."""

    records: list            # (L,) parsed objects; None for a blank line
    ends: list[int]          # (L,) offset just past each line's newline
    size: int
    tail: int                # bytes after the last newline (a crash remnant), 0 if none


def read_jsonl(path: str | os.PathLike, *, what: str = "file", missing_ok: bool = False) -> JsonLines:
    """Parse every newline-terminated line of a JSON-lines file.

    Only an unterminated last line is a crash remnant (a write cut short): it is left out
    and counted in `tail` for the caller to repair or report. A terminated line that is
    not JSON is corruption: a DbgpuError naming the line. A file of one JSON object per
    line (the usual case) is parsed in one `json.loads` call; anything else line by line.
    O(bytes) time and memory.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return JsonLines([], [], 0, 0)
        raise DbgpuError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DbgpuError(f"{what} {path} is a directory, expected a file") from None
    except OSError as e:
        raise os_error(path, e, doing="read") from None
    end = raw.rfind(b"\n") + 1                      # just past the last complete line
    lines = raw[:end].split(b"\n")[:-1]
    ends = np.cumsum([len(line) + 1 for line in lines], dtype=np.int64).tolist()
    try:                                            # well-formed files: one parse of them all
        records = json.loads(b"[" + b",".join(line if line.strip() else b"null" for line in lines) + b"]")
        if (isinstance(records, list) and len(records) == len(lines)            # one object per line
                and all(type(r) is dict or (r is None and not ln.strip()) for r, ln in zip(records, lines))):
            return JsonLines(records, ends, len(raw), len(raw) - end)
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass                                        # the line-by-line parse below names the bad line
    records, ends, pos = [], [], 0
    for i, line in enumerate(lines):
        pos += len(line) + 1
        ends.append(pos)
        if not line.strip():
            records.append(None)
            continue
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise DbgpuError(f"{path} line {i + 1} is not valid JSON ({why}): the file is corrupt "
                             f"(only an unterminated last line is a crash remnant)") from None
    return JsonLines(records, ends, len(raw), len(raw) - end)
