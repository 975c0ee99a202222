"""The fast exact scorer: shared-prefix KV cache + one token trie of continuations per source.

Every source prompt of a task shares the template's opening tokens, and every source is
scored against the same set of continuations. So:

1. the longest common prefix of all prompts is run through the model once and its
   keys/values are kept (a plain full-length DynamicCache);
2. each row of a batch is [pad][suffix of prompt f][trie of continuations]: the trie
   holds every distinct continuation prefix once (its internal nodes; leaves are only
   predicted, never fed), laid out flat with an additive float tree-attention mask
   (a node sees the prefix, its row's suffix, and its own ancestors) and position ids
   = prompt length + depth;
3. the logits at the suffix's last token and at each internal node give the log-prob of
   every trie edge; summing edges along each continuation's path (a 0/1 path matrix,
   float64) gives log T(f, g) for all targets at once.

Sliding-window layers get their own mask (a per-layer-type dict, as Gemma3 and Qwen2
take it); the attention implementation must accept an arbitrary additive mask (sdpa or
eager). Rows per forward are sized from a logits budget and halved on out-of-memory.
Results equal the plain scorer (`dbgpu.scoring.score_sequences`) to float rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from dbgpu.errors import DbgpuError
from dbgpu.models import cache_kwarg, output_cache

# ----------------------------------------------------------------------------- the trie


@dataclass
class Trie:
    """A token trie over continuations. Nodes [0, n_internal) are internal (fed to the
    model), the rest are leaves (only predicted)."""

    token: np.ndarray       # (M,) token id of each node
    parent: np.ndarray      # (M,) parent node, -1 for children of the root (the prompt's last token)
    depth: np.ndarray       # (M,) 0 for the first continuation token
    n_internal: int
    paths: np.ndarray       # (M, C) float64 0/1: node m lies on continuation c's path

    @property
    def n_nodes(self) -> int:
        return len(self.token)


def build_trie(conts: list[list[int]]) -> Trie:
    """The trie of `conts` (each a non-empty token list). Not a hot path: O(total tokens)."""
    children: list[dict[int, int]] = [{}]            # node 0 is the root (not a token)
    token, parent, depth = [-1], [-1], [-1]
    ends = []
    for c in conts:
        node = 0
        for t in c:
            nxt = children[node].get(t)
            if nxt is None:
                nxt = len(token)
                children[node][t] = nxt
                children.append({})
                token.append(t)
                parent.append(node)
                depth.append(depth[node] + 1)
            node = nxt
        ends.append(node)
    M = len(token) - 1
    internal = np.array([len(children[i]) > 0 for i in range(1, M + 1)])
    # renumber: internal nodes first (in creation order, so parents precede children), then leaves
    order = np.concatenate([np.flatnonzero(internal), np.flatnonzero(~internal)]) + 1   # old ids
    new_of_old = np.full(M + 1, -1)
    new_of_old[order] = np.arange(M)
    tok = np.asarray(token)[order]
    par = new_of_old[np.asarray(parent)[order]]      # root (old 0) -> -1
    dep = np.asarray(depth)[order]
    paths = np.zeros((M, len(conts)), dtype=np.float64)
    for j, end in enumerate(ends):                   # walk each continuation up to the root
        n = int(new_of_old[end])
        while n >= 0:
            paths[n, j] = 1.0
            n = int(par[n])
    return Trie(token=tok, parent=par, depth=dep, n_internal=int(internal.sum()), paths=paths)


def common_prefix_length(seqs: list[list[int]], *, keep_last: bool = True) -> int:
    """Length of the longest common prefix; with keep_last, every sequence keeps at least
    its last token outside it (its logits are needed)."""
    n = min(len(s) for s in seqs) - (1 if keep_last else 0)
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def trie_lower_bound(prompts: list[list[int]], conts: list[list[int]]) -> int:
    """Token positions any exact scorer must run: the internal (non-leaf) nodes of the
    trie of all prompt+continuation sequences (a node's logits predict its children;
    leaves need none). = distinct prompt prefixes + N x internal continuation nodes."""
    ordered = sorted(map(tuple, prompts))             # in lexicographic order, each prompt adds
    prompt_nodes = len(ordered[0])                    # its tokens beyond the common prefix with
    for prev, cur in zip(ordered, ordered[1:]):       # the one before it
        prompt_nodes += len(cur) - common_prefix_length([list(prev), list(cur)], keep_last=False)
    return prompt_nodes + len(prompts) * build_trie(conts).n_internal


# ----------------------------------------------------------------------------- masks


def _layer_windows(config) -> dict[str, int | None]:
    """Attention kinds the model's layers use: {kind: sliding window or None}."""
    kinds = set(getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None)
    if not kinds:                                     # no per-layer types: one kind for all layers
        return {"full_attention": window if getattr(config, "use_sliding_window", True) else None}
    unknown = kinds - {"full_attention", "sliding_attention"}
    if unknown:
        raise DbgpuError(f"the tree scorer does not support attention layers of type {sorted(unknown)}; "
                         "use --method plain")
    return {k: (window if k == "sliding_attention" else None) for k in kinds}


def tree_masks(allowed: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor, *, config, dtype) -> object:
    """Additive float masks (B, 1, Q, K) from a structural bool mask, one per layer kind.

    allowed (B, Q, K): what each query may see ignoring windows; qpos (B, Q), kpos (B, K):
    logical positions. Returns a tensor, or a {layer kind: tensor} dict when the model
    mixes full and sliding layers.
    """
    neg = torch.finfo(dtype).min
    out = {}
    for kind, window in _layer_windows(config).items():
        ok = allowed
        if window is not None:
            ok = ok & ((qpos[:, :, None] - kpos[:, None, :]) < window)
        # a query that may see nothing (padding) sees key 0, so softmax stays finite
        ok = ok | (~ok.any(-1, keepdim=True) & (torch.arange(ok.shape[-1], device=ok.device) == 0))
        out[kind] = torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, neg)[:, None]
    return next(iter(out.values())) if len(out) == 1 else out


def check_attention(model) -> None:
    impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise DbgpuError(f"the tree scorer needs an attention implementation that takes an additive mask "
                         f"(sdpa or eager), not {impl}; use --method plain")


# ----------------------------------------------------------------------------- scoring


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _target_chunks(conts: list[list[int]], *, max_internal: int) -> list[np.ndarray]:
    """Split continuation indices (in order) into groups whose tries have at most
    `max_internal` internal nodes (= distinct proper prefixes); usually one group."""
    chunks, cur, prefixes = [], [], set()
    for j, c in enumerate(conts):
        new = {tuple(c[:k]) for k in range(1, len(c))} - prefixes
        if cur and len(prefixes) + len(new) > max_internal:
            chunks.append(np.array(cur))
            cur, prefixes = [], set()
            new = {tuple(c[:k]) for k in range(1, len(c))}
        cur.append(j)
        prefixes |= new
    chunks.append(np.array(cur))
    return chunks


@torch.inference_mode()
def tree_score_matrix(model, prompts: list[list[int]], conts: list[list[int]], *, temperature: float = 1.0,
                      max_logits: int | None = None, max_rows: int = 256, pad_id: int = 0,
                      progress: bool = False, stats=None) -> np.ndarray:
    """log T for every (prompt, continuation) pair: (N, M) float64, row = source.

    max_logits bounds B x kept positions x vocab per forward (default 2**28 on CUDA,
    2**26 on CPU); rows per forward halve on out-of-memory and never lose finished rows.
    """
    from transformers import DynamicCache

    from dbgpu.scoring import ScoreStats, _progress

    if temperature <= 0:
        raise DbgpuError(f"temperature must be positive, got {temperature}")
    if not prompts or not conts or min(map(len, prompts)) == 0 or min(map(len, conts)) == 0:
        raise DbgpuError("a prompt or continuation has no tokens")
    check_attention(model)
    stats = stats if stats is not None else ScoreStats()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    V = model.get_output_embeddings().weight.shape[0]
    if max_logits is None:
        max_logits = 2 ** 28 if device.type == "cuda" else 2 ** 26
    t0 = time.perf_counter()
    ckey = cache_kwarg(model)

    # 1. the shared prefix, once
    P = common_prefix_length(prompts)
    prefix_kv = []
    if P > 0:
        ids = torch.tensor([prompts[0][:P]], device=device)
        out = model(input_ids=ids, use_cache=True, **{ckey: DynamicCache()})
        prefix_kv = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        stats.forward_passes += 1
        stats.tokens += P
        stats.padded_tokens += P
    suffixes = [p[P:] for p in prompts]

    N = len(prompts)
    logT = np.empty((N, len(conts)), dtype=np.float64)
    chunks = _target_chunks(conts, max_internal=max(1, max_logits // V - 1))
    # work items: (source, chunk), longest rows first
    bar = _progress(total=N * len(conts), enabled=progress, desc="scoring pairs")
    rows_per_forward = max_rows
    for chunk in chunks:
        trie = build_trie([conts[j] for j in chunk])
        keep = trie.n_internal + 1                   # last suffix token + internal nodes
        rows_per_forward = max(1, min(rows_per_forward, max_logits // (keep * V)))
        order = np.argsort([-len(s) for s in suffixes], kind="stable")
        start = 0
        while start < N:
            rows = order[start:start + rows_per_forward]
            try:
                logT[np.ix_(rows, chunk)] = _score_rows(
                    model, [suffixes[i] for i in rows], trie, prefix_kv=prefix_kv, P=P, ckey=ckey,
                    temperature=temperature, pad_id=pad_id, V=V, dtype=dtype, device=device, stats=stats)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                if not _is_oom(e) or len(rows) == 1:
                    raise
                rows_per_forward = max(1, len(rows) // 2)   # back off and retry this batch
                stats.extra["oom_backoffs"] = stats.extra.get("oom_backoffs", 0) + 1
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start += len(rows)
            bar.update(len(rows) * len(chunk))
    bar.close()
    stats.pairs += N * len(conts)
    stats.seconds += time.perf_counter() - t0
    stats.extra.update(rows_per_forward=rows_per_forward, target_chunks=len(chunks), shared_prefix=P)
    if device.type == "cuda":
        stats.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    return logT


def _score_rows(model, suffixes, trie: Trie, *, prefix_kv, P, ckey, temperature, pad_id, V, dtype, device,
                stats) -> np.ndarray:
    """log T for a batch of sources against one trie of targets: (B, C) float64."""
    from transformers import DynamicCache

    B, I = len(suffixes), trie.n_internal
    S = max(len(s) for s in suffixes)
    Q = S + I                                                     # query block: [pad][suffix][trie]
    slen = torch.tensor([len(s) for s in suffixes], device=device)  # (B,)
    ids = torch.full((B, Q), pad_id, dtype=torch.long)
    for b, s in enumerate(suffixes):                              # B rows, not a token loop
        ids[b, S - len(s):S] = torch.tensor(s, dtype=torch.long)
    ids[:, S:] = torch.as_tensor(trie.token[:I], dtype=torch.long)
    ids = ids.to(device)
    col = torch.arange(Q, device=device)                          # (Q,)
    real = col[None, :] >= (S - slen)[:, None]                    # (B, Q) not padding
    depth = torch.as_tensor(trie.depth[:I], device=device)        # (I,)
    qpos = torch.cat([P + col[None, :S] - (S - slen)[:, None],    # suffix: P, P+1, ...
                      P + slen[:, None] + depth[None, :]], dim=1)  # trie: prompt length + depth
    qpos = qpos.masked_fill(~real, 0)                             # (B, Q)
    # structure of the block: suffix causal; trie nodes see the suffix and their ancestors
    anc = torch.eye(I, dtype=torch.bool, device=device)           # (I, I) ancestor-or-self
    par = torch.as_tensor(trie.parent[:I], device=device)
    node, up = torch.arange(I, device=device), torch.arange(I, device=device)
    for _ in range(int(trie.depth[:I].max(initial=0))):           # one tree level per step
        up = torch.where(up >= 0, par[up.clamp(min=0)], up)
        anc[node[up >= 0], up[up >= 0]] = True
    block = torch.zeros((Q, Q), dtype=torch.bool, device=device)
    block[:S, :S] = torch.ones((S, S), dtype=torch.bool, device=device).tril()
    block[S:, :S] = True
    block[S:, S:] = anc
    allowed = block[None] & real[:, None, :] & real[:, :, None]   # (B, Q, Q)
    kpos = qpos
    kwargs = {}
    if P > 0:                                                     # every real query sees the prefix
        allowed = torch.cat([real[:, :, None].expand(B, Q, P), allowed], dim=-1)   # (B, Q, P+Q)
        kpos = torch.cat([torch.arange(P, device=device)[None].expand(B, P), qpos], dim=-1)
        kwargs[ckey] = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                                    for k, v in prefix_kv])
    mask = tree_masks(allowed, qpos, kpos, config=model.config, dtype=dtype)
    keep = I + 1                                                  # last suffix token + internal nodes
    logits = model(input_ids=ids, attention_mask=mask, position_ids=qpos, use_cache=P > 0,
                   logits_to_keep=keep, **kwargs).logits[:, -keep:]           # (B, keep, V)
    # edge log-probs: node m is predicted at kept index 0 (a root child) or 1 + its parent
    z = logits.float() / temperature                              # (B, keep, V)
    lse = torch.logsumexp(z, dim=-1)                              # (B, keep)
    pred = torch.as_tensor(trie.parent + 1, device=device)        # (M,)
    tok = torch.as_tensor(trie.token, device=device)              # (M,)
    node_lp = z[:, pred, tok] - lse[:, pred]                      # (B, M)
    paths = torch.as_tensor(trie.paths, device=device)            # (M, C) float64
    stats.forward_passes += 1
    stats.tokens += int(real.sum())
    stats.padded_tokens += B * Q
    stats.logit_positions += B * keep
    return (node_lp.double() @ paths).cpu().numpy()               # (B, C)
