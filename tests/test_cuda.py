"""On a CUDA GPU (skipped elsewhere; `make gpu-check` runs them): the scorers, the float32
head, the sampler, the fit and the statistics against their CPU float32 selves, and a
real out-of-memory back-off."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import pooled_chisquare

from dbgpu.formatting import encode, encode_states, prompt_text
from dbgpu.scoring import ScoreStats, score_matrix

pytestmark = pytest.mark.cuda

STATES = ["ATTITUDE", "BUZZY", "EXCELLENT", "TURKEY", "PROBLEMS", "PERSONAL"]


@pytest.fixture(scope="module")
def cuda_lms():
    """random:llama / qwen2 / gemma3 on CUDA in float32 and bfloat16, and on the CPU in float32."""
    from dbgpu.models import load_model

    cache = {}

    def get(arch: str, device: str, dtype: str):
        key = (arch, device, dtype)
        if key not in cache:
            cache[key] = load_model(f"random:{arch}", device=device, dtype=dtype, seed=0)
        return cache[key]

    return get


def _ids(lm, task, states=STATES):
    enc = encode_states(lm.tokenizer, task, states)
    return enc.prompt_ids, enc.cont_ids


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_tree_equals_plain_on_cuda(cuda_lms, word_task, arch, dtype):
    lm = cuda_lms(arch, "cuda", dtype)
    P, C = _ids(lm, word_task)
    pad = lm.tokenizer.pad_token_id
    plain = score_matrix(lm.model, P, C, method="plain", pad_id=pad)
    for max_rows in (256, 2):
        tree = score_matrix(lm.model, P, C, method="tree", pad_id=pad, max_rows=max_rows)
        # float32: float rounding; bf16: the decoder's bf16 rounding in two layouts (CPU: <= 3e-3)
        np.testing.assert_allclose(tree, plain, atol=2e-5 if dtype == "float32" else 2e-2, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_cuda_kernel_equals_the_cpu_float32_kernel(cuda_lms, word_task, arch):
    cpu = cuda_lms(arch, "cpu", "float32")
    P, C = _ids(cpu, word_task)
    ref = score_matrix(cpu.model, P, C, method="plain")
    f32 = score_matrix(cuda_lms(arch, "cuda", "float32").model, P, C, method="tree")
    bf16 = score_matrix(cuda_lms(arch, "cuda", "bfloat16").model, P, C, method="tree")
    np.testing.assert_allclose(f32, ref, atol=1e-4, rtol=0)           # TF32 is off by default
    assert np.abs(bf16 - ref).max() < 5e-2                              # CPU bf16 vs fp32: ~1e-2


def test_the_cuda_float32_output_gemm_equals_the_float32_copy():
    """The head's CUDA branch (bf16 GEMM with float32 output) against float32 arithmetic."""
    from dbgpu.scoring.head import OutputHead, head_logits

    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(5000, 256, device="cuda", generator=g).bfloat16()
    h = (3 * torch.randn(64, 256, device="cuda", generator=g)).bfloat16()
    z = head_logits(OutputHead(w, None), h)
    exact = h.double() @ w.double().T
    assert z.dtype == torch.float32
    assert (z.double() - exact).abs().max() < 1e-3                       # CPU float32 copy: 3.5e-5
    assert ((h @ w.T).double() - exact).abs().max() > 1e-1               # bf16 output: 0.5 on the CPU


def test_sampler_first_tokens_follow_the_float32_softmax_on_cuda(cuda_lms, word_task):
    from dbgpu.sampling import sample_answers
    from dbgpu.scoring.head import hidden_states, next_token_logits, output_head

    lm = cuda_lms("qwen2", "cuda", "bfloat16")
    tok = lm.tokenizer
    P = encode(tok, prompt_text(tok, word_task, "BUZZY"))
    tau, n = 0.3, 4000
    g = torch.Generator(device="cuda").manual_seed(0)
    samples = sample_answers(lm.model, [P] * n, temperature=tau, max_new_tokens=1, stop_ids=[],
                             pad_id=tok.pad_token_id, generator=g)
    with torch.no_grad():
        h, _ = hidden_states(lm.model, input_ids=torch.tensor([P], device="cuda"), use_cache=False)
        z = next_token_logits(output_head(lm.model), h[0, -1:])[0].double()
    p = torch.softmax(z / tau, -1).cpu().numpy()
    (stat, pval), keep = pooled_chisquare(Counter(s.ids[0] for s in samples), dict(enumerate(p)), n)
    assert len(keep) >= 5 and pval > 1e-3, (stat, pval)


def test_fit_and_stationary_distribution_cuda_equal_cpu():
    from dbgpu import synthetic as sy
    from dbgpu.fit import fit_potential
    from dbgpu.graph import strong_components
    from dbgpu.stats import stationary

    V, src, dst, logT = sy.sparse_kernel(3000, seed=4, degree=6)
    w = np.exp(logT)
    a = fit_potential(3000, src, dst, w, device="cpu")
    b = fit_potential(3000, src, dst, w, device="cuda")
    np.testing.assert_allclose(b.V, a.V, atol=1e-9, equal_nan=True)
    m = strong_components(3000, src, dst).label == 0
    loc, e, n = np.cumsum(m) - 1, m[src] & m[dst], int(m.sum())
    s, d, x = loc[src[e]], loc[dst[e]], w[e]
    p = x / np.bincount(s, x, minlength=n)[s]
    pc, _ = stationary(n, s, d, p, dense_max=0, device="cpu")
    pg, rg = stationary(n, s, d, p, dense_max=0, device="cuda")
    np.testing.assert_allclose(pg, pc, atol=1e-12)
    assert rg < 1e-10


def test_real_out_of_memory_backs_off_and_loses_no_row(word_task):
    """A real CUDA out-of-memory error (the process limited to its current use + 1.5 GiB):
    the tree scorer halves its rows until a batch fits and equals an unconstrained run."""
    from dbgpu.models import load_model

    lm = load_model("random:qwen2-0.5b", device="cuda", dtype="bfloat16")
    states = word_task.seed_states(48)
    P, C = _ids(lm, word_task, states)
    pad = lm.tokenizer.pad_token_id
    expected = score_matrix(lm.model, P, C, method="tree", pad_id=pad, max_rows=4)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    limit = (torch.cuda.memory_allocated() + 1.5 * 2**30) / total
    stats = ScoreStats()
    try:
        torch.cuda.set_per_process_memory_fraction(limit)
        got = score_matrix(lm.model, P, C, method="tree", pad_id=pad, max_rows=256, max_logits=2**40,
                           work_bytes=2**40, batch_tokens=2**20, stats=stats)     # the plan does not hold it back
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert stats.extra.get("oom_backoffs", 0) >= 1 and stats.extra["rows_per_forward"] < 48
    # bf16 with other batch shapes runs other GEMM kernels: on H200 the sums (about -120) moved by up to
    # 0.1 (relative 7.5e-4), the size of the tree vs per-pair differences bench_score reports in bf16
    np.testing.assert_allclose(got, expected, atol=2e-2, rtol=2e-3)
    assert stats.pairs == len(P) * len(C)


def test_peak_memory_is_measured_per_scoring_call(cuda_lms, word_task):
    """A large tensor freed before scoring does not count in the scorer's peak."""
    lm = cuda_lms("llama", "cuda", "bfloat16")
    P, C = _ids(lm, word_task)
    big = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    del big
    stats = ScoreStats()
    score_matrix(lm.model, P, C, method="tree", stats=stats)
    assert 0 < stats.peak_memory_bytes < 2**30


def test_profile_on_cuda_traces_kernels_and_times_each_stage(tmp_path, cuda_lms, word_task):
    import json

    from dbgpu.commands.score import score_job

    lm = cuda_lms("gemma3", "cuda", "bfloat16")
    meta = score_job(model="random:gemma3", task=word_task, states=STATES[:4], out=tmp_path / "s",
                     profile=tmp_path / "p", progress=False, lm=lm)
    assert set(meta["scoring"]["stage_seconds"]) == {"prefix", "masks", "forward", "head", "reduction", "transfer"}
    assert meta["provenance"]["gpu"]["compute_capability"] and meta["provenance"]["cuda"]
    assert meta["scoring"]["peak_memory_bytes"] > 0
    events = json.loads((tmp_path / "p" / "trace.json").read_text())["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events), "CUDA kernels in the trace"
    assert "| forward |" in meta["profile"]["table"]


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_the_tree_scorers_own_code_does_not_synchronise_per_forward(cuda_lms, word_task, attention):
    """count_syncs (CUDA sync debug mode) over a call with one row per forward and one with
    every row in one forward: the synchronisations at dbgpu's scoring lines (tree.py, head.py,
    sparse.py) are as many in both, so none happens per forward besides the wait for each
    batch's result (`Fetch.numpy`, after the next batch is queued), which may count at most
    once per forward. The results agree to bf16 batching."""
    import inspect

    from dbgpu.scoring.stats import count_syncs
    from dbgpu.scoring.tree import Fetch, tree_score_matrix

    lm = cuda_lms("llama", "cuda", "bfloat16")
    P, C = _ids(lm, word_task)
    tree_score_matrix(lm.model, P, C, max_rows=64, attention=attention)           # warm-up: lazy inits
    ours = ("tree.py:", "head.py:", "sparse.py:")
    lines, first = inspect.getsourcelines(Fetch.numpy)
    fetch = {f"tree.py:{first + i}" for i in range(len(lines))}
    runs = {}
    for rows in (1, 64):
        stats = ScoreStats()
        with count_syncs(torch.device("cuda")) as n:
            got = tree_score_matrix(lm.model, P, C, max_rows=rows, stats=stats, attention=attention)
        runs[rows] = (got, {s: k for s, k in n.sites.items() if s.startswith(ours)}, stats.forward_passes, n.syncs)
    (one, sites1, f1, all1), (many, sites64, f64, all64) = runs[1], runs[64]
    assert f1 > f64
    assert sum(k for s, k in sites1.items() if s in fetch) <= f1        # the result's wait, at most once a forward
    strip = lambda sites: {s: k for s, k in sites.items() if s not in fetch}   # noqa: E731
    assert strip(sites1) == strip(sites64), (sites1, sites64)
    print(f"{attention}: {all1} syncs in {f1} forwards, {all64} in {f64}; dbgpu's sites {sites1}")
    np.testing.assert_allclose(one, many, atol=2e-2, rtol=0)          # bf16 rounding of two batch layouts
