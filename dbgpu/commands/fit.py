"""`dbgpu fit`: input -> weights -> least-action fit -> statistics -> files.

`fit_input` reads and checks everything, computes everything, and only then creates
the output directory and writes (atomically, each file whole or not at all):

- `potential.json`: `{state: V or null}` in the input's state order; V on the main
  strongly connected component, zero mean there; null elsewhere (unbounded).
- `stats.json`: action, optimiser, components, pairwise / loops / Hodge / entropy
  production / reversibility statistics (see `dbgpu.stats`).
- `fit_points.npz`: the per-pair, per-loop and top-state graph points the report plots.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import numpy as np

from dbgpu.version import __version__
from dbgpu.errors import DbgpuWarning
from dbgpu.io import ensure_out_dir, json_safe, write_bytes_atomic, write_json_atomic

#: how many states (lowest potential first) the report's graph figure draws
GRAPH_STATES = 24
#: at most this many pairs / loops are kept for the report's scatter plots (evenly spaced)
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
            "graph_w": edges.w[e]}


def _stats_doc(input_path, data, edges, fit, body: dict, *, reject: str, threshold: float) -> dict:
    """stats.json: the input, its weights, the fit and every statistic (JSON-safe)."""
    from dbgpu.data import Kernel
    from dbgpu.stats import components_summary

    exact = isinstance(data, Kernel)
    Vm = fit.V[fit.components.label == 0]
    return {
        "dbgpu_version": __version__,
        "input": str(input_path),
        "input_kind": data.kind,
        "weights": edges.mode,
        "reject": None if exact or edges.mode == "counts" else reject,
        "threshold": threshold if edges.mode == "low_reject" else None,
        "n_states": len(edges.states),
        "n_edges": int(len(edges.src)),
        "n_sources": fit.n_src,
        "n_transitions": None if exact else int(data.count.sum()),
        "n_queries": None if exact else int(data.visits.sum()),
        "n_self": None if exact else data.n_self,
        "n_invalid": None if exact else data.n_invalid,
        "action": fit.action,
        "action_main": fit.action_main,
        "action_note": "S = (1/N_src) sum w K(V_f - V_g), N_src = n_sources; action is its "
                       "infimum (every SCC at its minimum, edges between SCCs -> 0)",
        "fit": fit.info,
        "potential": {"states": int(len(Vm)), "min": float(Vm.min()), "max": float(Vm.max()),
                      "std": float(Vm.std())},
        "components": components_summary(edges.states, fit.components, edges.kept),
        **body,
    }


def _write_outputs(out_dir, *, potential: dict, stats: dict, points: dict) -> None:
    out = Path(ensure_out_dir(out_dir))
    buf = io.BytesIO()
    np.savez(buf, **points)
    write_bytes_atomic(out / "fit_points.npz", buf.getvalue())
    write_json_atomic(out / "potential.json", potential)
    write_json_atomic(out / "stats.json", stats)


def fit_input(input_path: str | os.PathLike, out_dir: str | os.PathLike, *, reject: str = "high",
              threshold: float = 0, weights: str | None = None, device: str = "auto",
              method: str = "newton") -> dict:
    """Load an input (paper JSON, transitions.jsonl or score directory), weight it, fit
    the least-action potential, compute the statistics, write potential.json,
    stats.json and fit_points.npz into out_dir; return the stats dict.

    `weights` None means "paper" (with `reject`/`threshold`) for sampled inputs; exact
    kernels always use w = T. Raises DbgpuError on bad input, before writing anything.
    """
    from dbgpu.data import make_edges, read_input
    from dbgpu.fit import fit_potential
    from dbgpu.graph import analysis_device
    from dbgpu.stats import detailed_balance_stats

    t0 = time.perf_counter()
    dev = analysis_device(device)
    data = read_input(input_path)
    edges = make_edges(data, weights=weights or "paper", reject=reject, threshold=threshold)
    fit = fit_potential(len(edges.states), edges.src, edges.dst, log_w=edges.log_w, device=dev, method=method)
    main = fit.components.label == 0
    if fit.components.size[0] == 1:
        warnings.warn("no two states reach each other both ways: every potential is unbounded "
                      f"relative to the others (only {edges.states[int(np.argmax(main))]!r} "
                      "gets V = 0)", DbgpuWarning, stacklevel=2)
    body, arrays = detailed_balance_stats(edges, fit, device=dev)
    stats = _stats_doc(input_path, data, edges, fit, body, reject=reject, threshold=threshold)
    stats["seconds"] = time.perf_counter() - t0
    stats = json_safe(stats)
    potential = {s: (None if not main[i] else float(fit.V[i])) for i, s in enumerate(edges.states)}
    arrays = _thin(arrays, ("pair_x", "pair_dV", "pair_var"), MAX_POINTS)
    arrays = _thin(arrays, ("loop_forward", "loop_backward", "loop_var"), MAX_POINTS)
    points = {**arrays, **_graph_points(edges, fit), "V": fit.V, "states": np.array(edges.states, dtype=str)}
    _write_outputs(out_dir, potential=potential, stats=stats, points=points)
    return stats
