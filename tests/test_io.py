"""Whole or absent: manifests written last, checked by every reader."""

import json

import numpy as np
import pytest

from dbgpu import synthetic as sy
from dbgpu.commands.fit import fit_input
from dbgpu.data import read_input, read_score_dir, write_score_dir
from dbgpu.errors import DbgpuError
from dbgpu.io import MANIFEST, begin_outputs, check_outputs, file_sha256, finish_outputs
from dbgpu.report import write_report


def score_dir(path, n=8, seed=0):
    _, logT = sy.dense_kernel(n, seed=seed)
    return write_score_dir(path, sy.state_names(n), logT, meta={"model": "synthetic"})


def test_score_dir_manifest_lists_every_file_with_its_hash(tmp_path):
    d = score_dir(tmp_path / "s")
    m = json.loads((d / MANIFEST).read_text())
    sec = m["outputs"]["score"]
    assert sec["complete"] and set(sec["files"]) == {"states.json", "logT.npy", "meta.json"}
    assert sec["files"]["logT.npy"]["sha256"] == file_sha256(d / "logT.npy")
    assert check_outputs(d, "score") == sec
    (d / "shard-0001.npy").write_bytes(b"row shards of a later score: not listed, allowed")
    assert read_score_dir(d).logT.shape == (8, 8)


def test_a_changed_file_is_refused(tmp_path):
    d = score_dir(tmp_path / "s")
    logT = np.load(d / "logT.npy")
    logT[0, 1] += 1.0
    np.save(d / "logT.npy", logT)                              # same size, other content
    with pytest.raises(DbgpuError, match="logT.npy changed after `dbgpu score` wrote it"):
        read_score_dir(d)
    (d / "meta.json").unlink()
    with pytest.raises(DbgpuError, match="meta.json is missing"):
        check_outputs(d, "score", verify=False)


def test_an_interrupted_score_is_refused_and_a_later_one_repairs_it(tmp_path):
    d = score_dir(tmp_path / "s")
    begin_outputs(d, "score", invalidates=("fit", "report"))   # a second score that crashed here
    with pytest.raises(DbgpuError, match="did not finish writing there"):
        read_input(d)
    score_dir(d, seed=1)
    assert read_input(d).logT.shape == (8, 8)


def test_a_new_score_makes_the_fit_and_report_there_stale(tmp_path):
    d = score_dir(tmp_path / "s")
    fit_input(d, d, device="cpu")
    write_report(d)
    assert check_outputs(d, "report")["complete"]
    score_dir(d, seed=2)                                       # the kernel changed under the fit
    with pytest.raises(DbgpuError, match="no current `dbgpu fit` output there"):
        write_report(d)
    with pytest.raises(DbgpuError, match="stale"):
        check_outputs(d, "report")
    fit_input(d, d, device="cpu")
    write_report(d)


def test_a_fit_that_dies_while_writing_leaves_nothing_a_report_reads(tmp_path, monkeypatch):
    d = score_dir(tmp_path / "s")
    import dbgpu.commands.fit as cf

    real = cf.write_json_atomic

    def die(path, obj):
        if str(path).endswith("stats.json"):
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(cf, "write_json_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        fit_input(d, tmp_path / "fit", device="cpu")
    assert (tmp_path / "fit" / "potential.json").exists()     # half a fit on disk ...
    with pytest.raises(DbgpuError, match="did not finish writing"):
        write_report(tmp_path / "fit")                         # ... which no reader takes


def test_directories_without_a_manifest_are_read_as_they_are(tmp_path):
    d = tmp_path / "hand"
    d.mkdir()
    (d / "states.json").write_text(json.dumps(sy.state_names(6)))
    np.save(d / "logT.npy", sy.dense_kernel(6)[1])
    assert check_outputs(d, "score") is None
    fit_input(d, d, device="cpu")                              # adds a manifest with a fit section
    assert check_outputs(d, "score") is None and check_outputs(d, "fit")["complete"]
    fit_input(d, d, device="cpu")                              # and the hand-made kernel still reads


def test_finish_records_extra_fields_and_keeps_other_sections(tmp_path):
    d = begin_outputs(tmp_path / "x", "a")
    (d / "f.txt").write_text("1")
    finish_outputs(d, "a", ["f.txt"], note="hello")
    begin_outputs(d, "b")
    m = json.loads((d / MANIFEST).read_text())
    assert m["outputs"]["a"]["note"] == "hello" and m["outputs"]["b"] == {"complete": False,
                                                                         "started": m["outputs"]["b"]["started"]}
    (d / MANIFEST).write_text("[]")
    with pytest.raises(DbgpuError, match="is not a dbgpu manifest"):
        check_outputs(d, "a")
