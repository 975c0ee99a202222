"""Work accounting for one scoring call: what ran through the model and how fast."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScoreStats:
    """Counters a scorer adds to; `as_dict` is what meta.json records under `scoring`."""

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

    def count(self, *, tokens: int, padded: int, logits: int) -> None:
        """One forward pass: real token positions, positions with padding, logit positions."""
        self.forward_passes += 1
        self.tokens += tokens
        self.padded_tokens += padded
        self.logit_positions += logits

    def record_peak_memory(self, device) -> None:
        """Peak CUDA memory allocated on `device` since its last reset (nothing on the CPU)."""
        import torch

        if device.type == "cuda":
            self.peak_memory_bytes = torch.cuda.max_memory_allocated(device)


def merge_stats(parts: list[dict]) -> dict:
    """ScoreStats.as_dict() of several scoring calls (row blocks) as one: counters and
    seconds summed (compute seconds, summed over ranks), peak memory and chunks the most,
    rows per forward the fewest; rates recomputed from the sums."""
    total: dict = {}
    summed = ("seconds", "forward_passes", "tokens", "padded_tokens", "logit_positions", "pairs", "oom_backoffs")
    for p in parts:
        for k, v in p.items():
            if k in summed:
                total[k] = total.get(k, 0) + (v or 0)
            elif k in ("peak_memory_bytes", "target_chunks"):
                total[k] = v if total.get(k) is None else max(total[k], v or 0)
            elif k in ("rows_per_forward", "shared_prefix"):
                total[k] = v if k not in total else min(total[k], v)
            elif k not in ("pairs_per_second", "tokens_per_second"):
                total.setdefault(k, v)
    for k in summed[:-1]:
        total.setdefault(k, 0)
    total.setdefault("peak_memory_bytes", None)
    secs = total["seconds"]
    total["pairs_per_second"] = total["pairs"] / secs if secs else None
    total["tokens_per_second"] = total["tokens"] / secs if secs else None
    return total
