"""Row shards of a score job: how rows are cut into blocks, one file per finished block.

A long `dbgpu score` writes each block of source rows as it finishes, so a crash loses
at most the blocks in flight and the next call scores only what is missing:

    DIR/job.json                the job's binding settings and its calls (the manifest)
    DIR/shards/block-000017.npz rows (R,) int64, logT (R, N) float64, stats (JSON text),
                                call (which call scored it); written atomically

The blocks are fixed by the job, not by the process that scores them: source rows sorted
by prompt length (longest first, stable) and cut every `rows_per_block` rows. So a block
is scored with the same batches whichever rank or call takes it, and the assembled
matrix does not depend on how many processes ran or how often the job was resumed. A
shard that does not load, or whose rows or shape are not its block's, is damaged: it is
reported and its block scored again. Numpy only; cost O(N) to plan, O(N^2) to assemble.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dbgpu.io import write_bytes_atomic

SHARDS = "shards"
JOB = "job.json"


def plan_blocks(lengths: np.ndarray, rows_per_block: int) -> list[np.ndarray]:
    """Row indices in blocks of `rows_per_block`, longest rows first (stable)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + rows_per_block] for i in range(0, len(order), rows_per_block)]


def assign_blocks(blocks: list[int], weight: np.ndarray, world: int) -> list[list[int]]:
    """Blocks per rank, balanced by weight (token count): each block, heaviest first, goes
    to the rank with the least weight so far (longest-processing-time rule); ties by rank."""
    load = np.zeros(world)
    out: list[list[int]] = [[] for _ in range(world)]
    for k in sorted(blocks, key=lambda k: (-weight[k], k)):
        r = int(np.argmin(load))
        out[r].append(k)
        load[r] += weight[k]
    return [sorted(ks) for ks in out]


def shard_path(out: Path, k: int) -> Path:
    return Path(out) / SHARDS / f"block-{k:06d}.npz"


def write_shard(out: Path, k: int, rows: np.ndarray, logT: np.ndarray, *, stats: dict, call: int) -> None:
    """Block k's rows, atomically (a reader sees the whole shard or none)."""
    buf = io.BytesIO()
    np.savez(buf, rows=np.asarray(rows, np.int64), logT=np.asarray(logT, np.float64),
             stats=np.array(json.dumps(stats)), call=np.array(call, np.int64))
    (Path(out) / SHARDS).mkdir(exist_ok=True)
    write_bytes_atomic(shard_path(out, k), buf.getvalue())


@dataclass(frozen=True)
class Shard:
    rows: np.ndarray        # (R,) int64
    logT: np.ndarray        # (R, N) float64; (K, R, N) for K temperatures from one pass
    stats: dict             # the block's ScoreStats.as_dict()
    call: int               # the call that scored it


def _load(path: Path, rows: np.ndarray, n: int, lead: tuple = ()) -> Shard | None:
    """The shard at `path` if it is whole and holds exactly `rows` x n (after the `lead`
    axes: (K,) for K temperatures), else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            shard = Shard(rows=z["rows"], logT=z["logT"], stats=json.loads(str(z["stats"])), call=int(z["call"]))
    except Exception:                       # truncated zip, bad header, missing key, bad JSON
        return None
    ok = (np.array_equal(shard.rows, rows) and shard.logT.shape == (*lead, len(rows), n)
          and shard.logT.dtype == np.float64 and not np.isnan(shard.logT).any()
          and not np.isposinf(shard.logT).any())
    return shard if ok else None


def read_shards(out: Path, blocks: list[np.ndarray], n: int, *, lead: tuple = ()) -> tuple[dict[int, Shard], list[Path]]:
    """({block: shard} for every whole shard, [damaged shard files]); lead: the axes before
    (rows, n) a whole shard has ((K,) when it holds K temperatures: all of them, or it is damaged)."""
    done, damaged = {}, []
    for k, rows in enumerate(blocks):
        path = shard_path(out, k)
        if not path.exists():
            continue
        shard = _load(path, rows, n, lead)
        if shard is None:
            damaged.append(path)
        else:
            done[k] = shard
    return done, damaged


def assemble(done: dict[int, Shard], n: int, *, lead: tuple = ()) -> np.ndarray:
    """The (*lead, N, N) matrix from a complete set of shards."""
    logT = np.full((*lead, n, n), np.nan)
    for shard in done.values():
        logT[..., shard.rows, :] = shard.logT
    assert not np.isnan(logT).any(), "assemble: a row is missing"
    return logT


def remove(out: Path) -> None:
    """Drop the shards and the job manifest (after the matrix is assembled)."""
    shutil.rmtree(Path(out) / SHARDS, ignore_errors=True)
    (Path(out) / JOB).unlink(missing_ok=True)
