"""Rows of token ids for a forward pass: padding, and a shared prefix run once.

Used by every scorer and by the sampler:

- `pad_sequences`: ids, attention mask and position ids of sequences padded to one
  width (left or right); positions ignore the padding.
- `run_prefix`: one decoder pass of a prefix shared by many rows, its KV cache kept.
- `prefill`: the sampler's prompt pass; equal to a plain left-padded forward of the
  prompts, but with their common prefix run once and shifted into each row.

Both run the decoder only (`head.hidden_states`): logits are the float32 head's business.
"""

from __future__ import annotations

import torch

from dbgpu.devices import input_device
from dbgpu.models import text_config
from dbgpu.scoring.head import hidden_states
from dbgpu.scoring.trie import common_prefix_length


def pad_sequences(seqs: list[list[int]], *, pad_id: int, side: str = "left",
                  device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids), each (B, T): sequences aligned right (left
    padding) or left (right padding); position ids count real tokens only."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be left or right, not {side!r}")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):                        # B rows, not a token loop
        off = T - len(s) if side == "left" else 0
        ids[b, off:off + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, off:off + len(s)] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


@torch.inference_mode()
def run_prefix(model, ids: list[int], *, full_layers: bool = False):
    """The KV cache of one forward pass over a shared prefix (1, L).

    full_layers=True keeps every position in every layer (a plain DynamicCache, also for
    sliding-window layers), as the tree scorer needs; otherwise the model's own default
    cache. No logits are computed.
    """
    from transformers import DynamicCache

    device = input_device(model)
    _, cache = hidden_states(model, input_ids=torch.tensor([ids], device=device), use_cache=True,
                             cache=DynamicCache() if full_layers else None)
    return cache


def _window_allows(model, total: int) -> bool:
    """No sliding window that prompts of `total` tokens outgrow (its cache layers would keep
    only the window's last tokens, not the whole prefix that rows are shifted along)."""
    window = getattr(text_config(model), "sliding_window", None)
    return window is None or total < window


def _plain_layers(cache) -> bool:
    """Only key/value layers (no recurrent state) that can be gathered along the sequence."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x).__name__ in ("DynamicLayer", "DynamicSlidingWindowLayer") for x in layers)


def _shift_into_rows(cache, pad: torch.Tensor, L: int) -> None:
    """Expand a (1, H, L, D) prefix cache to (U, H, L, D) in place, row u shifted right by
    pad[u]: slot s of row u holds prefix position s - pad[u] (slots before it are padding)."""
    U = len(pad)
    src = (torch.arange(L, device=pad.device)[None, :] - pad[:, None]).clamp(min=0)  # (U, L)
    for layer in cache.layers:
        H, D = layer.keys.shape[1], layer.keys.shape[3]
        idx = src[:, None, :, None].expand(U, H, L, D)
        layer.keys = layer.keys.expand(U, -1, -1, -1).gather(2, idx)
        layer.values = layer.values.expand(U, -1, -1, -1).gather(2, idx)


@torch.inference_mode()
def prefill(model, prompts: list[list[int]], *, pad_id: int, min_shared: int = 16):
    """Run distinct prompts through the decoder: (last hidden states (U, H), KV cache, mask (U, T),
    positions (U, T)).

    The result is the plain left-padded prefill's (the layout the decode loop continues),
    but when the prompts share a prefix of at least `min_shared` tokens (a task's prompts
    differ only around the state), that prefix is run once: row u is [pad]*k_u + prompt u
    with k_u = S - s_u (s_u its suffix length, S the longest); its first L = prefix-length
    cache slots hold the prefix's first L - k_u positions shifted right by k_u, gathered
    from the single prefix pass, and only the last S columns are run for all rows.
    """
    device = input_device(model)
    ids, mask, pos = pad_sequences(prompts, pad_id=pad_id, side="left", device=device)   # (U, T)
    U, T = ids.shape
    L = common_prefix_length(prompts) if U > 1 else 0                           # each keeps >= 1 token
    if L >= min_shared and _window_allows(model, T):
        cache = run_prefix(model, prompts[0][:L])                               # (1, H, L, D) per layer
        if _plain_layers(cache):
            _shift_into_rows(cache, T - torch.tensor([len(p) for p in prompts], device=device), L)
            h, cache = hidden_states(model, input_ids=ids[:, L:], attention_mask=mask, position_ids=pos[:, L:],
                                     use_cache=True, cache=cache)
            return h[:, -1], cache, mask, pos
    h, cache = hidden_states(model, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    return h[:, -1], cache, mask, pos
