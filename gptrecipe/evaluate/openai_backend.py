"""The harness over an OpenAI-compatible `/v1/completions` endpoint (OpenAI, vLLM, llama.cpp, TGI, ...).

Log-likelihoods: the prompt is context + continuation with `echo=true, logprobs=1, max_tokens=0`; the
server returns each prompt token's log-probability and character offset, and the continuation's score
is the sum over tokens starting at or after the end of the context. Generation: `max_tokens` and `stop`
at temperature 0. Same prompts, same scoring: numbers comparable with a local checkpoint's.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any


class EndpointError(RuntimeError):
    """The endpoint failed or answered something that is not a completions response."""


class OpenAIBackend:
    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, batch_size: int = 16,
                 max_tokens: int | None = None, tokenizer=None, timeout: float = 120.0, max_stops: int = 4,
                 prefix: str = ""):
        """`base_url` like http://localhost:8000/v1. With `max_tokens` (the model's context) and a local
        `tokenizer` (to count prompt tokens) K is capped to fit; otherwise prompts go as they are. `prefix` goes
        before every prompt: "<|endoftext|>" makes `gptrecipe serve` score exactly as a local checkpoint does
        (which starts every prompt as a document)."""
        self.url, self.prefix, self.tokenizer = base_url.rstrip("/") + "/completions", prefix, tokenizer
        self.model, self.batch_size, self.timeout, self.max_stops = model, batch_size, timeout, max_stops
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.max_tokens = max_tokens if tokenizer is not None else None
        self.name = f"{model} @ {base_url}"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text)) if self.tokenizer is not None else len(text.encode("utf-8"))

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            raise EndpointError(f"{self.url}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise EndpointError(f"{self.url}: cannot reach the endpoint ({getattr(e, 'reason', e)})") from None
        try:
            data = json.loads(body)
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        except (ValueError, KeyError, TypeError):
            raise EndpointError(f"{self.url}: not a completions response: {body[:200]!r}") from None
        if len(choices) != (len(payload["prompt"]) if isinstance(payload["prompt"], list) else 1):
            raise EndpointError(f"{self.url}: {len(choices)} choices for {len(payload['prompt'])} prompts")
        return {"choices": choices}

    def loglikelihood(self, requests: Sequence[tuple[str, str]], bar=None) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        for b in range(0, len(requests), self.batch_size):
            batch = requests[b: b + self.batch_size]
            resp = self._post({"model": self.model, "prompt": [self.prefix + c + x for c, x in batch],
                               "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0})
            for (ctx, cont), choice in zip(batch, resp["choices"], strict=True):
                ctx = self.prefix + ctx
                try:
                    lp = choice["logprobs"]
                    pairs = list(zip(lp["text_offset"], lp["token_logprobs"], strict=True))
                except (KeyError, TypeError, ValueError):
                    raise EndpointError(f"{self.url}: no echoed logprobs with text_offset in the response "
                                        "(does the server support echo=true?)") from None
                end = len(ctx) + len(cont)
                scored = [v for off, v in pairs if len(ctx) <= off < end]  # echoed prompt tokens only
                if any(v is None for v in scored):
                    raise EndpointError(f"{self.url}: a continuation token has no log-probability")
                out.append((float(sum(scored)), len(scored)))
            if bar is not None:
                bar.update(len(batch))
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str], bar=None, *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """Greedy (temperature 0) or sampled completions; a sampled request carries top_p and a seed per batch."""
        out: list[str] = []
        for b in range(0, len(prompts), self.batch_size):
            batch = [self.prefix + p for p in prompts[b: b + self.batch_size]]
            payload: dict[str, Any] = {"model": self.model, "prompt": batch, "max_tokens": max_new_tokens,
                                       "temperature": temperature}
            if temperature > 0:
                payload["top_p"] = top_p
                if seed is not None:
                    payload["seed"] = seed * 1_000_003 + b
            if stop:
                payload["stop"] = list(stop)[: self.max_stops]  # OpenAI accepts at most 4
            for choice in self._post(payload)["choices"]:
                text = choice.get("text")
                if not isinstance(text, str):
                    raise EndpointError(f"{self.url}: a choice without 'text'")
                for s in stop:  # servers that ignore `stop` (or more than 4 of them): cut here too
                    text = text.split(s)[0] if s else text
                out.append(text)
            if bar is not None:
                bar.update(len(batch))
        return out
