"""Scoring with several processes (`torchrun`, gloo on the CPU): the same matrix as one
process, bit for bit, and a job whose rank died resumes from the shards it left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dbgpu.shards import SHARDS

pytestmark = pytest.mark.slow


def score_args(states_file: Path, out: Path, *extra) -> list[str]:
    return ["-m", "dbgpu", "score", "--model", "random:llama", "--task", "word100", "--states", str(states_file),
            "--device", "cpu", "--quiet", "--threads", "1", "--out", str(out), *extra]


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


@pytest.fixture(scope="module")
def states_file(tmp_path_factory, word_task) -> Path:
    p = tmp_path_factory.mktemp("states") / "states.json"
    p.write_text(json.dumps(word_task.seed_states(48)))
    return p


@pytest.fixture(scope="module")
def single(tmp_path_factory, states_file):
    """One process, one thread, plain and tree: the references."""
    out = {}
    for method in ("tree", "plain"):
        d = tmp_path_factory.mktemp("single") / method
        r = subprocess.run([sys.executable, *score_args(states_file, d, "--method", method, "--rows-per-block", "4")],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out[method] = np.load(d / "logT.npy")
    return out


def test_two_ranks_give_the_single_process_matrix_exactly(tmp_path, states_file, single):
    out = tmp_path / "two"
    r = subprocess.run([*torchrun(2), *score_args(states_file, out, "--rows-per-block", "4")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out / "logT.npy"), single["tree"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shards"]["calls"][0]["world"] == 2 and meta["shards"]["rows_scored"] == 48
    assert r.stdout.count("scored 48x48 pairs") == 1                  # rank 0 reports, once


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_job_whose_rank_died_resumes_from_its_shards(tmp_path, states_file, single):
    out = tmp_path / "killed"
    args = score_args(states_file, out, "--method", "plain", "--rows-per-block", "4")
    for _ in range(3):                                               # until a kill lands mid-run
        job = subprocess.Popen([*torchrun(2), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while job.poll() is None and time.monotonic() - t0 < 300:
            if (out / SHARDS).exists() and any((out / SHARDS).glob("*.npz")):
                break
            time.sleep(0.001)
        workers = _children(job.pid) if job.poll() is None else []
        if workers:
            # Both ranks stopped at the first whole shard, then one dies: the kill lands
            # mid-run however quick the machine is.
            with contextlib.suppress(ProcessLookupError):      # a rank that already ended
                for w in workers:
                    os.kill(w, signal.SIGSTOP)
                os.kill(workers[-1], signal.SIGKILL)
                for w in workers[:-1]:
                    os.kill(w, signal.SIGCONT)
        job.communicate(timeout=120)
        if not (out / "meta.json").exists():
            break
        subprocess.run(["rm", "-rf", str(out)])
    else:
        pytest.skip("the job finished before a rank could be killed, three times")
    assert job.returncode != 0
    left = len(list((out / SHARDS).glob("*.npz")))
    assert 0 < left < 12
    r = subprocess.run([*torchrun(2), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out / "logT.npy"), single["plain"])
    meta = json.loads((out / "meta.json").read_text())
    sh = meta["shards"]
    assert sh["rows_scored"] == 48 and len(sh["calls"]) == 2      # every row once, across two launches
    assert sh["rows_per_call"]["1"] == 48 - sh["rows_per_call"].get("0", 0)
