"""From task + tokenizer to the exact texts and token ids that are scored or sampled.

    prompt_text(tok, task, f)        chat template applied (or plain text), any BOS, answer prefix
    continuation_text(tok, task, g)  render(g) + the end-of-turn / EOS token text
    encode_states(tok, task, states) both texts and both token id lists for a state set

Each text is tokenized on its own with add_special_tokens=False and the two id lists
are concatenated (lm-evaluation-harness's convention); log T(f, g) is the sum of the
continuation's token log-probabilities under that concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbgpu.errors import DbgpuError
from dbgpu.tasks.base import Task

_PROBE = "ZqXjV"


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
        text = tok.apply_chat_template(msgs, tokenize=False)
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
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = bos_text(tok) + "\n\n".join(m["content"] for m in messages) + "\n"
    return text + task.answer_prefix


def continuation_text(tok, task: Task, g: str) -> str:
    """The exact answer text for target state g, end-of-turn token included."""
    return task.render(g) + end_of_turn_text(tok)


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


@dataclass(frozen=True)
class Encoded:
    """A state set as the model sees it: what `score` writes to prompts.json and scores."""

    states: list[str]
    sources: dict[str, str]          # f -> prompt text
    targets: dict[str, str]          # g -> continuation text
    prompt_ids: list[list[int]]      # (N, *) in state order
    cont_ids: list[list[int]]        # (N, *) in state order

    @property
    def prompts_json(self) -> dict:
        return {"sources": self.sources, "targets": self.targets}


def prompt_ids(tok, task: Task, f: str) -> list[int]:
    """The token ids fed to the model for source state f."""
    return encode(tok, prompt_text(tok, task, f))


def encode_states(tok, task: Task, states: list[str]) -> Encoded:
    """Prompt and continuation texts and token ids of every state."""
    sources = {f: prompt_text(tok, task, f) for f in states}
    targets = {g: continuation_text(tok, task, g) for g in states}
    return Encoded(states=list(states), sources=sources, targets=targets,
                   prompt_ids=[encode(tok, sources[f]) for f in states],
                   cont_ids=[encode(tok, targets[g]) for g in states])


def stop_token_ids(tok, model=None) -> list[int]:
    """Token ids that end an answer when sampling: end-of-turn plus the model's EOS ids."""
    ids = {tok.convert_tokens_to_ids(end_of_turn_text(tok))}
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    if model is not None:
        eos = getattr(model.generation_config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(i for i in ids if i is not None)
