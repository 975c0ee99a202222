"""Graph algebra shared by the fit and the statistics: float64 torch on CPU or CUDA.

A weighted directed graph is a pair of int64 edge arrays (src, dst) over n nodes plus
edge values. Everything here is vectorised over edges:

- `Incidence` / `incidence`: the edges on a device with fixed orders, so node sums are
  deterministic: `out_sum`, `in_sum`, `divergence` (B y) and `edge_diff` (B^T v), each
  O(E) time and memory. On CPU they are `index_add_` (a serial loop in edge order); on
  CUDA `torch.segment_reduce` over edge orders fixed in advance (no atomics), so a run
  on the same device and inputs is bit-for-bit repeatable.
- `laplacian_solve`: x with L(c) x = b, L(c) = B diag(c) B^T, by Jacobi-preconditioned
  conjugate gradients (`pcg`), O(E) memory, O(E) per iteration.
- `strong_components`: SCCs numbered by size and their place relative to the largest
  (scipy, O(n + E)).
- `mutual_pairs`: edges whose reverse exists, by sorting keys, O(E log E).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import breadth_first_order, connected_components

from dbgpu.devices import resolve_device

@dataclass(frozen=True)
class Incidence:
    """Edges on a device, with the fixed orders that make node sums deterministic."""

    n: int
    src: torch.Tensor        # (E,) int64, non-decreasing
    dst: torch.Tensor        # (E,) int64
    out_len: torch.Tensor    # (n,) edges leaving each node (segments of the src order)
    in_perm: torch.Tensor    # (E,) edge order sorted by dst
    in_len: torch.Tensor     # (n,) edges entering each node


def incidence(n: int, src: np.ndarray, dst: np.ndarray, device: str | torch.device) -> Incidence:
    """Build an `Incidence`; `src` must be sorted (non-decreasing)."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if len(src) and np.any(np.diff(src) < 0):
        raise ValueError("incidence: edges must be sorted by source")
    in_perm = np.argsort(dst, kind="stable")
    as_t = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
    return Incidence(n=n, src=as_t(src), dst=as_t(dst),
                     out_len=as_t(np.bincount(src, minlength=n)), in_perm=as_t(in_perm),
                     in_len=as_t(np.bincount(dst, minlength=n)))


def _segmented(y: torch.Tensor) -> bool:
    """Whether node sums take the CUDA branch (segment_reduce); tests force it on the CPU."""
    return y.is_cuda


def out_sum(inc: Incidence, y: torch.Tensor) -> torch.Tensor:
    """(n,) sum of edge values y (E,) over each node's out-edges."""
    if _segmented(y):
        return torch.segment_reduce(y, "sum", lengths=inc.out_len)
    return torch.zeros(inc.n, dtype=y.dtype).index_add_(0, inc.src, y)


def in_sum(inc: Incidence, y: torch.Tensor) -> torch.Tensor:
    """(n,) sum of edge values y (E,) over each node's in-edges."""
    if _segmented(y):
        return torch.segment_reduce(y[inc.in_perm], "sum", lengths=inc.in_len)
    return torch.zeros(inc.n, dtype=y.dtype).index_add_(0, inc.dst, y)


def divergence(inc: Incidence, y: torch.Tensor) -> torch.Tensor:
    """(n,) B y for the incidence matrix B (+1 at the source, -1 at the target)."""
    return out_sum(inc, y) - in_sum(inc, y)


def edge_diff(inc: Incidence, v: torch.Tensor) -> torch.Tensor:
    """(E,) B^T v = v[src] - v[dst]."""
    return torch.index_select(v, 0, inc.src) - torch.index_select(v, 0, inc.dst)


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Components:
    """Strongly connected components of the positive-weight graph."""

    label: np.ndarray      # (N,) int64 component of each state; 0 = main (largest)
    size: np.ndarray       # (C,) int64, non-increasing
    position: np.ndarray   # (C,) str: "main", "above" (reaches main: potential +inf
                           # relative to it), "below" (reached from main: -inf), "unrelated"


def strong_components(n: int, src: np.ndarray, dst: np.ndarray) -> Components:
    """SCCs numbered by decreasing size, ties by their first state; position vs. the main."""
    adj = sp.csr_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    n_comp, raw = connected_components(adj, directed=True, connection="strong")
    size = np.bincount(raw, minlength=n_comp)
    first = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(first, raw, np.arange(n))
    order = np.lexsort((first, -size))                           # new id -> raw id
    relabel = np.empty(n_comp, np.int64)
    relabel[order] = np.arange(n_comp)
    label = relabel[raw]                                         # (N,)
    cross = label[src] != label[dst]
    cadj = sp.csr_matrix((np.ones(int(cross.sum()), np.int8), (label[src][cross], label[dst][cross])),
                         shape=(n_comp, n_comp))
    below = breadth_first_order(cadj, 0, directed=True, return_predecessors=False)
    above = breadth_first_order(cadj.T.tocsr(), 0, directed=True, return_predecessors=False)
    position = np.full(n_comp, "unrelated", dtype="<U9")
    position[below] = "below"
    position[above] = "above"
    position[0] = "main"
    return Components(label=label, size=size[order].astype(np.int64), position=position)


# --------------------------------------------------------------------------- Laplacian solves


def center(v: torch.Tensor, piece_len: torch.Tensor) -> torch.Tensor:
    """v minus its mean over each piece (pieces = contiguous node ranges)."""
    mean = torch.segment_reduce(v, "sum", lengths=piece_len) / piece_len
    return v - torch.repeat_interleave(mean, piece_len)


def pcg(matvec, b: torch.Tensor, diag: torch.Tensor, piece_len: torch.Tensor, *, rtol: float,
         maxiter: int):
    """Jacobi-preconditioned conjugate gradients for a Laplacian system L x = b.

    b is first projected onto the range of L (zero sum on each connected piece): the
    rounding left in a tiny gradient would otherwise stall CG in the null space.
    """
    b = center(b, piece_len)
    x = torch.zeros_like(b)
    r = b.clone()
    z = r / diag
    p = z.clone()
    rz = (r * z).sum()
    stop = rtol * torch.linalg.vector_norm(b)
    k = 0
    for k in range(1, maxiter + 1):
        Ap = matvec(p)
        pAp = (p * Ap).sum()
        if pAp <= 0:
            break
        alpha = rz / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        if torch.linalg.vector_norm(r) <= stop:
            break
        z = r / diag
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, k


def prepare(n: int, src, dst, dev):
    """Number the nodes piece by piece (weakly connected pieces become contiguous
    ranges) and sort the edges by source. Returns (incidence, piece lengths (P,),
    new index of each old node (n,), edge order (E,))."""
    src0 = np.asarray(src, np.int64)
    dst0 = np.asarray(dst, np.int64)
    _, piece = connected_components(sp.csr_matrix((np.ones(len(src0)), (src0, dst0)), shape=(n, n)),
                                    directed=True, connection="weak")
    perm = np.argsort(piece, kind="stable")                        # new -> old node
    new = np.empty(n, np.int64)
    new[perm] = np.arange(n)
    src1, dst1 = new[src0], new[dst0]
    order = np.lexsort((dst1, src1))                               # (E,) sort by source
    inc = incidence(n, src1[order], dst1[order], dev)
    piece_len = torch.as_tensor(np.bincount(piece), dtype=torch.int64, device=dev)
    return inc, piece_len, new, order


def laplacian_solve(n: int, src, dst, c, b, *, device="cpu", rtol: float = 1e-12,
                    maxiter: int | None = None) -> np.ndarray:
    """x (n,) with L(c) x = b, L(c) = B diag(c) B^T the Laplacian of the edges (src, dst)
    with weights c > 0; b is projected onto the range (zero sum per connected piece)
    and x has zero mean per piece. Jacobi-preconditioned CG in float64."""
    dev = resolve_device(device)
    inc, piece_len, new, order = prepare(n, src, dst, dev)
    ct = torch.as_tensor(np.asarray(c, np.float64)[order], device=dev)
    bt = torch.empty(n, dtype=torch.float64, device=dev)
    bt[torch.as_tensor(new, device=dev)] = torch.as_tensor(np.asarray(b, np.float64), device=dev)
    diag = (out_sum(inc, ct) + in_sum(inc, ct)).clamp_min(torch.finfo(torch.float64).tiny)
    x, _ = pcg(lambda v: divergence(inc, ct * edge_diff(inc, v)), bt, diag, piece_len,
               rtol=rtol, maxiter=maxiter or max(1000, 10 * n))
    return center(x, piece_len).cpu().numpy()[new]


# --------------------------------------------------------------------------- pairs


def mutual_pairs(n: int, src: np.ndarray, dst: np.ndarray):
    """Edges whose reverse exists: (e_fg, e_gf) edge indices with src[e_fg] < dst[e_fg]."""
    key = src * n + dst                                        # (E,)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    rev = dst * n + src
    pos = np.clip(np.searchsorted(skey, rev), 0, len(skey) - 1)
    has = (skey[pos] == rev) & (src < dst)
    e_fg = np.flatnonzero(has)
    e_gf = order[pos[has]]
    return e_fg, e_gf                                          # (P,), (P,)
