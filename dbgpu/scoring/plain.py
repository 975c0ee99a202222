"""The reference scorer: every (prompt, continuation) pair its own padded row.

    log T(f, g) = sum_t log softmax(z_t / tau)[y_t]

over the tokens y of continuation(g) (answer + end-of-turn token), given prompt(f).
Many rows per forward pass, within a token budget. The decoder runs in the model dtype;
the logits of the continuation positions only are computed by the float32 head
(`head.token_logprobs`, chunked over positions); sums in float64. Cost: every pair's full
sequence runs through the model, N^2 x (prompt + continuation) token positions; memory is
one batch of `batch_tokens` positions (hidden states) plus one chunk of float32 logits.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dbgpu.console import progress as progress_bar
from dbgpu.devices import input_device
from dbgpu.errors import DbgpuError
from dbgpu.scoring.head import hidden_states, output_head, temperature_tuple, token_logprobs
from dbgpu.scoring.prefix import pad_sequences
from dbgpu.scoring.stats import ScoreStats

PLAIN_BATCH_TOKENS = 16384           # token positions per forward when the caller names none


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


def _score_batch(model, head, seqs: list[list[int]], plen: np.ndarray, clen: np.ndarray, *, side: str,
                 temperature: tuple, pad_id: int, stats: ScoreStats, max_elements: int | None) -> np.ndarray:
    """Sum of continuation log-probs of B padded rows (prompt + continuation): (len(tau), B) float64."""
    device = input_device(model)
    with stats.stage("masks", device):
        ids, mask, pos = pad_sequences(seqs, pad_id=pad_id, side=side, device=device)  # (B, T)
        B, T = ids.shape
        C = int(clen.max())
        lens = torch.as_tensor([len(s) for s in seqs], device=device)                 # (B,)
        start = (T - lens if side == "left" else torch.zeros_like(lens)) + torch.as_tensor(plen, device=device)
        # Continuation token at absolute position s+i is predicted at s+i-1.
        i = torch.arange(C, device=device)                                            # (C,)
        valid = i[None, :] < torch.as_tensor(clen, device=device)[:, None]             # (B, C)
        tgt_pos = (start[:, None] + i[None, :]).clamp(max=T - 1)                       # (B, C)
        flat = (torch.arange(B, device=device)[:, None] * T + tgt_pos - 1)[valid]     # (K,) predicting rows
        targets = ids.gather(1, tgt_pos)[valid]                                       # (K,)
    with stats.stage("forward", device):
        h, _ = hidden_states(model, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    with stats.stage("head", device):
        picked = h.reshape(B * T, -1)[flat]                                           # (K, H) only what is scored
        lp = token_logprobs(head, picked, torch.arange(len(flat), device=device), targets,
                            temperature=temperature, max_elements=max_elements)      # (T, K)
    with stats.stage("reduction", device):
        sums = torch.zeros((len(temperature), B, C), dtype=torch.float64, device=device)
        sums[:, valid] = lp.double()
        total = sums.sum(-1)                                                          # (T, B)
    with stats.stage("transfer", device):
        out = total.cpu().numpy()
    stats.count(tokens=int(mask.sum()), padded=B * T, logits=len(flat))
    return out


@torch.inference_mode()
def score_sequences(model, prompts: list[list[int]], conts: list[list[int]], pairs: np.ndarray, *,
                    temperature=1.0, batch_tokens: int | None = None, max_batch: int = 256,
                    padding_side: str = "left", pad_id: int = 0, progress: bool = False,
                    stats: ScoreStats | None = None, max_logits: int | None = None) -> np.ndarray:
    """Sum of continuation log-probs for each (prompt index, continuation index) row of `pairs`.

    pairs: (P, 2) int array. Returns (P,) float64; for a sequence of temperatures
    (len(tau), P), every one from the same forwards. batch_tokens: token positions per forward
    (default PLAIN_BATCH_TOKENS); max_logits: float32 logits the head holds at once (default
    `head.default_max_elements`).
    """
    batch_tokens = batch_tokens or PLAIN_BATCH_TOKENS
    taus = temperature_tuple(temperature)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, not {padding_side!r}")
    if any(len(c) == 0 for c in conts) or any(len(p) == 0 for p in prompts):
        raise DbgpuError("a prompt or continuation has no tokens")
    device = input_device(model)
    plen = np.array([len(p) for p in prompts], dtype=np.int64)
    clen = np.array([len(c) for c in conts], dtype=np.int64)
    lengths = plen[pairs[:, 0]] + clen[pairs[:, 1]]                 # (P,)
    out = np.empty((len(taus), len(pairs)), dtype=np.float64)
    head = output_head(model)
    stats = stats if stats is not None else ScoreStats()
    stats.begin(device)
    t0 = time.perf_counter()
    bar = progress_bar(total=len(pairs), enabled=progress, desc="scoring pairs", unit="pair")
    for rows in _batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch):
        f, g = pairs[rows, 0], pairs[rows, 1]
        out[:, rows] = _score_batch(model, head, [prompts[a] + conts[b] for a, b in zip(f, g)], plen[f], clen[g],
                                 side=padding_side, temperature=taus, pad_id=pad_id, stats=stats,
                                 max_elements=max_logits)
        bar.update(len(rows))
    bar.close()
    stats.pairs += len(pairs)
    stats.seconds += time.perf_counter() - t0
    stats.record_peak_memory(device)
    return out[0] if isinstance(temperature, (int, float)) else out
