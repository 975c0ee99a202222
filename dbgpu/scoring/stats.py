"""Work accounting for one scoring call: what ran through the model, how fast, in which stage."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

STAGES = ("prefix", "masks", "forward", "head", "reduction", "transfer")


@dataclass
class ScoreStats:
    """Counters a scorer adds to; `as_dict` is what meta.json records under `scoring`.

    Stages (`STAGES`) are timed with `stage(...)`, which also labels them for
    torch.profiler (`dbgpu.<stage>`). With `sync` (set by `dbgpu score --profile`) each
    stage ends with a CUDA synchronize, so its wall time is the device's, not the launch's.
    """

    seconds: float = 0.0
    forward_passes: int = 0
    tokens: int = 0             # real (non-pad) token positions run through the model
    padded_tokens: int = 0      # positions including padding
    logit_positions: int = 0    # positions whose logits were computed (float32 head + log-softmax)
    pairs: int = 0
    peak_memory_bytes: int | None = None
    stage_seconds: dict = field(default_factory=dict)
    sync: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("extra", "sync")}
        d["pairs_per_second"] = self.pairs / self.seconds if self.seconds else None
        d["tokens_per_second"] = self.tokens / self.seconds if self.seconds else None
        return {**d, **self.extra}

    def count(self, *, tokens: int, padded: int, logits: int) -> None:
        """One forward pass: real token positions, positions with padding, logit positions."""
        self.forward_passes += 1
        self.tokens += tokens
        self.padded_tokens += padded
        self.logit_positions += logits

    @contextmanager
    def stage(self, name: str, device):
        """Time a stage (adding to stage_seconds[name]) under a profiler label."""
        import torch

        from dbgpu.devices import synchronize

        with torch.profiler.record_function(f"dbgpu.{name}"):
            t0 = time.perf_counter()
            try:
                yield
            finally:
                if self.sync:
                    synchronize(device)
                self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - t0

    def begin(self, device) -> None:
        """A measured scoring call starts: the peak-memory measurement starts here (CUDA)."""
        from dbgpu.devices import reset_peak_memory

        reset_peak_memory(device)

    def record_peak_memory(self, device) -> None:
        """Peak CUDA memory allocated on `device` since `begin` (nothing on the CPU); the
        largest over the calls counted into these stats."""
        from dbgpu.devices import peak_memory

        peak = peak_memory(device)
        if peak is not None:
            self.peak_memory_bytes = max(peak, self.peak_memory_bytes or 0)


def stage_table(scoring: dict) -> str:
    """A Markdown table of time per stage with throughput, from `ScoreStats.as_dict()`.

    tokens/s: prefix and forward count the token positions run through the decoder, head
    the positions whose float32 logits were computed; "other" is the rest of the call
    (trie building, Python, waiting) and "total" all of it.
    """
    secs = scoring.get("stage_seconds") or {}
    total = scoring.get("seconds") or sum(secs.values()) or float("nan")
    prefix_tokens = scoring.get("shared_prefix") or 0
    rate = {"prefix": prefix_tokens, "forward": scoring["tokens"] - prefix_tokens,
            "head": scoring["logit_positions"]}
    rows = [(name, secs[name], rate.get(name)) for name in STAGES if name in secs]
    rows.append(("other", max(total - sum(secs.values()), 0.0), None))
    rows.append(("total", total, scoring["tokens"]))
    lines = ["| stage | seconds | share | tokens/s |", "|---|---:|---:|---:|"]
    for name, s, n in rows:
        tps = f"{n / s:,.0f}" if n and s > 0 else "-"
        lines.append(f"| {name} | {s:.3f} | {s / total:.1%} | {tps} |")
    return "\n".join(lines)


def merge_stats(parts: list[dict]) -> dict:
    """ScoreStats.as_dict() of several scoring calls (row blocks) as one: counters, seconds
    and per-stage seconds summed (compute seconds, summed over ranks), peak memory and
    target chunks the most, rows per forward and shared prefix the least; rates recomputed."""
    total: dict = {"stage_seconds": {}}
    summed = ("seconds", "forward_passes", "tokens", "padded_tokens", "logit_positions", "pairs", "oom_backoffs")
    for p in parts:
        for k, v in p.items():
            if k in summed:
                total[k] = total.get(k, 0) + (v or 0)
            elif k == "stage_seconds":
                for name, s in (v or {}).items():
                    total[k][name] = total[k].get(name, 0.0) + s
            elif k in ("peak_memory_bytes", "target_chunks", "tokens_per_forward"):
                total[k] = v if total.get(k) is None else max(total[k], v or 0)
            elif k in ("rows_per_forward", "shared_prefix"):
                total[k] = v if k not in total else min(total[k], v)
            elif k not in ("pairs_per_second", "tokens_per_second", "plan"):   # a call's plan: not the job's
                total.setdefault(k, v)
    for k in summed[:-1]:
        total.setdefault(k, 0)
    total.setdefault("peak_memory_bytes", None)
    secs = total["seconds"]
    total["pairs_per_second"] = total["pairs"] / secs if secs else None
    total["tokens_per_second"] = total["tokens"] / secs if secs else None
    return total
