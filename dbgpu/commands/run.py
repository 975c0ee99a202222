"""`dbgpu run`: the main job end to end on defaults, in one output directory.

The task's seed states, the exact kernel (`score`), the least-action potential and the
statistics (`fit`), V explained by the task's state features when it has them
(`explain`), the figures and report.md (`report`); it says what it does as it
goes through `log` and ends with each state's coverage and self-transition mass, the
largest transitions and the headline detailed-balance numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dbgpu.console import fmt
from dbgpu.errors import DbgpuError


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def kernel_summary(states: list[str], logT: np.ndarray, *, top: int = 10) -> str:
    """Coverage and self-transition mass per state, and the largest transitions, as text."""
    T = np.exp(logT)                                          # (N, N)
    cover, self_mass = T.sum(1), np.diag(T)
    w = max(14, min(44, 2 + max(map(len, states))))
    lines = [f"{'state':<{w}}{'coverage':>11}{'self':>11}{'to others':>11}"]
    for i in np.argsort(-cover):
        lines.append(f"{_cut(states[i], w - 2):<{w}}{cover[i]:>11.3e}{self_mass[i]:>11.3e}"
                     f"{cover[i] - self_mass[i]:>11.3e}")
    off = T.copy()
    np.fill_diagonal(off, 0.0)
    flat = np.argsort(-off, axis=None)[:top]
    tw = min(w - 2, 32)
    lines.append("")
    lines.append(f"top {len(flat)} transitions f -> g (self-transitions excluded):")
    for k in flat:
        f, g = np.unravel_index(k, off.shape)
        lines.append(f"  {_cut(states[f], tw):>{tw}} -> {_cut(states[g], tw):<{tw}} T = {off[f, g]:.3e}   "
                     f"log T = {logT[f, g]:8.3f}")
    return "\n".join(lines)


def analysis_summary(stats: dict, potential: dict, *, top: int = 5) -> str:
    """Headline detailed-balance numbers and the extremes of the potential, as text."""
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


def seed_states(task, n: int) -> list[str]:
    """The task's first `n` seed states (at least 2)."""
    if n < 2:
        raise DbgpuError(f"--n-states must be at least 2, got {n}")
    return task.seed_states(n)


def run_job(*, model: str, task, n_states: int, out: str | Path, states: list[str] | None = None,
            template_path=None, temperature=1.0, method: str = "tree", device="auto", dtype="auto",
            cache_dir=None, batch_tokens: int | None = None, max_logits: int | None = None, rows_per_block: int = 128,
            overwrite: bool = False, progress: bool = True, surface_forms: str = "canonical",
            placement: dict | None = None, attention: str = "dense", log=print) -> dict:
    """Seed states (or `states`) -> score -> fit -> explain -> report in `out`. Returns
    {"meta", "stats", "report", "explain"} ({} on the other ranks of a launched job).
    Several temperatures: one pass of forwards, each DIR/tau-<tau> fitted and reported, and
    the temperature axis in DIR/temperature.md; returns {"meta", "temperature", "reports"}."""
    import contextlib

    from dbgpu.commands.score import check_score_options
    from dbgpu.distributed import launched
    from dbgpu.io import check_out_dir, locked_dir

    if states is None:
        states = seed_states(task, n_states)
    else:
        from dbgpu.tasks import canonical_states

        states = canonical_states(task, states)
        if len(states) < 2:
            raise DbgpuError(f"a run needs at least 2 states, got {len(states)}")
    check_score_options(temperature=temperature, method=method, max_logits=max_logits, batch_tokens=batch_tokens,
                        rows_per_block=rows_per_block, surface_forms=surface_forms, attention=attention)
    out = check_out_dir(out)
    main = launched().main                       # under torchrun, rank 0 writes and reports
    with locked_dir(out) if main else contextlib.nullcontext():   # score, fit and report: one writer
        return _run(model=model, task=task, states=states, out=Path(out), template_path=template_path,
                    temperature=temperature, method=method, device=device, dtype=dtype, cache_dir=cache_dir,
                    batch_tokens=batch_tokens, max_logits=max_logits, rows_per_block=rows_per_block,
                    overwrite=overwrite, progress=progress, surface_forms=surface_forms, placement=placement,
                    attention=attention, log=log)


def _run(*, model, task, states, out: Path, device, log, **scoring) -> dict:
    from dbgpu.commands.fit import fit_input
    from dbgpu.commands.report import report_job
    from dbgpu.commands.score import score_job
    from dbgpu.explain import summary_lines
    from dbgpu.io import read_json

    log(f"dbgpu run: task {task.name}, model {model}, {len(states)} states -> {out}")
    meta = score_job(model=model, task=task, states=states, out=out, device=device, **scoring)
    if meta is None:                              # another rank of a launched job: rank 0 goes on
        return {}
    several = isinstance(meta["temperature"], list)
    log(f"model {meta['model']} on {meta['device']} ({meta['dtype']}), loaded in {meta['load_seconds']:.1f} s"
        f"{' from cache' if meta['loaded_from_cache'] else ''}; scored {len(states) ** 2} pairs"
        + (f" at {len(meta['temperature'])} temperatures from one pass" if several else "")
        + f" in {meta['seconds']:.1f} s ({meta['tokens']} tokens)")
    log("")
    if several:
        return _run_temperatures(out, task, meta, device=device, log=log)
    log(kernel_summary(states, np.load(out / "logT.npy")))
    stats = fit_input(out, out, device="cpu" if device == "cpu" else "auto")
    explained = _explain(out, task, log=log)
    report = report_job(out)
    log("")
    log(analysis_summary(stats, read_json(out / "potential.json")))
    if explained is not None:
        log("\n".join(summary_lines(explained)))
    log("")
    log(f"report: {report}")
    log(f"files in {out}/: " + ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith("."))))
    return {"meta": meta, "stats": stats, "report": str(report), "explain": explained}


def _run_temperatures(out: Path, task, meta: dict, *, device, log) -> dict:
    """A several-temperature run: fit, explain and report each DIR/tau-<tau>, then the
    temperature axis (`comparison.temperature_axis`) in DIR/temperature.md and
    temperature.{png,pdf}."""
    from dbgpu.commands.fit import fit_input
    from dbgpu.commands.report import report_job
    from dbgpu.comparison import temperature_axis
    from dbgpu.io import begin_outputs, finish_outputs, json_safe, read_json, write_json_atomic, write_text_atomic
    from dbgpu.report import plot_temperature, temperature_markdown

    runs, reports = [], {}
    for name, d in meta["runs"].items():
        d = Path(d)
        stats = fit_input(d, d, device="cpu" if device == "cpu" else "auto")
        _explain(d, task, log=log)
        reports[name] = str(report_job(d))
        tau = read_json(d / "meta.json")["temperature"]
        runs.append({"tau": tau, "potential": read_json(d / "potential.json"), "stats": stats})
        log(f"tau {format(tau, 'g')}: beta {fmt(stats['pairwise']['slope'])}, pairwise r {fmt(stats['pairwise']['r'])}, "
            f"Hodge gradient fraction {fmt(stats['hodge']['gradient_fraction'])} -> {reports[name]}")
    axis = temperature_axis(runs)
    label = f"{meta['model']} [{meta['task']}]"
    begin_outputs(out, "temperature")
    plot_temperature({label: axis}, out)
    text = "# dbgpu run: temperature\n\n" + temperature_markdown({label: axis})
    write_text_atomic(out / "temperature.md", text)
    write_json_atomic(out / "temperature.json", json_safe(axis))
    finish_outputs(out, "temperature", ["temperature.png", "temperature.pdf", "temperature.md", "temperature.json"])
    log("")
    log(text)
    log(f"reports: {', '.join(reports.values())}; temperature axis: {out / 'temperature.md'}")
    return {"meta": meta, "temperature": axis, "reports": reports}


def _explain(out: Path, task, *, log) -> dict | None:
    """explain.json for a task with features; a run goes on (saying why) when V cannot be
    explained, e.g. with too few bounded states."""
    from dbgpu.commands.explain import explain_job

    if getattr(task, "features", None) is None:
        return None
    try:
        return explain_job(out, task=task)
    except DbgpuError as e:
        log(f"explain: skipped ({e})")
        return None
