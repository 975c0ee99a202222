"""A model spread over devices by accelerate's big-model dispatch (`--device-map`): on a CPU
the only dispatch to test is one that offloads part of the layers to disk (weights loaded
per forward, the output head on 'meta'); logT must not move."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dbgpu.errors import DbgpuError
from dbgpu.formatting import encode_states
from dbgpu.models import load_model, parse_max_memory
from dbgpu.scoring import score_matrix

STATES = ["ATTITUDE", "BUZZY", "TURKEY", "PERSONAL"]


@pytest.fixture(scope="module")
def reference(word_task):
    lm = load_model("random:llama", device="cpu")
    enc = encode_states(lm.tokenizer, word_task, STATES)
    return enc, {m: score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, method=m, pad_id=lm.tokenizer.pad_token_id)
                 for m in ("tree", "plain")}


def test_disk_offloaded_layers_give_identical_log_t(tmp_path, reference, word_task):
    enc, ref = reference
    # 400 kB of the model's 460 kB: layer 0 stays, layer 1, the final norm and the head go to disk
    lm = load_model("random:llama", device_map="auto", max_memory={"cpu": 400_000}, offload_dir=tmp_path)
    placed = lm.info["device_map"]
    assert placed["model.embed_tokens"] == "cpu" and placed["model.layers.1"] == "disk" and placed["lm_head"] == "disk"
    assert lm.model.get_output_embeddings().weight.device.type == "meta"           # really offloaded
    for method in ("tree", "plain"):
        got = score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, method=method, pad_id=lm.tokenizer.pad_token_id)
        np.testing.assert_array_equal(got, ref[method], err_msg=method)


def test_score_cli_with_a_device_map(tmp_path, capsys, reference):
    from dbgpu.cli import main

    out = tmp_path / "score"
    assert main(["score", "--model", "random:llama", "--task", "word100", "--state-list", ",".join(STATES),
                 "--out", str(out), "--device-map", "auto", "--max-memory", "cpu=400000",
                 "--offload-dir", str(tmp_path / "offload"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(out / "logT.npy"), reference[1]["tree"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model_record"]["device_map"]["model.layers.1"] == "disk"


def test_max_memory_parsing_and_errors():
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=64GiB") == {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}
    assert parse_max_memory("cpu=400000") == {"cpu": 400000}
    assert parse_max_memory(None) is None
    for bad in ("20GiB", "gpu0=1GiB", "0=", "=3"):
        with pytest.raises(DbgpuError, match="--max-memory"):
            parse_max_memory(bad)


@pytest.mark.parametrize("argv, message", [
    (["--max-memory", "cpu=1"], "go with --device-map"),
    (["--device-map", "everywhere"], "unknown --device-map"),
    (["--device-map", "auto", "--max-memory", "cpu=100000"], "no device room"),
    (["--device-map", "auto", "--max-memory", "cpu=400000"], "--offload-dir"),
])
def test_device_map_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    from dbgpu.cli import main

    out = tmp_path / "o"
    code = main(["score", "--model", "random:llama", "--task", "word100", "--state-list", "ATTITUDE,BUZZY",
                 "--out", str(out), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["score", "compare"])
def test_a_device_map_under_a_launcher_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, command):
    from dbgpu.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "o"
    argv = {"score": ["score", "--model", "random:llama", "--task", "word100", "--state-list", "ATTITUDE,BUZZY"],
            "compare": ["compare", "--models", "random:llama,random:qwen2", "--n-states", "3"]}[command]
    code = main([*argv, "--out", str(out), "--quiet", "--device-map", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "run it as one process" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_sampling_from_a_dispatched_model_draws_the_same_answers(tmp_path, reference):
    """The sampler's prefill, decode steps and float32 head through the dispatch: same seed,
    same answers as the undispatched model."""
    import torch

    from dbgpu.sampling import sample_answers

    enc, _ = reference
    runs = []
    for placement in ({}, {"device_map": "auto", "max_memory": {"cpu": 400_000}, "offload_dir": tmp_path}):
        lm = load_model("random:llama", device="cpu", **placement)
        tok = lm.tokenizer
        samples = sample_answers(lm.model, enc.prompt_ids * 3, temperature=1.0, max_new_tokens=6,
                                 stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                                 generator=torch.Generator().manual_seed(5))
        runs.append([s.ids for s in samples])
    assert runs[0] == runs[1] and any(runs[0])


def test_python_api_takes_a_device_map(tmp_path, reference):
    import dbgpu

    lm = dbgpu.load_model("random:llama", device_map="auto", max_memory="cpu=400000", offload_dir=tmp_path)
    k = dbgpu.kernel(lm, "word100", STATES, progress=False)
    np.testing.assert_array_equal(k.logT, reference[1]["tree"])
