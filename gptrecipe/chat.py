"""The chat format: conversations <-> token ids with a loss mask, over the tokenizer's special tokens.

    <|endoftext|><|system|>You are helpful.<|end|><|user|>Hi!<|end|><|assistant|>Hello!<|end|>

Each turn is a role marker, the content, and <|end|>. The loss mask is 1 on the assistant's content
and its closing <|end|> (so the model learns to stop), 0 everywhere else. Generation renders the
conversation, appends <|assistant|> and samples until <|end|>.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .io import DataError, read_jsonl

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    content: str


@dataclass
class RenderedChat:
    ids: list[int]
    mask: list[bool]  # mask[i]: token i is a training target (predicted from tokens < i)
    truncated: bool = False

    @property
    def n_trainable(self) -> int:
        return sum(self.mask)


class ChatTemplate:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bos = tokenizer.eot_id
        self.end = tokenizer.id_of("<|end|>")
        self.role_ids = {r: tokenizer.id_of(f"<|{r}|>") for r in ROLES}

    def render(self, messages: list[Message], max_len: int | None = None) -> RenderedChat:
        """Ids and loss mask of a whole conversation, cut to `max_len` tokens if given."""
        ids, mask = [self.bos], [False]
        for m in messages:
            content = self.tok.encode(m.content)
            train = m.role == "assistant"
            ids += [self.role_ids[m.role], *content, self.end]
            mask += [False, *([train] * len(content)), train]
        truncated = max_len is not None and len(ids) > max_len
        if truncated:
            ids, mask = ids[:max_len], mask[:max_len]
        return RenderedChat(ids, mask, truncated)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The conversation so far, then <|assistant|>: what the model continues to reply."""
        return self.render(messages).ids + [self.role_ids["assistant"]]

    def prompts_that_fit(self, prompts: list[str], max_new_tokens: int, block_size: int) -> tuple[list[str], int]:
        """User prompts whose rendering leaves room for `max_new_tokens` in the context; and how many did not."""
        keep = [p for p in prompts if len(self.prompt_ids([Message("user", p)])) + max_new_tokens <= block_size]
        return keep, len(prompts) - len(keep)

    @property
    def stop_ids(self) -> list[int]:
        return [self.end, self.bos]


def parse_messages(obj: object, where: str) -> list[Message]:
    """A conversation from `{"messages": [...]}` or `{"prompt", "response"}` (errors name `where`)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    if "messages" in obj:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}] must be {{'role': one of {'/'.join(ROLES)}, "
                                f"'content': string}}, got {json.dumps(m)[:80]}")
            out.append(Message(m["role"], m["content"]))
        return out
    if isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        return [Message("user", obj["prompt"]), Message("assistant", obj["response"])]
    raise DataError(f"{where}: expected 'messages' or 'prompt' and 'response' fields, got {sorted(obj)}")


def read_conversations(path: str | Path) -> list[list[Message]]:
    convs = [parse_messages(obj, f"{path}: line {n}") for n, obj in read_jsonl(path)]
    if not convs:
        raise DataError(f"{path}: no conversations")
    return convs
