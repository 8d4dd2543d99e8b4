"""The generation engine: continuous batching gives every row exactly what the plain sampler gives it alone."""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from gptrecipe.model import GPT
from gptrecipe.sample import PromptTooLongError, SamplingConfig, generate
from gptrecipe.serve.engine import Engine, Event, GenParams
from tests.conftest import tiny_config
from tests.serve_util import local_logprobs


@pytest.fixture(scope="module")
def model(small_tok) -> GPT:
    torch.manual_seed(1)
    return GPT(tiny_config(vocab_size=small_tok.vocab_size, block_size=256)).eval()


def reference(model, tok, ids, max_new, *, temperature=0.0, seed=None, stop=(), stop_ids=()):
    cfg = SamplingConfig(max_new_tokens=max_new, temperature=temperature, seed=seed, stop=list(stop))
    return generate(model, tok, [ids], cfg, stop_ids=list(stop_ids))[0]


def test_rows_joining_mid_generation_match_the_sampler(model, small_tok):
    tok = small_tok
    short, long_ = tok.encode("Hi"), (tok.encode("What is AI? Artificial intelligence is the study. ") * 6)[:100]
    with Engine(model, tok, stop_ids=[]) as engine:
        q_a: queue.Queue[Event] = queue.Queue()
        engine.submit([short], GenParams(max_tokens=200, temperature=0), q_a.put)
        q_a.get(timeout=30)  # A is generating; B (a longer prompt than A's row so far) and C join it
        results: dict[str, list] = {}

        def run(name, prompts, params, n=1):
            results[name] = engine.complete(prompts, params, n=n)

        threads = [threading.Thread(target=run, args=("B", [long_], GenParams(max_tokens=60, temperature=0))),
                   threading.Thread(target=run, args=("C", [short, tok.encode("Tell me a joke")],
                                                      GenParams(max_tokens=30, temperature=1.0, seed=7), 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        a_tokens = []
        while True:
            ev = q_a.get(timeout=30)
            a_tokens += ev.tokens
            if ev.finish_reason:
                break
        assert engine.stats.max_rows >= 3  # A, B and C's rows were decoded together
    assert results["B"][0].tokens == reference(model, tok, long_, 60).token_ids
    assert results["B"][0].finish_reason == "length"
    c = results["C"]
    assert [ch.index for ch in c] == [0, 1, 2, 3]
    assert c[0].tokens == reference(model, tok, short, 30, temperature=1.0, seed=7).token_ids  # sample 0: the seed
    assert c[0].tokens != c[1].tokens  # sample 1: another seed
    assert c[2].tokens == reference(model, tok, tok.encode("Tell me a joke"), 30, temperature=1.0, seed=7).token_ids


def test_stop_tokens_stop_strings_logprobs_and_echo(model, small_tok):
    tok = small_tok
    ids = tok.encode("Hello! How are you?")
    with Engine(model, tok, stop_ids=[]) as engine:
        free = engine.complete([ids], GenParams(max_tokens=40, temperature=1.0, seed=3))[0]
        stop_tok = free.tokens[5]
        by_token = engine.complete([ids], GenParams(max_tokens=40, temperature=1.0, seed=3, stop_ids=[stop_tok]))[0]
        assert by_token.finish_reason == "stop" and by_token.tokens == free.tokens[: free.tokens.index(stop_tok) + 1]
        assert by_token.text == tok.decode(free.tokens[: free.tokens.index(stop_tok)])
        stop = free.text[4:7]
        by_text = engine.complete([ids], GenParams(max_tokens=40, temperature=1.0, seed=3, stop=[stop]))[0]
        assert by_text.finish_reason == "stop" and by_text.text == free.text[: free.text.find(stop)]
        scored = engine.complete([ids], GenParams(max_tokens=5, temperature=0, logprobs=3, prompt_logprobs=True))[0]
    full = ids + scored.tokens
    assert [t.token for t in scored.prompt_logprobs] == ids and scored.prompt_logprobs[0].logprob is None
    got = [t.logprob for t in scored.prompt_logprobs[1:]] + [t.logprob for t in scored.logprobs]
    assert got == pytest.approx(local_logprobs(model, full), abs=1e-4)
    assert all(len(t.top) == 3 and t.top[0][0] == t.token for t in scored.logprobs)  # greedy: the top token


def test_context_limit_max_tokens_zero_and_bad_prompts(model, small_tok):
    tok = small_tok
    with Engine(model, tok, stop_ids=[]) as engine:
        full = engine.complete([[5] * 250], GenParams(max_tokens=100, temperature=0))[0]
        assert len(full.tokens) == 6 and full.finish_reason == "length"  # the context ends at 256
        none = engine.complete([[5] * 256, [5, 6]], GenParams(max_tokens=0, prompt_logprobs=True))
        assert [c.tokens for c in none] == [[], []] and none[1].prompt_logprobs[1].token == 6
        with pytest.raises(PromptTooLongError):
            engine.submit([[5] * 257], GenParams(), lambda ev: None)
        with pytest.raises(ValueError):
            engine.submit([[10**6]], GenParams(), lambda ev: None)
        with pytest.raises(ValueError):
            engine.submit([[]], GenParams(), lambda ev: None)
        assert engine.running == 0


def test_a_failing_forward_pass_fails_its_requests_and_the_engine_goes_on(model, small_tok):
    with Engine(model, small_tok, stop_ids=[]) as engine:
        real_forward = model.forward
        calls = {"n": 0}

        def broken(*a, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated out of memory")
            return real_forward(*a, **kw)

        model.forward = broken
        try:
            bad = engine.complete([[5, 6, 7]], GenParams(max_tokens=20, temperature=0))[0]
        finally:
            del model.forward
        assert bad.finish_reason == "error" and "simulated out of memory" in bad.error
        good = engine.complete([[5, 6, 7]], GenParams(max_tokens=20, temperature=0))[0]
        assert good.finish_reason == "length" and len(good.tokens) == 20


def test_a_failing_sink_cancels_its_request_with_a_warning(model, small_tok, caplog):
    def gone(ev: Event) -> None:
        raise RuntimeError("the listener is gone")

    caplog.set_level(logging.WARNING, logger="gptrecipe.serve.engine")
    with Engine(model, small_tok, stop_ids=[]) as engine:
        rid = engine.submit([[5, 6, 7]], GenParams(max_tokens=200, temperature=0), gone)
        deadline = time.monotonic() + 30
        while engine.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.running == 0 and engine.stats.tokens < 200  # cancelled: it stopped before its budget
        good = engine.complete([[5, 6, 7]], GenParams(max_tokens=3, temperature=0))[0]  # the engine goes on
    assert good.finish_reason == "length"
    (rec,) = [r for r in caplog.records if "sink" in r.getMessage()]
    assert rec.levelno == logging.WARNING and f"request {rid}" in rec.getMessage()
    assert "the listener is gone" in rec.getMessage()


def test_compiled_engine_gives_each_row_the_sampler_tokens_as_rows_join_grow_and_leave(small_tok):
    """compile=True: rows live in the slots of a static cache that grows (more rows, more columns) and shrinks
    as they join and leave; every row still gets exactly the eager sampler's tokens."""
    tok = small_tok
    torch.manual_seed(2)
    model = GPT(tiny_config(vocab_size=tok.vocab_size, block_size=128)).eval()
    long_ = (tok.encode("What is AI? Artificial intelligence is the study. ") * 6)[:50]  # 50 + 40 > 64 columns
    short, joke = tok.encode("Hi"), tok.encode("Tell me a joke")
    with Engine(model, tok, stop_ids=[], compile=True) as engine:
        compiled = dict(counters["frames"])  # start() compiled the decode step: one graph for every shape below
        assert compiled.get("ok", 0) >= 1
        q_a: queue.Queue[Event] = queue.Queue()
        engine.submit([long_], GenParams(max_tokens=40, temperature=0), q_a.put)
        a_tokens = list(q_a.get(timeout=120).tokens)  # A is generating alone (1 slot); B, then C's 4 rows join it
        b = engine.complete([short], GenParams(max_tokens=20, temperature=0))
        c = engine.complete([short, joke], GenParams(max_tokens=12, temperature=1.0, seed=7), n=2)
        while True:
            ev = q_a.get(timeout=120)
            a_tokens += ev.tokens
            if ev.finish_reason:
                break
        later = engine.complete([joke], GenParams(max_tokens=10, temperature=0))  # after the batch emptied
        assert engine._static is None and engine.stats.max_rows >= 5
        assert dict(counters["frames"]) == compiled  # no compile while serving (rows 2..8, columns 64 and 128)
    assert a_tokens == reference(model, tok, long_, 40).token_ids
    assert b[0].tokens == reference(model, tok, short, 20).token_ids
    assert c[0].tokens == reference(model, tok, short, 12, temperature=1.0, seed=7).token_ids
    assert c[2].tokens == reference(model, tok, joke, 12, temperature=1.0, seed=7).token_ids
    assert later[0].tokens == reference(model, tok, joke, 10).token_ids


def test_a_serving_process_leaves_the_torch_threads_to_the_engine_thread():
    """`leave_threads_to_engine` (what `serve` and `chat` call before loading): the main thread keeps one torch
    thread, the engine thread computes with the rest (a fresh process: the setting is per process)."""
    code = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "from gptrecipe.model import GPT\n"
        "from gptrecipe.serve.engine import Engine, GenParams, leave_threads_to_engine\n"
        "from tests.conftest import ByteTokenizer, tiny_config\n"
        "n = leave_threads_to_engine()\n"
        "model = GPT(tiny_config()).eval()\n"
        "seen = []\n"
        "def sink(ev):\n"
        "    seen.append((torch.get_num_threads(), ev.finish_reason))\n"
        "with Engine(model, ByteTokenizer(), stop_ids=[], threads=n) as engine:\n"
        "    engine.submit([[5, 6]], GenParams(max_tokens=3, temperature=0), sink)\n"
        "    while not any(f for _, f in seen): pass\n"
        "print(n, torch.get_num_threads(), sorted({t for t, _ in seen}))\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "1", "[2]"]  # the engine thread's events saw 2 threads, the main thread 1
