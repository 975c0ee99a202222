"""The tree scorer's batch plan, computed before any weight is loaded: how many source rows
go through the model per forward pass, how many token positions that is, and the memory
it is predicted to take.

Pure Python, no torch: the inputs are the model's shape (read from its config,
`model_shape`), the sizes of the state set's token trie (`trie_sizes`) and a budget
(`default_budget`, per device type). `dbgpu score --dry-run` prints the plan; the tree
scorer sizes its batches with the same functions, and meta.json records the plan under
`scoring.plan`.

A forward pass of the tree scorer runs B rows of Q = S + I query positions (a source's
suffix of S tokens after the shared prefix, then the I internal nodes of the continuation
trie) against K = P + Q keys (P shared-prefix positions). Rows of one batch have one
width, so one additive mask (Q, K) per layer kind serves every row (built once per trie and
width; a batch with left-padded rows copies it once per row to mask the padding). Memory
of one forward, bytes (d = bytes of the model dtype):

    weights      n_params x d                                       (resident)
    prefix KV    layers x 2 x P x kv_heads x head_dim x d           (resident, one copy)
    masks        kinds x (1 + B) x Q x K16 x d + Q x K              (K16: K rounded up to 16;
                                                                    shared + one per padded row)
    batch KV     layers x 2 x B x kv_heads x K x head_dim x d       (the cache the forward fills)
    activations  B x Q x (6 H + 4 F + 3 (heads + 2 kv) head_dim) x d    (one layer at a time)
                 + 2 B x heads x K x head_dim x d                   (keys/values repeated for GQA)
                 + B x heads x Q x K x (4 + 2 d) with eager attention (scores; sdpa keeps none)
    head         B x (I + 1) x H x d + 2 x 4 x min(head chunk, B x (I + 1) x V) + 64 MiB
                                                                    (a chunk of float32 logits and
                                                                    logsumexp's temporary)

and the predicted peak is weights + prefix KV + masks + max(batch KV + activations, head) (the
batch KV cache is freed before the head runs).

With the sparse attention (`attention="sparse"`, `dbgpu.scoring.sparse`) a query attends to
P + S + its ancestors (at most A = deepest internal node + 1) instead of K keys: no masks, no
batch KV cache (the rows' own keys are the layer's), and the attention's working memory is
float32 copies of the layer's q, k, v (B x Q x (heads + 2 kv) x head_dim x 4), the gathered
ancestor keys and values (2 B x kv x I x A x head_dim x 4) and one query chunk of float32
scores (at most 2^25 elements, x 3 for scores, weights and a masked copy). Its attention
grows as I, not I^2, so the trie is cut into chunks only where one row would not fit.
Rows per forward are the most that keep B x Q within the token budget and batch KV +
activations within the working-memory budget; the float32 head is chunked over positions
(at most `head_logits` logits at once), so logits never bound the batch. A trie whose one
row would not fit is cut into target chunks of at most `max_internal` internal nodes, and a
large trie is cut further where that saves work (`chunk_size`): every row attends to the
whole trie, so attention grows as I^2 while cutting repeats only the S suffix tokens.
Cost of planning: O(log I) evaluations of these formulas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GiB = 2 ** 30
_HEAD_TILE = 2 ** 26                      # the head's float32 weight tile (bytes), see head.py
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model: its config's sizes and the dtype it runs in."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    n_params: int
    dtype_bytes: int
    mask_kinds: int = 1               # 2 when full and sliding-window layers mix
    eager: bool = False               # eager attention materialises the scores


@dataclass(frozen=True)
class Budget:
    """Per-forward limits: token positions, working memory (bytes, beyond weights, prefix
    cache and masks), float32 logits the head holds at once, rows."""

    tokens: int
    work_bytes: int
    head_logits: int
    max_rows: int = 256


@dataclass(frozen=True)
class TrieSizes:
    """Sizes of a scoring problem: N sources, M targets, shared prefix P, the longest
    suffix S, the internal nodes I of the targets' trie."""

    n_sources: int
    n_targets: int
    prefix: int
    suffix: int
    internal: int
    ancestors: int = 0                # A: the most keys a trie node sees among the nodes (deepest + 1)
    mean_ancestors: float = 0.0       # the mean over internal nodes (depth + 1)


#: budgets when the user names none: (token positions, working bytes, head logits)
DEVICE_DEFAULTS = {"cuda": (32768, 8 * GiB, 2 ** 28), "cpu": (8192, 2 * GiB, 2 ** 26)}


def default_budget(device_type: str, *, tokens: int | None = None, head_logits: int | None = None,
                   work_bytes: int | None = None, max_rows: int = 256) -> Budget:
    """The device type's defaults (DEVICE_DEFAULTS), each overridable."""
    t, w, h = DEVICE_DEFAULTS["cuda" if device_type == "cuda" else "cpu"]
    return Budget(tokens=tokens or t, work_bytes=work_bytes or w, head_logits=head_logits or h, max_rows=max_rows)


def model_shape(config, *, dtype: str, n_params: int | None = None, attention: str | None = None) -> ModelShape:
    """ModelShape of a transformers text config (duck-typed: any object with its attributes).

    n_params: the exact count when the weights are loaded; otherwise estimated from the
    config (embeddings, untied head, attention and gated-MLP projections; biases and norms
    left out, under 0.1% of a transformer)."""
    H = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or H // heads
    F = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * H
    L, V = config.num_hidden_layers, config.vocab_size
    if n_params is None:
        per_layer = H * (heads + 2 * kv) * hd + heads * hd * H + 3 * H * F
        tied = getattr(config, "tie_word_embeddings", True)
        n_params = V * H * (1 if tied else 2) + L * per_layer
    kinds = set(getattr(config, "layer_types", None) or [])
    impl = attention or getattr(config, "_attn_implementation", None) or "sdpa"
    return ModelShape(vocab=V, hidden=H, layers=L, heads=heads, kv_heads=kv, head_dim=hd, intermediate=F,
                      n_params=int(n_params), dtype_bytes=DTYPE_BYTES[dtype], mask_kinds=max(1, len(kinds)),
                      eager=impl == "eager")


def trie_sizes(prompts: list[list[int]], conts: list[list[int]]) -> TrieSizes:
    """TrieSizes of token-id prompts and continuations (O(total tokens))."""
    from dbgpu.scoring.trie import build_trie, common_prefix_length

    P = common_prefix_length(prompts)
    trie = build_trie(conts)
    depth = trie.depth[:trie.n_internal]
    return TrieSizes(n_sources=len(prompts), n_targets=len(conts), prefix=P,
                     suffix=max(len(p) for p in prompts) - P, internal=trie.n_internal,
                     ancestors=int(depth.max(initial=-1)) + 1, mean_ancestors=float(depth.mean() + 1) if len(depth) else 0.0)


def forward_count(n_sources: int, *, rows: int, block_rows: int) -> int:
    """Forward passes over the sources (per target chunk): blocks of block_rows sources,
    each cut into batches of at most `rows`."""
    full, rest = divmod(n_sources, block_rows)
    return full * -(-block_rows // rows) + -(-rest // rows)


def _round16(k: int) -> int:
    return -(-k // 16) * 16


#: the sparse attention's float32 scores per query chunk (elements; `sparse.MAX_SCORES`)
SPARSE_SCORES = 2 ** 25


def memory(shape: ModelShape, *, rows: int, queries: int, keys: int, prefix: int, head_logits: int,
           attention: str = "dense", ancestors: int = 0) -> dict:
    """Predicted bytes of one forward pass (see the module docstring), by part, and the peak.
    Sparse: keys = the most one query sees (P + S + A), ancestors = A."""
    d, B, Q, K = shape.dtype_bytes, rows, queries, keys
    if attention == "sparse":
        return _sparse_memory(shape, rows=B, queries=Q, keys=K, prefix=prefix, head_logits=head_logits,
                              ancestors=ancestors)
    kv_row = shape.layers * 2 * shape.kv_heads * shape.head_dim * d          # bytes per key position
    act = B * Q * (6 * shape.hidden + 4 * shape.intermediate + 3 * (shape.heads + 2 * shape.kv_heads)
                   * shape.head_dim) * d
    if shape.kv_heads < shape.heads:
        act += 2 * B * shape.heads * K * shape.head_dim * d
    if shape.eager:
        act += B * shape.heads * Q * K * (4 + 2 * d)
    out = {"weights": shape.n_params * d, "prefix_kv": prefix * kv_row,
           "masks": shape.mask_kinds * (1 + B) * Q * _round16(K) * d + Q * K,
           "batch_kv": B * K * kv_row, "activations": act,
           "head": B * (Q - 1) * shape.hidden * d + 8 * min(head_logits, B * (Q - 1) * shape.vocab) + _HEAD_TILE}
    out["peak"] = (out["weights"] + out["prefix_kv"] + out["masks"]
                   + max(out["batch_kv"] + out["activations"], out["head"]))
    return out


def _sparse_memory(shape: ModelShape, *, rows: int, queries: int, keys: int, prefix: int, head_logits: int,
                   ancestors: int) -> dict:
    d, B, Q = shape.dtype_bytes, rows, queries
    kv_row = shape.layers * 2 * shape.kv_heads * shape.head_dim * d
    act = B * Q * (6 * shape.hidden + 4 * shape.intermediate + 3 * (shape.heads + 2 * shape.kv_heads)
                   * shape.head_dim) * d
    act += B * Q * (shape.heads + 2 * shape.kv_heads) * shape.head_dim * 4          # float32 q, k, v
    act += 2 * B * shape.kv_heads * Q * ancestors * shape.head_dim * 4              # gathered ancestors
    act += 3 * 4 * min(SPARSE_SCORES, B * shape.heads * Q * keys)                   # one chunk of scores
    out = {"weights": shape.n_params * d, "prefix_kv": prefix * kv_row, "masks": 0, "batch_kv": 0,
           "activations": act,
           "head": B * (Q - 1) * shape.hidden * d + 8 * min(head_logits, B * (Q - 1) * shape.vocab) + _HEAD_TILE}
    out["peak"] = out["weights"] + out["prefix_kv"] + max(out["activations"], out["head"])
    return out


def _work(m: dict) -> int:
    """The part of a forward's memory the working budget bounds (what grows with rows)."""
    return max(m["batch_kv"] + m["activations"], m["head"] - _HEAD_TILE) + m["masks"]


def rows_per_forward(shape: ModelShape, budget: Budget, *, queries: int, keys: int, prefix: int,
                     n_rows: int, attention: str = "dense", ancestors: int | None = None) -> int:
    """The most rows (at least 1, at most n_rows and budget.max_rows) whose B x Q token
    positions fit the token budget and whose working memory fits budget.work_bytes."""
    hi = max(1, min(n_rows, budget.max_rows, budget.tokens // queries))
    lo = 1
    while lo < hi:                                      # working memory grows with B: bisect
        mid = (lo + hi + 1) // 2
        m = memory(shape, rows=mid, queries=queries, keys=keys, prefix=prefix, head_logits=budget.head_logits,
                   attention=attention, ancestors=keys - prefix if ancestors is None else ancestors)
        lo, hi = (mid, hi) if _work(m) <= budget.work_bytes else (lo, mid - 1)
    return lo


def max_internal(shape: ModelShape, budget: Budget, *, suffix: int, prefix: int, attention: str = "dense",
                 ancestors: int = 0) -> int:
    """The most internal trie nodes one row may hold: S + I within the token budget and one
    row's working memory within budget.work_bytes (at least 1)."""
    hi, lo = max(1, budget.tokens - suffix), 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        Q = suffix + mid
        K = prefix + suffix + ancestors if attention == "sparse" else prefix + Q
        m = memory(shape, rows=1, queries=Q, keys=K, prefix=prefix, head_logits=budget.head_logits,
                   attention=attention, ancestors=ancestors)
        lo, hi = (mid, hi) if _work(m) <= budget.work_bytes else (lo, mid - 1)
    return lo


#: the fewest internal nodes a target chunk is cut to for speed: below this a forward's fixed
#: costs (kernel launches, the repeated suffix, Python) outweigh the attention it saves
MIN_CHUNK = 256


def row_flops(shape: ModelShape, *, suffix: int, prefix: int, internal: int) -> float:
    """Estimated FLOPs of one source row against one trie of `internal` nodes: the linear
    layers for Q = S + I queries, attention over K = P + Q keys per query (the dense tree
    mask: every row attends to the whole trie) and the float32 head for the I + 1 kept
    positions."""
    Q, K = suffix + internal, prefix + suffix + internal
    per_layer = (shape.hidden * (shape.heads + 2 * shape.kv_heads) * shape.head_dim
                 + shape.heads * shape.head_dim * shape.hidden + 3 * shape.hidden * shape.intermediate)
    linear = 2.0 * shape.layers * per_layer * Q
    attention = 4.0 * shape.layers * shape.heads * shape.head_dim * Q * K
    return linear + attention + 2.0 * shape.hidden * shape.vocab * (internal + 1)


def chunk_size(shape: ModelShape, sizes: TrieSizes, *, cap: int) -> int:
    """Internal nodes per target chunk: at most `cap` (what one row may hold), and fewer where
    cutting the trie saves work. Attention grows with the trie (each row attends to all of
    it), the suffix is run again for every chunk: the size minimising the estimated FLOPs
    of all chunks (`row_flops`) over even cuts of at least MIN_CHUNK nodes, kept only when it
    saves at least 10% (the estimate leaves out each forward's fixed costs). O(I / MIN_CHUNK)
    evaluations. SmolLM2, 500 word states: 4 chunks, 16% fewer FLOPs (measured on 2 CPU
    cores: 1.49x on 8 sources, benchmarks/bench_chunks.py; 1.12x in a whole run); Qwen2-0.5B with byte tries, 2,000
    states: 11 chunks, 38% fewer (not measured on a GPU)."""
    I, S, P = sizes.internal, sizes.suffix, sizes.prefix
    if I < 2 * MIN_CHUNK:
        return cap
    n0 = -(-I // cap)                                       # the fewest chunks that fit
    base = best = n0 * row_flops(shape, suffix=S, prefix=P, internal=-(-I // n0))
    size = cap
    for n in range(n0 + 1, I // MIN_CHUNK + 1):
        c = -(-I // n)
        cost = n * row_flops(shape, suffix=S, prefix=P, internal=c)
        if cost < best:
            best, size = cost, c
    return size if best <= 0.9 * base else cap


@dataclass(frozen=True)
class Plan:
    """The batch plan of one scoring problem (all figures for the largest target chunk)."""

    rows_per_forward: int
    tokens_per_forward: int           # rows x queries
    queries: int                      # Q = S + I per row
    keys: int                         # K = P + Q
    internal_per_chunk: int           # I of one target chunk
    target_chunks: int                # estimated: ceil(internal / max_internal)
    max_internal: int
    forwards: int                     # estimated forward passes, shared prefix excluded
    limited_by: str                   # what stopped rows from growing: tokens, memory, rows, sources
    memory: dict                      # predicted bytes by part and "peak"
    budget: dict
    shape: dict
    sizes: dict
    attention: str = "dense"          # dense (tree masks) or sparse (`dbgpu.scoring.sparse`)
    keys_per_query: float = 0.0       # mean keys a query attends to (dense: K; sparse: P + S + ancestors)

    def as_dict(self) -> dict:
        return asdict(self)


def plan_batches(shape: ModelShape, sizes: TrieSizes, budget: Budget, *, block_rows: int | None = None,
                 chunk_internal: list[int] | None = None, cap: int | None = None, attention: str = "dense") -> Plan:
    """The plan: target chunks, rows per forward, token positions per forward and predicted
    peak memory, from the model's shape, the trie's sizes and the budget. block_rows: the
    most sources scored in one call (a score job's rows per block). chunk_internal: the
    internal nodes of each target chunk when known (`plan_scoring`), else even chunks of at
    most `max_internal` nodes are assumed. Figures are those of the largest chunk; forwards
    counts every chunk's. cap: the internal nodes per chunk `plan_scoring` settled on."""
    sparse = attention == "sparse"
    A = sizes.ancestors
    if not cap:
        cap = max_internal(shape, budget, suffix=sizes.suffix, prefix=sizes.prefix, attention=attention, ancestors=A)
        cap = cap if sparse else chunk_size(shape, sizes, cap=cap)
    if chunk_internal is None:
        n = -(-sizes.internal // cap)
        chunk_internal = [min(cap, -(-sizes.internal // n))] * n
    n_rows = min(sizes.n_sources, block_rows or sizes.n_sources)
    keys_of = lambda i: sizes.prefix + sizes.suffix + (A if sparse else i)          # noqa: E731
    rows_of = [rows_per_forward(shape, budget, queries=sizes.suffix + i, keys=keys_of(i), prefix=sizes.prefix,
                                n_rows=n_rows, attention=attention, ancestors=A) for i in chunk_internal]
    internal = max(chunk_internal)
    rows = rows_of[chunk_internal.index(internal)]
    Q = sizes.suffix + internal
    K = keys_of(internal)
    S = sizes.suffix
    per_query = (sizes.prefix + (S * (S + 1) / 2 + internal * (S + sizes.mean_ancestors)) / max(Q, 1)) if sparse else K
    limits = {"sources": n_rows, "rows": budget.max_rows, "tokens": max(1, budget.tokens // Q)}
    limited_by = next((k for k, v in limits.items() if v == rows), "memory")
    m = memory(shape, rows=rows, queries=Q, keys=K, prefix=sizes.prefix, head_logits=budget.head_logits,
               attention=attention, ancestors=A)
    return Plan(rows_per_forward=rows, tokens_per_forward=rows * Q, queries=Q, keys=K, internal_per_chunk=internal,
                target_chunks=len(chunk_internal), max_internal=cap,
                forwards=sum(forward_count(sizes.n_sources, rows=r, block_rows=n_rows) for r in rows_of),
                limited_by=limited_by, memory=m, budget=asdict(budget), shape=asdict(shape), sizes=asdict(sizes),
                attention=attention, keys_per_query=float(per_query))


def plan_scoring(shape: ModelShape, prompts: list[list[int]], conts: list[list[int]], budget: Budget, *,
                 block_rows: int | None = None, attention: str = "dense") -> Plan:
    """`plan_batches` of token-id prompts and continuations, with the target chunks the tree
    scorer will cut (`trie.target_chunks`): the plan it follows. O(total tokens)."""
    from dbgpu.scoring.trie import build_trie, target_chunks

    sizes = trie_sizes(prompts, conts)
    most = max_internal(shape, budget, suffix=sizes.suffix, prefix=sizes.prefix, attention=attention,
                        ancestors=sizes.ancestors)
    cap = most if attention == "sparse" else chunk_size(shape, sizes, cap=most)
    chunks = target_chunks(conts, max_internal=cap)
    want = -(-sizes.internal // cap)
    while len(chunks) > want and cap < most:          # greedy packing left a remainder: widen a little
        cap = min(most, cap + max(1, cap // 50))
        chunks = target_chunks(conts, max_internal=cap)
    internal = [sizes.internal] if len(chunks) == 1 else \
        [build_trie([conts[j] for j in c]).n_internal for c in chunks]
    return plan_batches(shape, sizes, budget, block_rows=block_rows, chunk_internal=internal, cap=cap,
                        attention=attention)


def plan_table(plan: Plan | dict, *, title: str = "") -> str:
    """The plan as a Markdown table (what `dbgpu score --dry-run` prints)."""
    p = plan.as_dict() if isinstance(plan, Plan) else plan
    s, m, b = p["sizes"], p["memory"], p["budget"]
    mib = lambda x: f"{x / 2**20:,.0f} MiB"                                         # noqa: E731
    rows = [
        ("sources x targets", f"{s['n_sources']} x {s['n_targets']}"),
        ("shared prefix / longest suffix", f"{s['prefix']} / {s['suffix']} tokens"),
        ("trie internal nodes", f"{s['internal']:,} ({p['target_chunks']} target chunk(s) of <= {p['max_internal']:,})"),
        ("queries / keys per row", f"{p['queries']:,} / {p['keys']:,}"),
        ("attention / keys per query", f"{p.get('attention', 'dense')} / {p.get('keys_per_query') or p['keys']:,.0f}"),
        ("rows per forward", f"{p['rows_per_forward']} (limited by {p['limited_by']})"),
        ("token positions per forward", f"{p['tokens_per_forward']:,} (budget {b['tokens']:,})"),
        ("forward passes (estimated)", f"{p['forwards']:,}"),
        ("weights", mib(m["weights"])), ("prefix KV cache", mib(m["prefix_kv"])),
        ("masks (shared by the rows)", mib(m["masks"])), ("batch KV cache", mib(m["batch_kv"])),
        ("activations (one layer)", mib(m["activations"])),
        ("float32 head", f"{mib(m['head'])} (chunks of {b['head_logits']:,} logits)"),
        ("predicted peak", f"{mib(m['peak'])} (working budget {mib(b['work_bytes'])})"),
    ]
    lines = ([f"{title}", ""] if title else []) + ["| plan | value |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in rows])


def plan_plain(shape: ModelShape, *, n_pairs: int, longest: int, budget: Budget) -> Plan:
    """The plain scorer's plan: every pair its own row of at most `longest` tokens (no shared
    prefix, causal mask built by the model), as many rows as budget.tokens holds."""
    rows = max(1, min(budget.max_rows, n_pairs, budget.tokens // longest))
    m = memory(shape, rows=rows, queries=longest, keys=longest, prefix=0, head_logits=budget.head_logits)
    m["masks"] = 0
    m["peak"] = m["weights"] + max(m["batch_kv"] + m["activations"], m["head"])
    sizes = {"n_pairs": n_pairs, "longest": longest}
    return Plan(rows_per_forward=rows, tokens_per_forward=rows * longest, queries=longest, keys=longest,
                internal_per_chunk=0, target_chunks=1, max_internal=0, forwards=-(-n_pairs // rows),
                limited_by="tokens" if rows == budget.tokens // longest else "rows", memory=m,
                budget=asdict(budget), shape=asdict(shape), sizes=sizes)
