"""Files in and out: atomic writers, and readers that turn every fault into one line.

Every writer goes to a temporary file in the destination's directory, flushes and
fsyncs it, then renames it over the destination (atomic on POSIX), so a reader never
sees a half-written output file. Every reader raises `DbgpuError` naming the file and
the problem.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


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
