"""Two potentials, or two kernels, of one state set compared (pure numpy and scipy).

The paper claims that the potential "transcends" architectures and prompt templates.
For two runs on the same states this measures how far that holds, on the states bounded
in both: Pearson and Spearman correlation of the potentials, the least-squares slope of
V_b on V_a (the ratio of their inverse temperatures beta when the claim holds), and the
agreement of the pairwise log-ratios log T(f,g) - log T(g,f) (Pearson r, RMS).
Cost: O(k^2) for k shared states (every ordered pair's log-ratio).

`potential_spread`: an exact kernel has no sampling error; what its V is uncertain by is
the choice of prompt template (or temperature, or model). Over R >= 2 runs, on the states
bounded in every run: each run's V re-centred there (the gauge), then scaled onto the
runs' mean profile by its least-squares factor a_r (V_r ~ a_r * mean; temperature
rescales beta, so a run at another temperature differs by a factor, not in shape); per
state the standard deviation across runs (ddof 1) of the gauge-aligned V (`sd_gauge`)
and of the scale-aligned V / a_r (`sd`, in the units of the mean profile: the error on
V's shape). `dbgpu compare` writes `sd` as its uncertainty.json. O(R k).
"""

from __future__ import annotations

import numpy as np


def shared_potentials(pa: dict, pb: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """States bounded in both potentials, and the two potentials there (each re-centred)."""
    shared = [s for s in pa if pa[s] is not None and pb.get(s) is not None]
    va = np.array([pa[s] for s in shared], dtype=np.float64)
    vb = np.array([pb[s] for s in shared], dtype=np.float64)
    return shared, va - va.mean() if len(va) else va, vb - vb.mean() if len(vb) else vb


def log_ratios(states: list[str], logT: np.ndarray, keep: list[str]) -> np.ndarray:
    """log T(f,g) - log T(g,f) for every ordered pair f != g of `keep` (both orientations,
    so correlations between runs do not depend on how pairs are oriented)."""
    where = {s: i for i, s in enumerate(states)}
    idx = np.array([where[s] for s in keep], dtype=np.int64)
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
    in_b = set(b["states"])
    common = [s for s in a["states"] if s in in_b]
    if len(common) >= 2:
        xa = log_ratios(a["states"], a["logT"], common)
        xb = log_ratios(b["states"], b["logT"], common)
        ok = np.isfinite(xa) & np.isfinite(xb)
        row["n_pairs"] = int(ok.sum()) // 2
        if ok.sum() >= 3 and xa[ok].std() > 0 and xb[ok].std() > 0:
            row["pearson_logratio"] = float(pearsonr(xa[ok], xb[ok]).statistic)
            row["rms_logratio"] = float(np.sqrt(np.mean((xa[ok] - xb[ok]) ** 2)))
    return row


def potential_spread(runs: list[dict]) -> dict:
    """Per-state spread of V across runs (see the module docstring): {"states",
    "scale" (R,), "median_sd", "median_sd_gauge", "rows": [{state, runs, mean_V,
    sd_gauge, sd}]}."""
    shared = [s for s in runs[0]["potential"] if all(r["potential"].get(s) is not None for r in runs)]
    out = {"states": len(shared), "runs": [r["label"] for r in runs], "scale": None,
           "median_sd": None, "median_sd_gauge": None, "rows": []}
    if len(shared) < 2 or len(runs) < 2:
        return out
    V = np.array([[r["potential"][s] for s in shared] for r in runs], dtype=np.float64)   # (R, k)
    V -= V.mean(1, keepdims=True)                                 # gauge: zero mean on the shared states
    mean = V.mean(0)
    denom = float(mean @ mean)
    scale = V @ mean / denom if denom > 0 else np.ones(len(runs))
    scaled = V / np.where(scale != 0, scale, 1.0)[:, None]
    sd_g, sd = V.std(0, ddof=1), scaled.std(0, ddof=1)
    out.update(scale=[float(a) for a in scale], median_sd=float(np.median(sd)),
               median_sd_gauge=float(np.median(sd_g)),
               rows=[{"state": s, "runs": len(runs), "mean_V": float(m), "sd_gauge": float(a), "sd": float(b)}
                     for s, m, a, b in zip(shared, mean, sd_g, sd)])
    return out


def spread_uncertainty(spread: dict, states: list[str]) -> dict:
    """uncertainty.json for a comparison: {state: sd or null} (null: not bounded in every run)."""
    sd = {r["state"]: r["sd"] for r in spread["rows"]}
    return {s: sd.get(s) for s in states}


def temperature_axis(runs: list[dict]) -> dict:
    """What tau does to one model x template's kernel: runs are dicts with `tau`,
    `potential` ({state: V or None}) and `stats` (stats.json) at each temperature.

    Per temperature: beta (the pairwise slope), the Hodge gradient fraction, pairwise r,
    and V_tau against V_ref at the reference temperature (the one nearest 1; the states
    bounded in both, re-centred): Pearson and Spearman r and `slope_bV`, the least-squares
    slope of beta_tau V_tau on beta_ref V_ref (both in nats of log-ratio). If tau were a
    temperature in the thermodynamic sense (one energy, T_tau ~ exp(-E / tau)), slope_bV =
    tau_ref / tau; the fit log slope_bV = c - alpha log(tau / tau_ref) gives alpha (1 for
    that; 0 for a kernel tau does not change) with its R^2, over the temperatures whose
    slope is positive. `bV`: per temperature the points of that slope (states, beta_ref V_ref,
    beta_tau V_tau, re-centred), for the figure. O(R k) for R temperatures, k shared states."""
    from scipy.stats import pearsonr, spearmanr

    runs = sorted(runs, key=lambda r: r["tau"])
    ref = min(runs, key=lambda r: abs(np.log(r["tau"])))
    beta_ref = ref["stats"]["pairwise"].get("slope")
    rows, bV = [], {}
    for r in runs:
        st = r["stats"]
        beta = st["pairwise"].get("slope")
        shared, v, vr = shared_potentials(r["potential"], ref["potential"])
        row = {"tau": r["tau"], "beta": beta, "hodge_gradient_fraction": st["hodge"]["gradient_fraction"],
               "pairwise_r": st["pairwise"].get("r"), "shared_bounded": len(shared), "pearson_V": None,
               "spearman_V": None, "slope_bV": None}
        if len(shared) >= 3 and v.std() > 0 and vr.std() > 0:
            row["pearson_V"] = float(pearsonr(vr, v).statistic)
            row["spearman_V"] = float(spearmanr(vr, v).statistic)
            if beta is not None and beta_ref is not None:
                x, y = beta_ref * vr, beta * v
                row["slope_bV"] = float((x @ y) / (x @ x))
                bV[format(r["tau"], "g")] = {"states": shared, "ref": x.tolist(), "tau": y.tolist()}
        rows.append(row)
    fit = [(np.log(r["tau"] / ref["tau"]), np.log(r["slope_bV"])) for r in rows
           if r["slope_bV"] is not None and r["slope_bV"] > 0]
    out = {"reference_tau": ref["tau"], "rows": rows, "bV": bV, "alpha": None, "alpha_intercept": None, "alpha_r2": None,
           "alpha_points": len(fit)}
    if len(fit) >= 3:
        lx, ly = np.array(fit).T
        slope, c = np.polyfit(lx, ly, 1)
        resid = ly - (slope * lx + c)
        ss = float(((ly - ly.mean()) ** 2).sum())
        out.update(alpha=float(-slope), alpha_intercept=float(c),
                   alpha_r2=float(1 - (resid ** 2).sum() / ss) if ss > 0 else None)
    return out


def alpha_spread(axes: dict[str, dict]) -> dict:
    """alpha across templates (or models): {label: alpha}, mean and sd (ddof 1) of those known."""
    vals = {k: a["alpha"] for k, a in axes.items()}
    known = np.array([v for v in vals.values() if v is not None])
    return {"alpha": vals, "mean": float(known.mean()) if len(known) else None,
            "sd": float(known.std(ddof=1)) if len(known) >= 2 else None}
