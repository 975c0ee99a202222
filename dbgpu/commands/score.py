"""`dbgpu score`: the exact kernel of a state set under one model, as a score directory.

Validates every option and the state list before loading anything, scores all pairs
(`dbgpu.scoring.exact_kernel`), and writes states.json, logT.npy, prompts.json and
meta.json (last), each atomically (`dbgpu.data.write_score_dir`). meta.json carries the
reproducibility record (`dbgpu.provenance`): machine, GPU, CUDA / cuDNN, package
versions, git commit, command line, model revision and hashes, the prompts' hash and the
date chat templates were rendered with.

`--profile DIR` runs the scoring under torch.profiler: DIR/trace.json (Chrome / Perfetto
trace, the scorer's stages labelled `dbgpu.<stage>`) and DIR/stages.md (time per stage,
tokens/s); each stage ends with a CUDA synchronize so its time is the device's.
"""

from __future__ import annotations

import datetime as _dt
import os
from contextlib import contextmanager
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


@contextmanager
def profiled(out: Path | None, device):
    """torch.profiler around the block when `out` is a directory (CPU, plus CUDA on a GPU);
    the Chrome trace is written to out/trace.json (atomically) when the block ends."""
    if out is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        yield
    tmp = out / ".trace.json.tmp"
    prof.export_chrome_trace(str(tmp))
    os.replace(tmp, out / "trace.json")


def score_job(*, model: str, task: Task, states: list[str], out: str | Path, template_path=None,
              temperature: float = 1.0, method: str = "tree", device="auto", dtype="auto", cache_dir=None,
              batch_tokens: int = 16384, max_logits: int | None = None, progress: bool = True,
              profile: str | Path | None = None, lm=None) -> dict:
    """Score `states` under `model` and write a score directory. Returns meta.json's dict."""
    from dbgpu.data import write_score_dir
    from dbgpu.formatting import TEMPLATE_DATE
    from dbgpu.io import ensure_out_dir, write_text_atomic
    from dbgpu.models import load_model
    from dbgpu.provenance import environment, model_record, prompts_sha256
    from dbgpu.scoring import ScoreStats, exact_kernel
    from dbgpu.scoring.stats import stage_table
    from dbgpu.tasks import canonical_states, template_sha256

    check_score_options(temperature=temperature, method=method, max_logits=max_logits, batch_tokens=batch_tokens)
    states = canonical_states(task, states)
    out = check_out_dir(out)
    profile = check_out_dir(profile) if profile is not None else None
    if lm is None:
        lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
    stats = ScoreStats(sync=profile is not None)
    with profiled(ensure_out_dir(profile) if profile else None, lm.device):
        logT, prompts, stats = exact_kernel(lm, task, states, temperature=temperature, method=method,
                                            batch_tokens=batch_tokens, max_logits=max_logits, progress=progress,
                                            stats=stats)
    meta = {
        "model": model,
        "resolved": lm.resolved,
        "task": task.name,
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
        "precision": {"decoder": str(lm.dtype).removeprefix("torch."), "head": "float32", "sums": "float64"},
        "model_record": model_record(lm),
        "prompts_sha256": prompts_sha256(prompts),
        "chat_template_date": TEMPLATE_DATE.isoformat(),
        "versions": (env := environment(lm.device))["versions"],
        "provenance": env,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if profile is not None:
        table = stage_table(meta["scoring"])
        meta["profile"] = {"dir": str(profile), "trace": str(profile / "trace.json"), "table": table}
        write_text_atomic(profile / "stages.md", table + "\n")
    write_score_dir(out, states, logT, prompts=prompts, meta=meta)
    return meta
