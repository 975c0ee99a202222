"""Synthetic chains with a known potential, for tests and benchmarks.

Detailed balance by construction: `log T(f,g) = S(f,g) + (V(f) - V(g))/2 - c` with S
symmetric and c one global constant, so `log T(f,g) - log T(g,f) = V(f) - V(g)` exactly.
`curl` adds the divergence-free flow `curl * sin(2 pi (g - f) / n)` (pure cycle flux,
no gradient part), which breaks detailed balance by a known amount.
Everything is seeded; nothing here touches global random state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dbgpu.io import write_text_atomic


def state_names(n: int) -> list[str]:
    return [f"S{i:0{len(str(n - 1))}d}" for i in range(n)]


def dense_kernel(n: int, *, seed: int = 0, sigma: float = 1.0, noise: float = 0.0,
                 curl: float = 0.0, coverage: float = 0.9):
    """(V (n,), logT (n, n)): a full kernel; the largest row sum off the diagonal is
    `coverage`; the diagonal gets log(1e-3) (self-transitions are not analysed)."""
    rng = np.random.default_rng(seed)
    V = rng.normal(0.0, sigma, n)
    A = rng.normal(0.0, 1.0, (n, n))
    S = (A + A.T) / 2                                          # (n, n) symmetric
    logT = S + (V[:, None] - V[None, :]) / 2
    if curl:
        k = np.arange(n)
        logT = logT + curl * np.sin(2 * np.pi * (k[None, :] - k[:, None]) / n)
    if noise:
        logT = logT + rng.normal(0.0, noise, (n, n))
    np.fill_diagonal(logT, -np.inf)
    logT -= np.log(np.exp(logT).sum(1).max() / coverage)       # one global constant
    np.fill_diagonal(logT, np.log(1e-3))
    return V - V.mean(), logT


def sparse_kernel(n: int, *, seed: int = 0, degree: float = 8.0, sigma: float = 1.0,
                  coverage: float = 0.9):
    """(V (n,), src, dst (E,), logT (E,)): a detailed-balance kernel on a random
    symmetric graph with heavy-tailed popularity (hubs), mean degree about `degree`."""
    rng = np.random.default_rng(seed)
    V = rng.normal(0.0, sigma, n)
    q = rng.lognormal(0.0, 1.0, n)
    q /= q.sum()
    m = int(n * degree / 2)
    a = rng.choice(n, m, p=q)
    b = rng.choice(n, m, p=q)
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    key = np.unique(lo * n + hi)
    lo, hi = key // n, key % n
    s = rng.normal(0.0, 0.5, len(lo))                          # symmetric part per pair
    src, dst = np.r_[lo, hi], np.r_[hi, lo]
    logT = np.r_[s, s] + (V[src] - V[dst]) / 2                 # (E,)
    order = np.lexsort((dst, src))
    src, dst, logT = src[order], dst[order], logT[order]
    rows = np.bincount(src, weights=np.exp(logT), minlength=n)
    logT -= np.log(rows.max() / coverage)
    return V - V.mean(), src.astype(np.int64), dst.astype(np.int64), logT


def metropolis_kernel(n: int, *, seed: int = 0, degree: float = 8.0, sigma: float = 1.0):
    """(V (n,), src, dst (E,), logT (E,)): Metropolis–Hastings on a random graph (about
    `degree` neighbours per state): propose a uniform neighbour g of f, accept with
    `min(1, exp(V_f - V_g) deg_f / deg_g)`. Detailed balance holds exactly with
    `pi ~ exp(-V)`: `log T(f,g) - log T(g,f) = V(f) - V(g)`; a rejected proposal stays
    at f (the rest of each row)."""
    rng = np.random.default_rng(seed)
    V = rng.normal(0.0, sigma, n)
    m = int(n * degree / 2)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = a != b
    key = np.unique(np.minimum(a, b)[keep] * n + np.maximum(a, b)[keep])
    lo, hi = key // n, key % n
    src, dst = np.r_[lo, hi], np.r_[hi, lo]
    order = np.lexsort((dst, src))
    src, dst = src[order].astype(np.int64), dst[order].astype(np.int64)
    ld = np.log(np.bincount(src, minlength=n).clip(1))           # (n,) log degree
    logT = -ld[src] + np.minimum(0.0, V[src] - V[dst] + ld[src] - ld[dst])
    return V - V.mean(), src, dst, logT


def sampled_transitions(n: int, src: np.ndarray, dst: np.ndarray, logT: np.ndarray, *, queries: int,
                        seed: int = 0):
    """`Transitions` of `queries` queries on a sparse kernel with the paper's protocol
    (`sample`: uniform sources; the rest of a row's mass is a rejected answer)."""
    from dbgpu.data import count_queries

    f, g = sample(n, src, dst, np.exp(logT), queries=queries, seed=seed)
    return count_queries(state_names(n), f, g, kind="synthetic")


def sample(n: int, src: np.ndarray, dst: np.ndarray, T: np.ndarray, *, queries: int,
           seed: int = 0):
    """Simulate the paper's protocol on a known kernel: each query draws its source
    uniformly and its target from row T(f, .); the rest of the row's mass is an
    invalid answer (target -1). Edges must be sorted by src. Returns (source, target) (Q,)."""
    rng = np.random.default_rng(seed)
    first = np.searchsorted(src, np.arange(n))                 # (n,) row starts
    cum = np.cumsum(T)
    base = np.r_[0.0, cum][first]                              # mass before each row
    key = src + (cum - base[src])                              # (E,) in [f, f + row sum]
    f = rng.integers(0, n, queries)
    u = rng.random(queries)
    e = np.searchsorted(key, f + u, side="right")              # first edge with key > f + u
    e_c = np.minimum(e, len(src) - 1)
    hit = (e < len(src)) & (src[e_c] == f)
    target = np.where(hit, dst[e_c], -1)
    return f.astype(np.int64), target.astype(np.int64)


def sample_dense_counts(logT: np.ndarray, *, per_source: int, seed: int = 0):
    """`Transitions` for a dense kernel queried `per_source` times from every state:
    N(f, .) ~ Multinomial(per_source, T(f, .) + the rest as invalid answers)."""
    from dbgpu.data import Transitions

    n = len(logT)
    T = np.exp(logT)
    np.fill_diagonal(T, 0.0)
    pvals = np.c_[T, np.clip(1.0 - T.sum(1), 0.0, None)]     # (n, n + 1)
    N = np.random.default_rng(seed).multinomial(per_source, pvals / pvals.sum(1, keepdims=True))
    src, dst = np.nonzero(N[:, :n])                            # sorted by (src, dst)
    return Transitions(states=state_names(n), src=src.astype(np.int64), dst=dst.astype(np.int64),
                       count=N[src, dst].astype(np.int64),
                       visits=np.full(n, per_source, np.int64), n_self=0,
                       n_invalid=int(N[:, n].sum()), kind="synthetic")


def dense_edges(logT: np.ndarray):
    """(src, dst, T) of the off-diagonal entries of a dense kernel, sorted by src."""
    n = len(logT)
    src, dst = np.nonzero(~np.eye(n, dtype=bool))
    return src, dst, np.exp(logT[src, dst])


def write_paper_json(path: str | os.PathLike, states: list[str], source, target) -> Path:
    """Paper shape 1, `{source: [target, ...]}`; invalid answers (-1) are left out, as the
    paper's protocol does not record them."""
    d: dict[str, list[str]] = {}
    for s, t in zip(source.tolist(), target.tolist()):
        if t >= 0:
            d.setdefault(states[s], []).append(states[t])
    write_text_atomic(path, json.dumps(d))
    return Path(path)


def write_transitions_jsonl(path: str | os.PathLike, states: list[str], source, target) -> Path:
    """`transitions.jsonl` rows; invalid answers have target null."""
    rows = []
    for k, (s, t) in enumerate(zip(source.tolist(), target.tolist())):
        tgt = states[t] if t >= 0 else None
        rows.append(json.dumps({"source": states[s], "answer": tgt or "???", "target": tgt,
                                "step": k, "slot": 0}))
    write_text_atomic(path, "\n".join(rows) + "\n")
    return Path(path)


def null_p_values(seed: int, *, curl: float = 0.0, n: int = 20, per_source: int = 3000, replicates: int = 30):
    """Calibration of `fit --null`: a dense n-state chain (`curl` > 0 adds cycle flux),
    sampled `per_source` times from each state, fitted with count weights; returns (the
    p-value of each statistic under its null from `replicates` resamples, the null section).
    Under detailed balance (curl 0) the p-values are uniform over seeds."""
    from dbgpu.data import make_edges
    from dbgpu.fit import fit_potential
    from dbgpu.stats import detailed_balance_stats
    from dbgpu.uncertainty import null_distribution

    _, logT = dense_kernel(n, seed=seed, curl=curl)
    t = sample_dense_counts(logT, per_source=per_source, seed=seed + 1)
    e = make_edges(t, weights="counts")
    fit = fit_potential(n, e.src, e.dst, log_w=e.log_w)
    st, _ = detailed_balance_stats(e, fit, points=False)
    nul = null_distribution(t, fit, st, replicates=replicates, seed=seed, weights="counts", reject="high",
                            threshold=0)
    return {k: v["p_value"] for k, v in nul["statistics"].items()}, nul
