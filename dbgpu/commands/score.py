"""`dbgpu score`: the exact kernel of a state set under one model, as a score directory.

Validates every option and the state list before loading anything, scores all pairs
(`dbgpu.scoring.exact_kernel`), and writes states.json, logT.npy, prompts.json and
meta.json (last), each atomically (`dbgpu.data.write_score_dir`).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from dbgpu.errors import check_positive, check_temperature
from dbgpu.io import check_out_dir
from dbgpu.tasks import Task


def check_score_options(*, temperature: float, method: str, max_logits: int | None, batch_tokens: int) -> None:
    """Every scoring option, checked before any work (one-line errors)."""
    from dbgpu.scoring import check_method

    check_temperature(temperature)
    check_method(method)
    check_positive("max logits", max_logits, allow_none=True)
    check_positive("batch tokens", batch_tokens)


def score_job(*, model: str, task: Task, states: list[str], out: str | Path, template_path=None,
              temperature: float = 1.0, method: str = "tree", device="auto", dtype="auto", cache_dir=None,
              batch_tokens: int = 16384, max_logits: int | None = None, progress: bool = True,
              lm=None) -> dict:
    """Score `states` under `model` and write a score directory. Returns meta.json's dict."""
    from dbgpu.data import write_score_dir
    from dbgpu.models import load_model
    from dbgpu.provenance import versions
    from dbgpu.scoring import exact_kernel
    from dbgpu.tasks import canonical_states, task_spec, template_sha256

    check_score_options(temperature=temperature, method=method, max_logits=max_logits, batch_tokens=batch_tokens)
    states = canonical_states(task, states)
    out = check_out_dir(out)
    if lm is None:
        lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
    logT, prompts, stats = exact_kernel(lm, task, states, temperature=temperature, method=method,
                                        batch_tokens=batch_tokens, max_logits=max_logits, progress=progress)
    meta = {
        "model": model,
        "resolved": lm.resolved,
        "task": task_spec(task),
        "template": str(template_path) if template_path else None,
        "template_sha256": template_sha256(task),
        "answer_prefix": task.answer_prefix,
        "n_states": len(states),
        "temperature": temperature,
        "method": method,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "seconds": stats.seconds,
        "tokens": stats.tokens,
        "load_seconds": lm.load_seconds,
        "loaded_from_cache": lm.from_cache,
        "scoring": stats.as_dict(),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_score_dir(out, states, logT, prompts=prompts, meta=meta)
    return meta
