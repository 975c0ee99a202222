"""From task + tokenizer to the exact texts and token ids that are scored or sampled.

    prompt_text(tok, task, f)        chat template applied (or plain text), any BOS, answer prefix
    continuation_text(tok, task, g)  render(g) + the end-of-turn / EOS token text
    encode_states(tok, task, states) both texts and both token id lists for a state set

Token ids are those the model would generate. The prompt's ids are the prompt text
tokenized on its own (`add_special_tokens=False`, special-token texts recognised: the
sampler's prompt ids are these). The continuation's ids are the tokens that follow the
prompt's own tokens when prompt + continuation are tokenized TOGETHER; the prompt's ids
must be a prefix of that joint tokenization (a tokenizer that merges the prompt's end
with the answer's start is an error naming the state). For byte-level BPE (GPT-2,
Llama-3, Qwen, SmolLM) this equals tokenizing the continuation on its own; SentencePiece
tokenizers that add a prefix space (Llama-2, Mistral) would otherwise score an answer
starting with a token sequence the model never generates.

Chat templates are rendered with a fixed date (`TEMPLATE_DATE`, recorded in meta.json):
`date_string` is passed and `strftime_now` returns that date, so templates that insert
today's date (Llama-3.x) give the same prompts on every day.
"""

from __future__ import annotations

import datetime as _dt
from contextlib import contextmanager
from dataclasses import dataclass

from dbgpu.errors import DbgpuError
from dbgpu.tasks.base import Task

_PROBE = "ZqXjV"
TEMPLATE_DATE = _dt.date(2025, 1, 1)     # what chat templates see as "today"


@contextmanager
def _fixed_today(today: _dt.date):
    """transformers' `strftime_now` (a Jinja global calling datetime.now() in
    chat_template_utils) returns `today` inside this block; restored on exit."""
    from transformers.utils import chat_template_utils as ctu

    real = ctu.datetime

    class _Fixed(real):
        @classmethod
        def now(cls, tz=None):
            return cls(today.year, today.month, today.day, tzinfo=tz)

    ctu.datetime = _Fixed
    try:
        yield
    finally:
        ctu.datetime = real


def render_chat(tok, messages: list[dict], *, add_generation_prompt: bool, today: _dt.date = TEMPLATE_DATE) -> str:
    """The chat template applied to `messages`, as text, on a fixed date."""
    date_string = today.strftime("%d %b %Y")          # Llama-3.x templates' own format
    with _fixed_today(today):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                       date_string=date_string)


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def end_of_turn_text(tok) -> str:
    """The special token that ends an assistant answer.

    With a chat template: the special token the template writes right after an
    assistant message (<|im_end|>, <end_of_turn>, <|eot_id|>, </s> ...). Without one:
    the EOS token.
    """
    if has_chat_template(tok):
        msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
        text = render_chat(tok, msgs, add_generation_prompt=False)
        tail = text[text.index(_PROBE) + len(_PROBE):]
        specials = sorted(set(tok.all_special_tokens) | set(getattr(tok, "added_tokens_encoder", {})),
                          key=len, reverse=True)
        for s in specials:
            if s and tail.startswith(s):
                return s
    if tok.eos_token is None:
        raise DbgpuError("the tokenizer has no EOS token and no chat template: answers cannot end")
    return tok.eos_token


def bos_text(tok) -> str:
    """The BOS text the tokenizer would add by itself ("" if it adds none)."""
    with_special = tok("a", add_special_tokens=True).input_ids
    without = tok("a", add_special_tokens=False).input_ids
    if len(with_special) > len(without) and with_special[0] == tok.bos_token_id:
        return tok.bos_token
    return ""


def prompt_text(tok, task: Task, f: str) -> str:
    """The exact text fed to the model for source state f."""
    messages = task.messages(f)
    if has_chat_template(tok):
        text = render_chat(tok, messages, add_generation_prompt=True)
    else:
        text = bos_text(tok) + "\n\n".join(m["content"] for m in messages) + "\n"
    return text + task.answer_prefix


def continuation_text(tok, task: Task, g: str) -> str:
    """The exact answer text for target state g, end-of-turn token included."""
    return task.render(g) + end_of_turn_text(tok)


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


SURFACE_FORMS = ("canonical", "all")


@dataclass(frozen=True)
class Encoded:
    """A state set as the model sees it: what `score` writes to prompts.json and scores."""

    states: list[str]
    sources: dict[str, str]          # f -> prompt text
    targets: dict[str, str]          # g -> continuation text
    prompt_ids: list[list[int]]      # (N, *) in state order
    cont_ids: list[list[int]]        # (N, *) in state order: each state's canonical continuation
    form_ids: list[list[int]] | None = None      # (M, *) every surface form, grouped by state in state order
    form_starts: list[int] | None = None         # (N,) where each state's group starts in form_ids
    forms: dict[str, list[str]] | None = None    # g -> its continuation texts (surface forms "all")

    @property
    def prompts_json(self) -> dict:
        out = {"sources": self.sources, "targets": self.targets}
        return out if self.forms is None else {**out, "target_forms": self.forms}

    @property
    def scored_ids(self) -> list[list[int]]:
        """The continuations a kernel scores: every surface form, or the canonical ones."""
        return self.cont_ids if self.form_ids is None else self.form_ids


def prompt_ids(tok, task: Task, f: str) -> list[int]:
    """The token ids fed to the model for source state f (the prefix of every joint tokenization)."""
    return encode(tok, prompt_text(tok, task, f))


def tokens_after(tok, prompts: list[str], prompt_tokens: list[list[int]], conts: list[str], *,
                 names: list[str]) -> list[list[int]]:
    """Pairwise: the ids of continuation k as it follows prompt k, i.e. the joint
    tokenization of prompt + continuation after the prompt's own tokens, which must be its
    prefix (else a one-line DbgpuError naming names[k]). One batched tokenizer call."""
    joint = tok([p + c for p, c in zip(prompts, conts)], add_special_tokens=False).input_ids
    out = []
    for ids, own, name in zip(joint, prompt_tokens, names):
        if ids[:len(own)] != own:
            raise DbgpuError(f"state {name}: the tokenizer merges the end of the prompt with the start of the "
                             "answer, so the answer has no tokens of its own")
        if len(ids) == len(own):
            raise DbgpuError(f"state {name}: the answer has no tokens")
        out.append(ids[len(own):])
    return out


def encode_states(tok, task: Task, states: list[str], *, surface_forms: str = "canonical") -> Encoded:
    """Prompt and continuation texts and token ids of every state.

    The continuations' ids are taken after the first state's prompt; every prompt is then
    checked against one continuation (its own tokens a prefix, the continuation's tokens
    the same), so a tokenizer whose answer tokens depend on the source is an error, not a
    silently different kernel. surface_forms="all" also encodes every surface form of each
    state (`dbgpu.tasks.base.surface_forms`; M continuations in all, grouped by state), for
    a kernel summed over them. Cost: 3 batched tokenizer calls of N texts (+1 of M).
    """
    if surface_forms not in SURFACE_FORMS:
        raise DbgpuError(f"unknown surface forms {surface_forms!r} (use {' or '.join(SURFACE_FORMS)})")
    sources = {f: prompt_text(tok, task, f) for f in states}
    targets = {g: continuation_text(tok, task, g) for g in states}
    texts = [sources[f] for f in states]
    p_ids = tok(texts, add_special_tokens=False).input_ids
    N = len(states)
    c_ids = tokens_after(tok, texts[:1] * N, p_ids[:1] * N, [targets[g] for g in states], names=list(states))
    g0 = states[-1]
    for f, ids in zip(states, tokens_after(tok, texts, p_ids, [targets[g0]] * N, names=list(states))):
        if ids != c_ids[-1]:
            raise DbgpuError(f"state {f}: the answer {g0} is tokenized differently after its prompt than after "
                             f"{states[0]}'s, so the states' answers are not one set of token sequences")
    enc = Encoded(states=list(states), sources=sources, targets=targets, prompt_ids=p_ids, cont_ids=c_ids)
    return enc if surface_forms == "canonical" else _with_forms(tok, task, enc)


def _with_forms(tok, task: Task, enc: Encoded) -> Encoded:
    """`enc` with every surface form of each state encoded after the first prompt; forms
    whose token sequences coincide within a state are kept once."""
    from dbgpu.tasks.base import surface_forms

    eot = end_of_turn_text(tok)
    forms = {g: [t + eot for t in surface_forms(task, g)] for g in enc.states}
    flat = [(g, t) for g in enc.states for t in forms[g]]
    ids = tokens_after(tok, [enc.sources[enc.states[0]]] * len(flat), enc.prompt_ids[:1] * len(flat),
                       [t for _, t in flat], names=[g for g, _ in flat])
    form_ids, starts, seen = [], [], set()
    for (g, _), x in zip(flat, ids):
        if not starts or g != enc.states[len(starts) - 1]:
            starts.append(len(form_ids))
            seen = set()
        if tuple(x) not in seen:
            seen.add(tuple(x))
            form_ids.append(x)
    return Encoded(states=enc.states, sources=enc.sources, targets=enc.targets, prompt_ids=enc.prompt_ids,
                   cont_ids=enc.cont_ids, form_ids=form_ids, form_starts=starts, forms=forms)


def stop_token_ids(tok, model=None) -> list[int]:
    """Token ids that end an answer when sampling: end-of-turn plus the model's EOS ids."""
    ids = {tok.convert_tokens_to_ids(end_of_turn_text(tok))}
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    if model is not None:
        eos = getattr(model.generation_config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(i for i in ids if i is not None)
