"""Every CUDA-only branch, forced on the CPU, so that a first run on a GPU finds as little
as possible new: segment sums in graph.py (and the fit and the power iteration through
them), peak-memory bookkeeping, stage synchronisation, cache release after an
out-of-memory error, CUDA-event stage timing and synchronisation counting. (The head's
float32-output GEMM is forced in test_head.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dbgpu.graph as graph
from dbgpu import synthetic as sy


def _random_incidence(n=40, E=300, seed=0):
    rng = np.random.default_rng(seed)
    src = np.sort(rng.integers(0, n, E))
    dst = rng.integers(0, n, E)
    return src, dst, rng.normal(size=E)


def test_segment_sums_equal_the_numpy_sums():
    """graph's torch backend (segment_reduce over sorted edges, what CUDA runs) on the CPU."""
    src, dst, y = _random_incidence()
    cpu = graph.incidence(40, src, dst, "cpu")                               # numpy backend
    seg = graph.incidence(40, src, dst, "cpu", backend="torch")
    assert seg.is_torch and not cpu.is_torch
    yt = torch.as_tensor(y)
    for fn in (graph.out_sum, graph.in_sum, graph.divergence):
        np.testing.assert_allclose(fn(seg, yt).numpy(), fn(cpu, y), atol=1e-12)
    np.testing.assert_allclose(graph.in_sum(seg, yt).numpy(), np.bincount(dst, y, minlength=40), atol=1e-12)
    np.testing.assert_allclose(graph.out_sum(seg, yt).numpy(), np.bincount(src, y, minlength=40), atol=1e-12)


def test_fit_through_the_torch_backend_equals_the_numpy_fit():
    from dbgpu.fit import fit_potential

    V, src, dst, logT = sy.sparse_kernel(600, seed=3, degree=5)
    w = np.exp(logT)
    a = fit_potential(600, src, dst, w, device="cpu")
    b = fit_potential(600, src, dst, w, device="cpu", backend="torch")
    np.testing.assert_allclose(b.V, a.V, atol=1e-9, equal_nan=True)
    assert b.action == pytest.approx(a.action, rel=1e-12)


def test_power_iteration_through_segment_sums():
    """stats' CUDA power iteration (_power_torch, torch segment sums), against the dense solve."""
    from dbgpu.stats import _power_torch, stationary

    V, src, dst, logT = sy.sparse_kernel(300, seed=2, degree=6)
    m = graph.strong_components(300, src, dst).label == 0            # the main component
    loc, e, n = np.cumsum(m) - 1, m[src] & m[dst], int(m.sum())
    s, d, w = loc[src[e]], loc[dst[e]], np.exp(logT[e])
    p = w / np.bincount(s, w, minlength=n)[s]
    dense, _ = stationary(n, s, d, p)
    got = _power_torch(n, s, d, p, np.full(n, 1 / n), 1e-14, 20000, torch.device("cpu"))
    np.testing.assert_allclose(got, dense, atol=1e-11)


class _FakeCuda:
    """Stands in for torch.cuda's bookkeeping calls; records them."""

    def __init__(self, peak):
        self.calls, self.peak = [], peak

    def reset_peak_memory_stats(self, device=None):
        self.calls.append(("reset", str(device)))

    def max_memory_allocated(self, device=None):
        self.calls.append(("peak", str(device)))
        return self.peak

    def synchronize(self, device=None):
        self.calls.append(("sync", str(device)))

    def empty_cache(self):
        self.calls.append(("empty", None))


class _FakeEvents:
    """torch.cuda.Event / current_stream stand-ins: an event records the fake device clock
    `now`, which the test advances as if the GPU did that much work behind the host."""

    def __init__(self):
        self.now, self.waits, self.streams = 0.0, 0, []
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing

            def record(self, stream=None):
                fake.streams.append(stream)
                self.t = fake.now

            def synchronize(self):
                fake.waits += 1

            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3               # milliseconds, as CUDA reports

        self.Event = Event

    def current_stream(self, device=None):
        return f"stream of {device}"


def _patch_cuda(monkeypatch, fake, events):
    for name in ("reset_peak_memory_stats", "max_memory_allocated", "synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "Event", events.Event)
    monkeypatch.setattr(torch.cuda, "current_stream", events.current_stream)


def test_memory_bookkeeping_and_stage_sync_on_a_cuda_device(monkeypatch):
    from dbgpu.devices import empty_cache
    from dbgpu.scoring import ScoreStats

    fake = _FakeCuda(peak=123)
    _patch_cuda(monkeypatch, fake, _FakeEvents())
    dev = torch.device("cuda:0")
    stats = ScoreStats(sync=True)
    stats.begin(dev)
    with stats.stage("forward", dev):
        pass
    stats.record_peak_memory(dev)
    fake.peak = 50                                    # a later, smaller call keeps the largest peak
    stats.begin(dev)
    stats.record_peak_memory(dev)
    empty_cache(dev)
    assert fake.calls == [("reset", "cuda:0"), ("sync", "cuda:0"), ("peak", "cuda:0"), ("reset", "cuda:0"),
                          ("peak", "cuda:0"), ("empty", None)]
    assert stats.peak_memory_bytes == 123 and "forward" in stats.stage_seconds
    cpu = ScoreStats(sync=True)
    cpu.begin(torch.device("cpu"))
    with cpu.stage("head", torch.device("cpu")):
        pass
    cpu.record_peak_memory(torch.device("cpu"))
    assert cpu.peak_memory_bytes is None and len(fake.calls) == 6       # nothing on the CPU


def test_stages_are_timed_by_cuda_events_on_a_cuda_device(monkeypatch):
    """On CUDA a stage's device seconds are the events' (the GPU's time, here 0.5 s and
    0.25 s of fake device work), not the host's (microseconds: the host only launched);
    reading them waits on events, never a device-wide synchronize unless sync is asked."""
    from dbgpu.scoring import ScoreStats
    from dbgpu.scoring.stats import CudaEventClock, WallClock, device_clock

    fake, events = _FakeCuda(peak=1), _FakeEvents()
    _patch_cuda(monkeypatch, fake, events)
    dev = torch.device("cuda:0")
    assert isinstance(device_clock(dev), CudaEventClock) and isinstance(device_clock(torch.device("cpu")), WallClock)
    stats = ScoreStats()
    for work in (0.5, 0.25):
        with stats.stage("forward", dev):
            events.now += work
    with stats.stage("head", dev):
        events.now += 0.125
    assert events.waits == 0                                 # nothing read before the call's end
    d = stats.as_dict()
    assert d["stage_clock"] == "cuda_events" and events.waits == 3
    assert d["stage_device_seconds"] == pytest.approx({"forward": 0.75, "head": 0.125}, abs=1e-12)  # exact sums of binary fractions
    assert d["stage_seconds"]["forward"] < 0.5                 # the host's time is not the device's
    assert set(events.streams) == {"stream of cuda:0"} and fake.calls == []   # no synchronize added
    assert stats.as_dict()["stage_device_seconds"]["forward"] == pytest.approx(0.75, abs=1e-12)  # read once


def test_synchronisations_are_counted_with_their_call_sites(monkeypatch):
    """count_syncs on CUDA: sync debug mode 'warn' while the block runs, every synchronising
    call's warning counted at its line, the previous mode restored; on the CPU nothing."""
    import warnings

    from dbgpu.scoring.stats import count_syncs

    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def item():                                   # what torch warns from an .item() under mode "warn"
        warnings.warn("called a synchronizing CUDA operation", UserWarning)

    with count_syncs(torch.device("cuda:0")) as n:
        item()
        item()
        warnings.warn("something else")           # not a synchronisation
    assert modes == ["warn", 0] and n.supported and n.syncs == 2
    (site, count), = n.top()
    assert site.startswith("test_cuda_branches.py:") and count == 2
    with count_syncs(torch.device("cpu")) as cpu, pytest.warns(UserWarning):
        item()
    assert not cpu.supported and cpu.syncs == 0 and modes == ["warn", 0]


def test_scorers_reset_the_peak_before_they_measure(tiny_lms, word_task, monkeypatch):
    """Peak memory is measured from the start of each scoring call, not since loading."""
    import dbgpu.scoring.stats as st
    from dbgpu.formatting import encode_states
    from dbgpu.scoring import ScoreStats, score_matrix

    order = []
    monkeypatch.setattr(st.ScoreStats, "begin", lambda self, device: order.append("begin"))
    monkeypatch.setattr(st.ScoreStats, "record_peak_memory", lambda self, device: order.append("peak"))
    lm = tiny_lms("llama")
    enc = encode_states(lm.tokenizer, word_task, ["ATTITUDE", "BUZZY"])
    for method in ("tree", "plain"):
        order.clear()
        score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, method=method, stats=ScoreStats())
        assert order == ["begin", "peak"], method
