"""The precision policy, in one place: final hidden states -> float32 log-probabilities.

Every scorer and the sampler run the model's *decoder* (`model.base_model`: embeddings,
layers, final norm) in the model dtype and stop there; the output projection and the
log-softmax happen here, in float32 whatever the model dtype:

    z = h @ W^T (+ b)            float32 (a bf16 model's logits would be rounded to ~0.1 nats)
    z = transform(z)             exactly what the model's own forward applies after its
                                 lm_head: Gemma-2/3 final-logit soft-capping, Cohere's
                                 logit_scale, Granite's logits_scaling (checked in
                                 transformers 5.24 for the classes in HEADS)
    log p = z/tau - logsumexp(z/tau)

`token_logprobs` computes chosen (position, token) log-probabilities chunked over
positions, so it never holds (positions x vocab) logits at once: memory is one chunk of
at most `max_elements` float32 logits. `next_token_logits` gives the sampler the same
float32 logits, so it draws from the very distribution the scorers score. Sums over
tokens are the callers' business, in float64.

A model class not in HEADS is checked once per `output_head` call by a probe (its own
forward against this head on a few tokens); a mismatch (some other transform of the
logits) is refused with a one-line error, never scored silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dbgpu.errors import DbgpuError
from dbgpu.models import cache_kwarg, output_cache

# class name -> what its forward does after `logits = self.lm_head(hidden_states)`
# (transformers 5.24). "softcap": tanh capping by config.final_logit_softcapping when set;
# "scale": logits * config.logit_scale; "inverse_scale": logits / config.logits_scaling.
HEADS: dict[str, str] = {
    "LlamaForCausalLM": "plain", "MistralForCausalLM": "plain", "Qwen2ForCausalLM": "plain",
    "Qwen3ForCausalLM": "plain", "Phi3ForCausalLM": "plain", "PhiForCausalLM": "plain",
    "Olmo2ForCausalLM": "plain", "GPT2LMHeadModel": "plain", "GemmaForCausalLM": "plain",
    "SmolLM3ForCausalLM": "plain",
    # the multimodal wrapper applies no soft-capping, even when its text config names one
    "Gemma3ForConditionalGeneration": "plain",
    "Gemma2ForCausalLM": "softcap", "Gemma3ForCausalLM": "softcap",
    "CohereForCausalLM": "scale", "Cohere2ForCausalLM": "scale",
    "GraniteForCausalLM": "inverse_scale", "GraniteMoeForCausalLM": "inverse_scale",
}
_VOCAB_TILE_BYTES = 1 << 26          # a float32 copy of at most 64 MiB of the weight at a time


@dataclass(frozen=True)
class OutputHead:
    """The output projection of a model, as float32 logits are computed from it."""

    weight: torch.Tensor              # (V, H) in the model dtype (tied to the embeddings or not)
    bias: torch.Tensor | None         # (V,) or None
    softcap: float | None = None      # z -> cap * tanh(z / cap)
    scale: float | None = None        # z -> z * scale
    source: str = "table"             # "table": HEADS; "probe": checked against the model's forward

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]


def decoder(model) -> torch.nn.Module:
    """The model without its output head (`base_model`: embeddings, layers, final norm)."""
    base = getattr(model, "base_model", model)
    if base is model:
        raise DbgpuError(f"{type(model).__name__} has no separate decoder module to take hidden states from")
    return base


def hidden_states(model, *, cache=None, **kwargs) -> tuple[torch.Tensor, object]:
    """One decoder forward: (final hidden states (B, T, H) in the model dtype, on the device
    of the inputs (a dispatched model's last layer may sit on another), KV cache or None).

    kwargs: input_ids, attention_mask (2D, 4D or a per-layer-kind dict), position_ids,
    use_cache. No logits are computed."""
    dec = decoder(model)
    if cache is not None:
        kwargs[cache_kwarg(dec)] = cache
    out = dec(**kwargs)
    h = out.last_hidden_state
    ids = kwargs.get("input_ids")
    if ids is not None and h.device != ids.device:
        h = h.to(ids.device)
    return h, (output_cache(out) if kwargs.get("use_cache") else None)


def _from_table(model, kind: str, weight, bias) -> OutputHead:
    config = model.config
    if kind == "softcap":
        return OutputHead(weight, bias, softcap=getattr(config, "final_logit_softcapping", None))
    if kind == "scale":
        return OutputHead(weight, bias, scale=float(getattr(model, "logit_scale", config.logit_scale)))
    if kind == "inverse_scale":
        return OutputHead(weight, bias, scale=1.0 / float(config.logits_scaling))
    return OutputHead(weight, bias)


def _head_tensors(lm_head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the output projection on the device it computes on. A dispatched
    model whose head is offloaded (weights on 'meta', loaded by accelerate per call) gets a
    copy on its execution device, held for the scoring call (vocab x hidden x dtype bytes)."""
    if getattr(lm_head, "_hf_hook", None) is None or lm_head.weight.device.type != "meta":
        return lm_head.weight, lm_head.bias
    from accelerate.utils import align_module_device

    from dbgpu.devices import module_device

    with align_module_device(lm_head, module_device(lm_head)):
        bias = None if lm_head.bias is None else lm_head.bias.detach().clone()
        return lm_head.weight.detach().clone(), bias


def output_head(model, *, probe: bool | None = None) -> OutputHead:
    """The model's output head; raises DbgpuError when it cannot be reproduced exactly.

    probe=None: only for classes not in HEADS (one forward of 8 tokens); True: always."""
    lm_head = model.get_output_embeddings()
    if not isinstance(lm_head, torch.nn.Linear):
        raise DbgpuError(f"{type(model).__name__}: the output head is not a linear layer; it cannot be scored")
    name = type(model).__name__
    weight, bias = _head_tensors(lm_head)
    head = _from_table(model, HEADS[name], weight, bias) if name in HEADS else \
        OutputHead(weight, bias, source="probe")
    if probe or (probe is None and name not in HEADS):
        check_head(model, head)
    return head


@torch.inference_mode()
def check_head(model, head: OutputHead) -> float:
    """Compare the model's own logits with this head's on a probe of 8 tokens; returns the
    largest difference relative to the logits' scale, raises DbgpuError above the model
    dtype's rounding (a transform of the logits this head does not reproduce)."""
    from dbgpu.devices import input_device

    ids = torch.arange(1, 9, device=input_device(model))[None] % head.vocab_size      # (1, 8)
    theirs = model(input_ids=ids, use_cache=False).logits[0].float()                  # (8, V)
    h, _ = hidden_states(model, input_ids=ids, use_cache=False)
    ours = head_logits(head, h[0]).to(theirs.device)                                 # (8, V)
    scale = max(1.0, float(theirs.abs().max()))
    err = float((theirs - ours).abs().max()) / scale
    tol = 8 * torch.finfo(head.weight.dtype).eps if head.weight.dtype != torch.float32 else 1e-4
    if not err <= tol:
        raise DbgpuError(f"{type(model).__name__} ({model.config.model_type}): its forward transforms the "
                         f"logits in a way dbgpu does not reproduce (relative difference {err:.2g}); "
                         "this architecture is not supported")
    return err


def _matmul32(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h (n, H) @ w (V, H)^T in float32: (n, V). Low-precision weights: on CUDA one GEMM with
    float32 output (bf16 x bf16 products are exact in float32, accumulation is float32);
    otherwise a float32 copy of the weight, one vocabulary tile at a time."""
    if w.dtype == torch.float32:
        return h.float() @ w.T
    if w.is_cuda and h.dtype == w.dtype:
        try:
            return torch.mm(h, w.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):    # a torch without mm(out_dtype=)
            pass
    h32 = h.float()
    z = torch.empty((h.shape[0], w.shape[0]), dtype=torch.float32, device=h.device)
    tile = max(1, _VOCAB_TILE_BYTES // (4 * w.shape[1]))
    for v0 in range(0, w.shape[0], tile):                        # V / tile steps, not a token loop
        z[:, v0:v0 + tile] = h32 @ w[v0:v0 + tile].float().T
    return z


def head_logits(head: OutputHead, h: torch.Tensor) -> torch.Tensor:
    """float32 logits (n, V) of hidden states h (n, H), with the model's own transform, on
    the head's device (h is moved there when a dispatched model keeps it elsewhere)."""
    z = _matmul32(h.to(head.weight.device), head.weight)
    if head.bias is not None:
        z += head.bias.float()
    if head.scale is not None:
        z *= head.scale
    if head.softcap is not None:
        z = torch.tanh(z / head.softcap) * head.softcap
    return z


@torch.inference_mode()
def next_token_logits(head: OutputHead, h: torch.Tensor) -> torch.Tensor:
    """The sampler's logits: float32 (B, V) from the last hidden states (B, H), on h's device."""
    return head_logits(head, h).to(h.device)


def default_max_elements(device: torch.device) -> int:
    """float32 logits held at once by `token_logprobs`: 2^28 (1 GiB) on CUDA, 2^26 on the CPU."""
    return 2 ** 28 if device.type == "cuda" else 2 ** 26


def temperature_tuple(temperature) -> tuple[float, ...]:
    """tau as a tuple: a number gives (tau,), a sequence its values (each checked, none repeated)."""
    from dbgpu.errors import check_temperature

    taus = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
    if not taus:
        raise DbgpuError("no temperature given")
    taus = tuple(check_temperature(t) for t in taus)
    if len(set(taus)) != len(taus):
        raise DbgpuError(f"a temperature is repeated in {', '.join(format(t, 'g') for t in taus)}")
    return taus


@torch.inference_mode()
def token_logprobs(head: OutputHead, h: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor, *,
                   temperature, max_elements: int | None = None, count_below=None) -> torch.Tensor:
    """log softmax(z / tau)[tok_k] at hidden state pos_k, float32: (K,) for one temperature,
    (len(tau), K) for a sequence of them.

    h (N, H) hidden states (model dtype), pos (K,) indices into h, tok (K,) token ids.
    Positions are processed in chunks of max_elements // V; time O(N x V x H), memory one
    chunk of float32 logits and logsumexp's temporary of the same size, plus the result.
    Several temperatures share each chunk's logits z (teacher forcing makes them independent
    of tau): each adds one logsumexp over the chunk, O(N x V), not another GEMM. The result
    is on h's device (a dispatched model's head may compute elsewhere).

    count_below: a host function, starts (n,) int array -> (n,) how many of `pos` are below
    each start, for a caller that knows its positions on the host (the tree scorer): the
    chunks are then cut without reading anything back from the device (otherwise one
    device-to-host read of the cut points, a synchronisation on CUDA).
    """
    taus = temperature_tuple(temperature)
    N, K = h.shape[0], pos.shape[0]
    vals = torch.empty((len(taus), K), dtype=torch.float32, device=h.device)
    if K:
        max_elements = max_elements or default_max_elements(h.device)
        chunk = max(1, max_elements // head.vocab_size)
        order = torch.argsort(pos, stable=True)                                    # (K,)
        pos_s, tok_s = pos[order], tok[order]
        if count_below is not None:                                                # counted on the host
            cuts = [int(c) for c in count_below(np.arange(0, N + chunk, chunk))]
        else:                                                                      # one read from the device
            starts = torch.arange(0, N + chunk, chunk, device=h.device)
            cuts = torch.searchsorted(pos_s, starts).tolist()                      # pairs per chunk
        for c, a in enumerate(range(0, N, chunk)):                                 # N / chunk steps
            ka, kb = cuts[c], cuts[c + 1]
            if ka == kb:
                continue
            z = head_logits(head, h[a:a + chunk])                                  # (c, V) on the head's device
            p, t = (pos_s[ka:kb] - a).to(z.device), tok_s[ka:kb].to(z.device)     # no-ops on one device
            picked = z[p, t]                                                       # (k,) chosen logits
            if len(taus) == 1:
                tau = taus[0]
                if tau != 1.0:
                    z.div_(tau)                                                    # in place: one (c, V) less
                lse = torch.logsumexp(z, dim=-1)                                   # (c,)
                vals[0, order[ka:kb]] = ((picked / tau if tau != 1.0 else picked) - lse[p]).to(vals.device)
                continue
            # several: logsumexp(z / tau) = m / tau + log sum exp((z - m) / tau), m = max z per
            # row; z - m once, then per tau one scaled exp into a reused buffer and a sum
            m = z.amax(dim=-1)                                                     # (c,)
            z.sub_(m[:, None])                                                     # (c, V) <= 0
            buf = torch.empty_like(z)
            for i, tau in enumerate(taus):                                         # len(tau) steps
                torch.mul(z, 1.0 / tau, out=buf).exp_()
                lse = m / tau + buf.sum(dim=-1).log()                              # (c,)
                vals[i, order[ka:kb]] = (picked / tau - lse[p]).to(vals.device)
    return vals[0] if isinstance(temperature, (int, float)) else vals
