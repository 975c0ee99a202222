"""Row shards: the block plan, damaged shards, and a score job that resumes where it stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dbgpu.shards as shards
from dbgpu.cli import main

STATES = "BUZZY,TURKEY,ATTITUDE,PERSONAL,PROBLEMS,EXCELLENT,PURSUE"          # 7 rows
SCORE = ["score", "--model", "random:llama", "--task", "word100", "--state-list", STATES, "--device", "cpu",
         "--quiet", "--rows-per-block", "2"]


def test_block_plan_golden():
    blocks = shards.plan_blocks(np.array([5, 9, 7, 9, 1]), 2)
    assert [b.tolist() for b in blocks] == [[1, 3], [2, 0], [4]]     # longest first, ties in order


def test_blocks_are_balanced_by_weight():
    # LPT by hand: 9 -> r0, 7 -> r1, 5 -> r1 (12), 4 -> r0 (13), 1 -> r1 (13)
    assert shards.assign_blocks([0, 1, 2, 3, 4], np.array([9, 7, 5, 4, 1.0]), 2) == [[0, 3], [1, 2, 4]]
    assert shards.assign_blocks([3, 1], np.array([1, 2, 3, 4.0]), 3) == [[3], [1], []]


def test_damaged_shards_are_found(tmp_path):
    blocks = [np.array([0, 2]), np.array([1])]
    shards.write_shard(tmp_path, 0, blocks[0], np.zeros((2, 3)), stats={"tokens": 1}, call=0)
    shards.write_shard(tmp_path, 1, blocks[1], np.ones((1, 3)), stats={"tokens": 2}, call=1)
    done, damaged = shards.read_shards(tmp_path, blocks, 3)
    assert sorted(done) == [0, 1] and not damaged
    np.testing.assert_array_equal(shards.assemble(done, 3), [[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    p = shards.shard_path(tmp_path, 1)
    p.write_bytes(p.read_bytes()[:-20])                               # truncated
    shards.write_shard(tmp_path, 0, np.array([0, 1]), np.zeros((2, 3)), stats={}, call=0)   # wrong rows
    done, damaged = shards.read_shards(tmp_path, blocks, 3)
    assert not done and sorted(damaged) == sorted([p, shards.shard_path(tmp_path, 0)])


def _logT(d):
    return np.load(d / "logT.npy")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "s"
    assert main([*SCORE, "--out", str(out)]) == 0
    return _logT(out)


def _crash_after(monkeypatch, n: int):
    """The job dies (as on Ctrl-C) once n shards are on disk."""
    real = shards.write_shard
    count = {"n": 0}

    def write(*a, **k):
        if count["n"] == n:
            raise KeyboardInterrupt
        count["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(shards, "write_shard", write)


def test_an_interrupted_score_resumes_and_scores_each_row_once(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "s"
    with monkeypatch.context() as m:
        _crash_after(m, 2)
        assert main([*SCORE, "--out", str(out)]) == 130
    assert not (out / "meta.json").exists() and not (out / "logT.npy").exists()
    assert len(list((out / "shards").iterdir())) == 2 and (out / "job.json").exists()
    capsys.readouterr()
    assert main([*SCORE, "--out", str(out)]) == 0
    assert "3 rows this call" in capsys.readouterr().out               # 7 rows: 4 were on disk
    np.testing.assert_array_equal(_logT(out), reference)               # the same blocks, the same batches
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shards"]["rows_scored"] == 7 and meta["shards"]["rows_per_call"] == {"0": 4, "1": 3}
    assert meta["scoring"]["pairs"] == 49 and len(meta["shards"]["calls"]) == 2
    assert not (out / "shards").exists() and not (out / "job.json").exists()
    assert main([*SCORE, "--out", str(out)]) == 0                      # complete: nothing to do
    assert "nothing to do" in capsys.readouterr().out


def test_a_truncated_shard_is_scored_again(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "s"
    with monkeypatch.context() as m:
        _crash_after(m, 3)
        assert main([*SCORE, "--out", str(out)]) == 130
    victim = shards.shard_path(out, 1)
    victim.write_bytes(victim.read_bytes()[:100])
    assert main([*SCORE, "--out", str(out)]) == 0
    np.testing.assert_array_equal(_logT(out), reference)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shards"]["damaged_rescored"] == 1 and meta["shards"]["rows_per_call"] == {"0": 4, "1": 3}
    assert meta["shards"]["calls"][1]["damaged"] == [victim.name]


def test_other_settings_are_refused_unless_overwrite(tmp_path, capsys, reference):
    out = tmp_path / "s"
    assert main([*SCORE, "--out", str(out)]) == 0
    before = (out / "meta.json").read_bytes()
    capsys.readouterr()
    assert main([*SCORE, "--out", str(out), "--temperature", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "temperature 1.0, not 0.5" in err and "--overwrite" in err
    assert (out / "meta.json").read_bytes() == before
    assert main([*SCORE, "--out", str(out), "--temperature", "0.5", "--overwrite"]) == 0
    assert json.loads((out / "meta.json").read_text())["temperature"] == 0.5
    assert not np.array_equal(_logT(out), reference)


def test_a_job_logged_to_a_file_reports_each_block_as_it_is_written(tmp_path, capsys):
    """Progress bars switch off where stderr is not a terminal; a batch job's log then gets
    one line per block written, with the pairs done out of the job's total."""
    assert main([a for a in SCORE if a != "--quiet"] + ["--out", str(tmp_path / "s")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("scoring: block")]
    assert [ln.split(" written")[0] for ln in lines] == [f"scoring: block {j}/4" for j in (1, 2, 3, 4)]
    assert "28/49 pairs" in lines[1] and "49/49 pairs" in lines[3] and "left" in lines[0] + lines[1] + lines[2]
    assert "left" not in lines[3]


def test_time_left_golden():
    from dbgpu.console import eta

    assert eta(0, 10, 5.0) == "" and eta(10, 10, 5.0) == ""
    assert eta(1, 4, 10.0) == ", about 30 s left"
    assert eta(1, 4, 100.0) == ", about 5 min left"               # 300 s
