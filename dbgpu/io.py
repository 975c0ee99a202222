"""Atomic file writes: a reader never sees a half-written output file.

Every writer goes to a temporary file in the destination's directory, flushes and
fsyncs it, then renames it over the destination (atomic on POSIX).
"""

from __future__ import annotations

import io
import json
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
