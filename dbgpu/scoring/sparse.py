"""Attention without masks: the tree scorer's attention whose work is the trie's own dependencies.

The dense path (`tree.py`) gives every row a (Q, K) additive mask and lets sdpa attend each
of its Q = S + I queries to all K = P + Q keys. A trie node depends on far fewer: the
shared prompt prefix (P keys), its row's suffix (S keys) and its own ancestors (at most
depth + 1 keys, itself included). This module computes exactly that, per layer, in three
parts merged by log-sum-exp in float32:

    prefix      every query x the P shared-prefix keys, one (1, kv_heads, P, head_dim)
                cache for all rows: the rows' queries are folded into one matrix product
                per kv head (Hydragen's batching of a shared prefix), no copy of the prefix
                per row and no mask (sliding windows keep only a band, below)
    suffix      every query x its row's S suffix keys: causal for the suffix's own queries,
                all of them for trie nodes; left padding and windows as a (queries, S) test
    ancestors   trie node i x the keys of its <= depth + 1 ancestors, gathered by an (I, A)
                index table (A = deepest internal node + 1; no (I, I) table)

Scores are float32 (queries pre-scaled by the module's `scaling`), Gemma-2's attention
logit soft-capping (`softcap`) is applied before the parts are merged, and queries are
processed in chunks whose float32 scores stay within `max_scores` elements. Sliding-window
layers (the layer's kind from config.layer_types, as the dense masks read it) exclude keys
at least `window` positions back, in logical positions (left padding shifts a row's suffix
and trie nearer the prefix). Nothing of shape (Q, K) is built, per row or per batch.

It plugs into transformers' own extension point: `register()` adds the function under
ATTENTION ("dbgpu_sparse") to `AttentionInterface`, with no mask function, so the model's
own forward builds no mask at all (masking_utils returns None for an implementation
without one) and hands this function each layer's (already rotated and normed) queries,
keys and values; `sparse_attention(model)` switches the model's configs to it for a
forward and back. The rows' layout (prefix cache, pads, trie ancestry) travels as the
forward's keyword argument `dbgpu_rows` (transformers passes unknown kwargs down to the
attention function). The forward then runs with no KV cache: K and V of the row's own
tokens are the layer's, the prefix's come from `SparseRows.prefix_kv`.

Cost per row and layer: Q x (P + S) + I x A scores instead of Q x (P + Q); memory: no
masks, no batch KV cache, float32 scores of one query chunk.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from dbgpu.errors import DbgpuError
from dbgpu.models import text_config

ATTENTION = "dbgpu_sparse"
ATTENTION_MODES = ("dense", "sparse")
#: float32 scores one query chunk may hold (elements, all three parts): 2^25 = 128 MiB
MAX_SCORES = 2 ** 25


def check_attention_mode(mode: str) -> str:
    """`mode` if it names an attention path (ATTENTION_MODES), else a one-line DbgpuError."""
    if mode not in ATTENTION_MODES:
        raise DbgpuError(f"unknown attention {mode!r} (use {' or '.join(ATTENTION_MODES)})")
    return mode


@dataclass(frozen=True)
class SparseRows:
    """What the sparse attention needs of a batch of rows beyond each layer's q, k, v."""

    prefix_kv: list                   # per layer (keys, values), each (1, kv_heads, P, head_dim); [] when P = 0
    prefix: int                       # P
    suffix: int                       # S: the batch's suffix width (left-padded)
    pad: torch.Tensor                 # (B,) left padding of each row's suffix
    qrel: torch.Tensor                # (Q,) query position after the prefix, padding ignored: s, or S + depth
    anc: torch.Tensor                 # (I, A) ancestors of each trie node (itself first), clamped to >= 0
    anc_ok: torch.Tensor              # (I, A) bool: a real ancestor
    anc_gap: torch.Tensor             # (I, A) depth of the node minus depth of the ancestor
    windows: dict                     # {layer kind: window or None}
    layer_kinds: list | None          # config.layer_types or None (one kind)
    max_scores: int = MAX_SCORES
    served: set = field(default_factory=set)   # layer indices this attention served (`check_served`)


def ancestor_table(parent: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((I, A) ancestor indices, itself first then parent, ..., -1 past the root; (I, A) depth
    gaps) of I internal trie nodes (parent (I,), -1 for the root's children; depth (I,)).
    A = deepest node + 1. One tree level per step: O(A x I)."""
    I = len(parent)
    A = int(depth.max(initial=-1)) + 1
    table = np.full((I, max(A, 1)), -1, dtype=np.int64)
    up = np.arange(I)
    for a in range(A):                                # one tree level per step, not a node loop
        table[:, a] = up
        up = np.where(up >= 0, parent[np.maximum(up, 0)], -1)
    gap = np.broadcast_to(np.arange(table.shape[1]), table.shape).copy()
    return table, gap


def trie_tables(trie, device) -> dict:
    """The trie's ancestry on the device, built once per target chunk: {"anc", "anc_ok",
    "anc_gap": (I, A), "depth": (I,)} (`ancestor_table`)."""
    I = trie.n_internal
    table, gap = ancestor_table(trie.parent[:I], trie.depth[:I])
    at = lambda a: torch.as_tensor(a, device=device)                      # noqa: E731
    return {"anc": at(np.maximum(table, 0)), "anc_ok": at(table >= 0), "anc_gap": at(gap),
            "depth": at(np.asarray(trie.depth[:I], dtype=np.int64))}


def sparse_rows(tables: dict, *, prefix_kv: list, P: int, S: int, pad: torch.Tensor, windows: dict, config,
                max_scores: int = MAX_SCORES) -> SparseRows:
    """The SparseRows of a batch of width S against a trie's `trie_tables`, on pad's device.
    windows: {layer kind: sliding window or None}, as the dense masks read them."""
    qrel = torch.cat([torch.arange(S, device=pad.device), S + tables["depth"]])      # (Q,)
    return SparseRows(prefix_kv=prefix_kv, prefix=P, suffix=S, pad=pad, qrel=qrel, anc=tables["anc"],
                      anc_ok=tables["anc_ok"], anc_gap=tables["anc_gap"], windows=windows,
                      layer_kinds=getattr(config, "layer_types", None), max_scores=max_scores)


def check_served(rows: SparseRows, config) -> None:
    """Every decoder layer must have called the sparse attention: a model whose attention
    does not go through transformers' AttentionInterface would otherwise have run its own,
    unmasked, and scored wrong numbers silently."""
    layers = config.num_hidden_layers
    if len(rows.served) != layers:
        raise DbgpuError(f"--attention sparse does not support {config.model_type} yet (its attention served "
                         f"{len(rows.served)} of {layers} layers); use --attention dense")


def keys_per_query(*, prefix: int, suffix: int, depth: np.ndarray) -> dict:
    """Keys each query attends to on the sparse path (windows ignored): suffix query s sees
    P + s + 1, trie node of depth d sees P + S + d + 1. {"mean", "max"} over Q = S + I."""
    per = np.concatenate([prefix + np.arange(1, suffix + 1), prefix + suffix + 1 + np.asarray(depth)])
    return {"mean": float(per.mean()) if len(per) else 0.0, "max": int(per.max(initial=0))}


def _window(rows: SparseRows, layer: int) -> int | None:
    if rows.layer_kinds:
        return rows.windows.get(rows.layer_kinds[layer])
    return next(iter(rows.windows.values()))


def _capped(s: torch.Tensor, softcap) -> torch.Tensor:
    return s if softcap is None else torch.tanh(s / softcap) * softcap


def sparse_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                             dbgpu_rows: SparseRows | None = None, **kwargs):
    """The registered attention function: query (B, heads, Q, D), key/value (B, kv_heads, Q, D)
    of the rows' own tokens (suffix then trie nodes); returns ((B, Q, heads, D) in the
    model dtype, None). See the module docstring for the three parts."""
    rows = dbgpu_rows
    if rows is None or attention_mask is not None:
        raise DbgpuError("the sparse attention serves only the tree scorer's rows (dbgpu_rows, no mask); "
                         "use --attention dense")
    B, Hq, Q, D = query.shape
    Hkv = key.shape[1]
    g = Hq // Hkv
    S, P = rows.suffix, rows.prefix
    layer = module.layer_idx
    rows.served.add(layer)
    w = _window(rows, layer)
    scale = scaling if scaling is not None else D ** -0.5
    dev = query.device
    qf = (query.float() * scale).view(B, Hkv, g, Q, D)                  # (B, Hkv, g, Q, D)
    kf, vf = key.float(), value.float()                                 # (B, Hkv, Q, D)
    ks, vs = kf[:, :, :S], vf[:, :, :S]                                 # (B, Hkv, S, D) suffix keys
    kt, vt = kf[:, :, S:], vf[:, :, S:]                                 # (B, Hkv, I, D) trie keys
    p0 = 0
    if P and w is not None:                                             # the band any query's window reaches
        p0 = max(0, P - w + 1)                                          # real queries sit at >= P
    if P:
        kp, vp = rows.prefix_kv[layer]
        kp, vp = kp[0, :, p0:].float(), vp[0, :, p0:].float()           # (Hkv, P', D) one copy for all rows
    sidx = torch.arange(S, device=dev)
    pidx = torch.arange(p0, P, device=dev)
    ok_pad = (sidx[None, :] >= rows.pad[:, None])                       # (B, S) real suffix keys
    out = torch.empty((B, Q, Hq, D), dtype=query.dtype, device=dev)
    per_query = B * Hq * (P - p0 + S + rows.anc.shape[1])
    step = max(1, rows.max_scores // max(per_query, 1))
    neg = float("-inf")
    for a in range(0, Q, step):                                         # query chunks: memory, not a token loop
        b = min(Q, a + step)
        c = b - a
        qc = qf[:, :, :, a:b]                                           # (B, Hkv, g, c, D)
        qr = rows.qrel[a:b]                                             # (c,)
        parts = []                                                      # (scores (B, Hkv, g, n, keys), value fn, first query)
        if P > p0:
            fold = qc.permute(1, 0, 2, 3, 4).reshape(Hkv, B * g * c, D)
            s = _capped(fold @ kp.transpose(-1, -2), softcap).view(Hkv, B, g, c, -1).permute(1, 0, 2, 3, 4)
            if w is not None:
                qpos = P + qr[None, :] - rows.pad[:, None]                # (B, c) logical positions
                ok = pidx[None, None, :] > (qpos - w)[:, :, None]       # (B, c, P')
                s = s.masked_fill(~ok[:, None, None], neg)

            def prefix_values(e, c=c):
                f = e.permute(1, 0, 2, 3, 4).reshape(Hkv, B * g * c, -1) @ vp       # (Hkv, B g c, D)
                return f.view(Hkv, B, g, c, D).permute(1, 0, 2, 3, 4)
            parts.append((s, prefix_values, 0))
        if S:
            s = _capped((qc.reshape(B, Hkv, g * c, D) @ ks.transpose(-1, -2)), softcap).view(B, Hkv, g, c, S)
            ok = sidx[None, :] <= qr[:, None]                            # (c, S) causal; trie nodes see all
            if w is not None:
                ok = ok & ((qr[:, None] - sidx[None, :]) < w)
            s = s.masked_fill(~(ok[None, :, :] & ok_pad[:, None, :])[:, None, None], neg)

            def suffix_values(e, c=c):
                return (e.reshape(B, Hkv, g * c, S) @ vs).view(B, Hkv, g, c, D)
            parts.append((s, suffix_values, 0))
        if b > S:                                                       # trie nodes in this chunk
            first = max(a, S)
            i0, i1 = first - S, b - S
            idx = rows.anc[i0:i1]                                       # (n, A)
            n, A = idx.shape
            kg, vg = kt[:, :, idx], vt[:, :, idx]                       # (B, Hkv, n, A, D)
            qt = qc[:, :, :, first - a:].permute(0, 1, 3, 2, 4)         # (B, Hkv, n, g, D)
            s = _capped(qt @ kg.transpose(-1, -2), softcap)             # (B, Hkv, n, g, A)
            ok = rows.anc_ok[i0:i1]
            if w is not None:
                ok = ok & (rows.anc_gap[i0:i1] < w)
            s = s.masked_fill(~ok[None, None, :, None, :], neg).permute(0, 1, 3, 2, 4)   # (B, Hkv, g, n, A)

            def ancestor_values(e, vg=vg):
                return (e.permute(0, 1, 3, 2, 4) @ vg).permute(0, 1, 3, 2, 4)        # (B, Hkv, g, n, D)
            parts.append((s, ancestor_values, first - a))
        m = torch.full((B, Hkv, g, c), neg, device=dev)
        for s, _, f in parts:                                           # <= 3 parts
            m[..., f:] = torch.maximum(m[..., f:], s.amax(-1))
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))      # a query seeing nothing: weights 0
        l = torch.zeros((B, Hkv, g, c), device=dev)
        o = torch.zeros((B, Hkv, g, c, D), device=dev)
        for s, values, f in parts:                                      # log-sum-exp merge, float32
            e = torch.exp(s - m[..., f:, None])
            l[..., f:] += e.sum(-1)
            o[..., f:, :] += values(e)
        o = o / l.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
        out[:, a:b] = o.reshape(B, Hq, c, D).transpose(1, 2).to(query.dtype)
    return out, None


def register() -> str:
    """Add the sparse attention to transformers' AttentionInterface (idempotent); no mask
    function is registered, so the model's forward builds no mask for it."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, sparse_attention_forward)
    return ATTENTION


@contextlib.contextmanager
def sparse_attention(model):
    """Run the model's forwards inside the block with the sparse attention, then restore its
    configs' attention implementation."""
    register()
    configs = [model.config] + ([text_config(model)] if text_config(model) is not model.config else [])
    before = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = ATTENTION
    try:
        yield
    finally:
        for c, impl in zip(configs, before):
            c._attn_implementation = impl
