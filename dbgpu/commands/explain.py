"""`dbgpu explain DIR`: regress a fitted potential on the task's state features.

DIR is a fit output (potential.json). Its task comes from `--task`, or DIR's meta.json
(a `score` / `run` directory), or, for a fit of an explore log, the explore.json beside
the log that stats.json names as its input. The states with a bounded potential that
are valid states of the task are described by `task.features(g)` and V is regressed on
them (`dbgpu.explain`). Writes explain.json and explain.{png,pdf} (coefficients with
error bars; out-of-fold predicted against fitted V), and refreshes report.md when DIR
has one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.io import begin_outputs, check_outputs, finish_outputs, locked_dir, read_json, write_json_atomic


def task_of(dir: Path) -> str:
    """The task name recorded with a fit directory (see the module doc)."""
    meta = dir / "meta.json"
    if meta.is_file():
        task = read_json(meta, what="meta").get("task")
        if isinstance(task, str):
            return task
    stats = dir / "stats.json"
    if stats.is_file():
        src = Path(str(read_json(stats, what="stats file").get("input", "")))
        for cand in (src / "meta.json", src.parent / "explore.json", src / "explore.json"):
            if cand.is_file():
                doc = read_json(cand, what="task record")
                task = doc.get("task") if cand.name == "meta.json" else doc.get("settings", {}).get("task")
                if isinstance(task, str):
                    return task
    raise DbgpuError(f"cannot tell the task of {dir} (no meta.json, no explore.json beside its input): "
                     f"pass --task")


def state_features(task, potential: dict) -> tuple[list[str], list[float], list[dict]]:
    """(states, V, feature rows) for the bounded, valid states, in potential.json's order."""
    features = getattr(task, "features", None)
    if features is None:
        raise DbgpuError(f"task {task.name!r} defines no features (Task.features): nothing to explain V with")
    states, V, rows = [], [], []
    for s, v in potential.items():
        if v is not None and s != task.invalid_state and task.valid(s):
            states.append(s)
            V.append(float(v))
            rows.append(features(s))
    return states, V, rows


def plot_explain(doc: dict, out: Path, *, source: str | None = None) -> None:
    """explain.{png,pdf}: coefficients (OLS and ridge, ± 1 se), and out-of-fold predicted V
    against fitted V; `source` (the model and task, `report.report_source`) under the title."""
    from dbgpu.report import new_figure, save_figure

    names = doc["leading"]
    fig = new_figure(figsize=(10.0, max(3.6, 0.32 * len(names) + 1.6)))
    ax, bx = fig.subplots(1, 2, width_ratios=[1.2, 1])
    y = np.arange(len(names))[::-1]
    for off, fit, color in ((0.18, "ols", "C0"), (-0.18, "ridge", "C3")):
        co = doc[fit]["coefficients"]
        ax.errorbar([co[k]["coef"] for k in names], y + off,
                    xerr=[co[k]["se"] if co[k]["se"] is not None else 0 for k in names],
                    fmt="o", ms=4, lw=1, capsize=2, color=color,
                    label=f"{fit} (R² {doc[fit]['r2']:.3f}, CV {doc[fit]['r2_cv'] or float('nan'):.3f})")
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("change of V per sd of the feature (± 1 se)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, axis="x")
    V, pred = np.array(doc["V"]), np.array(doc["predicted_cv"])
    bx.scatter(V, pred, s=14, alpha=0.75, lw=0)
    lo, hi = float(min(V.min(), pred.min())), float(max(V.max(), pred.max()))
    bx.plot([lo, hi], [lo, hi], ls=":", color="0.5", lw=1)
    bx.set_xlabel("fitted V")
    bx.set_ylabel(f"ridge prediction, out of fold ({doc['folds']}-fold)")
    bx.grid(alpha=0.3)
    title = f"Explaining V by state features ({doc['n_states']} states)"
    fig.suptitle(title if not source else f"{title}\n{source}", fontsize=10)
    save_figure(fig, out, "explain")


def _source_label(out: Path) -> str | None:
    """The model and task a fit directory was made from, as the report's figures name them."""
    from dbgpu.report import report_source

    try:
        stats = read_json(out / "stats.json", what="stats file")
    except DbgpuError:
        return None
    return report_source(out, stats)["label"] if isinstance(stats, dict) else None


def explain_job(dir: str | Path, *, task=None, folds: int = 5, seed: int = 0) -> dict:
    """Regress DIR's potential on its task's features; write explain.json and the figure.
    `task`: a task name, a Task (e.g. one whose per-state work is cached), or None (the
    task recorded with DIR)."""
    from dbgpu.explain import explain_potential
    from dbgpu.tasks import get_task, task_spec

    out = Path(dir)
    if not out.is_dir():
        raise DbgpuError(f"fit directory not found: {out}")
    if folds < 2:
        raise DbgpuError(f"--folds must be at least 2, got {folds}")
    check_outputs(out, "fit")                    # a whole, current fit (or one no manifest vouches for)
    potential = read_json(out / "potential.json", what="potential file")
    if not isinstance(potential, dict):
        raise DbgpuError(f"{out / 'potential.json'} is not a JSON object of state -> V")
    t = task if task is not None and not isinstance(task, str) else get_task(task or task_of(out))
    states, V, rows = state_features(t, potential)
    doc = {"task": task_spec(t), "dir": str(out),
           **explain_potential(states, V, rows, folds=folds, seed=seed)}
    with locked_dir(out):                        # one writer per directory
        begin_outputs(out, "explain")
        write_json_atomic(out / "explain.json", doc)
        plot_explain(doc, out, source=_source_label(out))
        finish_outputs(out, "explain", ["explain.json", "explain.png", "explain.pdf"])
        if (out / "report.md").is_file() and (out / "fit_points.npz").is_file():
            from dbgpu.report import write_report

            write_report(out)
    return doc
