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


@pytest.mark.slow
def test_smollm2_gguf_cold_then_cached(model_cache):
    cold = load_model("smollm2-135m", device="cpu", cache_dir=model_cache / "fresh")
    warm = load_model("smollm2-135m", device="cpu", cache_dir=model_cache / "fresh")
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
