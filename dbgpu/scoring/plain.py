"""The reference scorer: every (prompt, continuation) pair its own padded row.

    log T(f, g) = sum_t log softmax(z_t / tau)[y_t]

over the tokens y of continuation(g) (answer + end-of-turn token), given prompt(f).
Many rows per forward pass, within a token budget; only the continuation positions'
logits are computed (left padding + `logits_to_keep`). Log-softmax in float32, sums in
float64. Cost: every pair's full sequence runs through the model, N^2 x (prompt +
continuation) token positions; memory is one batch of `batch_tokens` positions plus its
kept logits (rows x (C + 1) x vocab float32).
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch

from dbgpu.console import progress as progress_bar
from dbgpu.errors import DbgpuError, check_temperature
from dbgpu.scoring.prefix import pad_sequences
from dbgpu.scoring.stats import ScoreStats


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


def _score_batch(model, seqs: list[list[int]], plen: np.ndarray, clen: np.ndarray, *, side: str,
                 temperature: float, pad_id: int, keep_ok: bool, stats: ScoreStats) -> np.ndarray:
    """Sum of continuation log-probs of B padded rows (prompt + continuation): (B,) float64."""
    device = next(model.parameters()).device
    ids, mask, pos = pad_sequences(seqs, pad_id=pad_id, side=side, device=device)  # (B, T)
    B, T = ids.shape
    C = int(clen.max())
    lens = torch.as_tensor([len(s) for s in seqs], device=device)     # (B,)
    start = (T - lens if side == "left" else torch.zeros_like(lens)) + torch.as_tensor(plen, device=device)
    # Left padding: every continuation ends at T-1, so only the last C+1 positions matter.
    keep = C + 1 if (side == "left" and keep_ok) else T
    kwargs = {"logits_to_keep": keep} if keep_ok else {}
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                   **kwargs).logits[:, -keep:]                         # (B, keep, V)
    # Continuation token at absolute position s+i is predicted at s+i-1.
    i = torch.arange(C, device=device)                                # (C,)
    tgt_pos = (start[:, None] + i[None, :]).clamp(max=T - 1)           # (B, C)
    valid = i[None, :] < torch.as_tensor(clen, device=device)[:, None]  # (B, C)
    targets = ids.gather(1, tgt_pos)                                  # (B, C)
    pred_pos = (tgt_pos - 1 - (T - keep)).clamp(min=0)                 # (B, C) index into logits
    pred = logits[torch.arange(B, device=device)[:, None], pred_pos]  # (B, C, V)
    lp = continuation_logprobs(pred, targets, temperature=temperature)  # (B, C)
    stats.count(tokens=int(mask.sum()), padded=B * T, logits=B * keep)
    return (lp.double() * valid).sum(-1).cpu().numpy()


@torch.inference_mode()
def score_sequences(model, prompts: list[list[int]], conts: list[list[int]], pairs: np.ndarray, *,
                    temperature: float = 1.0, batch_tokens: int = 16384, max_batch: int = 256,
                    padding_side: str = "left", pad_id: int = 0, progress: bool = False,
                    stats: ScoreStats | None = None) -> np.ndarray:
    """Sum of continuation log-probs for each (prompt index, continuation index) row of `pairs`.

    pairs: (P, 2) int array. Returns (P,) float64.
    """
    check_temperature(temperature)
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
    bar = progress_bar(total=len(pairs), enabled=progress, desc="scoring pairs", unit="pair")
    for rows in _batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch):
        f, g = pairs[rows, 0], pairs[rows, 1]
        out[rows] = _score_batch(model, [prompts[a] + conts[b] for a, b in zip(f, g)], plen[f], clen[g],
                                 side=padding_side, temperature=temperature, pad_id=pad_id,
                                 keep_ok=keep_ok, stats=stats)
        bar.update(len(rows))
    bar.close()
    stats.pairs += len(pairs)
    stats.seconds += time.perf_counter() - t0
    stats.record_peak_memory(device)
    return out
