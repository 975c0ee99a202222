"""Exact state discovery: every answer of probability >= eps from a prompt, and the mass left over.

    enumerate_answers(model, prompts, min_prob=1e-3, temperature=1, max_depth=10, stop_ids=[...])

The answers of a prompt whose probability under pure temperature sampling is at least
eps form a tree: a partial answer's probability only falls as it grows, so every answer
>= eps has all its prefixes >= eps, and at any depth at most 1/eps disjoint prefixes can
each hold eps of the mass. The search is level-wise over that tree, for a batch of
prompts at once:

1. the prompts' longest common prefix is run once and kept (`prefix.run_prefix`, a plain
   full-length KV cache, as the tree scorer keeps it); each prompt's suffix, left-padded,
   is run after it: the last suffix position gives the first answer token's distribution;
2. each depth is ONE forward over the whole frontier: the partial answers of every prompt
   kept at this depth, one row per prompt, each new node a query that sees the prefix,
   its row's suffix and its own ancestors among the nodes fed before (an additive tree
   mask, per layer kind for sliding windows, as `scoring.tree` builds it); their keys and
   values are appended to the cache, so every distinct partial answer is run through the
   model once;
3. the float32 head (`scoring.head`, exactly what `score` computes: z / tau, log-softmax
   in float32) gives every node's next-token log-probabilities; the children whose
   cumulative log-probability (float64) is >= log eps are selected over the whole
   vocabulary at once (a float32 pre-filter, then the exact float64 test); children that
   are a stop token are complete answers, the rest the next frontier.

A branch ends at a stop token (a complete answer), when the caller's `hopeless` rule says
no continuation can be accepted (its prefix's mass is counted as rejected: the sampler
abandons such answers the same way), when it falls below eps (its mass is counted as
below eps, summed over the whole vocabulary), or at `max_depth` tokens without a stop
token (truncated, as the sampler's `max_new_tokens` cuts it). So each prompt's mass is
accounted for exactly:

    1 = sum of complete answers found + hopeless prefixes + truncated + below eps

up to float rounding (the float32 softmax sums of each node's vocabulary).

Cost, per depth d: one forward of B rows x Q_d new queries (Q_d the largest frontier of
a row, <= 1/eps) against K_d = P + S + sum of earlier Q keys; the frontier's KV cache is
B x K_d positions per layer; the head runs on the real frontier nodes only, in chunks of
`max_elements` float32 logits. Rows whose frontier is empty leave the batch (and the
cache) once they are a quarter of it. `DepthStats` records it all.

`closure` (below) is the bookkeeping that turns per-source answers into states and the
next sources, with no model: discovery order, targets, the mass per source.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dbgpu.devices import input_device
from dbgpu.errors import DbgpuError, check_temperature
from dbgpu.models import text_config
from dbgpu.scoring.head import head_logits, hidden_states, output_head
from dbgpu.scoring.prefix import pad_sequences, run_prefix
from dbgpu.scoring.tree import _layer_windows, check_tree_supported
from dbgpu.scoring.trie import common_prefix_length

# ----------------------------------------------------------------------------- results


@dataclass
class Enumeration:
    """Every answer of one prompt with probability >= eps, and where the rest of its mass went."""

    ids: list[list[int]]          # each complete answer's tokens, the stop token excluded
    stop: list[int]               # the stop token that ended it
    logprob: np.ndarray           # (A,) float64 natural log-probabilities, stop token included
    hopeless: float = 0.0         # mass of the prefixes the hopeless rule pruned
    truncated: float = 0.0        # mass of partial answers still open at max_depth tokens
    below: float = 0.0            # mass of the branches that fell below eps
    n_hopeless: int = 0
    n_truncated: int = 0
    depth: int = 0                # the longest answer or prefix reached (tokens)

    @property
    def found(self) -> float:
        """Mass of the complete answers found (float64 sum)."""
        return float(np.exp(self.logprob).sum()) if len(self.logprob) else 0.0

    @property
    def accounted(self) -> float:
        """found + hopeless + truncated + below eps: 1 up to float rounding."""
        return self.found + self.hopeless + self.truncated + self.below


@dataclass
class DepthStats:
    """What the search cost, per depth (index 0: the prompts' suffix pass)."""

    frontier: list[int] = field(default_factory=list)      # real partial answers fed at each depth
    rows: list[int] = field(default_factory=list)          # rows in the forward
    queries: list[int] = field(default_factory=list)       # Q: query positions per row (padded)
    keys: list[int] = field(default_factory=list)          # K: key positions per row after the forward
    kv_bytes: list[int] = field(default_factory=list)      # the KV cache after the forward
    forwards: int = 0
    tokens: int = 0              # real token positions run through the model (shared prefix included)
    padded: int = 0              # token positions including padding
    head_rows: int = 0           # rows whose full-vocabulary log-softmax was computed
    seconds: float = 0.0

    def add(self, other: DepthStats) -> None:
        """Accumulate another batch's figures (per-depth lists added elementwise, max for sizes)."""
        for name in ("frontier", "rows", "queries", "keys", "kv_bytes"):
            mine, theirs = getattr(self, name), getattr(other, name)
            combine = (lambda a, b: a + b) if name in ("frontier", "rows") else max
            for d, v in enumerate(theirs):
                if d < len(mine):
                    mine[d] = combine(mine[d], v)
                else:
                    mine.append(v)
        for name in ("forwards", "tokens", "padded", "head_rows", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {"forwards": self.forwards, "tokens": self.tokens, "padded_tokens": self.padded,
                "head_rows": self.head_rows, "seconds": self.seconds,
                "per_depth": {"frontier": self.frontier, "rows": self.rows, "queries": self.queries,
                              "keys": self.keys, "kv_cache_bytes": self.kv_bytes}}


# ----------------------------------------------------------------------------- masks


def _additive(ok: torch.Tensor, dtype) -> torch.Tensor:
    """(B, Q, K) bool -> (B, 1, Q, K) additive mask in the model dtype, its rows a view of a
    width rounded up to 16 (fused attention kernels want aligned rows, as `tree_masks`)."""
    B, Q, K = ok.shape
    out = torch.zeros((B, 1, Q, -(-K // 16) * 16), dtype=dtype, device=ok.device)[..., :K]
    return out.masked_fill_(~ok[:, None], torch.finfo(dtype).min)


def _masks(ok: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor, *, windows: dict, dtype):
    """The attention masks of one forward: ok (B, Q, K) what each query may see ignoring
    windows, qpos (B, Q) / kpos (B, K) logical positions. One additive mask, or a
    {layer kind: mask} dict when the model has several kinds (sliding windows)."""
    out = {}
    for kind, window in windows.items():
        m = ok if window is None else ok & ((qpos[:, :, None] - kpos[:, None, :]) < window)
        out[kind] = _additive(m, dtype)
    return next(iter(out.values())) if len(out) == 1 else out


def _kv_bytes(cache) -> int:
    return sum(x.keys.numel() * x.keys.element_size() + x.values.numel() * x.values.element_size()
               for x in cache.layers)


# ----------------------------------------------------------------------------- expansion


@dataclass
class _Level:
    """The frontier at one depth, flat over the batch: node n belongs to row src[n]."""

    src: torch.Tensor            # (n,) source (prompt index) of each node
    cum: torch.Tensor            # (n,) float64 cumulative log-probability
    path: torch.Tensor           # (n, d) answer tokens so far


def _expand(head, h: torch.Tensor, cum: torch.Tensor, *, log_eps: float, temperature: float,
            max_elements: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Children >= eps of n nodes from their hidden states h (n, H) and cumulative
    log-probabilities cum (n,) float64: (parent (k,), token (k,), child cum (k,) float64,
    mass below eps per node (n,) float64). The log-softmax is the scorer's (float32, z / tau);
    one chunk of rows x V float32 logits at a time, the selection vectorised over the vocabulary."""
    n, V = h.shape[0], head.vocab_size
    chunk = max(1, max_elements // V)
    parents, tokens, cums = [], [], []
    below = torch.zeros(n, dtype=torch.float64, device=h.device)
    for a in range(0, n, chunk):                                   # n / chunk steps, not a token loop
        z = head_logits(head, h[a:a + chunk]).to(h.device)         # (c, V) float32
        if temperature != 1.0:
            z.div_(temperature)
        lp = z - torch.logsumexp(z, dim=-1, keepdim=True)          # (c, V) float32, as token_logprobs
        c = cum[a:a + chunk]                                       # (c,) float64
        # float32 pre-filter with a margin far above its rounding, then the exact float64 test
        cand = lp >= (log_eps - c)[:, None].float() - 1e-3         # (c, V)
        r, t = cand.nonzero(as_tuple=True)                         # (k',) rows ascending, tokens ascending
        child = c[r] + lp[r, t].double()                           # (k',) float64
        keep = child >= log_eps
        r, t, child = r[keep], t[keep], child[keep]
        kept = torch.zeros_like(cand)
        kept[r, t] = True
        # mass below eps: each node's own probability times its children's outside `kept`
        below[a:a + chunk] = torch.exp(c) * lp.exp().masked_fill_(kept, 0).sum(-1).double()
        parents.append(r + a)
        tokens.append(t)
        cums.append(child)
    cat = lambda xs, dt: torch.cat(xs) if xs else torch.empty(0, dtype=dt, device=h.device)  # noqa: E731
    return cat(parents, torch.long), cat(tokens, torch.long), cat(cums, torch.float64), below


# ----------------------------------------------------------------------------- the search


@torch.inference_mode()
def enumerate_answers(model, prompts: list[list[int]], *, min_prob: float, temperature: float = 1.0,
                      max_depth: int, stop_ids: list[int], hopeless=None, pad_id: int = 0,
                      max_elements: int = 1 << 24, compact_at: float = 0.75,
                      stats: DepthStats | None = None) -> list[Enumeration]:
    """Every answer of each prompt with probability >= min_prob, exactly (module docstring).

    prompts: token ids (the sampler's and the scorer's prompt ids), one row each; answers
    end at any of stop_ids and have at most max_depth tokens, the stop token included.
    hopeless(paths: list[list[int]]) -> list[bool], optional: partial answers (no stop
    token) that no continuation can make acceptable; they are pruned with their mass.
    Returns one Enumeration per prompt, answers in order of discovery (by depth, then by
    the order of their parents and token ids)."""
    check_temperature(temperature)
    if not 0 < min_prob <= 1:
        raise DbgpuError(f"the minimum probability must be in (0, 1], got {min_prob}")
    if max_depth < 1:
        raise DbgpuError(f"the maximum depth must be at least 1, got {max_depth}")
    if not prompts or min(map(len, prompts)) == 0:
        raise DbgpuError("a prompt has no tokens")
    from transformers import DynamicCache

    t0 = time.perf_counter()
    st = DepthStats()
    device = input_device(model)
    head = output_head(model)
    dtype = next(model.parameters()).dtype
    windows = _layer_windows(text_config(model))
    B = len(prompts)
    log_eps = math.log(min_prob)
    P = common_prefix_length(prompts) if B > 1 else len(prompts[0]) - 1
    try:
        check_tree_supported(model, prefix_length=P, max_length=max(map(len, prompts)) + max_depth)
    except DbgpuError as e:                        # the scorer's advice (--method plain) does not apply here
        raise DbgpuError(str(e).replace("; use --method plain", "") + " (discover runs the tree scorer's masks)") \
            from None
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    out = [Enumeration(ids=[], stop=[], logprob=np.empty(0)) for _ in range(B)]
    answers: list[list] = [[] for _ in range(B)]                   # (ids, stop, logprob)
    masses = torch.zeros((3, B), dtype=torch.float64, device=device)   # hopeless, truncated, below
    counts = torch.zeros((2, B), dtype=torch.long, device=device)      # hopeless, truncated
    reach = torch.zeros(B, dtype=torch.long, device=device)             # deepest child seen, tokens

    # 1. shared prefix, then every suffix (left-padded) after it
    if P > 0:
        prefix = run_prefix(model, prompts[0][:P], full_layers=True)
        kv = [(x.keys.expand(B, -1, -1, -1), x.values.expand(B, -1, -1, -1)) for x in prefix.layers]
        cache = DynamicCache(ddp_cache_data=kv)
        st.tokens += P
        st.padded += P
    else:
        cache = DynamicCache()
    ids, smask, spos = pad_sequences([p[P:] for p in prompts], pad_id=pad_id, side="left", device=device)  # (B, S)
    S = ids.shape[1]
    lengths = torch.tensor([len(p) for p in prompts], device=device)                    # (B,)
    real = smask.bool()                                                                  # (B, S)
    causal = torch.ones((S, S), dtype=torch.bool, device=device).tril()
    ok = torch.ones((B, S, P + S), dtype=torch.bool, device=device)                     # prefix: all
    ok[:, :, P:] = causal[None] & (real[:, None, :] | torch.eye(S, dtype=torch.bool, device=device)[None])
    qpos = spos + P                                                                      # (B, S)
    kpos = torch.cat([torch.arange(P, device=device)[None].expand(B, P), qpos], dim=1)   # (B, P + S)
    h, cache = hidden_states(model, input_ids=ids, attention_mask=_masks(ok, qpos, kpos, windows=windows,
                                                                         dtype=dtype),
                             position_ids=qpos, use_cache=True, cache=cache)            # (B, S, H)
    st.forwards += 1
    st.tokens += int(real.sum())
    st.padded += B * S
    st.frontier.append(B), st.rows.append(B), st.queries.append(S), st.keys.append(P + S)
    st.kv_bytes.append(_kv_bytes(cache))
    vis = ok[:, S - 1:S, :]                        # (rows, Q, K): what each last-level node sees (itself too)
    level = _Level(src=torch.arange(B, device=device), cum=torch.zeros(B, dtype=torch.float64, device=device),
                   path=torch.empty((B, 0), dtype=torch.long, device=device))
    hh = h[:, -1]                                  # (n, H) hidden state of each frontier node
    row_of = torch.arange(B, device=device)        # (B,) row of each source in the batch, -1 once gone
    rows = torch.arange(B, device=device)          # (R,) source of each row
    slot = torch.zeros(B, dtype=torch.long, device=device)   # (n,) query slot of each node in its row

    for d in range(max_depth):                     # depth d: nodes hold d tokens; children d + 1
        parent, token, child, below = _expand(head, hh, level.cum, log_eps=log_eps, temperature=temperature,
                                              max_elements=max_elements)
        st.head_rows += len(hh)
        masses[2].index_add_(0, level.src, below)
        csrc = level.src[parent]                                                   # (k,)
        cpath = torch.cat([level.path[parent], token[:, None]], dim=1)             # (k, d + 1)
        is_stop = torch.isin(token, stops)
        reach[csrc] = d + 1
        done = is_stop.nonzero().squeeze(1)
        for b, path, stop, lp in zip(csrc[done].tolist(), cpath[done, :-1].tolist(), token[done].tolist(),
                                     child[done].tolist()):               # one per complete answer
            answers[b].append((path, stop, lp))
        open_ = ~is_stop
        if hopeless is not None and bool(open_.any()):
            idx = open_.nonzero().squeeze(1)
            flags = torch.tensor(hopeless(cpath[idx].tolist()), dtype=torch.bool, device=device)
            gone = idx[flags]
            masses[0].index_add_(0, csrc[gone], torch.exp(child[gone]))
            counts[0].index_add_(0, csrc[gone], torch.ones_like(gone))
            open_[gone] = False
        if d + 1 == max_depth:                     # still open after max_depth tokens: truncated
            idx = open_.nonzero().squeeze(1)
            masses[1].index_add_(0, csrc[idx], torch.exp(child[idx]))
            counts[1].index_add_(0, csrc[idx], torch.ones_like(idx))
            break
        keep = open_.nonzero().squeeze(1)
        if len(keep) == 0:
            break
        nsrc, ncum, npath, npar = csrc[keep], child[keep], cpath[keep], parent[keep]
        # 2. the next frontier as (rows, Q) queries: slot = rank of the node within its row
        per_row = torch.bincount(row_of[nsrc], minlength=len(rows))               # (R,)
        live = per_row > 0
        if int(live.sum()) <= compact_at * len(rows):                              # drop finished rows
            keep_rows = live.nonzero().squeeze(1)
            cache.reorder_cache(keep_rows)
            vis, kpos = vis[keep_rows], kpos[keep_rows]
            rows = rows[keep_rows]
            row_of = torch.full((B,), -1, dtype=torch.long, device=device)
            row_of[rows] = torch.arange(len(rows), device=device)
            per_row = per_row[keep_rows]
        R, Q, Kp = len(rows), int(per_row.max()), vis.shape[2]
        r_of = row_of[nsrc]                                                        # (n,)
        starts = torch.cumsum(per_row, 0) - per_row                                # (R,)
        nslot = torch.arange(len(keep), device=device) - starts[r_of]              # (n,)
        feed = torch.full((R, Q), pad_id, dtype=torch.long, device=device)
        feed[r_of, nslot] = npath[:, -1]
        # each new node sees what its parent saw, and itself; padding queries see only themselves
        pslot = slot[npar]                                                         # (n,) parent's query slot
        new_vis = torch.zeros((R, Q, Kp + Q), dtype=torch.bool, device=device)
        new_vis[r_of, nslot, :Kp] = vis[r_of, pslot]
        new_vis[:, torch.arange(Q, device=device), Kp + torch.arange(Q, device=device)] = True
        pos = (lengths[rows] + d)[:, None].expand(R, Q).contiguous()               # (R, Q) position of token d + 1
        kpos = torch.cat([kpos, pos], dim=1)
        h, cache = hidden_states(model, input_ids=feed, attention_mask=_masks(new_vis, pos, kpos, windows=windows,
                                                                              dtype=dtype),
                                 position_ids=pos, use_cache=True, cache=cache)   # (R, Q, H)
        st.forwards += 1
        st.tokens += len(keep)
        st.padded += R * Q
        st.frontier.append(len(keep)), st.rows.append(R), st.queries.append(Q), st.keys.append(Kp + Q)
        st.kv_bytes.append(_kv_bytes(cache))
        vis = new_vis
        hh = h[r_of, nslot]                                                        # (n, H)
        level = _Level(src=nsrc, cum=ncum, path=npath)
        slot = nslot
    del cache

    masses_np, counts_np, reach_np = masses.cpu().numpy(), counts.cpu().numpy(), reach.tolist()
    for b in range(B):                                               # B results, not a token loop
        found = answers[b]
        e = out[b]
        e.ids = [a[0] for a in found]
        e.stop = [a[1] for a in found]
        e.logprob = np.array([a[2] for a in found], dtype=np.float64)
        e.hopeless, e.truncated, e.below = (float(x) for x in masses_np[:, b])
        e.n_hopeless, e.n_truncated = (int(x) for x in counts_np[:, b])
        e.depth = reach_np[b]
    st.seconds = time.perf_counter() - t0
    if stats is not None:
        stats.add(st)
    return out


# ----------------------------------------------------------------------------- closure


def answer_target(task, text: str) -> str | None:
    """The state a complete answer lands on: the parsed state (the source itself included:
    a self-transition is part of the kernel), the task's invalid state for a parsed state
    that fails `valid`, None when the answer does not parse (rejected)."""
    g = task.parse(text)
    if g is None:
        return None
    if not task.valid(g) and task.invalid_state is not None:
        return task.invalid_state
    return g


def source_masses(task, source: str, enum: Enumeration, targets: list[str | None]) -> dict:
    """Where one source's probability went (float64 sums of the found answers' probabilities):

    found = valid + invalid + rejected (complete answers that do not parse, plus the prefixes
    the hopeless rule pruned, with their prefix's probability); not_enumerated = 1 - found =
    truncated (open after max-depth tokens) + below_eps, up to float rounding; self: the part
    of valid that answers the source itself."""
    p = np.exp(enum.logprob)                                                   # (A,)
    kind = np.array([0 if g is None else 1 if (g != task.invalid_state and task.valid(g)) else 2
                     for g in targets], dtype=np.int64)                        # rejected, valid, invalid
    same = np.array([g == source for g in targets], dtype=bool)
    valid, invalid = float(p[kind == 1].sum()), float(p[kind == 2].sum())
    rejected_answers = float(p[kind == 0].sum())
    found = float(p.sum()) + enum.hopeless
    return {"found": found, "valid": valid, "self": float(p[same].sum()), "invalid": invalid,
            "rejected": rejected_answers + enum.hopeless, "rejected_answers": rejected_answers,
            "hopeless": enum.hopeless, "not_enumerated": 1.0 - found, "truncated": enum.truncated,
            "below_eps": enum.below, "answers": len(targets), "hopeless_prefixes": enum.n_hopeless,
            "truncated_prefixes": enum.n_truncated, "depth": enum.depth}


@dataclass
class Closure:
    """The search order: sources are the valid states in order of discovery (starts first);
    each is searched once. Deterministic: the next batch depends only on what was absorbed."""

    states: list[str]                                      # valid states, in order of discovery
    searched: list[str] = field(default_factory=list)
    found_by: dict = field(default_factory=dict)           # state -> the source that first answered it

    def __post_init__(self):
        self._seen = set(self.states)
        self._done = set(self.searched)

    def next_sources(self, n: int, *, max_states: int | None = None) -> list[str]:
        """The next n states not yet searched (fewer at the end, or once max_states are searched)."""
        room = n if max_states is None else max(0, min(n, max_states - len(self.searched)))
        return [s for s in self.states if s not in self._done][:room]

    def absorb(self, source: str, valid_targets: list[str]) -> list[str]:
        """Mark `source` searched and take its valid targets in; returns the new states."""
        if source in self._done:
            raise DbgpuError(f"state {source} was searched twice")
        self.searched.append(source)
        self._done.add(source)
        new = []
        for g in valid_targets:
            if g not in self._seen:
                self._seen.add(g)
                self.states.append(g)
                self.found_by[g] = source
                new.append(g)
        return new

    @property
    def closed(self) -> bool:
        return len(self.searched) == len(self.states)
