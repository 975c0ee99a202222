"""`dbgpu compare`: one state set under every model x template, each fitted, compared.

Scores the same states under every model x template (reusing score directories already
in the output directory), fits each, and compares every pair of runs on the states
bounded in both (`dbgpu.comparison`). Outputs: compare.md, compare.csv (one row per
pair of runs), runs.csv (one row per run), compare.json, potentials.{png,pdf},
db_index.{png,pdf}, and one score + fit directory per run under runs/.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.io import check_out_dir, csv_text, locked_dir, read_json, write_json_atomic, write_text_atomic


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def template_label(template: str | None) -> str:
    """A short name for a template: the built-in name, a file's stem, or "default"."""
    if template is None:
        return "default"
    return Path(template).stem if Path(template).suffix or "/" in template else template


def reusable(run_dir: Path, *, states: list[str], meta_wanted: dict) -> bool:
    """Whether `run_dir` already holds the scores this run needs (same states, model,
    task, template text, answer prefix and temperature)."""
    try:
        meta = read_json(run_dir / "meta.json", what="meta")
        have = read_json(run_dir / "states.json", what="states")
    except DbgpuError:
        return False
    if not (run_dir / "logT.npy").is_file() or have != states:
        return False
    return all(meta.get(k) == v for k, v in meta_wanted.items())


def run_summary(run: dict) -> dict:
    """One row of runs.csv: a run's detailed-balance indices, coverage and throughput."""
    st, meta = run["stats"], run["meta"]
    T = np.exp(run["logT"])
    return {
        "label": run["label"], "model": meta["model"], "template": template_label(meta.get("template")),
        "dir": run["dir"], "n_states": st["n_states"],
        "bounded": sum(v is not None for v in run["potential"].values()),
        "hodge_gradient_fraction": st["hodge"]["gradient_fraction"],
        "pairwise_r": st["pairwise"]["r"], "beta": st["pairwise"]["slope"],
        "loops_rms": st["loops"].get("rms"), "entropy_production": st["entropy_production"]["entropy_production"],
        "mean_coverage": float(T.sum(1).mean()), "mean_self": float(np.diag(T).mean()),
        "score_seconds": meta["seconds"], "pairs_per_second": meta["scoring"].get("pairs_per_second"),
        "tokens_per_second": meta["scoring"].get("tokens_per_second"),
        "device": meta["device"], "dtype": meta["dtype"], "reused": run["reused"],
    }


def _check(models: list[str], templates: list[str | None]) -> None:
    if not models:
        raise DbgpuError("no models to compare")
    if len(models) * len(templates) < 2:
        raise DbgpuError("a comparison needs at least two runs (two models or two templates)")
    if len(set(models)) != len(models) or len(set(map(str, templates))) != len(templates):
        raise DbgpuError("a model or template is listed twice")


def _model_runs(model: str, templates, tasks: dict, *, states, out: Path, temperature: float,
                method: str, device, dtype, cache_dir, progress: bool, log, placement: dict | None = None) -> list[dict]:
    """Score (or reuse), fit and report each template's run of one model; the model is
    loaded once, and only if some run needs scoring."""
    from dbgpu.commands.fit import fit_input
    from dbgpu.commands.report import report_job
    from dbgpu.commands.score import score_job
    from dbgpu.distributed import launched, rank_device
    from dbgpu.models import load_model
    from dbgpu.tasks import task_spec, template_sha256

    lm, runs = None, []
    for t in templates:
        task = tasks[t]
        label = f"{model} [{template_label(t)}]"
        run_dir = out / "runs" / f"{slug(model)}__{slug(template_label(t))}"
        wanted = {"model": model, "task": task_spec(task), "template_sha256": template_sha256(task),
                  "answer_prefix": task.answer_prefix, "temperature": temperature}
        reused = reusable(run_dir, states=states, meta_wanted=wanted)
        if reused:
            log(f"[{label}] reusing the scores in {run_dir}")
        else:
            if lm is None:
                lm = load_model(model, device=rank_device(device, launched()), dtype=dtype, cache_dir=cache_dir,
                                **(placement or {}))
            log(f"[{label}] scoring {len(states)}x{len(states)} pairs -> {run_dir}")
            if score_job(model=model, task=task, states=states, out=run_dir, template_path=t,
                         temperature=temperature, method=method, progress=progress, lm=lm, overwrite=True) is None:
                continue                          # another rank of a launched job: rank 0 fits
        fit_input(run_dir, run_dir, device="cpu" if str(device) == "cpu" else "auto")
        report_job(run_dir)
        runs.append({"label": label, "dir": str(run_dir), "reused": reused, "states": states,
                     "logT": np.load(run_dir / "logT.npy"), "meta": read_json(run_dir / "meta.json"),
                     "potential": read_json(run_dir / "potential.json"),
                     "stats": read_json(run_dir / "stats.json")})
    return runs


def compare_job(*, models: list[str], templates: list[str | None], task_name: str, states: list[str], out,
                answer_prefix: str | None = None, temperature: float = 1.0, method: str = "tree",
                device="auto", dtype="auto", cache_dir=None, placement: dict | None = None, progress: bool = True,
                log=print) -> dict:
    """Score (or reuse), fit and compare every model x template run. Returns compare.json's dict.
    placement: big-model dispatch options for `load_model` (device_map, max_memory, offload_dir)."""
    from dbgpu.distributed import launched
    from dbgpu.models import resolve_model
    from dbgpu.tasks import canonical_states, get_task, read_template

    _check(models, templates)
    base = get_task(task_name)
    tasks = {t: get_task(task_name, template=read_template(t, task=base), answer_prefix=answer_prefix)
             for t in templates}
    states = canonical_states(next(iter(tasks.values())), states)
    for m in models:
        resolve_model(m, cache_dir=cache_dir)          # unknown models fail before any work
    out = check_out_dir(out)
    main = launched().main                           # under torchrun every rank scores, rank 0 compares
    with locked_dir(out) if main else contextlib.nullcontext():
        runs = []
        for model in models:
            runs += _model_runs(model, templates, tasks, states=states, out=out,
                                temperature=temperature, method=method, device=device, dtype=dtype,
                                cache_dir=cache_dir, placement=placement, progress=progress,
                                log=log if main else (lambda *a: None))
        if not main:
            return {}
        return _write_comparison(out, runs, task_name=task_name, states=states, temperature=temperature)


def _write_comparison(out: Path, runs: list[dict], *, task_name: str, states: list[str],
                      temperature: float) -> dict:
    """compare.{csv,json,md}, runs.csv and the two figures."""
    from dbgpu.comparison import compare_pair
    from dbgpu.report import compare_markdown, plot_db_index, plot_potentials

    summaries = [run_summary(r) for r in runs]
    rows = [compare_pair(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]]
    plot_potentials(runs, out)
    plot_db_index(summaries, out)
    result = {"task": task_name, "states": states, "temperature": temperature, "runs": summaries, "pairs": rows}
    write_text_atomic(out / "compare.csv", csv_text(rows))
    write_text_atomic(out / "runs.csv", csv_text(summaries))
    write_json_atomic(out / "compare.json", result)
    write_text_atomic(out / "compare.md", compare_markdown(summaries, rows))
    return result
