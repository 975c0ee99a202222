"""Work accounting for one scoring call: what ran through the model, how fast, in which stage.

Each stage is timed twice: host wall time (`stage_seconds`: what the Python thread spent,
launches only when the GPU runs behind) and device time (`stage_device_seconds`) by a
`device_clock`: CUDA events recorded on the stream around the stage on a CUDA device
(read once the scoring call is over, so no synchronize is added per stage),
`time.perf_counter` on the CPU (where the two are the same). `count_syncs` counts the
host-device synchronisations of a block of work and where they come from; `top_kernels`
reads the heaviest operators off a torch.profiler run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

STAGES = ("prefix", "masks", "forward", "head", "reduction", "transfer")
_SETTLE_EVERY = 4096                 # pending CUDA event pairs read (one wait) once this many are held


class WallClock:
    """Marks from time.perf_counter: a stage's time as the host sees it (the CPU's own)."""

    kind = "perf_counter"

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start


class CudaEventClock:
    """Marks are CUDA events recorded on the device's current stream: the seconds between
    two are the GPU's, however far the host ran ahead; reading them waits for the later
    event only (no device-wide synchronize)."""

    kind = "cuda_events"

    def __init__(self, device):
        self.device = device

    def mark(self):
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start, end) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1e3                    # elapsed_time is in milliseconds


def device_clock(device):
    """The clock that times work on `device`: CUDA events on CUDA, perf_counter elsewhere."""
    return CudaEventClock(device) if getattr(device, "type", str(device)) == "cuda" else WallClock()


@dataclass
class ScoreStats:
    """Counters a scorer adds to; `as_dict` is what meta.json records under `scoring`.

    Stages (`STAGES`) are timed with `stage(...)`, which also labels them for
    torch.profiler (`dbgpu.<stage>`): host wall seconds in `stage_seconds`, the device's
    seconds (`device_clock`) in `stage_device_seconds`. With `sync` (set by `dbgpu score
    --profile`) each stage also ends with a CUDA synchronize, so its wall time is the
    device's too.
    """

    seconds: float = 0.0
    forward_passes: int = 0
    tokens: int = 0             # real (non-pad) token positions run through the model
    padded_tokens: int = 0      # positions including padding
    logit_positions: int = 0    # positions whose logits were computed (float32 head + log-softmax)
    pairs: int = 0
    peak_memory_bytes: int | None = None
    stage_seconds: dict = field(default_factory=dict)
    stage_device_seconds: dict = field(default_factory=dict)
    stage_clock: str | None = None      # "cuda_events" or "perf_counter": what stage_device_seconds measured
    sync: bool = False
    extra: dict = field(default_factory=dict)
    _pending: list = field(default_factory=list, repr=False)   # (stage, clock, start mark, end mark) not yet read

    def as_dict(self) -> dict:
        self.settle()
        d = {k: v for k, v in self.__dict__.items() if k not in ("extra", "sync", "_pending")}
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
        """Time a stage (adding to stage_seconds[name], and to stage_device_seconds[name] once
        its marks are read) under a profiler label."""
        import torch

        from dbgpu.devices import synchronize

        clock = device_clock(device)
        self.stage_clock = clock.kind
        with torch.profiler.record_function(f"dbgpu.{name}"):
            start = clock.mark()
            t0 = time.perf_counter()
            try:
                yield
            finally:
                end = clock.mark()
                if self.sync:
                    synchronize(device)
                self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - t0
                self._pending.append((name, clock, start, end))
                if len(self._pending) >= _SETTLE_EVERY:
                    self.settle()

    def settle(self) -> None:
        """Read the pending marks into stage_device_seconds (on CUDA: waits for the last)."""
        for name, clock, start, end in self._pending:
            self.stage_device_seconds[name] = self.stage_device_seconds.get(name, 0.0) + clock.seconds(start, end)
        self._pending.clear()

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

    seconds: host wall time; device s: the device's time in the stage (CUDA events, or
    perf_counter on the CPU), when recorded. tokens/s (from device seconds when known):
    prefix and forward count the token positions run through the decoder, head the
    positions whose float32 logits were computed; "other" is the rest of the call (trie
    building, Python, waiting) and "total" all of it.
    """
    secs = scoring.get("stage_seconds") or {}
    dev = scoring.get("stage_device_seconds") or {}
    total = scoring.get("seconds") or sum(secs.values()) or float("nan")
    prefix_tokens = scoring.get("shared_prefix") or 0
    rate = {"prefix": prefix_tokens, "forward": scoring["tokens"] - prefix_tokens,
            "head": scoring["logit_positions"]}
    rows = [(name, secs[name], dev.get(name), rate.get(name)) for name in STAGES if name in secs]
    rows.append(("other", max(total - sum(secs.values()), 0.0), None, None))
    rows.append(("total", total, sum(dev.values()) if dev else None, scoring["tokens"]))
    lines = ["| stage | seconds | share | device s | tokens/s |", "|---|---:|---:|---:|---:|"]
    for name, s, d, n in rows:
        t = d if d is not None and name != "total" else s
        tps = f"{n / t:,.0f}" if n and t > 0 else "-"
        ds = f"{d:.3f}" if d is not None else "-"
        lines.append(f"| {name} | {s:.3f} | {s / total:.1%} | {ds} | {tps} |")
    clock = scoring.get("stage_clock")
    if clock:
        lines.append(f"\ndevice s measured with {'CUDA events' if clock == 'cuda_events' else 'perf_counter'}")
    return "\n".join(lines)


@dataclass
class SyncCount:
    """Host-device synchronisations counted by `count_syncs`: how many, and from where."""

    syncs: int = 0
    sites: dict = field(default_factory=dict)       # "file.py:line" -> count
    supported: bool = False                         # False: not a CUDA device, nothing was counted

    def top(self, n: int = 5) -> list[tuple[str, int]]:
        return sorted(self.sites.items(), key=lambda kv: -kv[1])[:n]


@contextmanager
def count_syncs(device):
    """Count the host-device synchronisations in the block: on CUDA,
    torch.cuda.set_sync_debug_mode("warn") makes every synchronising call (.item(), .cpu(),
    .tolist(), a non-blocking-less copy to the host, torch.cuda.synchronize ...) warn, and each
    warning is counted with its Python call site; the previous mode is restored. On the CPU
    there is nothing to count (supported False)."""
    import warnings

    import torch

    out = SyncCount()
    if getattr(device, "type", str(device)) != "cuda":
        yield out
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield out
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    out.supported = True
    for w in caught:
        if "synchroniz" in str(w.message):
            out.syncs += 1
            site = f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}"
            out.sites[site] = out.sites.get(site, 0) + 1


def top_kernels(prof, *, n: int = 10, device_type: str = "cpu", per: int = 1) -> list[dict]:
    """The n operators / kernels with the most self time in a finished torch.profiler run:
    [{name, calls, ms}] with calls and ms (the self time: the device's on CUDA, the CPU's
    otherwise) divided by `per` (e.g. the forwards profiled, for per-forward figures)."""
    attr = "self_device_time_total" if device_type == "cuda" else "self_cpu_time_total"
    rows = []
    for evt in prof.key_averages():
        us = getattr(evt, attr, None)
        if us is None and device_type == "cuda":
            us = getattr(evt, "self_cuda_time_total", 0)
        if not us or evt.key.startswith("dbgpu."):
            continue
        rows.append({"name": evt.key, "calls": int(evt.count) / max(per, 1), "ms": us / 1e3 / max(per, 1)})
    rows.sort(key=lambda r: -r["ms"])
    return rows[:n]


def kernel_table(rows: list[dict]) -> str:
    """`top_kernels` as a Markdown table."""
    lines = ["| kernel / operator | calls | self ms |", "|---|---:|---:|"]
    lines += [f"| `{r['name'][:80]}` | {r['calls']:g} | {r['ms']:.3f} |" for r in rows]
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
            elif k in ("stage_seconds", "stage_device_seconds"):
                total.setdefault(k, {})
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
