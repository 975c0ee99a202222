"""`dbgpu compare`: one state set under every model x template, each fitted, compared.

Scores the same states under every model x template (reusing score directories already
in the output directory), fits each, and compares every pair of runs on the states
bounded in both (`dbgpu.comparison`). Outputs: compare.md, compare.csv (one row per
pair of runs), runs.csv (one row per run), compare.json, spread.csv and
uncertainty.json (the spread of V across the runs: `dbgpu.comparison.potential_spread`,
the honest error of an exact kernel's V), potentials.{png,pdf}, db_index.{png,pdf}, and
one score + fit directory per run under runs/; the top-level files are vouched for by
the directory's manifest (`dbgpu.io`).

A run directory is reused only when its score is whole (its manifest checks out) and
was made with the same states, model (and the file it resolves to; the model revision
where meta.json records one that can be computed again here), task, template text,
answer prefix, temperature, scoring method and dtype, and when its prompts.json equals
the prompts this model's tokenizer renders now (the tokenizer alone is loaded for that:
cheap; where it cannot be had without loading the model, as for a GGUF file not yet in
the dequantised cache, the run is scored again). A directory not reused is named with the
reason, one line, before it is scored again.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.io import (begin_outputs, check_out_dir, check_outputs, csv_text, finish_outputs, locked_dir, read_json,
                      write_json_atomic, write_text_atomic)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def template_label(template: str | None) -> str:
    """A short name for a template: the built-in name, a file's stem, or "default"."""
    if template is None:
        return "default"
    return Path(template).stem if Path(template).suffix or "/" in template else template


#: where a meta.json may record the model's revision (newest layout first)
REVISION_KEYS = (("provenance", "model", "revision"), ("resolved", "revision"), ("model_revision",),
                 ("revision",), ("resolved", "sha256"), ("model_sha256",))


def recorded_revision(meta: dict) -> tuple[tuple, object] | None:
    """(where, value) of the first model revision that meta.json records, if any."""
    for path in REVISION_KEYS:
        v = meta
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            return path, v
    return None


def _same(have, want) -> bool:
    """Equal; for a dict wanted, equal on the wanted keys (meta.json may record more)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(have.get(k) == v for k, v in want.items())
    return have == want


def reuse_problem(run_dir: Path, *, states: list[str], meta_wanted: dict, prompts=None, revision=None) -> str | None:
    """None when `run_dir` already holds the scores this run needs; else why not, in a few
    words. Reusable: a whole score (its manifest checks out) with the same states and every
    `meta_wanted` value; the same prompts (prompts.json's texts, compared as texts, so a
    directory of any dbgpu release matches on content) when `prompts` (a callable giving
    the prompts.json value now, or None where that cannot be computed) is given; the same
    model revision where meta.json records one and `revision` (a callable: where -> value
    or None) can compute it again."""
    if not run_dir.exists():
        return "nothing scored yet"
    try:
        if check_outputs(run_dir, "score") is None:
            return "its score is not whole"                  # nothing vouches for these files
        meta = read_json(run_dir / "meta.json", what="meta")
        have = read_json(run_dir / "states.json", what="states")
    except DbgpuError as e:
        return str(e)
    if have != states:
        return "another state set"
    for k, v in meta_wanted.items():
        if not _same(meta.get(k), v):
            return f"another {k}"
    rec = recorded_revision(meta)
    if rec is not None and revision is not None:
        now = revision(rec[0])
        if now is not None and now != rec[1]:
            return "another model revision"
    if prompts is not None:
        want = prompts()
        if want is None:
            return "its prompts cannot be checked without loading the model"
        try:
            stored = read_json(run_dir / "prompts.json", what="prompts")
        except DbgpuError as e:
            return str(e)
        if stored != want:
            return "other prompts"
    return None


def _tokenizer(model: str, cache_dir):
    """The model's tokenizer without its weights, or None where that would cost loading
    the model (a GGUF file not yet dequantised into the cache, an unreachable hub id)."""
    from dbgpu.models import default_cache_dir, gguf_cache_path, random_tokenizer, resolve_model

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    r = resolve_model(model, cache_dir=cache)
    if r["kind"] == "random":
        return random_tokenizer(model, cache_dir=cache)[0]
    path = gguf_cache_path(Path(r["path"]), cache) if r["kind"] == "gguf" else r["path"]
    if r["kind"] == "gguf" and not (Path(path) / "config.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError):
        return None


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


def _check(models: list[str], templates: list[str | None], temperature=1.0) -> None:
    if not models:
        raise DbgpuError("no models to compare")
    several = 1 if isinstance(temperature, (int, float)) else len(temperature)
    if len(models) * len(templates) * several < 2:
        raise DbgpuError("a comparison needs at least two runs (two models, templates or temperatures)")
    if len(set(models)) != len(models) or len(set(map(str, templates))) != len(templates):
        raise DbgpuError("a model or template is listed twice")


def _current_revision(resolved: dict, where: tuple):
    """The model revision now, in the form meta.json records it at `where`, where it can be
    computed without loading the model (a GGUF file's SHA-256); else None."""
    if resolved["kind"] == "gguf" and where[-1] in ("sha256", "model_sha256"):
        from dbgpu.io import file_sha256

        return file_sha256(resolved["path"])
    return None


def _model_runs(model: str, templates, tasks: dict, *, states, out: Path, temperature,
                method: str, device, dtype, cache_dir, progress: bool, log, placement: dict | None = None) -> list[dict]:
    """Score (or reuse), fit and report each template's run of one model; the model is
    loaded once, and only if some run needs scoring. `temperature` a list: each template
    scored once for every temperature (one pass of forwards, runs/<model>__<template>/tau-<tau>),
    one run per temperature."""
    from dbgpu.commands.score import tau_name
    from dbgpu.commands.fit import fit_input
    from dbgpu.commands.report import report_job
    from dbgpu.commands.score import score_job
    from dbgpu.distributed import launched, rank_device
    from dbgpu.models import load_model
    from dbgpu.tasks import task_spec, template_sha256

    from dbgpu.devices import resolve_device, resolve_dtype
    from dbgpu.formatting import encode_states
    from dbgpu.models import resolve_model

    lm, runs, tok = None, [], []
    resolved = resolve_model(model, cache_dir=cache_dir)
    dt = str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")

    def tokenizer():                                         # loaded once, only when needed
        if not tok:
            tok.append(lm.tokenizer if lm is not None else _tokenizer(model, cache_dir))
        return tok[0]

    several = isinstance(temperature, list)
    for t in templates:
        task = tasks[t]
        label = f"{model} [{template_label(t)}]"
        job_dir = run_dir = out / "runs" / f"{slug(model)}__{slug(template_label(t))}"
        taus = temperature if several else [temperature]
        dirs = [job_dir / tau_name(tau) for tau in taus] if several else [job_dir]
        prompts = lambda: None if tokenizer() is None else encode_states(tokenizer(), task, states).prompts_json  # noqa: E731
        problem = None
        for tau, run_dir in zip(taus, dirs):
            wanted = {"model": model, "task": task_spec(task), "template_sha256": template_sha256(task),
                      "answer_prefix": task.answer_prefix, "temperature": tau, "method": method,
                      "dtype": dt, "resolved": {"path": resolved["path"], "gguf_file": resolved["gguf_file"]}}
            problem = problem or reuse_problem(run_dir, states=states, meta_wanted=wanted, prompts=prompts,
                                               revision=lambda where: _current_revision(resolved, where))
        run_dir = job_dir
        reused = problem is None
        if reused:
            log(f"[{label}] reusing the scores in {run_dir}")
        else:
            if run_dir.exists():
                log(f"[{label}] not reusing {run_dir} ({problem}): scoring again")
            if lm is None:
                lm = load_model(model, device=rank_device(device, launched()), dtype=dtype, cache_dir=cache_dir,
                                **(placement or {}))
            log(f"[{label}] scoring {len(states)}x{len(states)} pairs"
                + (f" at {len(taus)} temperatures from one pass" if several else "") + f" -> {run_dir}")
            if score_job(model=model, task=task, states=states, out=run_dir, template_path=t,
                         temperature=temperature, method=method, progress=progress, lm=lm, overwrite=True) is None:
                continue                          # another rank of a launched job: rank 0 fits
            tok.clear()                                      # the loaded model's own tokenizer from now on
        for tau, run_dir in zip(taus, dirs):
            fit_input(run_dir, run_dir, device="cpu" if str(device) == "cpu" else "auto")
            report_job(run_dir)
            runs.append({"label": f"{label} tau={format(tau, 'g')}" if several else label, "dir": str(run_dir),
                         "reused": reused, "states": states, "tau": tau, "group": label,
                         "logT": np.load(run_dir / "logT.npy"), "meta": read_json(run_dir / "meta.json"),
                         "potential": read_json(run_dir / "potential.json"),
                         "stats": read_json(run_dir / "stats.json")})
    return runs


def compare_job(*, models: list[str], templates: list[str | None], task_name: str, states: list[str], out,
                answer_prefix: str | None = None, temperature=1.0, method: str = "tree",
                device="auto", dtype="auto", cache_dir=None, placement: dict | None = None, progress: bool = True,
                log=print) -> dict:
    """Score (or reuse), fit and compare every model x template run (x temperature: `temperature`
    a list scores each model x template once for all of them). Returns compare.json's dict.
    placement: big-model dispatch options for `load_model` (device_map, max_memory, offload_dir)."""
    from dbgpu.distributed import launched
    from dbgpu.models import resolve_model
    from dbgpu.tasks import canonical_states, get_task, read_template

    from dbgpu.commands.score import temperature_setting

    temperature = temperature_setting(temperature)
    _check(models, templates, temperature)
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


def compare_summary(result: dict) -> str:
    """One line per pair of runs and one for the spread of V (what `dbgpu compare` prints)."""
    from dbgpu.console import fmt

    lines = [f"{r['a']}  vs  {r['b']}: {r['shared_bounded']} shared bounded states, Pearson V "
             f"{fmt(r['pearson_V'])}, Spearman V {fmt(r['spearman_V'])}, slope {fmt(r['slope_V'])}, "
             f"log-ratio r {fmt(r['pearson_logratio'])}" for r in result["pairs"]]
    sp = result["spread"]
    if sp.get("median_sd") is not None:
        lines.append(f"spread of V across the runs on {sp['states']} states bounded in all: median sd "
                     f"{fmt(sp['median_sd'])} after gauge and scale, {fmt(sp['median_sd_gauge'])} after the "
                     f"gauge alone")
    return "\n".join(lines)


def _write_comparison(out: Path, runs: list[dict], *, task_name: str, states: list[str],
                      temperature) -> dict:
    """compare.{csv,json,md}, runs.csv, spread.csv, uncertainty.json and the two figures,
    between `begin_outputs` and `finish_outputs`; with several temperatures also the
    temperature axis of each model x template (temperature.csv, temperature.{png,pdf}, and
    its section of compare.md and compare.json)."""
    from dbgpu.comparison import alpha_spread, compare_pair, potential_spread, spread_uncertainty, temperature_axis
    from dbgpu.io import json_safe
    from dbgpu.report import compare_markdown, plot_db_index, plot_potentials, plot_temperature, temperature_markdown

    summaries = [{**run_summary(r), "temperature": r["tau"]} for r in runs]
    rows = [compare_pair(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]]
    spread = potential_spread(runs)
    result = {"task": task_name, "states": states, "temperature": temperature, "runs": summaries, "pairs": rows,
              "spread": {k: v for k, v in spread.items() if k != "rows"}}
    files = []
    axes = {}
    if isinstance(temperature, list):
        groups: dict[str, list] = {}
        for r in runs:
            groups.setdefault(r["group"], []).append(r)
        axes = {g: temperature_axis(rs) for g, rs in groups.items()}
        result["temperature_axis"] = axes
        result["alpha_spread"] = alpha_spread(axes)
    begin_outputs(out, "compare")
    if axes:
        plot_temperature(axes, out)
        write_text_atomic(out / "temperature.csv", csv_text([{"run": g, **row} for g, a in axes.items()
                                                             for row in a["rows"]]))
        files = ["temperature.png", "temperature.pdf", "temperature.csv"]
    plot_potentials(runs, out)
    plot_db_index(summaries, out)
    write_text_atomic(out / "compare.csv", csv_text(rows))
    write_text_atomic(out / "runs.csv", csv_text(summaries))
    write_text_atomic(out / "spread.csv", csv_text(spread["rows"]))
    write_json_atomic(out / "uncertainty.json", spread_uncertainty(spread, states))
    write_json_atomic(out / "compare.json", json_safe(result))
    md = compare_markdown(summaries, rows, spread)
    if axes:
        md += "\n" + temperature_markdown(axes, result["alpha_spread"] if len(axes) > 1 else None)
    write_text_atomic(out / "compare.md", md)
    finish_outputs(out, "compare", ["potentials.png", "potentials.pdf", "db_index.png", "db_index.pdf",
                                    "compare.csv", "runs.csv", "spread.csv", "uncertainty.json",
                                    "compare.json", "compare.md", *files])
    return result
