"""Compare potentials across models and prompt templates on a shared state set.

The paper claims that the potential "transcends" architectures and prompt templates.
`compare_job` scores the same states under every model x template (reusing score
directories already in the output directory), fits each, and compares every pair of
runs on the states bounded in both:

- Pearson and Spearman correlation of the potentials, and the slope of V_b against V_a
  (the ratio of their inverse temperatures beta when the claim holds);
- the agreement of the pairwise log-ratios log T(f,g) - log T(g,f) (Pearson r, RMS);
- each run's detailed-balance index (Hodge gradient fraction), loop statistic and
  throughput.

Outputs: compare.md, compare.csv, compare.json, potentials.{png,pdf} (scatter matrix),
db_index.{png,pdf} (per-run detailed-balance index), and one score+fit directory per
run under runs/.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.io import ensure_out_dir, read_json, write_json_atomic, write_text_atomic


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


# ----------------------------------------------------------------------------- comparison


def shared_potentials(pa: dict, pb: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """States bounded in both potentials, and the two potentials there (each re-centred)."""
    shared = [s for s in pa if pa[s] is not None and pb.get(s) is not None]
    va = np.array([pa[s] for s in shared], dtype=np.float64)
    vb = np.array([pb[s] for s in shared], dtype=np.float64)
    return shared, va - va.mean() if len(va) else va, vb - vb.mean() if len(vb) else vb


def log_ratios(states: list[str], logT: np.ndarray, keep: list[str]) -> np.ndarray:
    """log T(f,g) - log T(g,f) for every ordered pair f != g of `keep` (both orientations,
    so correlations between runs do not depend on how pairs are oriented)."""
    idx = np.array([states.index(s) for s in keep], dtype=np.int64)
    sub = logT[np.ix_(idx, idx)]                                  # (k, k)
    off = ~np.eye(len(keep), dtype=bool)
    return (sub - sub.T)[off]                                     # (k (k - 1),)


def compare_pair(a: dict, b: dict) -> dict:
    """The comparison of two runs (dicts with label, states, logT, potential)."""
    from scipy.stats import pearsonr, spearmanr

    shared, va, vb = shared_potentials(a["potential"], b["potential"])
    row = {"a": a["label"], "b": b["label"], "shared_bounded": len(shared),
           "pearson_V": None, "spearman_V": None, "slope_V": None,
           "pearson_logratio": None, "rms_logratio": None, "n_pairs": 0}
    if len(shared) >= 3 and va.std() > 0 and vb.std() > 0:
        row["pearson_V"] = float(pearsonr(va, vb).statistic)
        row["spearman_V"] = float(spearmanr(va, vb).statistic)
        row["slope_V"] = float((va @ vb) / (va @ va))             # least squares of V_b on V_a
    common = [s for s in a["states"] if s in set(b["states"])]
    if len(common) >= 2:
        xa = log_ratios(a["states"], a["logT"], common)
        xb = log_ratios(b["states"], b["logT"], common)
        ok = np.isfinite(xa) & np.isfinite(xb)
        row["n_pairs"] = int(ok.sum()) // 2
        if ok.sum() >= 3 and xa[ok].std() > 0 and xb[ok].std() > 0:
            row["pearson_logratio"] = float(pearsonr(xa[ok], xb[ok]).statistic)
            row["rms_logratio"] = float(np.sqrt(np.mean((xa[ok] - xb[ok]) ** 2)))
    return row


def run_summary(run: dict) -> dict:
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


# ----------------------------------------------------------------------------- outputs


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def compare_markdown(summaries: list[dict], rows: list[dict]) -> str:
    lines = ["# dbgpu compare", "", "## Runs", "",
             "| run | bounded | Hodge gradient fraction | pairwise r | beta | loops RMS | mean coverage | "
             "mean self | score s | pairs/s | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['label']} | {s['bounded']}/{s['n_states']} | {_fmt(s['hodge_gradient_fraction'])} | "
                     f"{_fmt(s['pairwise_r'])} | {_fmt(s['beta'])} | {_fmt(s['loops_rms'])} | "
                     f"{_fmt(s['mean_coverage'], '.2e')} | {_fmt(s['mean_self'], '.2e')} | "
                     f"{_fmt(s['score_seconds'], '.1f')}{' (reused)' if s['reused'] else ''} | "
                     f"{_fmt(s['pairs_per_second'], '.1f')} | {s['device']} {s['dtype']} |")
    lines += ["", "## Pairs of runs", "",
              "Potentials compared on the states bounded in both (each re-centred); slope = least-squares "
              "slope of V_b on V_a (the ratio beta_b / beta_a if the potentials agree up to scale); "
              "log-ratio agreement over every pair of shared states.", "",
              "| run a | run b | shared bounded | Pearson V | Spearman V | slope | Pearson log-ratio | "
              "RMS log-ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['a']} | {r['b']} | {r['shared_bounded']} | {_fmt(r['pearson_V'])} | "
                     f"{_fmt(r['spearman_V'])} | {_fmt(r['slope_V'])} | {_fmt(r['pearson_logratio'])} | "
                     f"{_fmt(r['rms_logratio'])} |")
    lines += ["", "![potentials](potentials.png)", "", "![detailed-balance index](db_index.png)", ""]
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["a", "b"])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot_potentials(runs: list[dict], out: Path) -> None:
    """Scatter matrix: V of run i against V of run j on their shared bounded states."""
    from dbgpu.report import new_figure, save_figure

    k = len(runs)
    fig = new_figure(figsize=(2.6 * k + 0.6, 2.6 * k + 0.4))
    axes = fig.subplots(k, k, squeeze=False)
    for i, a in enumerate(runs):
        for j, b in enumerate(runs):
            ax = axes[i][j]
            if i == j:
                v = np.array([x for x in a["potential"].values() if x is not None])
                ax.hist(v, bins=min(20, max(3, len(v) // 2)), color="0.6")
            else:
                _, va, vb = shared_potentials(b["potential"], a["potential"])
                ax.scatter(va, vb, s=10, alpha=0.75, lw=0)
                if len(va) >= 3 and va.std() > 0 and vb.std() > 0:
                    r = np.corrcoef(va, vb)[0, 1]
                    ax.text(0.04, 0.94, f"r = {r:.3f}\nn = {len(va)}", transform=ax.transAxes, va="top",
                            fontsize=8)
            ax.tick_params(labelsize=7)
            if i == k - 1:
                ax.set_xlabel(runs[j]["label"], fontsize=8)
            if j == 0:
                ax.set_ylabel(runs[i]["label"], fontsize=8)
    fig.suptitle("potentials on shared bounded states (row: y, column: x)", fontsize=10)
    save_figure(fig, out, "potentials")


def plot_db_index(summaries: list[dict], out: Path) -> None:
    from dbgpu.report import new_figure, save_figure

    fig = new_figure(figsize=(max(4.5, 1.3 * len(summaries) + 2), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(summaries))
    ax.bar(x - 0.2, [s["hodge_gradient_fraction"] or 0 for s in summaries], 0.4, label="Hodge gradient fraction")
    ax.bar(x + 0.2, [s["pairwise_r"] or 0 for s in summaries], 0.4, label="pairwise r")
    ax.set_xticks(x, [s["label"] for s in summaries], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.axhline(1, color="0.5", ls=":", lw=1)
    ax.set_ylabel("index (1 = detailed balance)")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, out, "db_index")


# ----------------------------------------------------------------------------- the job


def compare_job(*, models: list[str], templates: list[str | None], task_name: str, states: list[str], out,
                answer_prefix: str | None = None, temperature: float = 1.0, method: str = "tree",
                device="auto", dtype="auto", cache_dir=None, progress: bool = True, log=print) -> dict:
    """Score (or reuse), fit and compare every model x template run. Returns compare.json's dict."""
    from dbgpu.analysis import fit_input
    from dbgpu.jobs import canonical_states, read_template, score_job, template_sha256
    from dbgpu.models import load_model, resolve_model
    from dbgpu.report import write_report
    from dbgpu.tasks import get_task

    if not models:
        raise DbgpuError("no models to compare")
    if len(models) * len(templates) < 2:
        raise DbgpuError("a comparison needs at least two runs (two models or two templates)")
    if len(set(models)) != len(models) or len(set(map(str, templates))) != len(templates):
        raise DbgpuError("a model or template is listed twice")
    tasks = {t: get_task(task_name, template=read_template(t, task=task_name), answer_prefix=answer_prefix)
             for t in templates}
    states = canonical_states(next(iter(tasks.values())), states)
    for m in models:
        resolve_model(m, cache_dir=cache_dir)          # unknown models fail before any work
    out = ensure_out_dir(out)
    runs = []
    for model in models:
        lm = None
        for t in templates:
            task = tasks[t]
            label = f"{model} [{template_label(t)}]"
            run_dir = out / "runs" / f"{slug(model)}__{slug(template_label(t))}"
            wanted = {"model": model, "task": task_name, "template_sha256": template_sha256(task),
                      "answer_prefix": task.answer_prefix, "temperature": temperature}
            reused = reusable(run_dir, states=states, meta_wanted=wanted)
            if reused:
                log(f"[{label}] reusing the scores in {run_dir}")
            else:
                if lm is None:
                    lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
                log(f"[{label}] scoring {len(states)}x{len(states)} pairs -> {run_dir}")
                score_job(model=model, task=task, states=states, out=run_dir, template_path=t,
                          temperature=temperature, method=method, progress=progress, lm=lm)
            fit_input(run_dir, run_dir, device="cpu" if str(device) == "cpu" else "auto")
            write_report(run_dir)
            runs.append({"label": label, "dir": str(run_dir), "reused": reused, "states": states,
                         "logT": np.load(run_dir / "logT.npy"), "meta": read_json(run_dir / "meta.json"),
                         "potential": read_json(run_dir / "potential.json"),
                         "stats": read_json(run_dir / "stats.json")})
        del lm
    summaries = [run_summary(r) for r in runs]
    rows = [compare_pair(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]]
    plot_potentials(runs, out)
    plot_db_index(summaries, out)
    result = {"task": task_name, "states": states, "temperature": temperature, "runs": summaries, "pairs": rows}
    write_text_atomic(out / "compare.csv", _csv(rows))
    write_text_atomic(out / "runs.csv", _csv(summaries))
    write_json_atomic(out / "compare.json", result)
    write_text_atomic(out / "compare.md", compare_markdown(summaries, rows))
    return result
