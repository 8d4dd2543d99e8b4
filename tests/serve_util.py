"""Helpers for the serving tests: a tiny chat checkpoint, raw HTTP requests, and local references."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path

import torch

from gptrecipe.model import GPT
from tests.conftest import save_stage_checkpoint, tiny_config


def tiny_checkpoint(path: Path, tok, *, stage: str = "sft", block_size: int = 64, seed: int = 0) -> tuple[Path, GPT]:
    """A randomly initialised tiny GPT over `tok`, saved as a checkpoint of `stage`."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(vocab_size=tok.vocab_size, block_size=block_size)).eval()
    return save_stage_checkpoint(path, model, tok, stage=stage), model


def http(url: str, body: bytes | dict | None = None, *, key: str | None = None, method: str | None = None,
         headers: dict | None = None) -> tuple[int, dict | str]:
    """(status, parsed JSON or text) of a request; errors are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    h = {"Content-Type": "application/json", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=h, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def local_logprobs(model: GPT, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, from one plain forward pass (no cache, no padding)."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def send_json(handler, obj) -> None:
    """Answer a `BaseHTTPRequestHandler` request with 200 and `obj` as JSON."""
    data = json.dumps(obj).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextlib.contextmanager
def scripted_server(handler) -> Iterator[str]:
    """A local HTTP server answering with `handler` (a `BaseHTTPRequestHandler`) in a thread; yields its /v1 URL."""
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
