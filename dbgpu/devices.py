"""Device and dtype, resolved in one place for every stage (models, fit, statistics)."""

from __future__ import annotations

import torch

from dbgpu.errors import DbgpuError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) -> CUDA when torch sees a GPU, else the CPU; 'cpu', 'cuda', 'cuda:N'
    as given. Asking for CUDA without one, or for an unknown device, is a one-line error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DbgpuError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise DbgpuError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DbgpuError(f"device {device} requested but no CUDA device is available")
    return dev


def device_type(device: str | torch.device | None) -> str:
    """'cpu' or 'cuda': the kind of device `device` names, without requiring it to be present
    (a plan for a GPU can be made on a machine without one); 'auto' as resolve_device."""
    if device is None or str(device) == "auto":
        return resolve_device(device).type
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise DbgpuError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    return kind


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU, unless the user names one."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise DbgpuError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return _DTYPES[dtype]


# ----------------------------------------------------------------------------- CUDA bookkeeping
# Each is a no-op on the CPU; tests exercise the CUDA branch on CPU by patching torch.cuda.


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on `device` (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Bytes allocated at the peak since the last reset (CUDA); None on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def empty_cache(device: torch.device) -> None:
    """Return cached, unused memory to the driver (CUDA, after an out-of-memory error)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
