"""Exact transition kernels by teacher forcing.

    log T(f, g) = sum_t log softmax(z_t / tau)[y_t]

over the tokens y of continuation(g) (answer + end-of-turn token), given prompt(f).

    plain.py   the reference: every pair its own padded row
    tree.py    the fast scorer: shared-prefix cache + continuation trie + tree masks
    plan.py    its batch plan (rows, token positions, predicted memory per forward; no torch)
    trie.py    tries, common prefixes, the work lower bound (no model)
    prefix.py  padding and the shared-prefix prefill (also used by sampling)
    head.py    the precision policy: hidden states -> float32 log-probs (also used by sampling)
    stats.py   work accounting and stage timing (ScoreStats)

`score_matrix` dispatches on the method; `exact_kernel` scores a task's state set with a
loaded model.
"""

from __future__ import annotations

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.scoring.plain import score_sequences
from dbgpu.scoring.stats import ScoreStats
from dbgpu.scoring.tree import tree_score_matrix
from dbgpu.scoring.trie import trie_lower_bound

METHODS = ("tree", "plain")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise DbgpuError(f"unknown scoring method {method!r} (use {' or '.join(METHODS)})")
    return method


def score_matrix(model, prompts: list[list[int]], conts: list[list[int]], *, method: str = "plain",
                 **kwargs) -> np.ndarray:
    """log T for every (prompt, continuation) pair: (N, M) float64, row = source; with a
    sequence of temperatures, (len(tau), N, M) from one pass of forwards.

    method="plain": every pair its own padded row (the reference; kwargs max_batch,
    padding_side). method="tree": shared-prefix cache + continuation trie (kwargs max_rows,
    work_bytes, attention: "dense" tree masks or "sparse", `dbgpu.scoring.sparse`). Both take temperature, pad_id, progress, stats, batch_tokens (token positions
    per forward; default per method and device) and max_logits (float32 logits held at once).
    """
    if check_method(method) == "tree":
        return tree_score_matrix(model, prompts, conts, **kwargs)
    if kwargs.pop("attention", "dense") != "dense":
        raise DbgpuError("attention='sparse' is the tree scorer's attention; use method='tree'")
    N, M = len(prompts), len(conts)
    pairs = np.stack(np.meshgrid(np.arange(N), np.arange(M), indexing="ij"), -1).reshape(-1, 2)
    lp = score_sequences(model, prompts, conts, pairs, **kwargs)                # (P,) or (T, P)
    return lp.reshape(*lp.shape[:-1], N, M)


def sum_surface_forms(logT_forms: np.ndarray, starts) -> np.ndarray:
    """(..., R, N) log of the summed probability of each state's surface forms, from (..., R, M)
    log-probabilities of M continuations grouped by state (state k's forms are columns
    starts[k]:starts[k+1]). A logsumexp per group in float64: O(R M) time, O(R N) memory."""
    if len(starts) == logT_forms.shape[-1]:                    # one form per state: nothing to add
        return logT_forms
    return np.logaddexp.reduceat(np.asarray(logT_forms, dtype=np.float64), np.asarray(starts), axis=-1)


def exact_kernel(lm, task, states: list[str], *, temperature=1.0, method: str = "tree",
                 batch_tokens: int | None = None, max_logits: int | None = None, progress: bool = False,
                 stats: ScoreStats | None = None, surface_forms: str = "canonical", attention: str = "dense"):
    """log T over all pairs of `states` for a loaded model: (logT (N, N), prompts.json dict, ScoreStats);
    with a sequence of temperatures logT is (len(tau), N, N), all from one pass of forwards.
    surface_forms="all": T(f, g) sums the probabilities of every surface form of g (one
    trie over all of them). attention: the tree scorer's, "dense" or "sparse"."""
    from dbgpu.formatting import encode_states

    enc = encode_states(lm.tokenizer, task, states, surface_forms=surface_forms)
    stats = stats if stats is not None else ScoreStats()
    logT = score_matrix(lm.model, enc.prompt_ids, enc.scored_ids, method=method, temperature=temperature,
                        pad_id=lm.tokenizer.pad_token_id, progress=progress, stats=stats,
                        max_logits=max_logits, batch_tokens=batch_tokens, attention=attention)
    if enc.form_starts is not None:
        logT = sum_surface_forms(logT, enc.form_starts)
    stats.extra["trie_lower_bound"] = trie_lower_bound(enc.prompt_ids, enc.scored_ids)
    stats.extra["tokens_over_lower_bound"] = stats.tokens / stats.extra["trie_lower_bound"]
    return logT, enc.prompts_json, stats


__all__ = ["METHODS", "ScoreStats", "check_method", "exact_kernel", "score_matrix",
           "score_sequences", "sum_surface_forms", "tree_score_matrix"]
