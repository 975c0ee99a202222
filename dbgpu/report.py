"""Figures (PNG and PDF) and report.md for a `dbgpu fit` output directory.

Reads `potential.json`, `stats.json`, `fit_points.npz` (and `uncertainty.json`), after
checking the directory's manifest (`dbgpu.io.check_outputs`); writes, between
`begin_outputs` and `finish_outputs`,

- `db_scatter.{png,pdf}`: log w(f->g)/w(g->f) against V(f) - V(g), each mutual pair of
  the main component in both orientations, with the fitted line (slope beta);
- `loops.{png,pdf}`: forward against backward sum of log w around a seeded uniform
  sample of the 3-cycles (the figure says how many of how many);
- `potential_hist.{png,pdf}`: histogram of V with a Gaussian of the same mean and sd,
  and each state's sigma against V when the fit has error bars;
- `graph.{png,pdf}`: the lowest-potential states at height V (± sigma), their strongest edges;
- `msm.{png,pdf}` (when the fit wrote msm.json): the reversible Markov model's log pi
  against V, and its leading eigenvalues with their implied timescales (`dbgpu.msm`);
- `report.md`, embedding the PNGs with the headline numbers, the null distributions,
  the ordered components outside the main one (and `dbgpu explain`'s section and figure
  when the directory holds explain.json).

Each statistic read against its null (`dbgpu fit --null B`) shows the null mean ± sd and
the p-value next to its value.

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
from dbgpu.io import begin_outputs, check_outputs, finish_outputs, read_json, write_bytes_atomic, write_text_atomic

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


def null_text(stats: dict, name: str, spec: str = ".3g") -> str:
    """ "null m ± s, p = x" for a statistic read against its null distribution, else ""."""
    nul = (stats.get("null") or {}).get("statistics", {}).get(name)
    if not nul or nul["null_mean"] is None:
        return ""
    sd = f" ± {fmt(nul['null_sd'], spec)}" if nul["null_sd"] is not None else ""
    return f"null {fmt(nul['null_mean'], spec)}{sd}, p = {fmt(nul['p_value'], '.2g')}"


def _with_null(text: str, stats: dict, name: str) -> str:
    extra = null_text(stats, name)
    return f"{text}  ({extra})" if extra else text


def _points(ax, x, y, var, *, n: int, color: str, label_err: str, label: str, xvar=None) -> None:
    """Error bars for up to 300 items with variances; else a scatter, thinner past 2000."""
    if (len(var) or xvar is not None) and n <= 300:
        ax.errorbar(x, y, yerr=np.sqrt(var) if len(var) else None,
                    xerr=None if xvar is None else np.sqrt(xvar), fmt="o", ms=3, lw=0.6, color=color,
                    alpha=0.7, label=label_err)
    else:
        ax.scatter(x, y, s=6 if n > 2000 else 14, alpha=0.35 if n > 2000 else 0.7, color=color, lw=0,
                   label=label)


def plot_scatter(pts, stats, out: Path, *, source: str | None = None) -> None:
    fig, ax = _figure()
    x, y, var = pts["pair_x"], pts["pair_dV"], pts["pair_var"]
    pw = stats["pairwise"]
    if len(x) == 0:
        _empty(ax, "no pair of main-component states with transitions both ways")
    else:
        xx, yy = np.r_[y, -y], np.r_[x, -x]                    # both orientations
        sig = pts.get("sigma")
        xvar = None
        if sig is not None and "pair_f" in pts and np.isfinite(sig).any():
            d = sig[pts["pair_f"]] ** 2 + sig[pts["pair_g"]] ** 2  # sigma of V(f) - V(g), covariance left out
            xvar = np.r_[d, d]
        _points(ax, xx, yy, np.r_[var, var] if len(var) else var, n=len(x), color="C0",
                label_err="pairs (±1σ" + (", x: σ of V(f) − V(g) without covariance)" if xvar is not None else ")"),
                label="pairs", xvar=xvar)
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
        shown = "" if len(x) == pw["n_pairs"] else f" ({len(x)} drawn, evenly spaced)"
        lines = [f"{pw['n_pairs']} pairs{shown}", _with_null(f"r = {fmt(pw['r'], '.5f')}", stats, "pairwise_r"),
                 _with_null(f"β = {fmt(pw['slope'], '.4g')}", stats, "pairwise_slope"), err]
        _note(ax, "\n".join(lines))
    ax.set_xlabel("V(f) − V(g)")
    ax.set_ylabel("log w(f→g) / w(g→f)")
    _titled(ax, "Detailed balance: log-ratio against potential difference", source)
    ax.grid(alpha=0.3)
    save_figure(fig, out, "db_scatter")


def plot_loops(pts, stats, out: Path, *, source: str | None = None) -> None:
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
        err = (_with_null(f"χ²/ndf = {fmt(lp['chi2_ndf'])} (pooled)", stats, "loops_chi2_ndf")
               if lp["chi2_ndf"] is not None else f"RMS(forward − backward) = {fmt(lp['rms'])} (all loops)")
        shown = ("all drawn" if len(F) == lp["count"] else
                 f"a seeded uniform sample of {len(F)} drawn")
        _note(ax, f"{lp['count']} loops, {shown}\n{err}")
    ax.set_xlabel("backward Σ log w  (f→h→g→f)")
    ax.set_ylabel("forward Σ log w  (f→g→h→f)")
    _titled(ax, "Kolmogorov loops (3-cycles)" + ("" if len(F) == lp["count"] else ": a random sample"), source)
    ax.grid(alpha=0.3)
    save_figure(fig, out, "loops")


def plot_histogram(V: np.ndarray, out: Path, *, sigma: np.ndarray | None = None, method: str | None = None,
                   source: str | None = None) -> None:
    """Histogram of V with a Gaussian; with error bars, each state's sigma against V on a
    second axis."""
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
    ax.legend(fontsize=8, loc="upper left")
    if sigma is not None and np.isfinite(sigma).any():
        ok = np.isfinite(sigma)
        ax2 = ax.twinx()
        ax2.scatter(V[ok], sigma[ok], s=8, color="C1", alpha=0.6, lw=0,
                    label=f"σ of each state ({method}); median {np.median(sigma[ok]):.3g}")
        ax2.set_ylabel(f"σ(V) ({method})", color="C1")
        ax2.set_ylim(0, None)
        ax2.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("potential V (main component, zero mean)")
    ax.set_ylabel("states")
    _titled(ax, "Distribution of the fitted potential", source)
    ax.grid(alpha=0.3)
    save_figure(fig, out, "potential_hist")


def plot_msm(pi: dict, potential: dict, stats: dict, out: Path, *, source: str | None = None) -> None:
    """log pi against V for the main component (pi ~ r exp(-V): the line of slope -1 is
    r constant; the spread about it is log r, the chance of a move), and the reversible
    model's leading eigenvalues."""
    fig = new_figure(figsize=(9.6, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    both = [(potential[s], p) for s, p in pi.items() if p is not None and potential.get(s) is not None]
    V = np.array([v for v, _ in both], dtype=float)
    lp = np.log(np.array([p for _, p in both], dtype=float)) if both else np.zeros(0)
    if len(V):
        ax.scatter(V, lp, s=10, alpha=0.6, lw=0, color="C0", label=f"{len(V)} states")
        c = float(np.mean(lp + V))
        t = np.array([V.min(), V.max()])
        ax.plot(t, c - t, color="C3", lw=1, label="log π = −V + const (equal r)")
        ax.legend(fontsize=8, loc="upper right")
    else:
        _empty(ax, "no main component")
    ax.set_xlabel("potential V")
    ax.set_ylabel("log π (reversible MSM)")
    ax.set_title("Stationary distribution against V", fontsize=10)
    ax.grid(alpha=0.3)
    ms = stats.get("msm") or {}
    ev = ms.get("eigenvalues")
    if ev:
        k = np.arange(1, len(ev) + 1)
        ax2.bar(k, ev, color=["C2"] + ["C0"] * (len(ev) - 1))
        ax2.axhline(0, color="0.5", lw=0.8)
        ts = ms.get("implied_timescales") or []
        for i, t in enumerate(ts, start=2):
            ax2.text(i, ev[i - 1], "∞" if t is None else f"{t:.3g}", ha="center", va="bottom" if ev[i - 1] >= 0 else "top", fontsize=7)
        ax2.set_xticks(k)
        ax2.set_ylim(min(min(ev), 0.0) * 1.15 - 0.05, 1.25)              # room for the note
        _note(ax2, "label: implied timescale −1/log|λ| (jumps)")
    else:
        _empty(ax2, "eigenvalues not computed (too many states or no convergence)")
    ax2.set_xlabel("eigenvalue index (by |λ|)")
    ax2.set_ylabel("λ of P")
    ax2.set_title("Leading eigenvalues of the reversible model", fontsize=10)
    ax2.grid(alpha=0.3)
    fig.suptitle("Reversible Markov model of the fit" + (f"\n{source}" if source else ""), fontsize=10)
    save_figure(fig, out, "msm")


def _msm_rows(stats: dict, of: str = "") -> list[str]:
    ms = stats.get("msm")
    if not ms:
        return []
    lines = ["", "## Reversible Markov model", "",
             f"The fit is the reversible maximum-likelihood Markov model with counts c = w ({ms['counts']}) "
             f"on the main component ({ms['n_states']} states, {ms['n_transitions']} transitions): "
             "π_f ∝ r_f exp(−V_f), r_f the out-weight of f (msm.json, msm_transitions.npz; docs/msm.md). "
             f"Stationarity residual (fit tolerance) {fmt(ms['stationarity_residual'], '.2g')}.", "",
             "![reversible model](msm.png)", "",
             f"*Stationary distribution against V and the reversible model's leading eigenvalues{of}.*", ""]
    ev, ts = ms.get("eigenvalues"), ms.get("implied_timescales")
    if ev:
        lines += ["| k | eigenvalue λ_k | implied timescale (jumps) |", "|---|---|---|"]
        lines += [f"| {k + 1} | {fmt(e, '.6g')} | "
                  f"{'—' if k == 0 else ('∞ (periodic)' if ts[k - 1] is None else fmt(ts[k - 1], '.4g'))} |"
                  for k, e in enumerate(ev)]
    return lines


def plot_graph(pts, stats, out: Path, *, per_state: int = 3, source: str | None = None) -> None:
    """The lowest-potential states at height V; each state's strongest out-edges."""
    from matplotlib.patches import FancyArrowPatch

    fig, ax = _figure()
    fig.set_size_inches(7.2, 6.0)
    top, V, states = pts["graph_states"], pts["V"], pts["states"]
    src, dst = pts["graph_src"], pts["graph_dst"]
    lwt = pts["graph_log_w"] if "graph_log_w" in pts else np.log(pts["graph_w"])
    w = np.exp(lwt - lwt.max()) if len(lwt) else lwt            # relative: no underflow
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
        lw = lwt[keep]
        alpha = 0.15 + 0.7 * (lw - lw.min()) / ((lw.max() - lw.min()) or 1.0)
        for e, a in zip(keep, alpha):
            p, q = pos[int(src[e])], pos[int(dst[e])]
            ax.add_patch(FancyArrowPatch((x[p], y[p]), (x[q], y[q]), arrowstyle="-|>",
                                         mutation_scale=9, lw=0.8, color="0.25", alpha=float(a),
                                         shrinkA=6, shrinkB=6, connectionstyle="arc3,rad=0.08"))
    sig = pts["sigma"][top] if "sigma" in pts else np.full(k, np.nan)
    if np.isfinite(sig).any():
        ax.errorbar(x, y, yerr=np.where(np.isfinite(sig), sig, 0.0), fmt="none", ecolor="0.3", lw=1,
                    capsize=3, zorder=2)
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
    ax.set_ylabel("potential V (lower = more probable)" + (" ± σ" if np.isfinite(sig).any() else ""))
    _titled(ax, f"{k} lowest-potential states and their {per_state} strongest transitions", source)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, out, "graph")


def _null_rows(stats: dict) -> list[str]:
    nul = stats.get("null")
    if not nul:
        return []
    lines = ["", f"## Against detailed balance ({nul['replicates']} null replicates, seed {nul['seed']})", "",
             f"Null model: {nul['model']}. p = (1 + #null at least as extreme) / (1 + B), in the "
             "direction of a violation.", "",
             "| statistic | observed | null mean | null sd | p | alternative |", "|---|---|---|---|---|---|"]
    for name, v in nul["statistics"].items():
        lines.append(f"| {name} | {fmt(v['observed'])} | {fmt(v['null_mean'])} | {fmt(v['null_sd'])} | "
                     f"{fmt(v['p_value'], '.3g')} | {v['alternative']} |")
    return lines


def _unbounded_rows(stats: dict, potential: dict) -> list[str]:
    comp = stats["components"]
    unbounded = [s for s, v in potential.items() if v is None]
    if not unbounded:
        return []
    pos, lvl = comp["state_position"], comp.get("state_level", {})
    # highest above first, then unrelated / dropped, then deepest below last
    key = {s: (-lvl[s] if s in lvl else 0, pos.get(s, "")) for s in unbounded}
    ordered = sorted(unbounded, key=lambda s: key[s])
    lines = ["", f"{len(unbounded)} states have unbounded potential relative to the main component "
                 "(null in potential.json), ordered by their level in the condensation (+k: k "
                 "components above the main one along the longest chain, -k below):", ""]
    lines += [f"- `{s}`: {pos.get(s, '?')}" + (f", level {lvl[s]:+d}" if s in lvl else "") for s in ordered[:20]]
    if len(unbounded) > 20:
        lines.append(f"- … and {len(unbounded) - 20} more")
    return lines


def _score_dir(out: Path, stats: dict) -> Path | None:
    """The score directory a fit was made from: `out` itself (a `run`, or a score + fit in
    one directory), else the score directory stats.json names as its input; None for
    sampled inputs or when it is no longer there."""
    if (out / "logT.npy").is_file():
        return out
    if stats.get("input_kind") == "score-dir" and stats.get("input"):
        p = Path(stats["input"])
        if (p / "logT.npy").is_file():
            return p
    return None


def _coverage(score_dir: Path, states: list[str] | None):
    """(median, smallest, the state with the smallest) of coverage sum_g T(f, g), from
    logT.npy read in row blocks (float64 log-sum-exp); None when the file does not load."""
    try:
        logT = np.load(score_dir / "logT.npy", mmap_mode="r", allow_pickle=False)
    except Exception:  # numpy raises several types for a damaged file; the header says "unknown"
        return None
    if logT.ndim != 2 or logT.shape[0] == 0:
        return None
    cov = np.empty(logT.shape[0])
    for i in range(0, logT.shape[0], 1024):
        rows = np.asarray(logT[i:i + 1024], dtype=np.float64)          # (b, N)
        m = rows.max(1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        cov[i:i + len(rows)] = (np.exp(rows - m).sum(1) * np.exp(m[:, 0]))
    k = int(np.argmin(cov))
    name = states[k] if states is not None and k < len(states) else f"row {k}"
    return float(np.median(cov)), float(cov[k]), name


def _read_or_none(path: Path, what: str):
    """A JSON file's content, or None when it is absent or unreadable (the header then says
    what is not recorded instead of refusing the report)."""
    if not path.is_file():
        return None
    try:
        return read_json(path, what=what)
    except DbgpuError:
        return None


def _exact_source(out: Path, stats: dict) -> tuple[list[tuple[str, str]], str]:
    """Header rows and label of a fit of an exact kernel: from its score directory's meta.json."""
    sd = _score_dir(out, stats)
    meta = _read_or_none(sd / "meta.json", "score metadata") if sd is not None else None
    if sd is not None:
        where = "this directory" if sd.resolve() == out.resolve() else f"`{sd}`"
    elif stats.get("input"):
        where = f"`{stats['input']}`, not found from the current directory"
    else:
        where = "a kernel held in memory, not saved"
    rows = [("input", f"exact kernel (score directory: {where})")]
    if not isinstance(meta, dict):
        rows.append(("model", "not recorded (no meta.json with the kernel)"))
        label = "exact kernel (model not recorded)"
    else:
        res = meta.get("resolved") or {}
        resolved = f"`{res.get('path')}`" + (f" (GGUF `{res['gguf_file']}`)" if res.get("gguf_file") else "")
        template, sha = meta.get("template"), (meta.get("template_sha256") or "")[:12]
        prefix = meta.get("answer_prefix")
        rows += [
            ("model", f"`{meta.get('model')}` (as given), resolved to {resolved}"),
            ("task", f"`{meta.get('task')}`"),
            ("template", (f"`{template}`" if template else "the task's default")
             + (f" (sha256 {sha}…)" if sha else "")),
            ("answer prefix", f"`{prefix!r}`" if prefix is not None else "none"),
            ("temperature", fmt(meta.get("temperature"))),
            ("dtype / device", f"{meta.get('dtype')} on {meta.get('device')}"),
            ("kernel", f"{meta.get('method', '?')} scorer, "
                       f"{(meta.get('surface_forms') or {}).get('mode', 'canonical')} surface forms"),
        ]
        label = f"{meta.get('model')}, task {meta.get('task')}"
    states = _read_or_none(sd / "states.json", "states file") if sd is not None else None
    cov = _coverage(sd, states if isinstance(states, list) else None) if sd is not None else None
    rows.append(("states", str(stats["n_states"])))
    rows.append(("coverage Σ_g T(f,g)", "unknown (logT.npy not found)" if cov is None else
                 f"median {cov[0]:.3g}, smallest {cov[1]:.3g} (`{_label(cov[2], 40)}`)"))
    if isinstance(meta, dict) and meta.get("created"):
        rows.append(("scored", f"{meta['created']}, dbgpu {(meta.get('versions') or {}).get('dbgpu')}"))
    return rows, label


def _sampled_source(stats: dict) -> tuple[list[tuple[str, str]], str]:
    """Header rows and label of a fit of sampled data: the input file, and the explore.json
    beside a transitions.jsonl when there is one."""
    inp = stats.get("input")
    rows = [("input", f"sampled data, `{inp}` ({stats.get('input_kind')})" if inp
             else f"sampled data held in memory ({stats.get('input_kind')})")]
    label = f"sampled: {Path(inp).name}" if inp else "sampled data"
    doc = (_read_or_none(Path(inp).parent / "explore.json", "explore settings")
           if inp and str(inp).endswith(".jsonl") else None)
    settings = doc.get("settings") if isinstance(doc, dict) else None
    if isinstance(settings, dict):
        prefix = settings.get("answer_prefix")
        rows += [
            ("model", f"`{settings.get('model')}` (explore.json)"),
            ("task", f"`{settings.get('task')}`"),
            ("answer prefix", f"`{prefix!r}`" if prefix is not None else "none"),
            ("temperature", fmt(settings.get("temperature"))),
            ("protocol", f"{settings.get('protocol')}, batch {settings.get('batch')}, seed {settings.get('seed')}"),
        ]
        label = f"{settings.get('model')}, task {settings.get('task')} (sampled)"
    rows.append(("states", str(stats["n_states"])))
    if stats.get("n_queries") is not None:
        rows.append(("queries / transitions", f"{stats['n_queries']} / {stats.get('n_transitions')}"))
    return rows, label


def report_source(out: str | os.PathLike, stats: dict) -> dict:
    """What produced the fit in `out`, for report.md's header and the figures' titles:
    `rows` [(what, value)] and `label`, a short "model, task" line. Read from the score
    directory's meta.json (exact kernels) or the input file and the explore.json beside a
    transitions.jsonl (sampled data); anything not recorded is said to be so. The last row
    is the report's date and the dbgpu version writing it."""
    import datetime as _dt

    from dbgpu.version import __version__

    exact = stats.get("input_kind") == "score-dir"
    rows, label = _exact_source(Path(out), stats) if exact else _sampled_source(stats)
    today = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    rows.append(("report", f"{today}, dbgpu {__version__}"))
    return {"rows": rows, "label": label}


def _titled(ax, title: str, source: str | None) -> None:
    ax.set_title(title if not source else f"{title}\n{source}", fontsize=10)


def _report_md(stats, potential, V_sorted, sigma=None, source: dict | None = None) -> str:
    pw, lp, hd = stats["pairwise"], stats["loops"], stats["hodge"]
    ep, rev, comp, fit = (stats["entropy_production"], stats["reversibility"],
                          stats["components"], stats["fit"])
    unc = stats.get("uncertainty") or {}
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
        ("pairwise r", _with_null(f"{fmt(pw['r'], '.5f')} ({pw['n_pairs']} pairs)", stats, "pairwise_r")),
        ("slope β", _with_null(fmt(pw["slope"]), stats, "pairwise_slope")),
        ("pairwise χ²/ndf" if pw["chi2_ndf"] is not None else "pairwise RMS residual",
         f"{fmt(pw['chi2_ndf'])} ({pw['ndf']} ndf)" if pw["chi2_ndf"] is not None
         else fmt(pw["rms_residual"])),
        ("3-cycles", f"{lp['count']}, " + (_with_null(f"pooled χ²/ndf {fmt(lp['chi2_ndf'])}", stats, "loops_chi2_ndf")
                                           if lp["chi2_ndf"] is not None else f"RMS {fmt(lp['rms'])}")),
        ("Hodge gradient fraction", _with_null(f"{fmt(hd['gradient_fraction'], '.6f')} "
                                               f"(cycle rank {hd['cycle_rank']})", stats, "gradient_fraction")),
        ("entropy production", _with_null(f"{fmt(ep['entropy_production'])} nats/jump "
                                          f"(one-way flux {fmt(ep['one_way_flux_fraction'], '.3g')})",
                                          stats, "entropy_production")),
    ]
    if rev:
        rows.append(("reversibility G²", f"{fmt(rev['G2'])}, dof {rev['dof']}, "
                                          f"p = {fmt(rev['p_value'], '.3g')} (asymptotic)"))
    if unc.get("method"):
        rows.append(("error bars", f"{unc['method']}: median σ {fmt((unc.get(unc['method']) or {}).get('median_sigma'))} "
                                   "(uncertainty.json)"))
    source = source or {"rows": [], "label": ""}
    lines = [f"# dbgpu fit report: {source['label']}" if source["label"] else "# dbgpu fit report", ""]
    if source["rows"]:
        lines += ["| what produced it | |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in source["rows"]]
        lines += [""]
    lines += ["| quantity | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += _null_rows(stats)
    of = f" ({source['label']})" if source["label"] else ""
    lines += ["", "## Detailed balance", "", "![detailed balance scatter](db_scatter.png)", "",
              f"*Log-ratio against potential difference for every mutual pair{of}.*", "",
              "## Kolmogorov loops", "", "![loops](loops.png)", "",
              f"*Forward against backward log-weight sums around 3-cycles{of}.*", "",
              "## Potential", "", "![potential histogram](potential_hist.png)", "",
              f"*Distribution of the fitted potential{of}.*", "",
              "![states by potential](graph.png)", "",
              f"*The lowest-potential states and their strongest transitions{of}.*", ""]
    lines += ["Lowest-potential states (V relative to the main component's mean):", ""]
    if sigma:
        lines += ["| state | V | σ |", "|---|---|---|"]
        lines += [f"| `{s}` | {v:.4f} | {fmt(sigma.get(s), '.3g')} |" for s, v in V_sorted[:20]]
    else:
        lines += ["| state | V |", "|---|---|"]
        lines += [f"| `{s}` | {v:.4f} |" for s, v in V_sorted[:20]]
    lines += _unbounded_rows(stats, potential)
    lines += _msm_rows(stats, of)
    files = "potential.json, stats.json, fit_points.npz" + (", uncertainty.json" if sigma else "")
    files += ", msm.json, msm_transitions.npz" if stats.get("msm") else ""
    lines += ["", f"Files: {files}; figures also as PDF.", ""]
    return "\n".join(lines)


def read_fit(out: Path):
    """stats, potential, points and sigma (or None) of a finished fit in `out`."""
    if not out.is_dir():
        raise DbgpuError(f"report directory not found: {out}")
    check_outputs(out, "fit")
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
    sigma = None
    if (out / "uncertainty.json").is_file():
        sig = read_json(out / "uncertainty.json", what="uncertainty file")
        sigma = {s: v for s, v in sig.items() if v is not None} if isinstance(sig, dict) else None
    return stats, potential, pts, sigma


def read_msm(out: Path):
    """(msm.json's {state: pi or None}, msm_transitions.npz's arrays) of a finished fit,
    or (None, None) for a fit written before they existed."""
    if not (out / "msm.json").is_file() or not (out / "msm_transitions.npz").is_file():
        return None, None
    pi = read_json(out / "msm.json", what="msm file")
    f = out / "msm_transitions.npz"
    try:
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # numpy raises several types for a damaged file
        raise DbgpuError(f"cannot read {f}: {e}") from None
    if not isinstance(pi, dict) or not {"data", "indices", "indptr", "shape", "states"} <= set(arrays):
        raise DbgpuError(f"{out} holds a damaged reversible model (msm.json / msm_transitions.npz)")
    return pi, arrays


def write_report(dir: str | os.PathLike) -> Path:
    """Draw the four figures (and msm when the fit has its reversible model; PNG + PDF)
    and write report.md into `dir`; return its path."""
    out = Path(dir)
    stats, potential, pts, sigma = read_fit(out)
    V_sorted = sorted(((s, v) for s, v in potential.items() if v is not None), key=lambda t: t[1])
    source = report_source(out, stats)
    begin_outputs(out, "report")
    plot_scatter(pts, stats, out, source=source["label"])
    plot_loops(pts, stats, out, source=source["label"])
    V = np.array([v for _, v in V_sorted])
    sig = None if sigma is None else np.array([sigma.get(s, np.nan) for s, _ in V_sorted], dtype=float)
    plot_histogram(V, out, sigma=sig, method=(stats.get("uncertainty") or {}).get("method"), source=source["label"])
    plot_graph(pts, stats, out, source=source["label"])
    figures = FIGURES
    pi, _ = read_msm(out)
    if pi is not None:
        plot_msm(pi, potential, stats, out, source=source["label"])
        figures = FIGURES + ("msm",)
    path = out / "report.md"
    write_text_atomic(path, _report_md(stats, potential, V_sorted, sigma, source) + _explain_section(out))
    finish_outputs(out, "report", [f"{name}.{ext}" for name in figures for ext in ("png", "pdf")] + ["report.md"])
    return path


def _explain_section(out: Path) -> str:
    """report.md's section on explaining V, when `dbgpu explain` has written explain.json
    for the current fit (an explanation of an earlier fit, stale in the manifest, is left out)."""
    from dbgpu.explain import explain_markdown

    f = out / "explain.json"
    if not f.is_file():
        return ""
    try:
        check_outputs(out, "explain", verify=False)
    except DbgpuError:
        return ""
    return "\n" + explain_markdown(read_json(f, what="explain file"))


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


def compare_markdown(summaries: list[dict], rows: list[dict], spread: dict | None = None) -> str:
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
    if spread and spread.get("rows"):
        scale = ", ".join(f"{lab} {fmt(a, '.3f')}" for lab, a in zip(spread["runs"], spread["scale"]))
        lines += ["", "## Spread of V across the runs (the error of an exact kernel's V)", "",
                  f"On the {spread['states']} states bounded in every run: each run's V re-centred there, "
                  f"then divided by its least-squares scale onto the runs' mean profile ({scale}). Median sd "
                  f"across runs: {fmt(spread['median_sd'], '.3g')} after gauge and scale, "
                  f"{fmt(spread['median_sd_gauge'], '.3g')} after the gauge alone. Per state: spread.csv; "
                  "uncertainty.json holds the gauge-and-scale sd.", ""]
    lines += ["", "![potentials](potentials.png)", "", "![detailed-balance index](db_index.png)", ""]
    return "\n".join(lines)


def temperature_markdown(axes: dict[str, dict], spread: dict | None = None) -> str:
    """The temperature axis of each model x template (`comparison.temperature_axis`) as Markdown."""
    lines = ["## Temperature", "",
             "Every temperature's kernel comes from one pass of forwards. Per temperature: beta (the pairwise "
             "slope), the Hodge gradient fraction, pairwise r, and V_tau against V at the reference temperature "
             "(the one nearest 1) on the states bounded in both: Pearson and Spearman r, and slope bV = the "
             "least-squares slope of beta_tau V_tau on beta_ref V_ref. A thermodynamic temperature gives "
             "slope bV = tau_ref / tau: alpha = 1 in log slope bV = c - alpha log(tau / tau_ref); alpha = 0 "
             "means tau leaves the log-ratios unchanged.", ""]
    for label, ax in axes.items():
        lines += [f"### {label}", "",
                  "| tau | beta | Hodge gradient fraction | pairwise r | shared bounded | Pearson V | Spearman V | "
                  "slope bV | tau_ref / tau |", "|---|---|---|---|---|---|---|---|---|"]
        for r in ax["rows"]:
            lines.append(f"| {format(r['tau'], 'g')} | {fmt(r['beta'], '.3f')} | "
                         f"{fmt(r['hodge_gradient_fraction'], '.3f')} | {fmt(r['pairwise_r'], '.3f')} | "
                         f"{r['shared_bounded']} | {fmt(r['pearson_V'], '.3f')} | {fmt(r['spearman_V'], '.3f')} | "
                         f"{fmt(r['slope_bV'], '.3f')} | {ax['reference_tau'] / r['tau']:.3f} |")
        lines += ["", f"alpha = {fmt(ax['alpha'], '.3f')} (R^2 {fmt(ax['alpha_r2'], '.3f')}, "
                      f"{ax['alpha_points']} temperatures; 1 = thermodynamic)", ""]
    if spread and spread.get("sd") is not None:
        lines += [f"alpha across the {len(spread['alpha'])} runs: mean {fmt(spread['mean'], '.3f')}, "
                  f"sd {fmt(spread['sd'], '.3f')}", ""]
    lines += ["![temperature](temperature.png)", ""]
    return "\n".join(lines)


def plot_temperature(axes: dict[str, dict], out: Path) -> None:
    """temperature.{png,pdf}: beta and the Hodge gradient fraction against tau, slope bV
    against tau_ref / tau (the diagonal: a thermodynamic temperature), and beta_tau V_tau
    against beta_ref V_ref on the shared states for the first model x template."""
    fig = new_figure(figsize=(14, 3.6))
    a1, a2, a3, a4 = fig.subplots(1, 4)
    for label, ax in axes.items():
        taus = np.array([r["tau"] for r in ax["rows"]])
        a1.plot(taus, [np.nan if r["beta"] is None else r["beta"] for r in ax["rows"]], "o-", label=label)
        a2.plot(taus, [np.nan if r["hodge_gradient_fraction"] is None else r["hodge_gradient_fraction"]
                       for r in ax["rows"]], "o-", label=label)
        a3.plot(ax["reference_tau"] / taus, [np.nan if r["slope_bV"] is None else r["slope_bV"] for r in ax["rows"]],
                "o-", label=label)
    a1.set(xlabel="tau", ylabel="beta (pairwise slope)")
    a2.set(xlabel="tau", ylabel="Hodge gradient fraction", ylim=(0, 1.05))
    lim = a3.get_xlim()
    a3.plot(lim, lim, color="0.5", ls=":", lw=1, label="thermodynamic")
    a3.set(xlabel="tau_ref / tau", ylabel="slope of beta_tau V_tau on beta_ref V_ref")
    a3.legend(fontsize=7)
    label, first = next(iter(axes.items()))
    for tau, pts in first["bV"].items():
        a4.scatter(pts["ref"], pts["tau"], s=8, label=f"tau {tau}")
    a4.set(xlabel=f"beta V at tau {format(first['reference_tau'], 'g')}", ylabel="beta_tau V_tau")
    a4.set_title(_label(label, 40), fontsize=8)
    a4.legend(fontsize=7)
    save_figure(fig, out, "temperature")
