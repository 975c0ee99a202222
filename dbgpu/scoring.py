"""Exact transition kernels by teacher forcing.

    log T(f, g) = sum_t log softmax(z_t / tau)[y_t]

over the tokens y of continuation(g) (answer + end-of-turn token), given prompt(f).
Log-softmax in float32 whatever the model dtype, sums in float64.

`score_sequences` is the batched reference ("plain") scorer: every (prompt, continuation)
pair is one padded row, many rows per forward pass, and only the continuation
positions' logits are computed (left padding + `logits_to_keep`). The fast scorer
(shared prefix + continuation trie) is `dbgpu.tree`; `score_matrix` dispatches.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dbgpu.errors import DbgpuError


@dataclass
class ScoreStats:
    """Work accounting for one scoring call."""

    seconds: float = 0.0
    forward_passes: int = 0
    tokens: int = 0             # real (non-pad) token positions run through the model
    padded_tokens: int = 0      # positions including padding
    logit_positions: int = 0    # positions whose logits were computed (lm head + log-softmax)
    pairs: int = 0
    peak_memory_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d["pairs_per_second"] = self.pairs / self.seconds if self.seconds else None
        d["tokens_per_second"] = self.tokens / self.seconds if self.seconds else None
        return {**d, **self.extra}


def _accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def continuation_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """log softmax(logits / tau)[targets] in float32.  (B, K, V), (B, K) -> (B, K)"""
    z = logits.float() / temperature                                # (B, K, V)
    picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)        # (B, K)
    return picked - torch.logsumexp(z, dim=-1)                      # (B, K)


def _batches(lengths: np.ndarray, *, batch_tokens: int, max_batch: int) -> list[np.ndarray]:
    """Row indices grouped into batches, longest rows first, each within the token budget."""
    order = np.argsort(-lengths, kind="stable")
    out, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])          # rows are sorted: the first is the longest
        size = max(1, min(max_batch, batch_tokens // max(width, 1)))
        out.append(order[start:start + size])
        start += size
    return out


@torch.inference_mode()
def score_sequences(model, prompts: list[list[int]], conts: list[list[int]], pairs: np.ndarray, *,
                    temperature: float = 1.0, batch_tokens: int = 16384, max_batch: int = 256,
                    padding_side: str = "left", pad_id: int = 0, progress: bool = False,
                    stats: ScoreStats | None = None) -> np.ndarray:
    """Sum of continuation log-probs for each (prompt index, continuation index) row of `pairs`.

    pairs: (P, 2) int array. Returns (P,) float64.
    """
    if temperature <= 0:
        raise DbgpuError(f"temperature must be positive, got {temperature}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, not {padding_side!r}")
    if any(len(c) == 0 for c in conts) or any(len(p) == 0 for p in prompts):
        raise DbgpuError("a prompt or continuation has no tokens")
    device = next(model.parameters()).device
    plen = np.array([len(p) for p in prompts], dtype=np.int64)
    clen = np.array([len(c) for c in conts], dtype=np.int64)
    lengths = plen[pairs[:, 0]] + clen[pairs[:, 1]]                 # (P,)
    out = np.empty(len(pairs), dtype=np.float64)
    keep_ok = _accepts(model, "logits_to_keep")
    stats = stats if stats is not None else ScoreStats()
    t0 = time.perf_counter()
    batches = _batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch)
    bar = _progress(total=len(pairs), enabled=progress, desc="scoring pairs")
    for rows in batches:
        B, T = len(rows), int(lengths[rows].max())
        C = int(clen[pairs[rows, 1]].max())
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        start = torch.empty(B, dtype=torch.long)                     # first continuation position
        for b, r in enumerate(rows):                                  # building rows, not a hot loop
            seq = prompts[pairs[r, 0]] + conts[pairs[r, 1]]
            off = T - len(seq) if padding_side == "left" else 0
            ids[b, off:off + len(seq)] = torch.tensor(seq)
            mask[b, off:off + len(seq)] = 1
            start[b] = off + plen[pairs[r, 0]]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)                      # (B, T) positions ignore padding
        ids, mask, pos, start = (x.to(device) for x in (ids, mask, pos, start))
        # Left padding: every continuation ends at T-1, so only the last C+1 positions matter.
        keep = C + 1 if (padding_side == "left" and keep_ok) else T
        kwargs = {"logits_to_keep": keep} if keep_ok else {}
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                       **kwargs).logits[:, -keep:]                     # (B, keep, V)
        # Continuation token at absolute position s+i is predicted at s+i-1.
        i = torch.arange(C, device=device)                            # (C,)
        clen_b = torch.as_tensor(clen[pairs[rows, 1]], device=device)  # (B,)
        tgt_pos = (start[:, None] + i[None, :]).clamp(max=T - 1)       # (B, C)
        valid = i[None, :] < clen_b[:, None]                          # (B, C)
        targets = ids.gather(1, tgt_pos)                              # (B, C)
        pred_pos = (tgt_pos - 1 - (T - keep)).clamp(min=0)             # (B, C) index into logits
        pred = logits[torch.arange(B, device=device)[:, None], pred_pos]  # (B, C, V)
        lp = continuation_logprobs(pred, targets, temperature=temperature)  # (B, C)
        out[rows] = (lp.double() * valid).sum(-1).cpu().numpy()
        stats.forward_passes += 1
        stats.tokens += int(mask.sum())
        stats.padded_tokens += B * T
        stats.logit_positions += B * keep
        bar.update(B)
    bar.close()
    stats.pairs += len(pairs)
    stats.seconds += time.perf_counter() - t0
    if device.type == "cuda":
        stats.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    return out


METHODS = ("tree", "plain")


def score_matrix(model, prompts: list[list[int]], conts: list[list[int]], *, method: str = "plain",
                 **kwargs) -> np.ndarray:
    """log T for every (prompt, continuation) pair: (N, M) float64, row = source.

    method="plain": every pair its own padded row (the reference; kwargs batch_tokens,
    max_batch, padding_side). method="tree": shared-prefix cache + continuation trie
    (`dbgpu.tree`; kwargs max_logits, max_rows). Both take temperature, pad_id,
    progress, stats.
    """
    if method == "tree":
        from dbgpu.tree import tree_score_matrix

        return tree_score_matrix(model, prompts, conts, **kwargs)
    if method != "plain":
        raise DbgpuError(f"unknown scoring method {method!r} (use {' or '.join(METHODS)})")
    N, M = len(prompts), len(conts)
    pairs = np.stack(np.meshgrid(np.arange(N), np.arange(M), indexing="ij"), -1).reshape(-1, 2)
    return score_sequences(model, prompts, conts, pairs, **kwargs).reshape(N, M)


def _progress(*, total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pair", disable=None if enabled else True, leave=False, dynamic_ncols=True)
