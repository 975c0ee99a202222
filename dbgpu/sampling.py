"""Batched sampling: the agent's generative move, exactly the one the exact kernel describes.

Pure temperature sampling, written out here instead of `generate()`: softmax(z / tau)
over the whole vocabulary at every step, no top-k, top-p, min-p, repetition penalty or
any other processor a model's generation config may set. An answer ends at a stop
token (end-of-turn / EOS); an answer that has not ended after `max_new_tokens` is
marked truncated, since its text is not the whole answer.

Identical prompts in a batch are run through the model once: the prefill is done on
the distinct prompts and the KV cache is then gathered out to every slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dbgpu.models import cache_kwarg, output_cache


@dataclass
class Sample:
    ids: list[int]        # generated token ids, the stop token excluded
    stopped: bool         # ended with a stop token (False: hit max_new_tokens)
    stop_id: int | None   # which stop token ended it


def left_pad(seqs: list[list[int]], *, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids), each (B, T), sequences right-aligned."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, T - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


@torch.inference_mode()
def sample_answers(model, prompts: list[list[int]], *, temperature: float, max_new_tokens: int,
                   stop_ids: list[int], pad_id: int, generator: torch.Generator) -> list[Sample]:
    """One sampled answer per prompt (prompts may repeat). `generator` lives on the model's device."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    device = next(model.parameters()).device
    # Prefill each distinct prompt once.
    keys = [tuple(p) for p in prompts]
    uniq = list(dict.fromkeys(keys))
    slot_of = {k: i for i, k in enumerate(uniq)}
    inverse = torch.tensor([slot_of[k] for k in keys], device=device)          # (B,)
    ids, mask, pos = left_pad([list(k) for k in uniq], pad_id=pad_id, device=device)  # (U, T)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    if len(uniq) != len(prompts) or len(uniq) > 1:
        cache.reorder_cache(inverse)                                            # (U, ...) -> (B, ...)
    logits = out.logits[:, -1][inverse]                                         # (B, V)
    mask, next_pos = mask[inverse], pos[inverse, -1]                             # (B, T), (B,)
    B = len(prompts)
    stops = torch.tensor(stop_ids, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens = []
    ckey = cache_kwarg(model)
    for _ in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, dim=-1)             # (B, V)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)       # (B,)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        done = done | torch.isin(nxt, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        next_pos = next_pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    use_cache=True, **{ckey: cache})
        cache = output_cache(out)
        logits = out.logits[:, -1]
    gen = torch.stack(tokens, dim=1).tolist()                                   # (B, steps)
    stop_set = set(stop_ids)
    samples = []
    for row in gen:
        for i, t in enumerate(row):
            if t in stop_set:
                samples.append(Sample(ids=row[:i], stopped=True, stop_id=t))
                break
        else:
            samples.append(Sample(ids=row, stopped=False, stop_id=None))
    return samples
