"""Graph algebra shared by the fit and the statistics: float64, numpy on CPU, torch on CUDA.

A weighted directed graph is a pair of int64 edge arrays (src, dst) over n nodes plus
edge values. Everything here is vectorised over edges:

- `analysis_device`: "cpu" or "cuda[:N]" for the analysis stages. On the CPU they run on
  numpy/scipy and never import torch (importing it costs more than fitting 50,000
  states); torch is imported only where a CUDA device may be present.
- `Incidence` / `incidence`: the edges on a device with fixed orders, so node sums are
  deterministic: `out_sum`, `in_sum`, `divergence` (B y) and `edge_diff` (B^T v), each
  O(E) time and memory. On CPU they are numpy `bincount` / `take` (serial, in edge
  order); on CUDA `torch.segment_reduce` over edge orders fixed in advance (no atomics),
  so a run on the same device and inputs is bit-for-bit repeatable.
- `ops`: the handful of elementwise functions the solvers need, for numpy or torch.
- `laplacian_solve`: x with L(c) x = b, L(c) = B diag(c) B^T, by Jacobi-preconditioned
  conjugate gradients (`pcg`), O(E) memory, O(E) per iteration.
- `strong_components`: SCCs numbered by size, their place relative to the largest and
  their longest-path level in the condensation (scipy, O(n + E) plus one vectorised step
  per level).
- `mutual_pairs`: edges whose reverse exists, by sorting keys, O(E log E) (O(E) when the
  edges come sorted, as every importer gives them).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components
from scipy.special import expit

# --------------------------------------------------------------------------- device


def _torch_may_have_gpu() -> bool:
    """False when the installed torch is a CPU-only build (read from torch/version.py
    without importing torch), True when it may see a GPU or cannot be told."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return True
    found = dict(re.findall(r"^(cuda|hip)\b[^=\n]*=\s*(\S+)", text, flags=re.M))
    return not (found.get("cuda") == "None" and found.get("hip") == "None")


def analysis_device(device=None) -> str:
    """'cpu' or 'cuda[:N]' for fit and statistics. 'auto' (or None) is CUDA when torch sees
    a GPU; torch is imported only when that is possible, or when CUDA is asked for.
    Asking for CUDA without one, or for an unknown device, is a one-line DbgpuError."""
    name = "auto" if device is None else str(device)
    if name == "cpu":
        return "cpu"
    if name == "auto" and not _torch_may_have_gpu():
        return "cpu"
    from dbgpu.devices import resolve_device

    return str(resolve_device(name))


# --------------------------------------------------------------------------- incidence


@dataclass(frozen=True)
class Incidence:
    """Edges on a device, with the fixed orders that make node sums deterministic.

    numpy (CPU): src/dst in any order; when src is sorted, `out_len` and `indptr` give the
    fast paths (edge_diff by `repeat`, the Laplacian as a CSR matrix). torch (CUDA): src
    non-decreasing, plus the segment lengths and the dst order that `segment_reduce` needs."""

    n: int
    src: object              # (E,) int64 ndarray or tensor
    dst: object              # (E,) int64
    out_len: object = None   # (n,) edges leaving each node (torch; numpy when src is sorted)
    indptr: object = None    # numpy with src sorted: (n + 1,) CSR row pointers
    in_perm: object = None   # torch only: (E,) edge order sorted by dst
    in_len: object = None    # torch only: (n,) edges entering each node
    piece: object = None     # numpy: (n,) weakly connected piece of each node (for `center`)
    piece_len: object = None  # (k,) nodes per piece (torch: pieces are contiguous ranges)

    @property
    def is_torch(self) -> bool:
        return not isinstance(self.src, np.ndarray)

    @property
    def full_rows(self) -> bool:
        """numpy, sources sorted and every node has an out-edge (reduceat needs no empty row)."""
        return self.out_len is not None and not self.is_torch and bool(self.out_len.min(initial=1) > 0)


def incidence(n: int, src: np.ndarray, dst: np.ndarray, device="cpu", *, piece=None,
              backend: str | None = None) -> Incidence:
    """Build an `Incidence`: numpy on "cpu", torch on a CUDA device (or anywhere with
    backend="torch"; `src` must then be sorted). `piece` (n,) labels weakly connected
    pieces for `center` (default: one piece)."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    piece = np.zeros(n, np.int64) if piece is None else np.asarray(piece, np.int64)
    piece_len = np.bincount(piece).astype(np.int64) if n else np.zeros(0, np.int64)
    if (backend or ("numpy" if str(device) == "cpu" else "torch")) == "numpy":
        if len(src) and np.any(src[1:] < src[:-1]):
            return Incidence(n=n, src=src, dst=dst, piece=piece, piece_len=piece_len)
        out_len = np.bincount(src, minlength=n)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(out_len, out=indptr[1:])
        return Incidence(n=n, src=src, dst=dst, out_len=out_len, indptr=indptr, piece=piece, piece_len=piece_len)
    import torch

    if len(src) and np.any(np.diff(src) < 0):
        raise ValueError("incidence: edges must be sorted by source")
    if len(piece) and np.any(np.diff(piece) < 0):
        raise ValueError("incidence: pieces must be contiguous node ranges on CUDA")
    as_t = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
    return Incidence(n=n, src=as_t(src), dst=as_t(dst), out_len=as_t(np.bincount(src, minlength=n)),
                     in_perm=as_t(np.argsort(dst, kind="stable")),
                     in_len=as_t(np.bincount(dst, minlength=n)), piece_len=as_t(piece_len))


def out_sum(inc: Incidence, y):
    """(n,) sum of edge values y (E,) over each node's out-edges."""
    if not inc.is_torch:
        if inc.indptr is not None and inc.full_rows:          # contiguous rows: a sequential sum
            return np.add.reduceat(y, inc.indptr[:-1]) if len(y) else np.zeros(inc.n)
        return np.bincount(inc.src, weights=y, minlength=inc.n)
    import torch

    return torch.segment_reduce(y, "sum", lengths=inc.out_len)


def in_sum(inc: Incidence, y):
    """(n,) sum of edge values y (E,) over each node's in-edges."""
    if not inc.is_torch:
        return np.bincount(inc.dst, weights=y, minlength=inc.n)
    import torch

    return torch.segment_reduce(y[inc.in_perm], "sum", lengths=inc.in_len)


def divergence(inc: Incidence, y):
    """(n,) B y for the incidence matrix B (+1 at the source, -1 at the target)."""
    return out_sum(inc, y) - in_sum(inc, y)


def edge_diff(inc: Incidence, v):
    """(E,) B^T v = v[src] - v[dst]."""
    if not inc.is_torch:
        head = np.take(v, inc.src) if inc.out_len is None else np.repeat(v, inc.out_len)
        head -= np.take(v, inc.dst)
        return head
    import torch

    return torch.index_select(v, 0, inc.src) - torch.index_select(v, 0, inc.dst)


def center(inc: Incidence, v):
    """v minus its mean over each weakly connected piece of the incidence's nodes."""
    if not inc.is_torch:
        mean = np.bincount(inc.piece, weights=v, minlength=len(inc.piece_len)) / inc.piece_len
        return v - mean[inc.piece]
    import torch

    mean = torch.segment_reduce(v, "sum", lengths=inc.piece_len) / inc.piece_len
    return v - torch.repeat_interleave(mean, inc.piece_len)


def laplacian_matvec(inc: Incidence, c):
    """(v -> L(c) v, diagonal of L(c)) for edge weights c (E,): L(c) = B diag(c) B^T.
    numpy with sorted sources: one CSR matrix C (data c) and `deg v - C v - C^T v`, two
    sparse products per call; otherwise B (c * B^T v) from node sums. O(E) per call."""
    diag = out_sum(inc, c) + in_sum(inc, c)
    if inc.is_torch or inc.indptr is None:
        return (lambda v: divergence(inc, c * edge_diff(inc, v))), diag
    C = sp.csr_matrix((c, inc.dst, inc.indptr), shape=(inc.n, inc.n))
    CT = C.T                                                   # CSC view: no copy
    return (lambda v: diag * v - C @ v - CT @ v), diag


# --------------------------------------------------------------------------- elementwise


class _NumpyOps:
    sigmoid = staticmethod(expit)
    log1p = staticmethod(np.log1p)
    expm1 = staticmethod(np.expm1)

    @staticmethod
    def softplus_neg(x):
        """K(x) = log(1 + exp(-x)), stable for any x."""
        return np.logaddexp(0.0, -x)

    @staticmethod
    def asarray(a, like):
        return np.asarray(a, dtype=np.float64)

    @staticmethod
    def zeros(n, like):
        return np.zeros(n)

    @staticmethod
    def norm(x) -> float:
        return float(np.sqrt(np.einsum("i,i->", x, x)))

    @staticmethod
    def dot(x, y) -> float:
        # einsum, not BLAS ddot: a threaded ddot costs milliseconds of start-up per call
        # when the cores are shared, 30x a plain loop on 200,000 numbers
        return float(np.einsum("i,i->", x, y))

    @staticmethod
    def clamp_min(x, v):
        return np.maximum(x, v)

    @staticmethod
    def numpy(x):
        return x


class _TorchOps:
    @staticmethod
    def _t():
        import torch

        return torch

    def sigmoid(self, x):
        return self._t().sigmoid(x)

    def log1p(self, x):
        return self._t().log1p(x)

    def expm1(self, x):
        return self._t().expm1(x)

    def softplus_neg(self, x):
        t = self._t()
        return t.clamp(-x, min=0) + t.log1p(t.exp(-x.abs()))

    def asarray(self, a, like):
        return self._t().as_tensor(np.asarray(a, dtype=np.float64), device=like.device)

    def zeros(self, n, like):
        return self._t().zeros(n, dtype=self._t().float64, device=like.device)

    def norm(self, x) -> float:
        return self._t().linalg.vector_norm(x).item()

    def dot(self, x, y) -> float:
        return (x * y).sum().item()

    def clamp_min(self, x, v):
        return x.clamp_min(v)

    @staticmethod
    def numpy(x):
        return x.cpu().numpy()


_NUMPY, _TORCH = _NumpyOps(), _TorchOps()


def ops(inc: Incidence):
    """The elementwise functions for the incidence's array library."""
    return _TORCH if inc.is_torch else _NUMPY


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Components:
    """Strongly connected components of the positive-weight graph."""

    label: np.ndarray      # (N,) int64 component of each state; 0 = main (largest)
    size: np.ndarray       # (C,) int64, non-increasing
    position: np.ndarray   # (C,) str: "main", "above" (reaches main: potential +inf
                           # relative to it), "below" (reached from main: -inf), "unrelated"
    level: np.ndarray | None = None  # (C,) float: longest path to the main component in the
                           # condensation, +k above, -k below, 0 main, NaN unrelated


def longest_path_levels(adj: sp.csr_matrix, start: int, members: np.ndarray) -> np.ndarray:
    """(C,) longest path length from `start` along `adj` (a DAG's CSR adjacency) to each
    node of `members` (the nodes reachable from start); -1 elsewhere. Kahn's algorithm
    restricted to those nodes: a node's generation is its longest path from `start`.
    O(C + edges) work in one vectorised step per level."""
    C = adj.shape[0]
    inside = np.zeros(C, bool)
    inside[members] = True
    inside[start] = True
    coo = adj.tocoo()
    keep = inside[coo.row] & inside[coo.col]
    indeg = np.bincount(coo.col[keep], minlength=C)
    sub = sp.csr_matrix((np.ones(int(keep.sum()), np.int8), (coo.row[keep], coo.col[keep])), shape=(C, C))
    level = np.full(C, -1, np.int64)
    frontier, k = np.array([start]), 0
    while len(frontier):
        level[frontier] = k
        succ = sub[frontier].indices
        np.subtract.at(indeg, succ, 1)
        cand = np.unique(succ)
        frontier = cand[(indeg[cand] == 0) & (level[cand] < 0)]
        k += 1
    return level


def strong_components(n: int, src: np.ndarray, dst: np.ndarray) -> Components:
    """SCCs numbered by decreasing size, ties by their first state; each one's position
    relative to the main (largest) one and its longest-path level in the condensation."""
    adj = sp.csr_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    n_comp, raw = connected_components(adj, directed=True, connection="strong")
    size = np.bincount(raw, minlength=n_comp)
    first = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(first, raw, np.arange(n))
    order = np.lexsort((first, -size))                           # new id -> raw id
    relabel = np.empty(n_comp, np.int64)
    relabel[order] = np.arange(n_comp)
    label = relabel[raw]                                         # (N,)
    ls, ld = label[src], label[dst]
    cross = ls != ld
    cadj = sp.csr_matrix((np.ones(int(cross.sum()), np.int8), (ls[cross], ld[cross])),
                         shape=(n_comp, n_comp))
    cadj.sum_duplicates()
    cadjT = cadj.T.tocsr()
    below = breadth_first_order(cadj, 0, directed=True, return_predecessors=False)
    above = breadth_first_order(cadjT, 0, directed=True, return_predecessors=False)
    position = np.full(n_comp, "unrelated", dtype="<U9")
    position[below] = "below"
    position[above] = "above"
    position[0] = "main"
    level = np.full(n_comp, np.nan)
    up = longest_path_levels(cadjT, 0, above)                   # along reversed edges: to main
    down = longest_path_levels(cadj, 0, below)
    level[up >= 0] = up[up >= 0]
    level[down > 0] = -down[down > 0]
    return Components(label=label, size=size[order].astype(np.int64), position=position, level=level)


# --------------------------------------------------------------------------- Laplacian solves


def pcg(matvec, b, diag, inc: Incidence, *, rtol: float, maxiter: int):
    """Jacobi-preconditioned conjugate gradients for a Laplacian system L x = b.

    b is first projected onto the range of L (zero sum on each connected piece of `inc`):
    the rounding left in a tiny gradient would otherwise stall CG in the null space.
    O(n) memory beyond the matvec; one matvec per iteration."""
    o = ops(inc)
    b = center(inc, b)
    x = b * 0.0
    r = b.copy() if not inc.is_torch else b.clone()
    z = r / diag
    p = z
    rz = o.dot(r, z)
    stop = rtol * o.norm(b)
    k = 0
    for k in range(1, maxiter + 1):
        Ap = matvec(p)
        pAp = o.dot(p, Ap)
        if pAp <= 0:
            break
        alpha = rz / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        if o.norm(r) <= stop:
            break
        z = r / diag
        rz_new = o.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, k


def prepare(n: int, src, dst, device="cpu", *, backend: str | None = None):
    """The incidence of the edges, with the weakly connected pieces that `center` uses.

    numpy (CPU): the caller's node order (new None) and edges sorted by source (order None
    when they come sorted). torch (CUDA, or backend="torch"): nodes renumbered piece by
    piece (contiguous ranges) and edges sorted by source. Returns (incidence, new index of each old node (n,) or None, edge
    order (E,) or None)."""
    src0 = np.asarray(src, np.int64)
    dst0 = np.asarray(dst, np.int64)
    _, piece = connected_components(sp.csr_matrix((np.ones(len(src0), np.int8), (src0, dst0)), shape=(n, n)),
                                    directed=True, connection="weak")
    if (backend or ("numpy" if device == "cpu" else "torch")) == "numpy":
        if len(src0) and np.any(src0[1:] < src0[:-1]):             # sources sorted: the fast paths
            order = np.argsort(src0, kind="stable")
            return incidence(n, src0[order], dst0[order], "cpu", piece=piece), None, order
        return incidence(n, src0, dst0, "cpu", piece=piece), None, None
    perm = np.argsort(piece, kind="stable")                        # new -> old node
    new = np.empty(n, np.int64)
    new[perm] = np.arange(n)
    src1, dst1 = new[src0], new[dst0]
    order = np.lexsort((dst1, src1))                               # (E,) sort by source
    inc = incidence(n, src1[order], dst1[order], device, piece=piece[perm], backend="torch")
    return inc, new, order


def to_device(inc: Incidence, a, order=None):
    """An edge (or node) array in the incidence's order and library, float64."""
    a = np.asarray(a, np.float64)
    if order is not None:
        a = a[order]
    return _TORCH.asarray(a, inc.src) if inc.is_torch else a


def from_device(inc: Incidence, x, new=None) -> np.ndarray:
    """A node array back in the caller's order, numpy."""
    x = ops(inc).numpy(x)
    return x if new is None else x[new]


def laplacian_solve(n: int, src, dst, c, b, *, device="cpu", rtol: float = 1e-12,
                    maxiter: int | None = None) -> np.ndarray:
    """x (n,) with L(c) x = b, L(c) = B diag(c) B^T the Laplacian of the edges (src, dst)
    with weights c > 0; b is projected onto the range (zero sum per connected piece)
    and x has zero mean per piece. Jacobi-preconditioned CG in float64: O(E) memory,
    O(E) per iteration (a few iterations on dense, well-connected graphs)."""
    dev = analysis_device(device)
    inc, new, order = prepare(n, src, dst, dev)
    ct = to_device(inc, c, order)
    bb = np.asarray(b, np.float64)
    if new is not None:
        bb = bb[np.argsort(new)]
    bt = to_device(inc, bb)
    matvec, diag = laplacian_matvec(inc, ct)
    diag = ops(inc).clamp_min(diag, np.finfo(np.float64).tiny)
    x, _ = pcg(matvec, bt, diag, inc, rtol=rtol, maxiter=maxiter or max(1000, 10 * n))
    return from_device(inc, center(inc, x), new)


# --------------------------------------------------------------------------- pairs


def mutual_pairs(n: int, src: np.ndarray, dst: np.ndarray):
    """Edges whose reverse exists: (e_fg, e_gf) edge indices with src[e_fg] < dst[e_fg].

    Dense graphs (n^2 <= 16 E): an (n, n) table of edge indices, O(n^2) memory and O(E)
    time. Otherwise the reversed keys are sorted and matched against the sorted keys in
    one sequential pass: O(E log E) time, O(E) memory."""
    E = len(src)
    if E == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if n * n <= 16 * E:
        table = np.full(n * n, -1, np.int32 if E < 2 ** 31 else np.int64)
        table[src * n + dst] = np.arange(E, dtype=table.dtype)
        rev = table[dst * n + src]                                # (E,) index of the reverse, or -1
        del table
        e_fg = np.flatnonzero((rev >= 0) & (src < dst))
        return e_fg, rev[e_fg].astype(np.int64)
    key = src * n + dst                                        # (E,)
    order = None if np.all(key[1:] > key[:-1]) else np.argsort(key)
    skey = key if order is None else key[order]
    del key
    rev = dst * n + src
    r_order = np.argsort(rev)
    pos = np.empty(E, np.int64)
    pos[r_order] = np.minimum(np.searchsorted(skey, rev[r_order]), E - 1)   # sorted queries: one pass
    has = (skey[pos] == rev) & (src < dst)
    del rev
    e_fg = np.flatnonzero(has)
    e_gf = pos[has] if order is None else order[pos[has]]
    return e_fg, e_gf                                          # (P,), (P,)


# --------------------------------------------------------------------------- many right-hand sides


def laplacian_matrix(n: int, src, dst, c) -> sp.csr_matrix:
    """L(c) = B diag(c) B^T as a scipy CSR matrix (n x n): O(n + E) memory."""
    src = np.asarray(src, np.int64)
    dst = np.asarray(dst, np.int64)
    c = np.asarray(c, np.float64)
    deg = np.bincount(src, c, minlength=n) + np.bincount(dst, c, minlength=n)
    rows = np.r_[src, dst, np.arange(n)]
    cols = np.r_[dst, src, np.arange(n)]
    return sp.csr_matrix((np.r_[-c, -c, deg], (rows, cols)), shape=(n, n))


def laplacian_solve_many(L: sp.csr_matrix, B: np.ndarray, *, rtol: float = 1e-8,
                         maxiter: int | None = None) -> np.ndarray:
    """X (n, k) with L X = B for a connected graph's Laplacian L (CSR) and k right-hand
    sides at once (each column projected onto the range, i.e. zero sum; X zero mean):
    Jacobi-preconditioned CG run column by column in step, one sparse matrix times
    (n, k) block per iteration. CPU (scipy); O(n k + E) memory."""
    n = L.shape[0]
    diag = np.maximum(L.diagonal(), np.finfo(np.float64).tiny)[:, None]
    B = B - B.mean(0)
    X = np.zeros_like(B)
    R = B.copy()
    Z = R / diag
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    stop = rtol * np.sqrt(np.einsum("ij,ij->j", B, B))
    for _ in range(maxiter or max(1000, 10 * n)):
        AP = L @ P
        pap = np.einsum("ij,ij->j", P, AP)
        alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        X += alpha * P
        R -= alpha * AP
        if np.all(np.sqrt(np.einsum("ij,ij->j", R, R)) <= stop):
            break
        Z = R / diag
        rz_new = np.einsum("ij,ij->j", R, Z)
        P = Z + np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0) * P
        rz = rz_new
    return X - X.mean(0)
