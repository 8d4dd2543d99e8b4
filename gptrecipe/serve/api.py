"""An OpenAI-compatible HTTP server over the engine, and the web chat page.

    GET  /v1/models, /v1/models/ID   the one model served (with "chat" and "max_model_len")
    POST /v1/chat/completions        chat models (SFT / PPO); `stream` sends server-sent events
    POST /v1/completions             any model; `prompt` as text or token ids (one or a batch); `echo`
                                     with `logprobs` returns every prompt token's log-probability
    GET  /tokenizer_info, POST /tokenize, POST /detokenize     the tokenizer, for lm-evaluation-harness
    POST /v1/feedback                the web chat's thumbs and choices -> rankings JSONL for the reward model
    GET  /                           the web chat;  GET /openapi.json  the schema;  GET /health

Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a request that cannot
be served (prompt longer than the context, max_tokens over the limit, chat on a base model), 401 without
the API key, 404 for an unknown model, 413 for a body over the limit, 422 for malformed JSON or
parameters out of range; the schema declares them on each route, and this server's limits (max_tokens,
token ids, context); a bad tool message (an unknown `tool_call_id`, malformed `arguments`) is a 400 naming
the field. Tool calling is OpenAI's: `tools`, `tool_choice` (auto, none, required, a named function), replies
with `tool_calls` and `finish_reason: "tool_calls"` (streamed too), follow-ups with `role: "tool"` messages; the
builtin toolset is the function `toolset` with one string argument `query` (TOOLSET_FUNCTION, in the model
card as "tools"); with `--tools builtin` the server runs the toolset itself and returns the final answer only.
Text prompts of /v1/completions read special-token strings ("<|endoftext|>") as special tokens, as Hugging Face
tokenizers do; chat message contents never do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat import BUILTIN_FUNCTION, TOOLSET_FUNCTION, ChatTemplate, Message, parse_call, parse_messages
from ..io import DataError
from ..sample import PromptTooLongError
from .engine import Choice, Engine, Event, GenParams, TokenLogprob
from .feedback import FeedbackLog
from .hf_tokenizer import tokenizer_info
from .served import ServedModel, load_served

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 2_000_000
MAX_TOKENS_LIMIT = 4096
MAX_CHOICES = 128  # prompts x n in one request

StopStr = Annotated[str, StringConstraints(max_length=256)]
Stop = StopStr | Annotated[list[StopStr], Field(max_length=16)] | None


def _checked(schema: dict[str, Any]) -> Any:
    """Schema keywords of a constraint the handler checks itself (answering 400, as it always has);
    "x-KEYWORD": NAME becomes KEYWORD: this server's limit NAME (see create_app)."""
    return Field(json_schema_extra=schema)


TokenId = Annotated[int, _checked({"minimum": 0, "x-maximum": "max_token_id"})]
TokenIds = Annotated[list[TokenId], _checked({"minItems": 1, "x-maxItems": "context"})]
Batch = _checked({"minItems": 1, "maxItems": MAX_CHOICES})
MAX_TOKENS = {"x-maximum": "max_tokens_limit"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str | None = Field(None, max_length=256)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="gptrecipe extension: keep the k most likely tokens (0 or -1: off)")
    n: int = Field(1, ge=1, le=16, description=f"choices per prompt; prompts x n at most {MAX_CHOICES}")
    stop: Stop = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # bounds exact as JSON numbers (floats)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Sampling):
    prompt: (Annotated[str, StringConstraints(max_length=MAX_BODY_BYTES)] | TokenIds | Annotated[list[TokenIds], Batch]
             | Annotated[list[str], Batch]) = Field(..., description="text or token ids; a list of either is a batch")
    max_tokens: int | None = Field(16, ge=0, json_schema_extra=MAX_TOKENS)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class ContentPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None  # None: an assistant message with tool_calls
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=16)  # checked by the chat format's reader
    tool_call_id: str | None = Field(None, max_length=256)

    @property
    def text(self) -> str | None:
        return self.content if not isinstance(self.content, list) else "".join(p.text for p in self.content)

    def message(self) -> Message:
        return Message("system" if self.role == "developer" else self.role, self.text or "")

    def raw(self) -> dict[str, Any]:
        """The OpenAI shape that `parse_messages` reads."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text}
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ToolFunction(_Body):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Body):
    type: Literal["function"]
    function: ToolFunction


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    tools: list[ToolSpec] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    max_tokens: int | None = Field(None, ge=0, json_schema_extra=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=0, json_schema_extra=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenizeRequest(_Body):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"oneOf": [  # exactly one of them, not null
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]})

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[Annotated[int, _checked({"minimum": 0, "x-maximum": "max_tokenizer_id"})]]


class FeedbackRequest(_Body):
    """The conversation before a reply, and what the user said about the reply (one of three forms)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    chosen: str | None = None
    rejected: str | None = None
    responses: list[str] | None = Field(None, min_length=2, max_length=16)
    response: str | None = None
    rating: Literal[1, -1] | None = None
    source: str | None = Field(None, max_length=64)  # e.g. "regenerate", "thumbs"
    conversation_id: str | None = Field(None, max_length=128)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error response: OpenAI's shape."""

    error: ErrorDetail


ERRORS = {400: "a request this server cannot serve (e.g. a prompt longer than the context, max_tokens over the "
               "limit, chat on a base model)", 401: "missing or wrong API key", 404: "unknown model",
          413: "request body over the server's limit", 422: "malformed JSON, or a parameter of the wrong type "
          "or out of range", 500: "internal error (e.g. generation failed)"}


def _fill_limits(node: Any, limits: dict[str, int]) -> None:
    """In a schema (nested dicts and lists), "x-KEYWORD": NAME becomes KEYWORD: limits[NAME]."""
    if isinstance(node, list):
        for v in node:
            _fill_limits(v, limits)
    elif isinstance(node, dict):
        for k in [k for k in node if k.startswith("x-") and node[k] in limits]:
            node[k[2:]] = limits[node.pop(k)]
        for v in node.values():
            _fill_limits(v, limits)


# ---- the app ------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app reads it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                return await self._reject(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        resp = error_response(413, f"request body is larger than this server's limit of {self.limit} bytes",
                              code="body_too_large")
        await resp(scope, receive, send)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Server:
    """The handlers' shared state: the served model, the engine, limits, the feedback log."""

    def __init__(self, served: ServedModel, engine: Engine, *, max_tokens_limit: int,
                 feedback: FeedbackLog | None, toolset=None):
        self.served, self.engine, self.feedback = served, engine, feedback
        self.toolset = toolset  # --tools builtin: LaMDA's loop runs here, clients get the final answer
        self.template = ChatTemplate(served.tokenizer)
        self.tok = served.tokenizer
        self.max_tokens_limit = max_tokens_limit
        self.created = int(time.time())

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served.name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.served.name}'",
                           param="model", code="model_not_found")

    def check_prompt(self, ids: list[int], param: str = "prompt") -> list[int]:
        try:
            return self.engine.check_prompt(ids)
        except PromptTooLongError:
            raise APIError(400, f"This model's maximum context length is {self.served.block_size} tokens, "
                           f"but the prompt has {len(ids)} tokens. Shorten the prompt.",
                           param=param, code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e), param=param) from None

    def params(self, req: _Sampling, max_tokens: int | None, default: int, **kw: Any) -> GenParams:
        """The engine's parameters for a request that asks for `max_tokens` (None: `default`)."""
        if max_tokens is not None and max_tokens > self.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens}, this server's limit is {self.max_tokens_limit}",
                           param="max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        seed = None if req.seed is None else req.seed % 2**63
        max_tokens = min(default if max_tokens is None else max_tokens, self.max_tokens_limit)
        return GenParams(max_tokens=max_tokens, temperature=req.temperature, top_k=max(req.top_k, 0),
                         top_p=req.top_p, stop=stop, seed=seed, **kw)

    def piece(self, token: int) -> str:
        return self.tok.decode([token])

    def n_chars(self, token: int) -> int:
        """Characters the token adds to the text (UTF-8 lead bytes; a split character counts where it starts)."""
        return sum(1 for b in self.tok.decode_bytes([token]) if b & 0xC0 != 0x80)

    def usage(self, prompts: list[list[int]], choices: list[Choice]) -> dict[str, int]:
        p, c = sum(map(len, prompts)), sum(len(ch.tokens) for ch in choices)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def completion_prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt is empty", param="prompt")
        if isinstance(prompt[0], int):
            prompt = [prompt]
        out = []
        for p in prompt:  # text reads special-token strings as special tokens; an empty text starts a document
            ids = (self.tok.encode(p, allow_special=True) or [self.tok.eot_id]) if isinstance(p, str) else list(p)
            out.append(self.check_prompt(ids))
        return out

    def completion_logprobs(self, lps: list[TokenLogprob], offset: int) -> dict[str, list]:
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in lps:
            out["tokens"].append(self.piece(t.token))
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append(None if t.logprob is None else {self.piece(i): v for i, v in t.top})
            out["text_offset"].append(offset)
            offset += self.n_chars(t.token)
        return out

    async def completions(self, req: CompletionRequest) -> Any:
        self.check_model(req.model)
        prompts = self.completion_prompts(req.prompt)
        if len(prompts) * req.n > MAX_CHOICES:
            raise APIError(400, f"{len(prompts)} prompts x n={req.n} is more than {MAX_CHOICES} choices",
                           param="prompt")
        params = self.params(req, req.max_tokens, 16, logprobs=req.logprobs,
                             prompt_logprobs=req.echo and req.logprobs is not None)
        prompt_texts = [self.tok.decode(p) for p in prompts]
        started: set[int] = set()  # the streamed choices that sent their first chunk (with the echo)

        def choice_json(ch: Choice | Event, index: int, first: bool = True) -> dict[str, Any]:
            lp = None
            if req.logprobs is not None:
                lps = list(ch.logprobs or [])
                offset = len(prompt_texts[index // req.n]) if req.echo else 0
                if first and req.echo and ch.prompt_logprobs is not None:
                    lps, offset = ch.prompt_logprobs + lps, 0
                lp = self.completion_logprobs(lps, offset)
            text = (prompt_texts[index // req.n] if first and req.echo else "") + ch.text
            return {"index": index, "text": text, "logprobs": lp, "finish_reason": ch.finish_reason}

        def part(ev: Event) -> list[dict[str, Any]]:
            out = choice_json(ev, ev.choice, first=ev.choice not in started)
            started.add(ev.choice)
            keep = out["text"] or ev.finish_reason or (req.logprobs is not None and (ev.tokens or ev.prompt_logprobs))
            return [out] if keep else []

        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.served.name}
        return await self.respond(req, prompts, params, head, lambda ch: choice_json(ch, ch.index), part)

    async def respond(self, req: _Sampling, prompts: list[list[int]], params: GenParams, head: dict[str, Any],
                      whole: Callable[[Choice], dict], parts: Callable[[Event], list[dict]],
                      opening: Sequence[dict] = (), chunk: str | None = None) -> Any:
        """{**head, "choices": [whole(choice), ...], "usage"}; or, streamed, events {**head (object `chunk`), "choices":
        [part]} for each part of `opening` and of parts(event) per engine event, the usage if asked, [DONE]."""
        if not req.stream:
            choices = await self.engine.acomplete(prompts, params, n=req.n)
            for ch in choices:
                _raise_engine_error(ch)
            return {**head, "choices": [whole(ch) for ch in choices], "usage": self.usage(prompts, choices)}
        head = {**head, "object": chunk or head["object"]}

        async def events() -> AsyncIterator[str]:
            choices = [Choice(i) for i in range(len(prompts) * req.n)]
            try:
                for part in opening:
                    yield _sse({**head, "choices": [part]})
                # every event that arrived since the last write goes out in one write (one chunk per part)
                async for batch in self.engine.astream_batches(prompts, params, n=req.n):
                    out = []
                    try:
                        for ev in batch:
                            choices[ev.choice].add(ev)
                            _raise_engine_error(ev)
                            out += [_sse({**head, "choices": [part]}) for part in parts(ev)]
                    except APIError:
                        if out:  # what came before the error still goes out first
                            yield "".join(out)
                        raise
                    if out:
                        yield "".join(out)
                if req.stream_options and req.stream_options.include_usage:
                    yield _sse({**head, "choices": [], "usage": self.usage(prompts, choices)})
            except APIError as e:  # headers are sent: report in-band, as OpenAI does
                yield _sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def chat_logprobs(self, lps: list[TokenLogprob] | None) -> dict[str, list] | None:
        if lps is None:
            return None
        stop = set(self.served.stop_ids)

        def entry(token: int, logprob: float) -> dict[str, Any]:
            return {"token": self.piece(token), "logprob": logprob, "bytes": list(self.tok.decode_bytes([token]))}

        return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(i, v) for i, v in t.top]}
                            for t in lps if t.token not in stop]}

    async def chat_completions(self, req: ChatRequest) -> Any:
        self.check_model(req.model)
        if not self.served.chat:
            raise APIError(400, f"'{self.served.name}' is a base model (stage '{self.served.stage or 'unknown'}'), "
                           "not a chat model: use /v1/completions, or serve an SFT or PPO checkpoint "
                           "(or start the server with --chat to force the chat template)", param="messages",
                           code="not_a_chat_model")
        names, choice = self.tool_choice(req)
        forced = self.forced(choice)
        messages = self.messages(req)
        prompt = self.served.chat_ids(messages)
        ids = self.check_prompt(prompt + forced, "messages")
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = self.params(req, asked, self.served.block_size - len(ids),
                             logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                             ban_ids=[self.template.call] if choice == "none" else ())
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.served.name}

        def delta(index: int, delta: dict, reason: str | None = None, lps=None) -> dict[str, Any]:
            return {"index": index, "delta": delta, "logprobs": self.chat_logprobs(lps), "finish_reason": reason}

        if self.toolset is not None and choice != "none":
            return await self.builtin_loop(req, ids, params, head, delta)
        started: dict[int, list[int]] = {}  # a choice's tokens while it may be a call

        def parts(ev: Event) -> list[dict[str, Any]]:
            toks = started.setdefault(ev.choice, [])
            toks += ev.tokens
            if not forced and toks[:1] != [self.template.call]:  # content, streamed as it comes
                out = [delta(ev.choice, {"content": ev.text}, lps=ev.logprobs)] if ev.text or ev.logprobs else []
                return out + ([delta(ev.choice, {}, ev.finish_reason)] if ev.finish_reason else [])
            if not ev.finish_reason:
                return []  # a call goes out whole, at its end
            msg, reason = self.reply(toks, ev.finish_reason, forced, names)
            if "tool_calls" in msg:
                return [delta(ev.choice, {"tool_calls": [{"index": 0, **msg["tool_calls"][0]}]}), delta(ev.choice, {},
                                                                                                          reason)]
            return [delta(ev.choice, {"content": msg["content"]}), delta(ev.choice, {}, reason)]

        def whole(ch: Choice) -> dict[str, Any]:
            if forced or ch.tokens[:1] == [self.template.call]:
                msg, reason = self.reply(ch.tokens, ch.finish_reason, forced, names)
                return {"index": ch.index, "message": msg, "logprobs": None, "finish_reason": reason}
            return {"index": ch.index, "message": {"role": "assistant", "content": ch.text},
                    "logprobs": self.chat_logprobs(ch.logprobs), "finish_reason": ch.finish_reason}

        opening = [delta(i, {"role": "assistant", "content": ""}) for i in range(req.n)]
        return await self.respond(req, [ids], params, head, whole, parts, opening, chunk="chat.completion.chunk")

    def messages(self, req: ChatRequest) -> list[Message]:
        """The conversation in the chat format; bad tool messages are a 400 naming the field."""
        try:
            return parse_messages({"messages": [m.raw() for m in req.messages]}, "request")
        except DataError as e:
            raise APIError(400, str(e), param="messages") from None

    def tool_choice(self, req: ChatRequest) -> tuple[list[str], str | tuple[str]]:
        """The offered functions' names and the choice: "auto", "none", "required" or (name,)."""
        names = [t.function.name for t in req.tools or []]
        if self.toolset is not None and names:
            raise APIError(400, "this server runs the builtin toolset itself (--tools builtin): a request cannot "
                           "offer tools", param="tools")
        choice = req.tool_choice or ("auto" if names or self.toolset is not None else "none")
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise APIError(400, f"tool_choice names the function '{choice.function.name}', which is not among "
                               f"the request's tools ({', '.join(names) or 'none'})", param="tool_choice")
            return names, (choice.function.name,)
        if choice in ("auto", "required") and not names and self.toolset is None:
            raise APIError(400, f"tool_choice '{choice}' needs 'tools'", param="tool_choice")
        return names, choice

    def forced(self, choice: str | tuple[str]) -> list[int]:
        """What a required or named call forces after <|assistant|>: the call token (and the function's name)."""
        if choice == "required" and self.toolset is None:
            return [self.template.call]
        if isinstance(choice, tuple):
            return [self.template.call, *([] if choice[0] == BUILTIN_FUNCTION else self.tok.encode(choice[0] + " "))]
        return []

    def reply(self, tokens: list[int], finish: str | None, forced: list[int], names: list[str]
              ) -> tuple[dict[str, Any], str | None]:
        """A generated call turn -> (message, finish_reason): a `tool_calls` message when it names an offered
        function and ended at its stop token; otherwise the text as content."""
        body = [t for t in tokens if t not in self.served.stop_ids]
        body = body[1:] if body[:1] == [self.template.call] else body
        text = self.tok.decode(forced[1:] + body)
        name, args = parse_call(text, names)
        if finish == "stop" and name in names:
            call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
            return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
        return {"role": "assistant", "content": text}, finish

    async def builtin_loop(self, req: ChatRequest, ids: list[int], params: GenParams, head: dict[str, Any],
                           delta: Callable) -> Any:
        """--tools builtin: every choice runs LaMDA's loop here (calls, results forced in, at most MAX_CALLS per
        turn); the client gets the final answers only."""
        import asyncio

        from ..chat import format_results
        from ..tool_use import MAX_CALLS

        async def one(seed_offset: int) -> tuple[Choice, int]:
            ctx, generated = list(ids), 0
            for calls in range(MAX_CALLS + 1):
                room = self.served.block_size - len(ctx)
                p = dataclasses.replace(params, max_tokens=min(params.max_tokens, room), logprobs=None,
                                        seed=None if params.seed is None else params.seed + seed_offset,
                                        ban_ids=[self.template.call] if calls == MAX_CALLS else ())
                ch = (await self.engine.acomplete([ctx], p))[0]
                _raise_engine_error(ch)
                generated += len(ch.tokens)
                if ch.tokens[:1] != [self.template.call] or ch.finish_reason != "stop":
                    return ch, generated
                query = self.tok.decode([t for t in ch.tokens[1:] if t not in self.served.stop_ids])
                result = format_results(await asyncio.to_thread(self.toolset, query))
                ctx += [*ch.tokens, *self.template.tool_result_ids(result)]
                if len(ctx) >= self.served.block_size:
                    return Choice(0, finish_reason="length"), generated
            raise AssertionError("unreachable: the last round cannot call")

        done = await asyncio.gather(*(one(i) for i in range(req.n)))
        usage = {"prompt_tokens": len(ids), "completion_tokens": sum(g for _, g in done),
                 "total_tokens": len(ids) + sum(g for _, g in done)}
        choices = [{"index": i, "message": {"role": "assistant", "content": ch.text}, "logprobs": None,
                    "finish_reason": ch.finish_reason} for i, (ch, _) in enumerate(done)]
        if not req.stream:
            return {**head, "choices": choices, "usage": usage}
        head = {**head, "object": "chat.completion.chunk"}

        async def events() -> AsyncIterator[str]:
            for c in choices:
                for part in (delta(c["index"], {"role": "assistant", "content": ""}),
                             delta(c["index"], {"content": c["message"]["content"]}),
                             delta(c["index"], {}, c["finish_reason"])):
                    yield _sse({**head, "choices": [part]})
            if req.stream_options and req.stream_options.include_usage:
                yield _sse({**head, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def model_card(self) -> dict[str, Any]:
        return {"id": self.served.name, "object": "model", "created": self.created, "owned_by": "gptrecipe",
                "chat": self.served.chat, "stage": self.served.stage, "max_model_len": self.served.block_size,
                "max_tokens_limit": self.max_tokens_limit, "feedback": self.feedback is not None,
                "tools": [] if self.toolset is not None else [TOOLSET_FUNCTION],
                "builtin_tools": self.toolset is not None}

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    async def model(self, model: str) -> dict[str, Any]:
        self.check_model(model)
        return self.model_card()

    async def get_tokenizer_info(self) -> dict[str, Any]:
        return tokenizer_info(self.tok, model_max_length=self.served.block_size, chat=self.served.chat)

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        self.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give either 'prompt' or 'messages'", param="prompt")
        if req.messages is not None:
            ids = self.served.chat_ids([m.message() for m in req.messages])
            if not req.add_generation_prompt:
                ids = ids[:-1]
        else:
            ids = self.tok.encode(req.prompt, allow_special=True)  # as the exported HF tokenizer does
        return {"tokens": ids, "count": len(ids), "max_model_len": self.served.block_size}

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        self.check_model(req.model)
        bad = [t for t in req.tokens if not 0 <= t < self.tok.vocab_size][:5]
        if bad:
            raise APIError(400, f"token ids must be in 0..{self.tok.vocab_size - 1}, got {bad}", param="tokens")
        return {"prompt": self.tok.decode(req.tokens)}

    async def add_feedback(self, req: FeedbackRequest) -> dict[str, Any]:
        self.check_model(req.model)
        if self.feedback is None:
            raise APIError(400, "this server records no feedback (start it with --feedback FILE)", code="feedback_off")
        messages = [m.message() for m in req.messages]
        meta = {"model": self.served.name, "source": req.source, "conversation_id": req.conversation_id}
        forms = {"comparison": (req.chosen, req.rejected), "ranking": (req.responses,),
                 "rating": (req.response, req.rating)}  # each form's fields, as FeedbackLog.add_KIND takes them
        given = [kind for kind, fields in forms.items() if any(f is not None for f in fields)]
        if len(given) != 1:
            raise APIError(400, "give one of: 'chosen' and 'rejected'; 'responses' (best first); "
                           "'response' and 'rating'")
        kind = given[0]
        if any(f is None for f in forms[kind]):
            raise APIError(400, "a comparison needs both 'chosen' and 'rejected'" if kind == "comparison"
                           else "a rating needs both 'response' and 'rating' (1 or -1)")
        try:
            getattr(self.feedback, f"add_{kind}")(messages, *forms[kind], **meta)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return {"status": "ok", "kind": kind}


def _raise_engine_error(ch: Choice | Event) -> None:
    if ch.finish_reason == "error":
        raise APIError(500, ch.error or "generation failed", type="server_error")


def create_app(checkpoint: str | Path | ServedModel, *, model_name: str | None = None, api_key: str | None = None,
               feedback: str | Path | None = None, device: str = "auto", dtype: str | None = None,
               chat: bool | None = None, max_rows: int = 32, max_tokens_limit: int = MAX_TOKENS_LIMIT,
               max_body_bytes: int = MAX_BODY_BYTES, compile: bool = False, toolset=None,
               threads: int | None = None) -> FastAPI:
    """The FastAPI app serving a checkpoint (or an already loaded ServedModel). `app.state.engine` is the
    engine (started with the app, closed at shutdown); `compile`: the engine decodes through compiled steps;
    `toolset`: run LaMDA's tool loop server-side (`--tools builtin`) instead of returning tool calls; `threads`:
    the engine thread's torch threads (`gptrecipe serve`: all of them, see `leave_threads_to_engine`)."""
    served = checkpoint if isinstance(checkpoint, ServedModel) else load_served(
        checkpoint, device=device, dtype=dtype, chat=chat, name=model_name)
    engine = Engine(served.model, served.tokenizer, stop_ids=served.stop_ids, max_rows=max_rows, compile=compile,
                    threads=threads)
    srv = _Server(served, engine, max_tokens_limit=max_tokens_limit,
                  feedback=FeedbackLog(feedback) if feedback else None, toolset=toolset)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        with engine:  # started with the app, closed at shutdown
            yield

    app = FastAPI(title="gptrecipe", version="0.1.0", lifespan=lifespan,
                  description=f"OpenAI-compatible API for '{served.name}' ({'chat' if served.chat else 'base'} model)")
    app.state.engine, app.state.served, app.state.server = engine, served, srv
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _fill_limits(plain_openapi(), {"max_tokens_limit": max_tokens_limit, "context": served.block_size,
                                           "max_token_id": engine.vocab - 1,
                                           "max_tokenizer_id": served.tokenizer.vocab_size - 1})
        return app.openapi_schema

    app.openapi = openapi

    def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
        """The error responses a route declares: `codes`, and 401 where the server wants an API key."""
        codes = (*codes, 401) if api_key else codes
        return {c: {"model": ErrorBody, "description": ERRORS[c]} for c in sorted(codes)}

    async def auth(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            pos = first.get("loc", ("body", "?"))[-1]
            return error_response(422, f"malformed JSON body ({first.get('ctx', {}).get('error', 'decode error')} "
                                  f"at character {pos})", code="json_invalid")
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = "; ".join(f"{'.'.join(str(x) for x in er.get('loc', ()) if x != 'body') or 'body'}: {er.get('msg')}"
                        for er in errs[:5])
        return error_response(422, msg or "invalid request", param=where or None, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal server error ({type(e).__name__})", type="server_error")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name}

    # the API, behind the key: (method, path, handler, the error codes it can answer); a handler's name is its
    # operation's name in the schema; posted: what any route with a JSON body can answer
    posted = (400, 404, 413, 422)
    for method, path, handler, codes in [
            ("GET", "/v1/models", srv.models, ()), ("GET", "/v1/models/{model}", srv.model, (404, 422)),
            ("POST", "/v1/completions", srv.completions, (*posted, 500)),
            ("POST", "/v1/chat/completions", srv.chat_completions, (*posted, 500)),
            ("GET", "/tokenizer_info", srv.get_tokenizer_info, ()), ("POST", "/tokenize", srv.tokenize, posted),
            ("POST", "/detokenize", srv.detokenize, posted), ("POST", "/v1/feedback", srv.add_feedback, posted)]:
        app.add_api_route(path, handler, methods=[method], dependencies=[Depends(auth)], responses=errors(*codes))

    return app


class BackgroundServer:
    """uvicorn serving `app` from a thread, on a free loopback port unless one is given (tests, benchmarks).

        with BackgroundServer(create_app("runs/sft")) as server:
            openai.OpenAI(base_url=server.url + "/v1", api_key="-")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **kw: Any) -> None:
    """Serve a checkpoint until interrupted (what `gptrecipe serve` runs)."""
    import uvicorn

    app = create_app(checkpoint, **kw)
    served: ServedModel = app.state.served
    kind = "chat" if served.chat else "base"
    print(f"serving '{served.name}' ({kind} model, {served.model.num_params():,} parameters, context "
          f"{served.block_size}) from {served.checkpoint}\n  web chat: http://{host}:{port}/\n"
          f"  OpenAI API: http://{host}:{port}/v1", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not kw.get("api_key"):
        print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model",
              flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
