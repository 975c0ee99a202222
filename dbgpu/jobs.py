"""Jobs: the stages strung together for the CLI (load, score, write; later fit, report).

Each job validates all of its input before any heavy work, and writes its outputs
atomically at the end, so a failed or interrupted job leaves no half-written file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import sys
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.io import check_out_dir, ensure_out_dir, read_json, write_json_atomic, write_npy_atomic
from dbgpu.tasks import Task


def parse_state_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def read_states_file(path: str | Path) -> list[str]:
    """A state set from a JSON list, a score dir's states.json, or a text file (one per line)."""
    path = Path(path)
    if path.is_dir():
        path = path / "states.json"
    if path.suffix == ".json":
        states = read_json(path, what="states file")
        if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
            raise DbgpuError(f"states file {path} must hold a JSON list of strings")
        return states
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DbgpuError(f"states file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DbgpuError(f"cannot read states file {path}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def canonical_states(task: Task, states: list[str]) -> list[str]:
    """The task's canonical form of each state; an empty list or a duplicate is an error."""
    if not states:
        raise DbgpuError("the state list is empty")
    out = [task.check_state(s) for s in states]
    seen = set()
    for s in out:
        if s in seen:
            raise DbgpuError(f"state {s} appears twice in the state list")
        seen.add(s)
    return out


def read_template(path: str | Path | None, *, task: str | None = None) -> str | None:
    """A prompt template: the name of one of the task's built-in templates, or a file."""
    from dbgpu.tasks import TEMPLATES

    if path is None:
        return None
    if task is not None and str(path) in TEMPLATES.get(task, {}):
        return TEMPLATES[task][str(path)]
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DbgpuError(f"template file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DbgpuError(f"cannot read template file {path}: {e}") from None


def template_sha256(task: Task) -> str:
    """Identifies the prompt template a score directory was made with."""
    return hashlib.sha256(task.template.encode("utf-8")).hexdigest()


def versions() -> dict:
    import torch
    import transformers

    import dbgpu

    return {"dbgpu": dbgpu.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


def exact_kernel(lm, task: Task, states: list[str], *, temperature: float = 1.0, method: str = "tree",
                 batch_tokens: int = 16384, max_logits: int | None = None, progress: bool = False):
    """log T over all pairs of `states` for a loaded model: (logT, prompts, continuations, stats)."""
    from dbgpu.formatting import continuation_text, encode, prompt_text
    from dbgpu.scoring import ScoreStats, score_matrix
    from dbgpu.tree import trie_lower_bound

    tok = lm.tokenizer
    sources = {f: prompt_text(tok, task, f) for f in states}
    targets = {g: continuation_text(tok, task, g) for g in states}
    P = [encode(tok, sources[f]) for f in states]
    C = [encode(tok, targets[g]) for g in states]
    options = {"batch_tokens": batch_tokens} if method == "plain" else {"max_logits": max_logits}
    stats = ScoreStats()
    logT = score_matrix(lm.model, P, C, method=method, temperature=temperature, pad_id=tok.pad_token_id,
                        progress=progress, stats=stats, **options)
    stats.extra["trie_lower_bound"] = trie_lower_bound(P, C)
    stats.extra["tokens_over_lower_bound"] = stats.tokens / stats.extra["trie_lower_bound"]
    return logT, {"sources": sources, "targets": targets}, stats


def write_score_dir(out: Path, *, states: list[str], logT: np.ndarray, prompts: dict, meta: dict) -> None:
    """The `dbgpu score` contract: states.json, logT.npy, prompts.json, meta.json (last)."""
    out = ensure_out_dir(out)
    write_json_atomic(out / "states.json", states)
    write_npy_atomic(out / "logT.npy", np.asarray(logT, dtype=np.float64))
    write_json_atomic(out / "prompts.json", prompts)
    write_json_atomic(out / "meta.json", meta)


def score_job(*, model: str, task: Task, states: list[str], out: str | Path, template_path=None,
              temperature: float = 1.0, method: str = "tree", device="auto", dtype="auto", cache_dir=None,
              batch_tokens: int = 16384, max_logits: int | None = None, progress: bool = True,
              lm=None) -> dict:
    """Score `states` under `model` and write a score directory. Returns meta.json's dict."""
    from dbgpu.models import load_model

    if not temperature > 0:
        raise DbgpuError(f"temperature must be positive, got {temperature}")
    from dbgpu.scoring import METHODS

    if method not in METHODS:
        raise DbgpuError(f"unknown scoring method {method!r} (use {' or '.join(METHODS)})")
    if max_logits is not None and max_logits < 1:
        raise DbgpuError(f"max logits must be positive, got {max_logits}")
    if batch_tokens < 1:
        raise DbgpuError(f"batch tokens must be positive, got {batch_tokens}")
    states = canonical_states(task, states)
    out = check_out_dir(out)
    if lm is None:
        lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
    logT, prompts, stats = exact_kernel(lm, task, states, temperature=temperature, method=method,
                                        batch_tokens=batch_tokens, max_logits=max_logits, progress=progress)
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
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_score_dir(out, states=states, logT=logT, prompts=prompts, meta=meta)
    return meta


def kernel_summary(states: list[str], logT: np.ndarray, *, top: int = 10) -> str:
    """Coverage and self-transition mass per state, and the largest transitions, as text."""
    T = np.exp(logT)                                          # (N, N)
    cover, self_mass = T.sum(1), np.diag(T)
    lines = [f"{'state':<14}{'coverage':>11}{'self':>11}{'to others':>11}"]
    for i in np.argsort(-cover):
        lines.append(f"{states[i]:<14}{cover[i]:>11.3e}{self_mass[i]:>11.3e}{cover[i] - self_mass[i]:>11.3e}")
    off = T.copy()
    np.fill_diagonal(off, 0.0)
    flat = np.argsort(-off, axis=None)[:top]
    lines.append("")
    lines.append(f"top {len(flat)} transitions f -> g (self-transitions excluded):")
    for k in flat:
        f, g = np.unravel_index(k, off.shape)
        lines.append(f"  {states[f]:>12} -> {states[g]:<12} T = {off[f, g]:.3e}   log T = {logT[f, g]:8.3f}")
    return "\n".join(lines)


def analysis_summary(stats: dict, potential: dict, *, top: int = 5) -> str:
    """Headline detailed-balance numbers and the extremes of the potential, as text."""
    def fmt(x, spec=".4g"):
        return "n/a" if x is None else format(x, spec)

    pw, lp, hodge, ep = stats["pairwise"], stats["loops"], stats["hodge"], stats["entropy_production"]
    bounded = sorted(((v, s) for s, v in potential.items() if v is not None))
    lines = [
        f"least action: {stats['action']:.6g} ({stats['fit']['method']}, {stats['fit']['iterations']} iterations, "
        f"converged: {stats['fit']['converged']}); {len(bounded)} of {len(potential)} states bounded",
        f"pairwise log-ratio vs V(f)-V(g): {pw['n_pairs']} pairs, r = {fmt(pw['r'])}, slope (beta) = {fmt(pw['slope'])}"
        + (f", chi2/ndf = {fmt(pw['chi2_ndf'])}" if pw.get("chi2_ndf") is not None
           else f", RMS residual = {fmt(pw.get('rms_residual'))}"),
        f"Kolmogorov loops: {lp['count']} 3-cycles"
        + (f", chi2/ndf = {fmt(lp['chi2_ndf'])}" if lp.get("chi2_ndf") is not None else f", RMS = {fmt(lp.get('rms'))}"),
        f"Hodge gradient fraction (1 = detailed balance): {fmt(hodge['gradient_fraction'])}; "
        f"entropy production: {fmt(ep['entropy_production'])}",
    ]
    if bounded:
        lines.append("lowest potential (most probable): "
                     + ", ".join(f"{s} {v:+.2f}" for v, s in bounded[:top]))
        lines.append("highest potential: " + ", ".join(f"{s} {v:+.2f}" for v, s in bounded[::-1][:top]))
    return "\n".join(lines)
