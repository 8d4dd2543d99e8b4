"""The chat format: conversations <-> token ids with a loss mask, over the tokenizer's special tokens.

    <|endoftext|><|system|>You are helpful.<|end|><|user|>Hi!<|end|><|assistant|>Hello!<|end|>

Each turn is a role marker, the content, and <|end|>. The loss mask is 1 on the assistant's content
and its closing <|end|> (so the model learns to stop), 0 everywhere else. Generation renders the
conversation, appends <|assistant|> and samples until <|end|>.

Tools (LaMDA, RECIPE.md section 10): an assistant turn starts with its recipient. A turn addressed to the
toolset starts with TOOLSET_TOKEN (LaMDA's "TS,") and holds the query; the toolset's reply follows as a tool
segment (TOOL_TOKEN, the result, <|end|>), then the assistant speaks again: another query, or the reply to the
user (a turn without the toolset token: LaMDA's "User,", so chats without tools render exactly as before):

    <|user|>What is 37*12?<|end|><|assistant|>[TS]37*12<|end|>[TOOL]444<|end|><|assistant|>444<|end|>

([TS] = TOOLSET_TOKEN, [TOOL] = TOOL_TOKEN: reserved special tokens, which no text encodes to.)

The call (recipient token, query, <|end|>) is trained on (mask 1); the tool segment never is (mask 0): it is
data forced into the context at generation time. Conversations in the OpenAI shape (assistant `tool_calls`,
`role: "tool"` messages with `tool_call_id`) read into this form; the builtin toolset is the function
BUILTIN_FUNCTION with one string argument `query`; another function's call renders as `name {json args}`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .io import DataError, read_jsonl

ROLES = ("system", "user", "assistant")
TOOLSET_TOKEN = "<|reserved_0|>"  # an assistant turn addressed to the toolset (LaMDA's "TS, <query>")
TOOL_TOKEN = "<|reserved_1|>"  # the toolset's reply: a tool segment in the context, never trained on
BUILTIN_FUNCTION = "toolset"  # the builtin toolset as one OpenAI function: {"query": string}
TOOLSET_FUNCTION = {"type": "function", "function": {
    "name": BUILTIN_FUNCTION,
    "description": "LaMDA's toolset: a calculator (arithmetic such as 37*12), a Chinese-English translator (a "
                   "Chinese word) and retrieval over the embedded corpora (a quote); the results of every tool "
                   "that answers the query",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


@dataclass
class Message:
    role: str  # system | user | assistant | tool
    content: str
    to: str = "user"  # an assistant turn's recipient: "user" or "toolset" (then `content` is the query)
    call_id: str | None = None  # OpenAI's tool-call id of a call (assistant to toolset) or of its result (tool)

    @property
    def is_call(self) -> bool:
        return self.role == "assistant" and self.to == "toolset"


@dataclass
class RenderedChat:
    ids: list[int]
    mask: list[bool]  # mask[i]: token i is a training target (predicted from tokens < i)
    truncated: bool = False
    starts: tuple[int, ...] = (0,)  # where each conversation begins (several when packed)

    @property
    def n_trainable(self) -> int:
        return sum(self.mask)


class ChatTemplate:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bos = tokenizer.eot_id
        self.end = tokenizer.id_of("<|end|>")
        self.role_ids = {r: tokenizer.id_of(f"<|{r}|>") for r in ROLES}
        self.call = tokenizer.id_of(TOOLSET_TOKEN)
        self.role_ids["tool"] = tokenizer.id_of(TOOL_TOKEN)

    def render(self, messages: list[Message], max_len: int | None = None) -> RenderedChat:
        """Ids and loss mask of a whole conversation, cut to `max_len` tokens if given."""
        ids, mask = [self.bos], [False]
        for m in messages:
            content = self.tok.encode(m.content)
            train = m.role == "assistant"
            head = [self.role_ids[m.role], *([self.call] if m.is_call else [])]
            ids += [*head, *content, self.end]
            mask += [False, *([train] * (len(head) - 1)), *([train] * len(content)), train]
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

    def tool_result_ids(self, result: str) -> list[int]:
        """What generation forces in after a call: the tool segment, then the assistant's next turn marker."""
        return [self.role_ids["tool"], *self.tok.encode(result), self.end, self.role_ids["assistant"]]


def format_results(results: list) -> str:
    """The toolset's results (`ToolResult`s) as the tool segment's text: one per line; "no result" if none."""
    return "\n".join(r.result for r in results) or "no result"


def call_text(name: str, arguments: dict, where: str) -> str:
    """A function call as the call turn's text: the builtin toolset's bare query, else `name {json}`."""
    if name == BUILTIN_FUNCTION:
        if set(arguments) != {"query"} or not isinstance(arguments["query"], str):
            raise DataError(f'{where}: the {BUILTIN_FUNCTION} function takes {{"query": string}}, '
                            f"got {json.dumps(arguments)[:80]}")
        return arguments["query"]
    return f"{name} {json.dumps(arguments, ensure_ascii=False)}"


def parse_call(text: str, functions: Collection[str] = ()) -> tuple[str, dict]:
    """A generated call turn's text -> (function name, arguments): `name {json}` for one of `functions`,
    anything else is a query for the builtin toolset."""
    name, _, rest = text.strip().partition(" ")
    if name in functions and name != BUILTIN_FUNCTION:
        try:
            args = json.loads(rest) if rest.strip() else {}
        except json.JSONDecodeError:
            args = None
        if isinstance(args, dict):
            return name, args
    return BUILTIN_FUNCTION, {"query": text.strip()}


def _arguments(raw: object, where: str) -> dict:
    """OpenAI's arguments (a JSON string) or Hugging Face's (a dict) -> a dict."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object of arguments")
    return raw


def _tool_calls(m: dict, where: str) -> list[Message]:
    calls = m["tool_calls"]
    if not isinstance(calls, list) or not calls:
        raise DataError(f"{where}.tool_calls: expected a non-empty list")
    out = []
    for j, c in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataError(f"{at}.function: expected {{'name': string, 'arguments': JSON string}}")
        call_id = c.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise DataError(f"{at}.id: expected a string")
        args = _arguments(fn.get("arguments", "{}"), f"{at}.function.arguments")
        out.append(Message("assistant", call_text(fn["name"], args, f"{at}.function.arguments"), "toolset",
                           call_id or f"call_{j}"))
    return out


def _interleave(out: list[Message], pending: list[Message], tool: Message, where: str) -> None:
    """Put a tool result right after its call (OpenAI lists an assistant message's calls, then their results)."""
    match = next((c for c in pending if c.call_id == tool.call_id), None) if tool.call_id is not None else (
        pending[0] if pending else None)
    if match is None:
        known = ", ".join(repr(c.call_id) for c in pending) or "none pending"
        raise DataError(f"{where}.tool_call_id: {tool.call_id!r} answers no tool call before it ({known})")
    pending.remove(match)
    out.append(match)
    out.append(tool)


def parse_messages(obj: object, where: str) -> list[Message]:
    """A conversation from `{"messages": [...]}` or `{"prompt", "response"}` (errors name `where`)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    if "messages" in obj:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        return _messages(raw, where)
    if isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        return [Message("user", obj["prompt"]), Message("assistant", obj["response"])]
    raise DataError(f"{where}: expected 'messages' or 'prompt' and 'response' fields, got {sorted(obj)}")


def _messages(raw: list, where: str) -> list[Message]:
    out: list[Message] = []
    pending: list[Message] = []  # calls of the last assistant message still waiting for their results
    for i, m in enumerate(raw):
        at = f"{where}: messages[{i}]"
        if isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls"):
            if pending:
                raise DataError(f"{at}: the tool calls of an earlier message have no role 'tool' answer "
                                f"({', '.join(repr(c.call_id) for c in pending)})")
            pending = _tool_calls(m, at)
            continue
        if isinstance(m, dict) and m.get("role") == "tool":
            if not isinstance(m.get("content"), str):
                raise DataError(f"{at}.content: a tool message needs a string content")
            call_id = m.get("tool_call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise DataError(f"{at}.tool_call_id: expected a string")
            _interleave(out, pending, Message("tool", m["content"], call_id=call_id), at)
            continue
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{at} must be {{'role': one of {'/'.join((*ROLES, 'tool'))}, "
                            f"'content': string}}, got {json.dumps(m)[:80]}")
        if pending:
            raise DataError(f"{at}: the tool calls before it have no role 'tool' answer "
                            f"({', '.join(repr(c.call_id) for c in pending)})")
        out.append(Message(m["role"], m["content"]))
    out += pending  # calls still unanswered at the end (a request waiting for its client's results)
    return out


def to_openai(m: Message, index: int) -> dict:
    """A message in the OpenAI shape (`parse_messages` reads it back): a call as an assistant `tool_calls` entry
    of the builtin toolset function (id `call_INDEX`), a result as `role: "tool"` answering the call before it."""
    if m.is_call:
        args = json.dumps({"query": m.content}, ensure_ascii=False)
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": m.call_id or f"call_{index}", "type": "function",
             "function": {"name": BUILTIN_FUNCTION, "arguments": args}}]}
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.call_id or f"call_{index - 1}", "content": m.content}
    return {"role": m.role, "content": m.content}


def read_conversations(path: str | Path) -> list[list[Message]]:
    convs = [parse_messages(obj, f"{path}: line {n}") for n, obj in read_jsonl(path)]
    if not convs:
        raise DataError(f"{path}: no conversations")
    return convs
