"""Model loading: aliases, local directories, hub ids, random configs, the GGUF cache."""

from __future__ import annotations

import inspect

import pytest
import torch

from dbgpu.errors import DbgpuError
from dbgpu.devices import resolve_device, resolve_dtype
from dbgpu.models import cache_kwarg, gguf_cache_path, load_model, random_model, resolve_model


def _logits(lm, text="Hello world, ATTITUDE"):
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def test_unknown_models_are_rejected_with_one_line(tmp_path):
    for name, msg in [("nope", "unknown model"), ("random:mamba", "unknown random architecture"), ("", "empty")]:
        with pytest.raises(DbgpuError, match=msg):
            resolve_model(name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DbgpuError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(DbgpuError, match="safetensors"):
        resolve_model(str(pickled))


def test_hub_ids_resolve_without_network():
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == {"kind": "hub", "path": "Qwen/Qwen2.5-0.5B-Instruct",
                                                           "gguf_file": None}


def test_device_and_dtype_defaults():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(DbgpuError, match="unknown dtype"):
        resolve_dtype("int3", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(DbgpuError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_random_models_are_fixed_by_seed():
    a, _ = random_model("qwen2", seed=0)
    b, _ = random_model("qwen2", seed=0)
    c, _ = random_model("qwen2", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    before = torch.random.get_rng_state()
    random_model("llama", seed=5)
    assert torch.equal(before, torch.random.get_rng_state()), "must not touch the global RNG"


def test_local_directory_round_trip(tmp_path, tiny_lms):
    """A transformers checkpoint directory (what a hub id downloads to) loads to the same model."""
    lm = tiny_lms("llama")
    lm.model.save_pretrained(tmp_path, safe_serialization=True)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), device="cpu")
    assert again.resolved == {"path": str(tmp_path.resolve()), "gguf_file": None}
    assert again.dtype == torch.float32
    torch.testing.assert_close(_logits(again), _logits(lm), atol=0, rtol=0)
    assert again.tokenizer.chat_template == lm.tokenizer.chat_template


def test_cache_argument_name_is_in_the_forward_signature(tiny_lms):
    model = tiny_lms("llama").model
    assert cache_kwarg(model) in inspect.signature(model.forward).parameters


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bf16_loading_is_transformers_own_and_keeps_rotary_buffers_float32(tmp_path, arch):
    """A random model loaded in bf16 equals transformers' from_pretrained(dir, dtype=bf16) of the
    same float32 weights: parameters, buffers (rotary inv_freq stays float32) and logits, bit
    for bit. Negative control: Module.to(bf16), the old way, rounds the rotary frequencies
    and changes the logits."""
    from transformers import AutoModelForCausalLM

    ours = load_model(f"random:{arch}", device="cpu", dtype="bfloat16", seed=0)
    fp32, _ = random_model(arch, seed=0)
    fp32.save_pretrained(tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    rotary = [n for n, _ in ref.named_buffers() if "inv_freq" in n]
    assert rotary and all(dict(ours.model.named_buffers())[n].dtype == torch.float32 for n in rotary)
    for (n, a), (m, b) in zip(ours.model.state_dict().items(), ref.state_dict().items()):
        assert n == m and a.dtype == b.dtype and torch.equal(a, b), n
    for n, b in ref.named_buffers():
        a = dict(ours.model.named_buffers())[n]
        assert a.dtype == b.dtype and torch.equal(a, b), n
    ids = torch.tensor([list(range(3, 180))])                     # positions up to ~180
    with torch.no_grad():
        theirs = ref(input_ids=ids).logits
        torch.testing.assert_close(ours.model(input_ids=ids).logits, theirs, atol=0, rtol=0)
        old = fp32.to(torch.bfloat16)
        assert {b.dtype for n, b in old.named_buffers() if "inv_freq" in n} == {torch.bfloat16}
        assert (old(input_ids=ids).logits.float() - theirs.float()).abs().max() > 1e-3


def test_local_directory_loads_in_bf16_with_float32_rotary_buffers(tmp_path, tiny_lms):
    lm = tiny_lms("qwen2")
    lm.model.save_pretrained(tmp_path, safe_serialization=True)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    assert again.dtype == torch.bfloat16 and next(again.model.parameters()).dtype == torch.bfloat16
    assert {b.dtype for n, b in again.model.named_buffers() if "inv_freq" in n} == {torch.float32}
    assert again.info["revision"] is None                         # a plain directory records none


@pytest.mark.slow
def test_smollm2_gguf_cold_then_cached(model_cache, capfd):
    capfd.readouterr()
    cold = load_model("smollm2-135m", device="cpu", cache_dir=model_cache / "fresh")
    err = capfd.readouterr().err                     # dbgpu's one line, none of transformers' bars
    assert "dbgpu: dequantising SmolLM2-135M-Instruct.Q4_1.gguf" in err
    assert "de-quantizing" not in err and "Loading weights" not in err and "%|" not in err, err[-2000:]
    warm = load_model("smollm2-135m", device="cpu", cache_dir=model_cache / "fresh")
    err = capfd.readouterr().err
    assert "dequantising" not in err and "%|" not in err, err[-2000:]
    assert not cold.from_cache and warm.from_cache
    assert cold.resolved["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    entry = gguf_cache_path(__import__("pathlib").Path(cold.resolved["path"]), model_cache / "fresh")
    assert entry.is_dir()
    from dbgpu.io import dir_mode, file_mode                     # what mkdir / open give: the umask's
    assert entry.stat().st_mode & 0o777 == dir_mode()
    assert all(p.stat().st_mode & 0o777 == file_mode() for p in entry.iterdir())
    assert cold.info["model_type"] == "llama" and 1.2e8 < cold.info["n_params"] < 1.5e8
    torch.testing.assert_close(_logits(warm), _logits(cold), atol=0, rtol=0)
    assert warm.tokenizer("ATTITUDE").input_ids == cold.tokenizer("ATTITUDE").input_ids
    assert warm.tokenizer.chat_template == cold.tokenizer.chat_template
    assert len(cold.info["gguf_sha256"]) == 64 and warm.info["gguf_sha256"] == cold.info["gguf_sha256"]
    bf16 = load_model("smollm2-135m", device="cpu", dtype="bfloat16", cache_dir=model_cache / "fresh")
    assert bf16.from_cache and next(bf16.model.parameters()).dtype == torch.bfloat16
    assert {b.dtype for n, b in bf16.model.named_buffers() if "inv_freq" in n} == {torch.float32}


def test_revision_is_read_from_the_config_or_the_hub_cache_path(tiny_lms):
    from dbgpu.models import _revision

    model = tiny_lms("llama").model
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert _revision(model, f"/home/u/.cache/huggingface/hub/models--org--m/snapshots/{commit}") == commit
    assert _revision(model, "/data/my-model") is None


def test_loading_shows_dbgpu_progress_only(tmp_path, tiny_lms, capfd):
    """transformers' "Loading weights" bar is silenced while dbgpu loads a model (load_model
    and `dbgpu score`), dbgpu's own progress line is kept, and the silencing ends with the
    call: transformers alone, before and after, still draws its bar."""
    from transformers import AutoModelForCausalLM

    from dbgpu.cli import main

    lm = tiny_lms("llama")
    ckpt = tmp_path / "ckpt"
    lm.model.save_pretrained(ckpt, safe_serialization=True)
    lm.tokenizer.save_pretrained(ckpt)
    capfd.readouterr()
    AutoModelForCausalLM.from_pretrained(ckpt)             # the bar this test looks for exists
    assert "Loading weights" in capfd.readouterr().err
    load_model(str(ckpt), device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
    rc = main(["score", "--model", str(ckpt), "--task", "word100", "--state-list", "ATTITUDE,PERSONAL",
               "--out", str(tmp_path / "s"), "--device", "cpu"])
    err = capfd.readouterr().err
    assert rc == 0 and "Loading weights" not in err
    assert "scoring: block 1/1 written" in err             # dbgpu's own progress still shown
    AutoModelForCausalLM.from_pretrained(ckpt)             # no global side effect outlives the call
    assert "Loading weights" in capfd.readouterr().err


def test_the_gguf_readers_bar_is_off_only_inside_the_call(capfd):
    """transformers' GGUF reader uses a bare tqdm that no transformers switch reaches: dbgpu
    disables it for the call and restores it after."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from dbgpu.models import _gguf_bar_off

    before = gguf_utils.tqdm
    capfd.readouterr()
    with _gguf_bar_off():
        for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert "de-quantizing" not in capfd.readouterr().err
    assert gguf_utils.tqdm is before
    for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
    assert "de-quantizing" in capfd.readouterr().err         # the check above could fail


# ----------------------------------------------------------------------------- real-size shapes


@pytest.mark.parametrize("arch, n_params, embed", [
    # published parameter counts: Llama-3.1-8B 8,030,261,248 and Qwen2.5-7B 7,615,616,512 (model cards);
    # Gemma 3 4B's text model 671M embedding + 3,209M non-embedding (Gemma 3 report, table 1)
    ("llama-3.1-8b", 8_030_261_248, None), ("qwen2.5-7b", 7_615_616_512, None), ("gemma-3-4b", None, 3_209e6)])
def test_real_size_shapes_have_the_published_parameter_counts(arch, n_params, embed):
    """Built on the meta device (no memory): the parameter count is the published model's."""
    from transformers import AutoModelForCausalLM

    from dbgpu.models import random_config

    config, _ = random_config(arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    if n_params is not None:
        assert total == n_params
    else:                                   # non-embedding count, rounded to millions in the report
        body = total - model.get_input_embeddings().weight.numel()
        assert abs(body - embed) < 0.5e6, body


def test_gemma_3_4b_has_five_local_layers_to_one_global_with_its_ropes():
    from dbgpu.models import random_config

    config, _ = random_config("gemma-3-4b")
    kinds = config.layer_types
    assert len(kinds) == 34 and kinds[5] == kinds[11] == "full_attention" and kinds.count("full_attention") == 5
    assert config.sliding_window == 1024 and config.head_dim == 256 and config.vocab_size == 262208
    assert config.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4


def test_a_random_model_with_smollm2_tokenizer_keeps_its_vocabulary(model_cache, word_task):
    """random:ARCH+smollm2-135m: SmolLM2's BPE tokens (the real model's ids for the same text),
    the head the architecture's own size; meta-style record says which tokenizer."""
    from dbgpu.formatting import encode, prompt_text
    from dbgpu.models import alias_tokenizer

    lm = load_model("random:llama+smollm2-135m", device="cpu", cache_dir=model_cache)
    from dbgpu.models import _alias_gguf, gguf_cache_path

    real = alias_tokenizer("smollm2-135m", cache_dir=model_cache)            # from a cache now
    # The tokenizer comes from the dequantised model's cache when an earlier test loaded the
    # model, else from the tokenizer-only cache the first call wrote: one of the two holds it.
    dequantised = gguf_cache_path(_alias_gguf("smollm2-135m", model_cache), model_cache)
    assert any((where / "tokenizer_config.json").is_file()
               for where in (dequantised, model_cache / "tokenizers" / dequantised.name))
    text = prompt_text(lm.tokenizer, word_task, "BUZZY")
    ids = encode(lm.tokenizer, text)
    assert ids == encode(real, text) and len(ids) < len(text.encode()) / 2   # BPE: far fewer than bytes
    assert lm.info["tokenizer"]["kind"] == "smollm2-135m" and lm.info["tokenizer"]["size"] == 49152
    assert lm.model.get_output_embeddings().weight.shape[0] == 49152          # rounded up to 64: already is
    big_config, big_tok, resolved = __import__("dbgpu.models", fromlist=["x"]).model_config(
        "random:llama-3.1-8b+smollm2-135m", cache_dir=model_cache)
    assert big_config.vocab_size == 128256 and len(big_tok) == 49152
    assert resolved["tokenizer"]["kind"] == "smollm2-135m"
    from dbgpu.cli import main

    out = model_cache.parent / "score-smollm2-tokenizer"
    assert main(["score", "--model", "random:llama+smollm2-135m", "--task", "word100", "--state-list",
                 "ATTITUDE,BUZZY", "--out", str(out), "--device", "cpu", "--quiet",
                 "--cache-dir", str(model_cache)]) == 0
    import json

    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "smollm2-135m" and meta["model"] == "random:llama+smollm2-135m"
    with pytest.raises(DbgpuError, match="unknown tokenizer"):
        resolve_model("random:llama+gpt2")
    with pytest.raises(DbgpuError, match="unknown random architecture"):
        resolve_model("random:llama-9b+smollm2-135m")


def test_a_random_model_takes_a_tokenizer_from_a_directory(tmp_path, word_task):
    """random:ARCH+DIR: the tokenizer saved in DIR (here the byte-level one, saved and read
    back) gives the same token ids as the tokenizer it was saved from; the record names the
    directory. A directory without tokenizer files, or none at all, is a one-line error."""
    from dbgpu.formatting import encode, prompt_text
    from dbgpu.models import byte_tokenizer, model_config, random_tokenizer

    byte_tokenizer(chat=True).save_pretrained(tmp_path / "tok")
    tok, record = random_tokenizer(f"random:llama+{tmp_path / 'tok'}")
    ref, ref_record = random_tokenizer("random:llama")
    text = prompt_text(ref, word_task, "BUZZY")
    assert encode(tok, text) == encode(ref, text) and len(encode(ref, text)) > 100
    assert record == {"kind": "directory", "source": str((tmp_path / "tok").resolve()), "size": ref_record["size"]}
    assert model_config(f"random:llama-3.1-8b+{tmp_path / 'tok'}")[0].vocab_size == 128256   # the head keeps its size
    (tmp_path / "empty").mkdir()
    with pytest.raises(DbgpuError, match="holds no tokenizer.json or tokenizer_config.json"):
        resolve_model(f"random:llama+{tmp_path / 'empty'}")
    with pytest.raises(DbgpuError, match="unknown tokenizer .* or a directory holding a tokenizer"):
        resolve_model(f"random:llama+{tmp_path / 'absent'}")


def test_dry_run_plans_the_8b_on_cuda_without_building_it(tmp_path, capsys, monkeypatch, model_cache):
    """`score --dry-run --device cuda` on the 8B shape: config + tokenizer only. Every way
    to materialise a model is made to fail, so a dry run that built one would not pass."""
    import transformers

    import dbgpu.models as models
    from dbgpu.cli import main

    def no_weights(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(models, "random_model", no_weights)
    monkeypatch.setattr(models, "load_model", no_weights)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", no_weights)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    for arch in ("llama-3.1-8b+smollm2-135m", "qwen2.5-7b", "gemma-3-4b+smollm2-135m"):
        out = tmp_path / "score"
        code = main(["score", "--model", f"random:{arch}", "--task", "word100", "--state-list",
                     "ATTITUDE,BUZZY,TURKEY", "--out", str(out), "--device", "cuda", "--dry-run",
                     "--cache-dir", str(model_cache)])
        stdout = capsys.readouterr().out
        assert code == 0 and not out.exists(), arch
        assert "cuda defaults" in stdout and "bfloat16" in stdout
        if arch.startswith("llama"):
            # 8,030,261,248 bf16 parameters = 15,316 MiB (the plan's weights line)
            assert "smollm2-135m tokenizer of 49,152 tokens" in stdout
            assert "| weights | 15,316 MiB |" in stdout, stdout


def test_a_large_random_model_is_built_on_its_device_in_its_dtype(monkeypatch):
    """Above DIRECT_BUILD_PARAMS a random model is built where it runs, in its dtype (no float32
    copy on the CPU): forced here on a tiny model. It is the model transformers builds in that
    dtype: bf16 weights, the rotary frequencies float32 (as cast_parameters keeps them)."""
    import dbgpu.models as models

    monkeypatch.setattr(models, "DIRECT_BUILD_PARAMS", 0)
    lm = load_model("random:llama", device="cpu", dtype="bfloat16", seed=1)
    assert lm.info["built_on"] == "cpu"
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    buffers = {n: b.dtype for n, b in lm.model.named_buffers() if "inv_freq" in n}
    assert buffers and set(buffers.values()) == {torch.float32}
    again = load_model("random:llama", device="cpu", dtype="bfloat16", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(lm.model.parameters(), again.model.parameters()))   # seeded
    assert torch.isfinite(_logits(lm)).all()
    monkeypatch.setattr(models, "DIRECT_BUILD_PARAMS", 10 ** 12)
    assert "built_on" not in load_model("random:llama", device="cpu", seed=1).info
