"""`dbgpu fit`: input -> weights -> least-action fit -> statistics -> files.

`fit_input` reads and checks everything, computes everything, and only then writes,
between `begin_outputs` and `finish_outputs` (the directory's manifest: whole or
refused by every reader):

- `potential.json`: `{state: V or null}` in the input's state order; V on the main
  strongly connected component, zero mean there; null elsewhere (unbounded).
- `stats.json`: action, optimiser, components (with their levels), pairwise / loops /
  Hodge / entropy production / reversibility statistics (see `dbgpu.stats`), underflow,
  and, when asked for, the error bars' summary and the null distributions
  (`dbgpu.uncertainty`).
- `uncertainty.json` (with `laplace` or `bootstrap`): `{state: sigma or null}`.
- `fit_points.npz`: the per-pair points, the sampled loops, the top-state graph points
  and sigma, which the report plots.
- `msm.json`: `{state: pi or null}`, the stationary distribution of the reversible Markov
  model the fit is (`dbgpu.msm`; docs/msm.md), null outside the main component.
- `msm_transitions.npz`: that model's transition matrix P (main component x main
  component, rows sum to 1) as scipy CSR arrays (`data`, `indices`, `indptr`, `shape`,
  `format`: `scipy.sparse.load_npz` reads it) with its state order (`states`) and `pi`.
"""

from __future__ import annotations

import io
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from dbgpu.version import __version__
from dbgpu.errors import DbgpuError, DbgpuWarning
from dbgpu.io import begin_outputs, check_out_dir, finish_outputs, json_safe, locked_dir, write_bytes_atomic, write_json_atomic

#: how many states (lowest potential first) the report's graph figure draws
GRAPH_STATES = 24
#: at most this many pairs are kept for the report's scatter plot (evenly spaced)
MAX_POINTS = 100_000


def _thin(arrays: dict, keys: tuple[str, ...], cap: int) -> dict:
    """Keep an evenly spaced subset of at most `cap` rows of the arrays named in keys."""
    n = len(arrays[keys[0]])
    if n <= cap:
        return arrays
    idx = np.linspace(0, n - 1, cap).astype(np.int64)
    return {**arrays, **{k: arrays[k][idx] if len(arrays[k]) == n else arrays[k] for k in keys}}


def _graph_points(edges, fit) -> dict:
    """The lowest-potential main-component states and the edges among them."""
    main = np.flatnonzero(fit.components.label == 0)
    top = main[np.argsort(fit.V[main], kind="stable")[:GRAPH_STATES]]
    sel = np.zeros(len(edges.states), bool)
    sel[top] = True
    e = sel[edges.src] & sel[edges.dst]
    return {"graph_states": top, "graph_src": edges.src[e], "graph_dst": edges.dst[e],
            "graph_log_w": edges.log_w[e]}


def _underflow(edges, fit) -> dict:
    dropped = int(fit.info.get("underflow_dropped", 0))
    return {"edges_exp_underflow": int(edges.n_underflow), "fit_dropped": dropped,
            "log_w_max": fit.info.get("log_w_max"),
            "note": "exp(log w) == 0 in float64 for a finite log w: the fit works from log w scaled by "
                    "its maximum; an edge more than ~745 nats below that maximum carries no weight "
                    "representable in float64 and is left out of the fit (fit_dropped); every statistic "
                    "uses log w itself"}


def _stats_doc(input_path, summary, edges, fit, body: dict, *, reject: str, threshold: float) -> dict:
    """stats.json: the input, its weights, the fit and every statistic (JSON-safe)."""
    from dbgpu.stats import components_summary

    exact = summary["exact"]
    Vm = fit.V[fit.components.label == 0]
    return {
        "dbgpu_version": __version__,
        "input": None if input_path is None else str(input_path),
        "input_kind": summary["kind"],
        "weights": edges.mode,
        "reject": None if exact or edges.mode == "counts" else reject,
        "threshold": threshold if edges.mode == "low_reject" else None,
        "n_states": len(edges.states),
        "n_edges": int(len(edges.src)),
        "n_sources": fit.n_src,
        "n_transitions": summary.get("n_transitions"),
        "n_queries": summary.get("n_queries"),
        "n_self": summary.get("n_self"),
        "n_invalid": summary.get("n_invalid"),
        "action": fit.action,
        "action_main": fit.action_main,
        "action_note": "S = (1/N_src) sum w K(V_f - V_g), N_src = n_sources; action is its "
                       "infimum (every SCC at its minimum, edges between SCCs -> 0)",
        "fit": fit.info,
        "underflow": _underflow(edges, fit),
        "potential": {"states": int(len(Vm)), "min": float(Vm.min()), "max": float(Vm.max()),
                      "std": float(Vm.std())},
        "components": components_summary(edges.states, fit.components, edges.kept),
        **body,
    }


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def msm_arrays(states: list[str], msm) -> dict:
    """msm_transitions.npz: P as scipy CSR arrays, its state order and pi."""
    P = msm.P.tocsr()
    return {"data": P.data, "indices": P.indices, "indptr": P.indptr, "shape": np.array(P.shape),
            "format": np.array("csr"), "states": np.array([states[i] for i in msm.members], dtype=str),
            "pi": msm.pi}


def _write_outputs(out_dir, *, potential: dict, stats: dict, points: dict, sigma: dict | None,
                   msm: dict | None = None, msm_npz: dict | None = None) -> None:
    with locked_dir(out_dir):                                   # the only writer of out_dir
        out = begin_outputs(out_dir, "fit", invalidates=("report", "explain"))
        write_bytes_atomic(out / "fit_points.npz", _npz_bytes(points))
        files = ["fit_points.npz", "potential.json"]
        write_json_atomic(out / "potential.json", potential)
        if msm is not None and msm_npz is not None:
            write_json_atomic(out / "msm.json", msm)
            write_bytes_atomic(out / "msm_transitions.npz", _npz_bytes(msm_npz))
            files += ["msm.json", "msm_transitions.npz"]
        else:                                                   # none from an older fit
            (out / "msm.json").unlink(missing_ok=True)
            (out / "msm_transitions.npz").unlink(missing_ok=True)
        if sigma is not None:
            write_json_atomic(out / "uncertainty.json", sigma)
            files.append("uncertainty.json")
        else:
            (out / "uncertainty.json").unlink(missing_ok=True)      # none from an older fit
        write_json_atomic(out / "stats.json", stats)
        finish_outputs(out, "fit", files + ["stats.json"])


def _check_options(data, *, laplace: bool, bootstrap: int, null: int, seed: int) -> None:
    from dbgpu.data import Kernel

    for name, v in (("--bootstrap", bootstrap), ("--null", null)):
        if v < 0 or (0 < v < 2):
            raise DbgpuError(f"{name} needs at least 2 replicates, got {v}")
    if seed < 0:
        raise DbgpuError(f"--seed must be >= 0, got {seed}")
    if isinstance(data, Kernel) and (laplace or bootstrap or null):
        raise DbgpuError("error bars and null distributions need sampled counts: an exact kernel has no "
                         "sampling error (compare templates or temperatures with `dbgpu compare` instead)")


def _summary(data) -> dict:
    """What stats.json says about the input, so the input itself can be let go."""
    from dbgpu.data import Kernel

    if isinstance(data, Kernel):
        return {"exact": True, "kind": data.kind}
    return {"exact": False, "kind": data.kind, "n_transitions": int(data.count.sum()),
            "n_queries": int(data.visits.sum()), "n_self": data.n_self, "n_invalid": data.n_invalid}


def _errors_and_null(data, edges, fit, body, *, weights, reject, threshold, laplace, bootstrap, null,
                     seed, dev, progress):
    """The uncertainty section, sigma (N,) or None, and the null section of stats.json."""
    from dbgpu.console import progress as bar
    import dbgpu.uncertainty as u

    unc, sigma = {"method": None}, None
    opts = dict(weights=weights, reject=reject, threshold=threshold, device=dev)
    if laplace:
        sigma, unc["laplace"] = u.laplace(edges, fit)
        unc["method"] = "laplace"
    if bootstrap:
        with bar(total=bootstrap, enabled=progress, desc="bootstrap") as pb:
            sb, unc["bootstrap"] = u.bootstrap_potentials(data, fit, replicates=bootstrap, seed=seed,
                                                          progress=pb, **opts)
        if sigma is not None:
            both = np.isfinite(sigma) & np.isfinite(sb) & (sb > 0)
            unc["laplace_over_bootstrap_median"] = float(np.median(sigma[both] / sb[both])) if both.any() else None
        sigma, unc["method"] = sb, "bootstrap"
    if sigma is None and edges.count is None:
        unc["note"] = ("exact kernel: no sampling error; the spread of V across templates or "
                       "temperatures (dbgpu compare) is its honest error")
    nul = None
    if null:
        with bar(total=null, enabled=progress, desc="null") as pb:
            nul = u.null_distribution(data, fit, body, replicates=null, seed=seed, progress=pb, **opts)
    return unc, sigma, nul


@dataclass(frozen=True)
class FitOutputs:
    """What `dbgpu fit` writes, held in memory: `write_fit` puts it into a directory."""

    potential: dict            # potential.json: {state: V or None}, input order
    stats: dict                # stats.json (JSON-safe)
    points: dict               # fit_points.npz: name -> array
    sigma: dict | None         # uncertainty.json: {state: sigma or None}, or None without error bars
    msm: dict | None = None    # msm.json: {state: pi or None}, input order (None: not computed)
    msm_npz: dict | None = None  # msm_transitions.npz: name -> array (`msm_arrays`)


def fit_data(data, *, input_label: str | None, reject: str = "high", threshold: float = 0,
             weights: str | None = None, device: str = "auto", method: str = "newton", laplace: bool = False,
             bootstrap: int = 0, null: int = 0, seed: int = 0, progress: bool = False,
             started: float | None = None) -> FitOutputs:
    """Weight an input already read (`dbgpu.data.Transitions` or `Kernel`), fit the
    least-action potential, compute the statistics (and, when asked, error bars and null
    distributions); write nothing. `input_label` is what stats.json records as the input;
    `started` a `time.perf_counter()` to count stats.json's seconds from (default now).

    `weights` None means "paper" (with `reject`/`threshold`) for sampled inputs; exact
    kernels always use w = T. Raises DbgpuError on bad input. Time and memory: those of
    `fit_potential` and `detailed_balance_stats` (O(E) per iteration; the N x N kernel
    is let go once its edges exist, when the caller holds no other reference to it).
    """
    from dbgpu.data import make_edges
    from dbgpu.fit import fit_potential
    from dbgpu.graph import analysis_device
    from dbgpu.msm import msm_summary, reversible_msm
    from dbgpu.provenance import environment
    from dbgpu.stats import detailed_balance_stats

    t0 = time.perf_counter() if started is None else started
    dev = analysis_device(device)
    _check_options(data, laplace=laplace, bootstrap=bootstrap, null=null, seed=seed)
    weights = weights or "paper"
    edges = make_edges(data, weights=weights, reject=reject, threshold=threshold)
    summary = _summary(data)
    if summary["exact"]:
        data = None                                           # the N x N kernel is no longer needed
    fit = fit_potential(len(edges.states), edges.src, edges.dst, log_w=edges.log_w, device=dev, method=method)
    main = fit.components.label == 0
    if fit.components.size[0] == 1:
        warnings.warn("no two states reach each other both ways: every potential is unbounded "
                      f"relative to the others (only {edges.states[int(np.argmax(main))]!r} "
                      "gets V = 0)", DbgpuWarning, stacklevel=2)
    if fit.info.get("underflow_dropped"):
        warnings.warn(f"{fit.info['underflow_dropped']} of {len(edges.src)} edges have weights more than "
                      "745 nats below the largest: no float64 can hold them relative to it, so the fit "
                      "leaves them out (stats.json: underflow)", DbgpuWarning, stacklevel=2)
    body, arrays = detailed_balance_stats(edges, fit, device=dev, seed=seed)
    unc, sigma, nul = _errors_and_null(data, edges, fit, body, weights=weights, reject=reject,
                                       threshold=threshold, laplace=laplace, bootstrap=bootstrap, null=null,
                                       seed=seed, dev=dev, progress=progress)
    rmsm = reversible_msm(len(edges.states), edges.src, edges.dst, edges.log_w, fit.V)
    body["msm"] = msm_summary(rmsm, weights=edges.mode)
    stats = _stats_doc(input_label, summary, edges, fit, {**body, "uncertainty": unc, "null": nul},
                       reject=reject, threshold=threshold)
    stats["seconds"] = time.perf_counter() - t0
    stats["provenance"] = environment(dev)
    potential = {s: (None if not main[i] else float(fit.V[i])) for i, s in enumerate(edges.states)}
    sig = None if sigma is None else {s: (float(x) if math.isfinite(x) else None)
                                      for s, x in zip(edges.states, sigma)}
    arrays = _thin(arrays, ("pair_x", "pair_dV", "pair_var", "pair_f", "pair_g"), MAX_POINTS)
    points = {**arrays, **_graph_points(edges, fit), "V": fit.V, "states": np.array(edges.states, dtype=str),
              "sigma": np.full(len(edges.states), np.nan) if sigma is None else sigma}
    pi = dict.fromkeys(edges.states)
    pi.update({edges.states[i]: float(p) for i, p in zip(rmsm.members, rmsm.pi)})
    return FitOutputs(potential=potential, stats=json_safe(stats), points=points, sigma=sig, msm=pi,
                      msm_npz=msm_arrays(edges.states, rmsm))


def write_fit(out_dir: str | os.PathLike, fitted: FitOutputs) -> None:
    """potential.json, stats.json, fit_points.npz, msm.json, msm_transitions.npz (and
    uncertainty.json) into out_dir, as
    its only writer, between the manifest's begin and finish (whole or refused)."""
    check_out_dir(out_dir)
    _write_outputs(out_dir, potential=fitted.potential, stats=fitted.stats, points=fitted.points,
                   sigma=fitted.sigma, msm=fitted.msm, msm_npz=fitted.msm_npz)


def fit_input(input_path: str | os.PathLike, out_dir: str | os.PathLike, *, reject: str = "high",
              threshold: float = 0, weights: str | None = None, device: str = "auto",
              method: str = "newton", laplace: bool = False, bootstrap: int = 0, null: int = 0,
              seed: int = 0, progress: bool = False) -> dict:
    """`dbgpu fit`: read an input (paper JSON, transitions.jsonl or score directory),
    `fit_data` it, `write_fit` the outputs into out_dir; return the stats dict. Raises
    DbgpuError on bad input, before writing anything."""
    from dbgpu.data import read_input
    from dbgpu.graph import analysis_device

    t0 = time.perf_counter()
    analysis_device(device)                                   # an impossible device: before reading
    check_out_dir(out_dir)
    fitted = fit_data(read_input(input_path), input_label=str(input_path), reject=reject, threshold=threshold,
                      weights=weights, device=device, method=method, laplace=laplace, bootstrap=bootstrap,
                      null=null, seed=seed, progress=progress, started=t0)
    write_fit(out_dir, fitted)
    return fitted.stats


def fit_summary(stats: dict) -> str:
    """The headline of a fit, one line (what `dbgpu fit` prints)."""
    from dbgpu.console import fmt

    pw, comp = stats["pairwise"], stats["components"]
    return (f"{stats['n_states']} states, {stats['n_edges']} edges; main component "
            f"{comp['main_size']} states ({comp['count']} components); action "
            f"{stats['action']:.6g}; pairwise r {fmt(pw['r'])}, slope {fmt(pw['slope'])}; "
            f"Hodge gradient fraction {fmt(stats['hodge']['gradient_fraction'])}")
