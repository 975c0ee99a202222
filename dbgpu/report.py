"""Figures (PNG and PDF) and report.md for a `dbgpu fit` output directory.

Reads `potential.json`, `stats.json` and `fit_points.npz`; writes

- `db_scatter.{png,pdf}`: log w(f->g)/w(g->f) against V(f) - V(g), each mutual pair of
  the main component in both orientations, with the fitted line (slope beta);
- `loops.{png,pdf}`: forward against backward sum of log w around every 3-cycle;
- `potential_hist.{png,pdf}`: histogram of V with a Gaussian of the same mean and sd;
- `graph.{png,pdf}`: the lowest-potential states at height V, their strongest edges;
- `report.md`, embedding the PNGs with the headline numbers (and `dbgpu explain`'s
  section and figure when the directory holds explain.json).

and, for `dbgpu compare`, `potentials.{png,pdf}` (scatter matrix of the runs'
potentials), `db_index.{png,pdf}` (each run's detailed-balance indices) and the text of
`compare.md`.

Matplotlib's object API (Figure + Agg canvas) is used directly, so no pyplot state or
backend is touched.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from dbgpu.comparison import shared_potentials
from dbgpu.console import fmt
from dbgpu.errors import DbgpuError
from dbgpu.io import read_json, write_bytes_atomic, write_text_atomic

FIGURES = ("db_scatter", "loops", "potential_hist", "graph")


def _label(s: str, n: int = 18) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def new_figure(*, figsize=(6.4, 4.8)):
    """A matplotlib Figure on an Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure():
    fig = new_figure()
    return fig, fig.add_subplot()


def save_figure(fig, out: Path, name: str) -> None:
    """`name`.png and `name`.pdf in `out`, each written atomically."""
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext)
        write_bytes_atomic(out / f"{name}.{ext}", buf.getvalue())


def _note(ax, text: str) -> None:
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _points(ax, x, y, var, *, n: int, color: str, label_err: str, label: str) -> None:
    """Error bars for up to 300 items with variances; else a scatter, thinner past 2000."""
    if len(var) and n <= 300:
        ax.errorbar(x, y, yerr=np.sqrt(var), fmt="o", ms=3, lw=0.6, color=color, alpha=0.7, label=label_err)
    else:
        ax.scatter(x, y, s=6 if n > 2000 else 14, alpha=0.35 if n > 2000 else 0.7, color=color, lw=0,
                   label=label)


def plot_scatter(pts, stats, out: Path) -> None:
    fig, ax = _figure()
    x, y, var = pts["pair_x"], pts["pair_dV"], pts["pair_var"]
    pw = stats["pairwise"]
    if len(x) == 0:
        _empty(ax, "no pair of main-component states with transitions both ways")
    else:
        xx, yy = np.r_[y, -y], np.r_[x, -x]                    # both orientations
        _points(ax, xx, yy, np.r_[var, var] if len(var) else var, n=len(x), color="C0",
                label_err="pairs (±1σ)", label="pairs")
        lim = float(np.max(np.abs(np.r_[xx, yy]))) * 1.08 or 1.0
        t = np.array([-lim, lim])
        ax.plot(t, t, ls=":", color="0.5", lw=1, label="slope 1")
        if pw["slope"] is not None:
            ax.plot(t, pw["slope"] * t, color="C3", lw=1.5, label=f"fit, β = {pw['slope']:.4g}")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.legend(loc="lower right", fontsize=8)
        err = (f"χ²/ndf = {fmt(pw['chi2_ndf'])} ({pw['ndf']} ndf)" if pw["chi2_ndf"] is not None
               else f"RMS residual = {fmt(pw['rms_residual'])}")
        shown = "" if len(x) == pw["n_pairs"] else f" ({len(x)} drawn)"
        _note(ax, f"{pw['n_pairs']} pairs{shown}\nr = {fmt(pw['r'], '.5f')}\n{err}")
    ax.set_xlabel("V(f) − V(g)")
    ax.set_ylabel("log w(f→g) / w(g→f)")
    ax.set_title("Detailed balance: log-ratio against potential difference")
    ax.grid(alpha=0.3)
    save_figure(fig, out, "db_scatter")


def plot_loops(pts, stats, out: Path) -> None:
    fig, ax = _figure()
    F, B, var = pts["loop_forward"], pts["loop_backward"], pts["loop_var"]
    lp = stats["loops"]
    if len(F) == 0:
        _empty(ax, "no 3-cycle with transitions both ways on every side")
    else:
        _points(ax, B, F, var, n=len(F), color="C2", label_err="3-cycles (±1σ of forward − backward)",
                label="3-cycles f→g→h→f")
    if len(F):
        lo, hi = float(min(F.min(), B.min())), float(max(F.max(), B.max()))
        pad = 0.05 * (hi - lo or 1.0)
        t = np.array([lo - pad, hi + pad])
        ax.plot(t, t, color="C3", lw=1.2, label="Kolmogorov: forward = backward")
        ax.legend(loc="lower right", fontsize=8)
        err = (f"χ²/ndf = {fmt(lp['chi2_ndf'])}" if lp["chi2_ndf"] is not None
               else f"RMS(forward − backward) = {fmt(lp['rms'])}")
        shown = "" if len(F) == lp["count"] else f" ({len(F)} drawn)"
        _note(ax, f"{lp['count']} loops{shown}\n{err}")
    ax.set_xlabel("backward Σ log w  (f→h→g→f)")
    ax.set_ylabel("forward Σ log w  (f→g→h→f)")
    ax.set_title("Kolmogorov loops (3-cycles)")
    ax.grid(alpha=0.3)
    save_figure(fig, out, "loops")


def plot_histogram(V: np.ndarray, out: Path) -> None:
    fig, ax = _figure()
    mu, sd = float(V.mean()), float(V.std())
    mu = 0.0 if abs(mu) < 1e-9 * max(sd, 1.0) else mu          # zero-mean gauge: no 1e-17 noise
    bins = int(np.clip(np.sqrt(len(V)) * 1.5, 5, 80))
    counts, edges, _ = ax.hist(V, bins=bins, color="C0", alpha=0.7, label=f"{len(V)} states")
    if sd > 0 and len(V) > 2:
        t = np.linspace(edges[0] - sd, edges[-1] + sd, 300)
        scale = len(V) * (edges[1] - edges[0])
        ax.plot(t, scale * np.exp(-0.5 * ((t - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)),
                color="C3", lw=1.5, label=f"Gaussian μ = {mu:.3g}, σ = {sd:.3g}")
    ax.legend(fontsize=8)
    ax.set_xlabel("potential V (main component, zero mean)")
    ax.set_ylabel("states")
    ax.set_title("Distribution of the fitted potential")
    ax.grid(alpha=0.3)
    save_figure(fig, out, "potential_hist")


def plot_graph(pts, stats, out: Path, *, per_state: int = 3) -> None:
    """The lowest-potential states at height V; each state's strongest out-edges."""
    from matplotlib.patches import FancyArrowPatch

    fig, ax = _figure()
    fig.set_size_inches(7.2, 6.0)
    top, V, states = pts["graph_states"], pts["V"], pts["states"]
    src, dst, w = pts["graph_src"], pts["graph_dst"], pts["graph_w"]
    k = len(top)
    pos = {int(s): i for i, s in enumerate(top)}
    y = V[top]                                                  # (k,)
    # horizontal place: spectral order of the symmetrised subgraph (connected states
    # near each other), spread evenly so labels do not pile up
    x = np.arange(k, dtype=float)
    if k > 2 and len(src):
        i, j = np.array([pos[int(s)] for s in src]), np.array([pos[int(d)] for d in dst])
        A = np.zeros((k, k))
        np.add.at(A, (i, j), w / w.max())
        A = A + A.T
        L = np.diag(A.sum(1)) - A
        vec = np.linalg.eigh(L)[1][:, 1]
        x[np.argsort(vec, kind="stable")] = np.arange(k)
    x = x / max(k - 1, 1)
    if len(src):
        order = np.lexsort((-w, src))                           # strongest first per source
        rank = np.arange(len(src)) - np.searchsorted(src[order], src[order])
        keep = order[rank < per_state]
        lw = np.log(w[keep])
        alpha = 0.15 + 0.7 * (lw - lw.min()) / ((lw.max() - lw.min()) or 1.0)
        for e, a in zip(keep, alpha):
            p, q = pos[int(src[e])], pos[int(dst[e])]
            ax.add_patch(FancyArrowPatch((x[p], y[p]), (x[q], y[q]), arrowstyle="-|>",
                                         mutation_scale=9, lw=0.8, color="0.25", alpha=float(a),
                                         shrinkA=6, shrinkB=6, connectionstyle="arc3,rad=0.08"))
    sc = ax.scatter(x, y, c=y, cmap="viridis", s=60, zorder=3, edgecolors="k", linewidths=0.5)
    rank_x = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    for p in range(k):                                          # alternate label heights
        ax.annotate(_label(str(states[top[p]])), (x[p], y[p]),
                    xytext=(5, 4 if rank_x[p] % 2 == 0 else -10),
                    textcoords="offset points", fontsize=7, zorder=4)
    fig.colorbar(sc, ax=ax, label="V")
    bp = stats["components"]["by_position"]
    ax.set_xlabel(f"{stats['components']['main_size']} states have a potential; unbounded: "
                  f"{bp['above']['states']} above, {bp['below']['states']} below, "
                  f"{bp['unrelated']['states']} unrelated", fontsize=8)
    ax.set_xticks([])
    ax.set_xlim(-0.08, 1.18)
    ax.set_ylabel("potential V (lower = more probable)")
    ax.set_title(f"{k} lowest-potential states and their {per_state} strongest transitions")
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, out, "graph")


def _report_md(stats, potential, V_sorted) -> str:
    pw, lp, hd = stats["pairwise"], stats["loops"], stats["hodge"]
    ep, rev, comp, fit = (stats["entropy_production"], stats["reversibility"],
                          stats["components"], stats["fit"])
    rows = [
        ("input", f"`{stats['input']}` ({stats['input_kind']})"),
        ("weights", stats["weights"]),
        ("states / edges", f"{stats['n_states']} / {stats['n_edges']}"),
        ("main component", f"{comp['main_size']} states of {stats['n_states']} "
                           f"({comp['count']} components; above {comp['by_position']['above']['states']}, "
                           f"below {comp['by_position']['below']['states']}, unrelated "
                           f"{comp['by_position']['unrelated']['states']}, dropped "
                           f"{comp['by_position']['dropped']['states']})"),
        ("action (infimum)", fmt(stats["action"], ".8g")),
        ("fit", f"{fit['method']} on {fit['device']}, {fit['iterations']} iterations, "
                f"{'converged' if fit['converged'] else 'NOT converged'}, {fit['seconds']:.3g} s"),
        ("pairwise r", f"{fmt(pw['r'], '.5f')} ({pw['n_pairs']} pairs)"),
        ("slope β", fmt(pw["slope"])),
        ("pairwise χ²/ndf" if pw["chi2_ndf"] is not None else "pairwise RMS residual",
         f"{fmt(pw['chi2_ndf'])} ({pw['ndf']} ndf)" if pw["chi2_ndf"] is not None
         else fmt(pw["rms_residual"])),
        ("3-cycles", f"{lp['count']}, " + (f"χ²/ndf {fmt(lp['chi2_ndf'])}" if lp["chi2_ndf"] is not None
                                           else f"RMS {fmt(lp['rms'])}")),
        ("Hodge gradient fraction", f"{fmt(hd['gradient_fraction'], '.6f')} "
                                    f"(cycle rank {hd['cycle_rank']})"),
        ("entropy production", f"{fmt(ep['entropy_production'])} nats/jump "
                               f"(one-way flux {fmt(ep['one_way_flux_fraction'], '.3g')})"),
    ]
    if rev:
        rows.append(("reversibility G²", f"{fmt(rev['G2'])}, dof {rev['dof']}, "
                                          f"p = {fmt(rev['p_value'], '.3g')}"))
    lines = ["# dbgpu fit report", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "## Detailed balance", "", "![detailed balance scatter](db_scatter.png)", "",
              "## Kolmogorov loops", "", "![loops](loops.png)", "",
              "## Potential", "", "![potential histogram](potential_hist.png)", "",
              "![states by potential](graph.png)", ""]
    lines += ["Lowest-potential states (V relative to the main component's mean):", "",
              "| state | V |", "|---|---|"]
    lines += [f"| `{s}` | {v:.4f} |" for s, v in V_sorted[:20]]
    unbounded = [s for s, v in potential.items() if v is None]
    if unbounded:
        pos = comp["state_position"]
        lines += ["", f"{len(unbounded)} states have unbounded potential relative to the main "
                      "component (null in potential.json):", ""]
        lines += [f"- `{s}`: {pos.get(s, '?')}" for s in unbounded[:20]]
        if len(unbounded) > 20:
            lines.append(f"- … and {len(unbounded) - 20} more")
    lines += ["", "Files: potential.json, stats.json, fit_points.npz; figures also as PDF.", ""]
    return "\n".join(lines)


def write_report(dir: str | os.PathLike) -> Path:
    """Draw the four figures (PNG + PDF) and write report.md into `dir`; return its path."""
    out = Path(dir)
    if not out.is_dir():
        raise DbgpuError(f"report directory not found: {out}")
    stats = read_json(out / "stats.json", what="stats file")
    potential = read_json(out / "potential.json", what="potential file")
    f = out / "fit_points.npz"
    if not f.is_file():
        raise DbgpuError(f"{f} not found: run `dbgpu fit` into {out} first")
    try:
        with np.load(f, allow_pickle=False) as z:
            pts = {k: z[k] for k in z.files}
    except Exception as e:  # numpy raises several types for a damaged file
        raise DbgpuError(f"cannot read {f}: {e}") from None
    if not isinstance(stats, dict) or "pairwise" not in stats or not isinstance(potential, dict):
        raise DbgpuError(f"{out} does not hold a dbgpu fit output (stats.json / potential.json)")
    V_sorted = sorted(((s, v) for s, v in potential.items() if v is not None), key=lambda t: t[1])
    plot_scatter(pts, stats, out)
    plot_loops(pts, stats, out)
    plot_histogram(np.array([v for _, v in V_sorted]), out)
    plot_graph(pts, stats, out)
    path = out / "report.md"
    write_text_atomic(path, _report_md(stats, potential, V_sorted) + _explain_section(out))
    return path


def _explain_section(out: Path) -> str:
    """report.md's section on explaining V, when `dbgpu explain` has written explain.json."""
    from dbgpu.explain import explain_markdown

    f = out / "explain.json"
    return "\n" + explain_markdown(read_json(f, what="explain file")) if f.is_file() else ""


# ----------------------------------------------------------------------------- compare


def plot_potentials(runs: list[dict], out: Path) -> None:
    """Scatter matrix: V of run i against V of run j on their shared bounded states."""
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


def compare_markdown(summaries: list[dict], rows: list[dict]) -> str:
    lines = ["# dbgpu compare", "", "## Runs", "",
             "| run | bounded | Hodge gradient fraction | pairwise r | beta | loops RMS | mean coverage | "
             "mean self | score s | pairs/s | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['label']} | {s['bounded']}/{s['n_states']} | "
                     f"{fmt(s['hodge_gradient_fraction'], '.3f')} | "
                     f"{fmt(s['pairwise_r'], '.3f')} | {fmt(s['beta'], '.3f')} | {fmt(s['loops_rms'], '.3f')} | "
                     f"{fmt(s['mean_coverage'], '.2e')} | {fmt(s['mean_self'], '.2e')} | "
                     f"{fmt(s['score_seconds'], '.1f')}{' (reused)' if s['reused'] else ''} | "
                     f"{fmt(s['pairs_per_second'], '.1f')} | {s['device']} {s['dtype']} |")
    lines += ["", "## Pairs of runs", "",
              "Potentials compared on the states bounded in both (each re-centred); slope = least-squares "
              "slope of V_b on V_a (the ratio beta_b / beta_a if the potentials agree up to scale); "
              "log-ratio agreement over every pair of shared states.", "",
              "| run a | run b | shared bounded | Pearson V | Spearman V | slope | Pearson log-ratio | "
              "RMS log-ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['a']} | {r['b']} | {r['shared_bounded']} | {fmt(r['pearson_V'], '.3f')} | "
                     f"{fmt(r['spearman_V'], '.3f')} | {fmt(r['slope_V'], '.3f')} | "
                     f"{fmt(r['pearson_logratio'], '.3f')} | "
                     f"{fmt(r['rms_logratio'], '.3f')} |")
    lines += ["", "![potentials](potentials.png)", "", "![detailed-balance index](db_index.png)", ""]
    return "\n".join(lines)
