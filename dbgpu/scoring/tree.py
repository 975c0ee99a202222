"""The fast exact scorer: shared-prefix KV cache + one token trie of continuations per source.

Every source prompt of a task shares the template's opening tokens, and every source is
scored against the same set of continuations. So:

1. the longest common prefix of all prompts is run through the model once and its
   keys/values are kept (a plain full-length DynamicCache, `prefix.run_prefix`);
2. each row of a batch is [pad][suffix of prompt f][trie of continuations]: the trie
   (`trie.build_trie`) holds every distinct continuation prefix once (its internal
   nodes; leaves are only predicted, never fed), laid out flat with an additive float
   tree-attention mask (a node sees the prefix, its row's suffix, and its own ancestors)
   and position ids = prompt length + depth;
3. the logits at the suffix's last token and at each internal node give the log-prob of
   every trie edge; summing edges along each continuation's path (a 0/1 path matrix,
   float64) gives log T(f, g) for all targets at once.

Sliding-window layers get their own mask (a per-layer-type dict, as Gemma3 and Qwen2
take it); the attention implementation must accept an arbitrary additive mask (sdpa or
eager). Rows per forward are sized from a logits budget and halved on out-of-memory.
Results equal the plain scorer (`dbgpu.scoring.plain.score_sequences`) to float rounding.

Cost: token positions = the trie lower bound (distinct prompt tokens + N x internal
trie nodes); memory per forward: rows x (suffix + trie) x (prefix + suffix + trie)
mask entries in the model dtype, plus rows x (internal nodes + 1) x vocab float32 logits.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dbgpu.console import progress as progress_bar
from dbgpu.errors import DbgpuError, check_temperature
from dbgpu.scoring.head import default_max_elements, hidden_states, output_head, token_logprobs
from dbgpu.models import text_config
from dbgpu.scoring.prefix import run_prefix
from dbgpu.scoring.stats import ScoreStats
from dbgpu.scoring.trie import Trie, build_trie, common_prefix_length, target_chunks

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


# Text-model types whose forward this scorer was checked against (transformers 5.24): each
# takes position ids as given (rotary or learned absolute positions), a 4D additive mask (or
# a {layer kind: mask} dict) as is, and keeps every layer's keys in a plain DynamicCache.
# tests/test_architectures.py compares each with a per-pair forward.
TREE_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
                      "olmo2", "gpt2")
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rope_settings(config) -> list[dict]:
    """The rope parameter dicts of a text config (one, or one per layer kind)."""
    rp = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rp and all(isinstance(v, dict) for v in rp.values()):
        return list(rp.values())
    return [rp] if rp else []


def check_tree_supported(model, *, prefix_length: int, max_length: int) -> None:
    """Raise a one-line DbgpuError (naming --method plain) when the tree scorer cannot
    reproduce this model's per-pair forward exactly: prompts sharing `prefix_length` tokens,
    prompt + answer up to `max_length` tokens.

    Rope scalings that switch frequencies with the sequence length (dynamic, longrope) pick
    them from the longest position of each forward; the shared prefix's pass and the pairs'
    own forwards then agree only if all lie on one side of the switch."""
    config = text_config(model)
    kind = config.model_type
    if kind not in TREE_ARCHITECTURES:
        raise DbgpuError(f"the tree scorer has not been verified on {kind} models; use --method plain")
    check_attention(model)
    if getattr(config, "use_bidirectional_attention", False):
        raise DbgpuError(f"{kind} with bidirectional attention is not a causal model the tree scorer can "
                         "serve; use --method plain")
    for rope in _rope_settings(config):
        original = rope.get("original_max_position_embeddings") or getattr(config, "max_position_embeddings", 0)
        if rope.get("rope_type") in _LENGTH_DEPENDENT_ROPE and prefix_length <= original < max_length:
            raise DbgpuError(f"{kind} with {rope['rope_type']} rope changes its frequencies beyond "
                             f"{original} tokens, between the shared prompt prefix ({prefix_length}) and the "
                             f"longest prompt + answer ({max_length}): the tree scorer cannot serve it "
                             "exactly; use --method plain")


def check_attention(model) -> None:
    """The attention implementation must take an arbitrary additive mask (sdpa or eager)."""
    impl = getattr(text_config(model), "_attn_implementation", None) or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise DbgpuError(f"the tree scorer needs an attention implementation that takes an additive mask "
                         f"(sdpa or eager), not {impl}; use --method plain")


def ancestors(trie: Trie, device) -> torch.Tensor:
    """(I, I) bool: internal node i sees internal node j (j is i or one of its ancestors)."""
    I = trie.n_internal
    anc = torch.eye(I, dtype=torch.bool, device=device)
    par = torch.as_tensor(trie.parent[:I], device=device)
    node, up = torch.arange(I, device=device), torch.arange(I, device=device)
    for _ in range(int(trie.depth[:I].max(initial=0))):           # one tree level per step
        up = torch.where(up >= 0, par[up.clamp(min=0)], up)
        anc[node[up >= 0], up[up >= 0]] = True
    return anc


def _block_structure(trie: Trie, S: int, device) -> torch.Tensor:
    """(Q, Q) bool, Q = S + I: the suffix is causal; trie nodes see the whole suffix block
    and their own ancestors (padding is masked per row afterwards)."""
    I = trie.n_internal
    block = torch.zeros((S + I, S + I), dtype=torch.bool, device=device)
    block[:S, :S] = torch.ones((S, S), dtype=torch.bool, device=device).tril()
    block[S:, :S] = True
    block[S:, S:] = ancestors(trie, device)
    return block


# ----------------------------------------------------------------------------- scoring


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _row_inputs(suffixes: list[list[int]], trie: Trie, *, P: int, pad_id: int, device):
    """ids (B, Q), logical positions (B, Q) and real-token flags (B, Q) of a batch laid out
    as [pad][suffix][trie internal nodes]."""
    B, I = len(suffixes), trie.n_internal
    S = max(len(s) for s in suffixes)
    Q = S + I
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
    return ids, qpos.masked_fill(~real, 0), real


def _score_rows(model, suffixes, trie: Trie, *, head, prefix_kv, P, temperature, pad_id, stats,
                max_elements) -> np.ndarray:
    """log T for a batch of sources against one trie of targets: (B, C) float64."""
    from transformers import DynamicCache

    device = head.weight.device
    dtype = next(model.parameters()).dtype
    with stats.stage("masks", device):
        ids, qpos, real = _row_inputs(suffixes, trie, P=P, pad_id=pad_id, device=device)   # (B, Q) x3
        B, Q = ids.shape
        S = Q - trie.n_internal
        allowed = _block_structure(trie, S, device)[None] & real[:, None, :] & real[:, :, None]  # (B, Q, Q)
        kpos, cache = qpos, None
        if P > 0:                                                 # every real query sees the prefix
            allowed = torch.cat([real[:, :, None].expand(B, Q, P), allowed], dim=-1)   # (B, Q, P+Q)
            kpos = torch.cat([torch.arange(P, device=device)[None].expand(B, P), qpos], dim=-1)
            cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                                 for k, v in prefix_kv])
        mask = tree_masks(allowed, qpos, kpos, config=text_config(model), dtype=dtype)
    with stats.stage("forward", device):
        h, _ = hidden_states(model, input_ids=ids, attention_mask=mask, position_ids=qpos, use_cache=P > 0,
                             cache=cache)                         # (B, Q, H)
        h = h[:, S - 1:]                                          # (B, keep, H): last suffix token + nodes
    keep = trie.n_internal + 1
    with stats.stage("head", device):
        # edge log-probs: node m is predicted at kept index 0 (a root child) or 1 + its parent
        pred = torch.as_tensor(trie.parent + 1, device=device)    # (M,)
        tok = torch.as_tensor(trie.token, device=device)          # (M,)
        pos = (torch.arange(B, device=device)[:, None] * keep + pred[None, :]).reshape(-1)   # (B*M,)
        node_lp = token_logprobs(head, h.reshape(B * keep, -1), pos, tok.repeat(B), temperature=temperature,
                                 max_elements=max_elements).view(B, -1)                  # (B, M)
    with stats.stage("reduction", device):
        paths = torch.as_tensor(trie.paths, device=device)        # (M, C) float64
        logT = node_lp.double() @ paths                           # (B, C)
    with stats.stage("transfer", device):
        out = logT.cpu().numpy()
    stats.count(tokens=int(real.sum()), padded=B * Q, logits=B * keep)
    return out


def _score_chunk(model, logT: np.ndarray, suffixes, order: np.ndarray, chunk: np.ndarray, trie: Trie, *,
                 rows_per_forward: int, bar, stats, **kw) -> int:
    """Fill logT[:, chunk] batch by batch (rows in `order`); halve the rows on out-of-memory
    and retry the batch, never losing finished rows. Returns the rows per forward reached."""
    from dbgpu.devices import empty_cache

    start = 0
    while start < len(order):
        rows = order[start:start + rows_per_forward]
        try:
            logT[np.ix_(rows, chunk)] = _score_rows(model, [suffixes[i] for i in rows], trie, stats=stats, **kw)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not _is_oom(e) or len(rows) == 1:
                raise
            rows_per_forward = max(1, len(rows) // 2)             # back off and retry this batch
            stats.extra["oom_backoffs"] = stats.extra.get("oom_backoffs", 0) + 1
            empty_cache(kw["head"].weight.device)
            continue
        start += len(rows)
        bar.update(len(rows) * len(chunk))
    return rows_per_forward


@torch.inference_mode()
def tree_score_matrix(model, prompts: list[list[int]], conts: list[list[int]], *, temperature: float = 1.0,
                      max_logits: int | None = None, max_rows: int = 256, pad_id: int = 0,
                      progress: bool = False, stats=None) -> np.ndarray:
    """log T for every (prompt, continuation) pair: (N, M) float64, row = source.

    max_logits bounds B x kept positions x vocab per forward and the float32 logits the head
    holds at once (default 2**28 on CUDA, 2**26 on CPU); rows per forward halve on
    out-of-memory and never lose finished rows. Architectures it cannot serve exactly are
    refused (`check_tree_supported`).
    """
    check_temperature(temperature)
    if not prompts or not conts or min(map(len, prompts)) == 0 or min(map(len, conts)) == 0:
        raise DbgpuError("a prompt or continuation has no tokens")
    P = common_prefix_length(prompts)
    check_tree_supported(model, prefix_length=P, max_length=max(map(len, prompts)) + max(map(len, conts)))
    stats = stats if stats is not None else ScoreStats()
    head = output_head(model)
    device, V = head.weight.device, head.vocab_size
    max_logits = max_logits or default_max_elements(device)
    stats.begin(device)
    t0 = time.perf_counter()

    prefix_kv = []                                    # 1. the shared prefix (P tokens), once
    if P > 0:
        with stats.stage("prefix", device):
            cache = run_prefix(model, prompts[0][:P], full_layers=True)
            prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        stats.count(tokens=P, padded=P, logits=0)
    suffixes = [p[P:] for p in prompts]

    N = len(prompts)
    logT = np.empty((N, len(conts)), dtype=np.float64)
    chunks = target_chunks(conts, max_internal=max(1, max_logits // V - 1))
    order = np.argsort([-len(s) for s in suffixes], kind="stable")   # longest rows first
    bar = progress_bar(total=N * len(conts), enabled=progress, desc="scoring pairs", unit="pair")
    rows_per_forward = max_rows
    for chunk in chunks:                              # 2.-3. every source against each trie
        trie = build_trie([conts[j] for j in chunk])
        rows_per_forward = max(1, min(rows_per_forward, max_logits // ((trie.n_internal + 1) * V)))
        rows_per_forward = _score_chunk(model, logT, suffixes, order, chunk, trie,
                                        rows_per_forward=rows_per_forward, bar=bar, stats=stats, head=head,
                                        prefix_kv=prefix_kv, P=P, temperature=temperature, pad_id=pad_id,
                                        max_elements=max_logits)
    bar.close()
    stats.pairs += N * len(conts)
    stats.seconds += time.perf_counter() - t0
    stats.extra.update(rows_per_forward=rows_per_forward, target_chunks=len(chunks), shared_prefix=P)
    stats.record_peak_memory(device)
    return logT
