"""The fast exact scorer: shared-prefix KV cache + one token trie of continuations per source.

Every source prompt of a task shares the template's opening tokens, and every source is
scored against the same set of continuations. So:

1. the longest common prefix of all prompts is run through the model once and its
   keys/values are kept (a plain full-length DynamicCache, `prefix.run_prefix`);
2. each row of a batch is [pad][suffix of prompt f][trie of continuations]: the trie
   (`trie.build_trie`) holds every distinct continuation prefix once (its internal
   nodes; leaves are only predicted, never fed), laid out flat with an additive float
   tree-attention mask (a node sees the prefix, its row's suffix, and its own ancestors)
   and position ids = prompt length + depth. Rows are taken longest suffix first, so a
   batch pads little; the mask of the batch's width is built once and shared by its rows
   (a view, when no row is padded; else one copy with each row's padding masked);
3. the logits at the suffix's last token and at each internal node give the log-prob of
   every trie edge; summing edges down the tree by parent pointers, one tree level at a
   time (float64), gives log T(f, g) for all targets at once;
4. one batch is in flight: nothing of a batch is read back by the host until the next one
   is queued (`Fetch`: on CUDA a non-blocking copy to pinned memory and an event; the rows'
   order and lengths live on the device; the head's chunks are cut from host counts), so
   the GPU does not wait while the host prepares the next batch.

The trie's layout (tokens, depths, ancestor table, head indices, levels) is built once
per target chunk and kept on the device; the shared mask once per chunk and batch width.
Sliding-window layers get their own mask (a per-layer-type dict, as Gemma3 and Qwen2
take it); the attention implementation must accept an arbitrary additive mask (sdpa or
eager). Rows per forward come from the batch plan (`plan.plan_batches`: a token budget
and working memory; the float32 head is chunked, so logits never bound the batch) and are
halved on out-of-memory. Results equal the plain scorer
(`dbgpu.scoring.plain.score_sequences`) to float rounding.

Cost: token positions = the trie lower bound (distinct prompt tokens + N x internal trie
nodes) plus the suffix once more per extra target chunk; attention per row O(Q x K) with
Q = suffix + internal nodes of the chunk, K = prefix + Q (the plan cuts a large trie into
chunks where that lowers the total, `plan.chunk_size`);
memory per forward as `plan.memory` predicts: the (Q, K) masks (shared, plus one per row
when rows are padded), the batch's KV cache, one layer's activations, one chunk of float32
logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from dbgpu.console import progress as progress_bar
from dbgpu.devices import input_device
from dbgpu.errors import DbgpuError
from dbgpu.models import text_config
from dbgpu.scoring.head import hidden_states, output_head, temperature_tuple, token_logprobs
from dbgpu.scoring.plan import default_budget, model_shape, plan_scoring, rows_per_forward
from dbgpu.scoring.prefix import run_prefix
from dbgpu.scoring.sparse import check_attention_mode, check_served, sparse_attention, sparse_rows, trie_tables
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


def tree_masks(allowed: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor, *, config, dtype) -> dict:
    """Additive float masks (1, 1, Q, K), one per layer kind: {kind: (mask, window or None)}.

    allowed (Q, K): what each query may see ignoring windows (every query sees at least
    itself or the prefix); qpos (Q,), kpos (K,): logical positions. Each mask is a view of a
    (1, 1, Q, K16) tensor, K16 = K rounded up to 16, so that its rows are aligned as fused
    attention kernels need (an unaligned mask is padded by a copy in every layer).
    """
    neg = torch.finfo(dtype).min
    out = {}
    for kind, window in _layer_windows(config).items():
        ok = allowed
        if window is not None:
            ok = ok & ((qpos[:, None] - kpos[None, :]) < window)
        out[kind] = (_aligned((1, 1) + tuple(allowed.shape), dtype, allowed.device).masked_fill_(~ok, neg), window)
    return out


def _aligned(shape: tuple, dtype, device) -> torch.Tensor:
    """Zeros of `shape` whose last dimension is a view of one rounded up to 16 elements."""
    *lead, K = shape
    return torch.zeros((*lead, -(-K // 16) * 16), dtype=dtype, device=device)[..., :K]


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


# ----------------------------------------------------------------------------- trie layout


def ancestors(trie: Trie, device) -> torch.Tensor:
    """(I, I) bool: internal node i sees internal node j (j is i or one of its ancestors).
    One tree level per step: O(depth x I) work, O(I^2) bits."""
    I = trie.n_internal
    anc = torch.eye(I, dtype=torch.bool, device=device)
    par = torch.as_tensor(trie.parent[:I], device=device)
    node, up = torch.arange(I, device=device), torch.arange(I, device=device)
    for _ in range(int(trie.depth[:I].max(initial=0))):           # one tree level per step
        up = torch.where(up >= 0, par[up.clamp(min=0)], up)
        anc[node[up >= 0], up[up >= 0]] = True
    return anc


@dataclass(frozen=True)
class TrieLayout:
    """One trie of targets on the device, built once and reused by every batch of sources."""

    tokens: torch.Tensor              # (I,) token ids of the internal nodes (what rows feed)
    depth: torch.Tensor               # (I,) depth of each internal node
    anc: torch.Tensor | None          # (I, I) bool ancestor table (None on the sparse path)
    pred: torch.Tensor                # (M,) kept position predicting node m: 0 (root child) or 1 + parent
    tok: torch.Tensor                 # (M,) token id of node m
    levels: list                      # [(nodes (n_d,), their parents (n_d,))] for depth d = 1, 2, ...
    ends: torch.Tensor                # (C,) last node of each target's path
    pred_sorted: np.ndarray           # (M,) pred, sorted, on the host: the head's chunks are cut without a device read

    @property
    def n_internal(self) -> int:
        return len(self.tokens)


def trie_layout(trie: Trie, device, *, table: bool = True) -> TrieLayout:
    """The device tensors of `trie`: O(M + I^2 bits) memory, O(depth x I) work, once per trie
    (table=False: no (I, I) ancestor table, as the sparse attention needs none)."""
    I = trie.n_internal
    at = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)   # noqa: E731
    levels = [(at(np.flatnonzero(trie.depth == d)), at(trie.parent[trie.depth == d]))
              for d in range(1, int(trie.depth.max(initial=0)) + 1)]
    return TrieLayout(tokens=at(trie.token[:I]), depth=at(trie.depth[:I]), anc=ancestors(trie, device) if table else None,
                      pred=at(trie.parent + 1), tok=at(trie.token), levels=levels, ends=at(trie.ends),
                      pred_sorted=np.sort(np.asarray(trie.parent) + 1))


def suffix_masks(layout: TrieLayout, *, S: int, P: int, config, dtype) -> tuple[dict, torch.Tensor]:
    """(masks {kind: ((1, 1, Q, K), window)}, qpos (Q,)) for rows of suffix width S after a
    shared prefix of P tokens, Q = S + I queries, K = P + Q keys: the suffix is causal and
    sees the prefix; trie nodes see the prefix, the whole suffix and their own ancestors.
    O(Q x K) work and memory, once per trie and batch width."""
    device, I = layout.tokens.device, layout.n_internal
    Q = S + I
    allowed = torch.zeros((Q, P + Q), dtype=torch.bool, device=device)       # (Q, K)
    allowed[:, :P] = True
    allowed[:S, P:P + S] = torch.ones((S, S), dtype=torch.bool, device=device).tril()
    allowed[S:, P:P + S] = True
    allowed[S:, P + S:] = layout.anc
    qpos = torch.cat([P + torch.arange(S, device=device), P + S + layout.depth])             # (Q,)
    kpos = torch.cat([torch.arange(P, device=device), qpos])                                 # (K,)
    return tree_masks(allowed, qpos, kpos, config=config, dtype=dtype), qpos


def batch_masks(base: dict, qpos: torch.Tensor, pad: torch.Tensor, *, P: int, padded: bool = True
                ) -> tuple[object, torch.Tensor]:
    """(attention masks, position ids (B, Q)) of B rows of width S whose suffixes are left-
    padded by pad (B,) tokens (padded: whether any is, known on the host). None padded: the
    shared masks as (B, 1, Q, K) views (no copy). Otherwise each row's mask is the shared one with its pad keys masked, and, for
    sliding-window layers, its prefix columns recomputed (the row's tokens sit pad[b]
    positions nearer the prefix): O(B x Q x K) once per forward, not per layer."""
    B, Q = len(pad), len(qpos)
    rows = (qpos[None, :] - pad[:, None]).clamp(min=0)                      # (B, Q) logical positions
    out = {}
    for kind, (mask, window) in base.items():
        K = mask.shape[-1]
        if not padded:
            out[kind] = mask.expand(B, -1, -1, -1)
            continue
        neg = torch.finfo(mask.dtype).min
        m = _aligned((B, 1, Q, K), mask.dtype, mask.device).copy_(mask.expand(B, -1, -1, -1))   # (B, 1, Q, K)
        col = torch.arange(K, device=pad.device)                           # (K,)
        is_pad = (col[None, :] >= P) & (col[None, :] < P + pad[:, None])    # (B, K) padding keys
        m.masked_fill_(is_pad[:, None, None, :], neg)
        if window is not None and P > 0:
            near = (rows[:, :, None] - torch.arange(P, device=pad.device)[None, None, :]) < window   # (B, Q, P)
            m[..., :P] = torch.where(near[:, None], 0.0, neg).to(m.dtype)
        out[kind] = m
    masks = next(iter(out.values())) if len(out) == 1 else out
    return masks, rows


def path_sums(node_lp: torch.Tensor, layout: TrieLayout) -> torch.Tensor:
    """log T (..., B, C) float64 from edge log-probs (..., B, M) (a leading axis per
    temperature): each node's cumulative sum is its own plus its parent's, one tree level at
    a time (depth steps of O(B x nodes at that depth)); a target's log T is the sum at its
    last node."""
    cum = node_lp.double()                                        # (..., B, M)
    for nodes, parents in layout.levels:                          # depth steps, not a token loop
        cum[..., nodes] += cum[..., parents]
    return cum[..., layout.ends]                                  # (..., B, C)


def positions_below(pred_sorted: np.ndarray, *, rows: int, keep: int):
    """count_below for the head of `rows` rows of `keep` kept positions each: the head's
    positions are b * keep + pred[m] (0 <= pred < keep), so the number below a start s is
    sum_b #(pred < s - b * keep), counted on the host from the sorted pred: O(starts x rows x
    log M), no device read."""
    offsets = np.arange(rows) * keep                                          # (B,)

    def count_below(starts: np.ndarray) -> np.ndarray:
        return np.searchsorted(pred_sorted, starts[:, None] - offsets[None, :]).sum(axis=1)   # (n,)
    return count_below


class Fetch:
    """A batch's log T on its way to the host. On CUDA: a non-blocking copy into pinned host
    memory and an event after it, so the host goes on queuing the next batch while the GPU
    works, and waits (`numpy`) only when it reads this one. Elsewhere: the tensor itself."""

    def __init__(self, logT: torch.Tensor):
        self.event = None
        if logT.device.type == "cuda":
            self.host = torch.empty(logT.shape, dtype=logT.dtype, pin_memory=True)
            self.host.copy_(logT, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(logT.device))
        else:
            self.host = logT

    def numpy(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()                  # this batch's copy only, not the device
        return self.host.numpy()


# ----------------------------------------------------------------------------- scoring


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _dense_forward(model, suffix: torch.Tensor, pad: np.ndarray, pad_t: torch.Tensor, layout: TrieLayout, base: dict,
                   qpos: torch.Tensor, *, P: int, prefix_kv, stats) -> torch.Tensor:
    """The dense path's decoder forward of a batch: (B, I + 1, H) hidden states at the last
    suffix token and the trie nodes (shared masks, the prefix cache expanded to the rows)."""
    from transformers import DynamicCache

    device = suffix.device
    B, S = suffix.shape
    I = layout.n_internal
    with stats.stage("masks", device):
        ids = torch.cat([suffix, layout.tokens[None].expand(B, I)], dim=1)       # (B, Q)
        mask, pos = batch_masks(base, qpos, pad_t, P=P, padded=bool(pad.any()))
        cache = None
        if prefix_kv:
            cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                                 for k, v in prefix_kv])
    with stats.stage("forward", device):
        h, _ = hidden_states(model, input_ids=ids, attention_mask=mask, position_ids=pos,
                             use_cache=cache is not None, cache=cache)         # (B, Q, H)
        h = h[:, S - 1:]                                          # (B, keep, H): last suffix token + nodes
        del cache, mask                                           # the batch's KV cache is freed before the head
    return h


def _score_rows(model, suffix: torch.Tensor, pad: np.ndarray, pad_t: torch.Tensor, layout: TrieLayout, base: dict,
                qpos: torch.Tensor, *, P: int, head, prefix_kv, temperature, stats, max_elements, tables=None) -> Fetch:
    """log T for a batch of sources against one trie, (len(tau), B, C) float64 (temperature: a
    tuple), as a `Fetch` (on CUDA still on its way to the host). suffix (B, S) token ids
    left-padded by pad (B,) tokens (pad on the host, pad_t the same on the device); base masks
    and qpos from `suffix_masks` (width S). tables (`sparse.trie_tables`): the sparse attention
    instead, no masks (base None), no batch KV cache. Nothing is read back from the device
    here and nothing is copied to it: the host can queue the next batch at once."""
    device = suffix.device
    B, S = suffix.shape
    I = layout.n_internal
    if tables is not None:
        with stats.stage("masks", device):
            ids = torch.cat([suffix, layout.tokens[None].expand(B, I)], dim=1)   # (B, Q)
            config = text_config(model)
            rows = sparse_rows(tables, prefix_kv=prefix_kv, P=P, S=S, pad=pad_t, windows=_layer_windows(config),
                               config=config)
            pos = (qpos[None, :] - pad_t[:, None]).clamp(min=0)                 # (B, Q)
        with stats.stage("forward", device), sparse_attention(model):
            h, _ = hidden_states(model, input_ids=ids, position_ids=pos, use_cache=False, dbgpu_rows=rows)
            h = h[:, S - 1:]                                      # (B, keep, H)
        check_served(rows, config)
    else:
        h = _dense_forward(model, suffix, pad, pad_t, layout, base, qpos, P=P, prefix_kv=prefix_kv, stats=stats)
    keep = I + 1
    with stats.stage("head", device):
        M = len(layout.tok)
        idx = (torch.arange(B, device=device)[:, None] * keep + layout.pred[None, :]).reshape(-1)   # (B*M,)
        node_lp = token_logprobs(head, h.reshape(B * keep, -1), idx, layout.tok.repeat(B),
                                 temperature=temperature, max_elements=max_elements,
                                 count_below=positions_below(layout.pred_sorted, rows=B, keep=keep)
                                 ).view(-1, B, M)                                                    # (T, B, M)
    with stats.stage("reduction", device):
        logT = path_sums(node_lp, layout)                         # (T, B, C)
    with stats.stage("transfer", device):
        out = Fetch(logT)                                         # a non-blocking copy on CUDA
    Q = S + I
    stats.count(tokens=B * Q - int(pad.sum()), padded=B * Q, logits=B * keep)
    stats.extra["tokens_per_forward"] = max(stats.extra.get("tokens_per_forward", 0), B * Q)
    return out


def _score_chunk(model, logT: np.ndarray, order: np.ndarray, order_t: torch.Tensor, suffix: torch.Tensor,
                 lengths: np.ndarray, lengths_t: torch.Tensor, chunk: np.ndarray, layout: TrieLayout, *,
                 rows_per_forward: int, P: int, bar, stats, **kw) -> int:
    """Fill logT[:, chunk] batch by batch: rows in `order` (longest suffix first; order_t and
    lengths_t are order and lengths on the device), each batch left-padded to its first row's
    suffix length (a slice of suffix (N, S_max), padded once); the shared masks are built once
    per batch width. One batch in flight: batch k's results are read (`Fetch.numpy`) only once
    batch k + 1 is queued, so on CUDA the GPU is not left idle while the host prepares the
    next batch. Halve the rows on out-of-memory and retry the batch, never losing finished
    rows. Returns the rows per forward reached."""
    from dbgpu.devices import empty_cache

    S_max, device = suffix.shape[1], suffix.device
    base, width, start = None, None, 0
    pending = None                                    # (rows, Fetch) of the batch in flight

    def land(done):
        rows, fetch = done
        with stats.stage("transfer", device):         # host seconds: waiting for the device
            logT[:, rows[:, None], chunk[None, :]] = fetch.numpy()
        bar.update(len(rows) * len(chunk))

    while start < len(order):
        rows = order[start:start + rows_per_forward]
        S = int(lengths[rows[0]])
        if S != width:                                # widths only fall: each is built once per chunk
            with stats.stage("masks", device):
                if kw.get("tables") is not None:      # sparse: positions only, no masks
                    qpos = P + torch.cat([torch.arange(S, device=device), S + layout.depth])   # (Q,)
                else:
                    base, qpos = suffix_masks(layout, S=S, P=P, config=text_config(model),
                                              dtype=next(model.parameters()).dtype)
            width = S
        idx = order_t[start:start + len(rows)]                                   # (B,) on the device
        pad = S - lengths[rows]                                                  # (B,) on the host
        try:
            fetch = _score_rows(model, suffix[idx, S_max - S:], pad, S - lengths_t[idx], layout, base, qpos,
                                P=P, stats=stats, **kw)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not _is_oom(e) or len(rows) == 1:
                raise
            rows_per_forward = max(1, len(rows) // 2)             # back off and retry this batch
            stats.extra["oom_backoffs"] = stats.extra.get("oom_backoffs", 0) + 1
            empty_cache(device)
            continue
        if pending is not None:
            land(pending)                             # the previous batch, while this one runs
        pending = (rows, fetch)
        start += len(rows)
    if pending is not None:
        land(pending)
    return rows_per_forward


def _left_padded(suffixes: list[list[int]], *, pad_id: int, device) -> torch.Tensor:
    """(N, S_max) token ids, each suffix aligned right (left padding): built once per call."""
    S = max(len(x) for x in suffixes)
    out = torch.full((len(suffixes), S), pad_id, dtype=torch.long)
    for i, x in enumerate(suffixes):                  # N rows, not a token loop
        out[i, S - len(x):] = torch.tensor(x, dtype=torch.long)
    return out.to(device)


def batch_plan(model, prompts: list[list[int]], conts: list[list[int]], *, batch_tokens: int | None = None,
               max_logits: int | None = None, work_bytes: int | None = None, max_rows: int = 256,
               block_rows: int | None = None, attention: str = "dense"):
    """(ModelShape, Budget, Plan) of scoring `prompts` x `conts` with a loaded model: its
    config, exact parameter count, dtype and device's defaults (`plan.plan_batches`)."""
    param = next(model.parameters())
    config = text_config(model)
    shape = model_shape(config, dtype=str(param.dtype).removeprefix("torch."),
                        n_params=sum(p.numel() for p in model.parameters()))
    budget = default_budget(input_device(model).type, tokens=batch_tokens, head_logits=max_logits, work_bytes=work_bytes,
                            max_rows=max_rows)
    return shape, budget, plan_scoring(shape, prompts, conts, budget, block_rows=block_rows, attention=attention)


@torch.inference_mode()
def tree_score_matrix(model, prompts: list[list[int]], conts: list[list[int]], *, temperature=1.0,
                      batch_tokens: int | None = None, max_logits: int | None = None, work_bytes: int | None = None,
                      max_rows: int = 256, pad_id: int = 0, progress: bool = False, stats=None,
                      attention: str = "dense") -> np.ndarray:
    """log T for every (prompt, continuation) pair: (N, M) float64, row = source; for a
    sequence of temperatures (len(tau), N, M), every one from the same forwards.

    Batches follow the plan (`batch_plan`): batch_tokens token positions per forward,
    work_bytes of working memory (defaults per device type, `plan.DEVICE_DEFAULTS`), at
    most max_rows rows; max_logits float32 logits held at once by the chunked head. Rows
    per forward halve on out-of-memory and never lose finished rows. pad_id fills the left
    padding of a batch's shorter suffixes (masked; any id will do). Architectures it cannot
    serve exactly are refused (`check_tree_supported`). attention="sparse": each trie node
    attends to the prefix, its row's suffix and its ancestors only (`dbgpu.scoring.sparse`);
    "dense": the (Q, K) tree masks (the reference).
    """
    taus = temperature_tuple(temperature)
    sparse = check_attention_mode(attention) == "sparse"
    if not prompts or not conts or min(map(len, prompts)) == 0 or min(map(len, conts)) == 0:
        raise DbgpuError("a prompt or continuation has no tokens")
    P = common_prefix_length(prompts)
    check_tree_supported(model, prefix_length=P, max_length=max(map(len, prompts)) + max(map(len, conts)))
    stats = stats if stats is not None else ScoreStats()
    head = output_head(model)
    device = input_device(model)
    shape, budget, plan = batch_plan(model, prompts, conts, batch_tokens=batch_tokens, max_logits=max_logits,
                                     work_bytes=work_bytes, max_rows=max_rows, attention=attention)
    stats.begin(device)
    t0 = time.perf_counter()

    prefix_kv = []                                    # 1. the shared prefix (P tokens), once
    if P > 0:
        with stats.stage("prefix", device):
            cache = run_prefix(model, prompts[0][:P], full_layers=True)
            prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        stats.count(tokens=P, padded=P, logits=0)
    suffixes = [p[P:] for p in prompts]
    lengths = np.array([len(x) for x in suffixes])
    order = np.argsort(-lengths, kind="stable")       # longest suffixes first: little padding
    suffix = _left_padded(suffixes, pad_id=pad_id, device=device)                # (N, S_max)
    order_t = torch.as_tensor(order, device=device)                              # (N,) once, not per batch
    lengths_t = torch.as_tensor(lengths, device=device)                          # (N,)

    N, S = len(prompts), int(lengths.max())
    logT = np.empty((len(taus), N, len(conts)), dtype=np.float64)
    chunks = target_chunks(conts, max_internal=plan.max_internal)
    bar = progress_bar(total=N * len(conts), enabled=progress, desc="scoring pairs", unit="pair")
    cap = budget.max_rows                             # lowered for good by an out-of-memory back-off
    fewest = cap
    for chunk in chunks:                              # 2.-3. every source against each trie
        with stats.stage("masks", device):
            trie = build_trie([conts[j] for j in chunk])
            layout = trie_layout(trie, device, table=not sparse)
            tables = trie_tables(trie, device) if sparse else None
        Q = S + layout.n_internal
        A = int(trie.depth[:trie.n_internal].max(initial=-1)) + 1           # sparse: ancestors per node at most
        rows = min(cap, rows_per_forward(shape, budget, queries=Q, keys=P + S + A if sparse else P + Q, prefix=P,
                                         n_rows=N, attention=attention, ancestors=A))
        reached = _score_chunk(model, logT, order, order_t, suffix, lengths, lengths_t, chunk, layout,
                               rows_per_forward=rows, P=P,
                               bar=bar, stats=stats, head=head, prefix_kv=prefix_kv, temperature=taus,
                               max_elements=budget.head_logits, tables=tables)
        cap = min(cap, reached) if reached < rows else cap
        fewest = min(fewest, reached)
    bar.close()
    stats.pairs += N * len(conts)
    stats.seconds += time.perf_counter() - t0
    stats.extra.update(rows_per_forward=fewest, target_chunks=len(chunks), shared_prefix=P, plan=plan.as_dict(),
                       attention=attention, keys_per_query=plan.keys_per_query)
    stats.record_peak_memory(device)
    return logT[0] if isinstance(temperature, (int, float)) else logT
