"""Two potentials, or two kernels, of one state set compared (pure numpy and scipy).

The paper claims that the potential "transcends" architectures and prompt templates.
For two runs on the same states this measures how far that holds, on the states bounded
in both: Pearson and Spearman correlation of the potentials, the least-squares slope of
V_b on V_a (the ratio of their inverse temperatures beta when the claim holds), and the
agreement of the pairwise log-ratios log T(f,g) - log T(g,f) (Pearson r, RMS).
Cost: O(k^2) for k shared states (every ordered pair's log-ratio).
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
