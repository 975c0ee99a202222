"""Shared fixtures: tiny fixed-seed random models, the real SmolLM2 (slow), a CUDA marker."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One dequantised-model cache per test session (a fresh machine starts cold too)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_lms():
    """random:llama / qwen2 / gemma3, loaded once per session, seed 0."""
    from dbgpu.models import load_model

    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_model(f"random:{arch}", device="cpu", seed=0)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def smollm2(model_cache):
    """The real SmolLM2-135M-Instruct (GGUF, dequantised to fp32 on CPU)."""
    from dbgpu.models import load_model

    return load_model("smollm2-135m", device="cpu", cache_dir=model_cache)


@pytest.fixture(scope="session")
def word_task():
    from dbgpu.tasks import get_task

    return get_task("word100")


def reference_logT(model, prompt_ids: list[int], cont_ids: list[int], *, temperature: float = 1.0) -> float:
    """Independent computation: one plain, unpadded forward pass of prompt + continuation."""
    ids = torch.tensor([prompt_ids + cont_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()               # (T, V)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    P = len(prompt_ids)
    return float(sum(logp[P + k - 1, t] for k, t in enumerate(cont_ids)))


def pooled_chisquare(observed: dict, probs: dict, n: int, *, min_expected: float = 5.0):
    """Chi-square of counts against n*p over the named outcomes plus 'other' (the rest of
    the mass); outcomes expected fewer than `min_expected` times are pooled into 'other'."""
    keep = [k for k in probs if n * probs[k] >= min_expected]
    obs = [observed.get(k, 0) for k in keep]
    exp = [n * probs[k] for k in keep]
    obs.append(n - sum(obs))
    exp.append(n - sum(exp))
    if exp[-1] < min_expected and len(exp) > 1:       # too little left over: merge it into the last bin
        rest_obs, rest_exp = obs.pop(), exp.pop()     # (not `obs[-2] += obs.pop()`: that indexes before the pop)
        obs[-1] += rest_obs
        exp[-1] += rest_exp
    return chisquare(obs, exp), keep
