"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from http.client import HTTPConnection

import openai
import pytest
import torch

from gptrecipe.chat import ChatTemplate, Message
from gptrecipe.rm import read_rankings
from gptrecipe.sample import SamplingConfig, generate
from gptrecipe.serve.api import BackgroundServer, create_app
from gptrecipe.serve.engine import GenParams
from tests.serve_util import http, local_logprobs, tiny_checkpoint

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_tok):
    root = tmp_path_factory.mktemp("serve")
    ckpt, model = tiny_checkpoint(root / "sft", small_tok)
    app = create_app(ckpt, api_key=KEY, feedback=root / "feedback.jsonl", device="cpu", max_tokens_limit=512,
                     max_body_bytes=100_000)
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        yield {"server": server, "client": client, "model": model, "tok": small_tok, "app": app, "root": root,
               "name": "sft"}


def chat_ids(tok, messages: list[dict]) -> list[int]:
    return ChatTemplate(tok).prompt_ids([Message(m["role"], m["content"]) for m in messages])


def test_models_openapi_and_health(setup):
    models = setup["client"].models.list().data
    assert [m.id for m in models] == ["sft"]
    assert models[0].model_extra["chat"] is True and models[0].model_extra["max_model_len"] == 64
    status, schema = http(setup["server"].url + "/openapi.json")
    assert status == 200 and {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(schema["paths"])
    assert http(setup["server"].url + "/health")[0] == 200


def test_chat_greedy_equals_local_sampler(setup):
    tok, model = setup["tok"], setup["model"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello! How are you?"},
                {"role": "assistant", "content": "I am fine."}, {"role": "user", "content": "What is AI?"}]
    r = setup["client"].chat.completions.create(model="sft", messages=messages, max_tokens=20, temperature=0)
    ids = chat_ids(tok, messages)
    ref = generate(model, tok, [ids], SamplingConfig(max_new_tokens=20, temperature=0),
                   stop_ids=ChatTemplate(tok).stop_ids)[0]
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ref.text
    assert choice.finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(ref.token_ids) + (ref.finish_reason == "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(setup):
    client = setup["client"]
    kw = dict(model="sft", messages=[{"role": "user", "content": "Tell me a joke."}], max_tokens=24, temperature=1.0,
              seed=3)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1  # streamed in pieces
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_logprobs_equal_local_forward(setup):
    tok, model = setup["tok"], setup["model"]
    messages = [{"role": "user", "content": "Why did the chicken cross the road?"}]
    r = setup["client"].chat.completions.create(model="sft", messages=messages, max_tokens=8, temperature=0,
                                                logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    ids = chat_ids(tok, messages)
    gen = tok.encode(r.choices[0].message.content, allow_special=True)
    assert [bytes(c.bytes) for c in content] == [tok.decode_bytes([t]) for t in gen]
    ref = local_logprobs(model, ids + gen)[len(ids) - 1:]
    assert [c.logprob for c in content] == pytest.approx(ref, abs=1e-4)
    for c in content:  # greedy: the chosen token is the most likely one
        assert len(c.top_logprobs) == 3 and c.top_logprobs[0].logprob == pytest.approx(c.logprob, abs=1e-6)


def test_completions_text_and_token_id_prompts(setup):
    client, tok, model = setup["client"], setup["tok"], setup["model"]
    r = client.completions.create(model="sft", prompt="Hello! How", max_tokens=5, temperature=0)
    ids = tok.encode("Hello! How")
    ref = generate(model, tok, [ids], SamplingConfig(max_new_tokens=5, temperature=0),
                   stop_ids=ChatTemplate(tok).stop_ids)[0]
    assert r.choices[0].text == ref.text and r.object == "text_completion"
    assert r.usage.prompt_tokens == len(ids)
    batch = client.completions.create(model="sft", prompt=[ids, tok.encode("What is")], max_tokens=5, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1] and batch.choices[0].text == ref.text
    streamed = list(client.completions.create(model="sft", prompt=ids, max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == ref.text


def test_echo_prompt_logprobs_equal_local_forward(setup):
    """What lm-eval's loglikelihood requests send: token ids, echo, max_tokens 1, logprobs 1."""
    client, tok, model = setup["client"], setup["tok"], setup["model"]
    prompts = [tok.encode("What is AI? Artificial intelligence is the study"), tok.encode("Tell me a joke.")]
    r = client.completions.create(model="sft", prompt=prompts, max_tokens=1, echo=True, logprobs=1, temperature=0)
    for ids, choice in zip(prompts, sorted(r.choices, key=lambda c: c.index), strict=True):
        lp = choice.logprobs
        assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        with torch.no_grad():  # greedy: the generated token is the local argmax
            generated = [int(model(torch.tensor([ids]))[0][0, -1].argmax())]
        assert choice.text == tok.decode(ids) + tok.decode(generated)
        ref = local_logprobs(model, ids + generated)
        assert lp.token_logprobs[1:] == pytest.approx(ref, abs=1e-4)
        assert lp.tokens == [tok.decode([t]) for t in ids + generated]
        assert lp.text_offset[:3] == [0, len(tok.decode(ids[:1])), len(tok.decode(ids[:2]))]
        # the generated token is greedy: its logprob is the best of its top_logprobs
        assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()), abs=1e-6)
    # max_tokens 0: the prompt's log-probabilities only
    r0 = client.completions.create(model="sft", prompt="Hello! How are you?", max_tokens=0, echo=True, logprobs=0)
    ids = tok.encode("Hello! How are you?")
    assert r0.choices[0].text == "Hello! How are you?" and r0.usage.completion_tokens == 0
    assert r0.choices[0].logprobs.token_logprobs[1:] == pytest.approx(local_logprobs(model, ids), abs=1e-4)


def test_n_seed_and_reproducibility(setup):
    client = setup["client"]
    kw = dict(model="sft", prompt="Hello", max_tokens=12, temperature=1.0, n=3, seed=11)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # n samples, not one sample n times
    assert [c.index for c in a.choices] == [0, 1, 2] and a.usage.prompt_tokens == len(setup["tok"].encode("Hello"))
    other = client.completions.create(**{**kw, "seed": 12})
    assert [c.text for c in other.choices] != [c.text for c in a.choices]


def test_stop_strings_and_finish_reasons(setup):
    client = setup["client"]
    kw = dict(model="sft", prompt="Tell me", max_tokens=30, temperature=1.0, seed=5)
    full = client.completions.create(**kw).choices[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = client.completions.create(**kw, stop=[stop, "never appears"]).choices[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    streamed = list(client.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    short = client.completions.create(model="sft", prompt="Tell me", max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    # the context ends before max_tokens: finish "length" at the context's end
    tok = setup["tok"]
    ids = (tok.encode("Hello! How are you? I am fine, thank you. What is AI?") * 10)[:60]
    edge = client.completions.create(model="sft", prompt=ids, max_tokens=50, temperature=0, logprobs=0)
    assert edge.usage.prompt_tokens == 60 and edge.usage.completion_tokens <= 64 - 60
    assert edge.choices[0].finish_reason == "length" or edge.usage.completion_tokens < 4


def test_sixteen_concurrent_streams_are_batched_and_correct(setup):
    tok, model, engine = setup["tok"], setup["model"], setup["app"].state.engine
    prompts = [f"Hello {i}! What is AI?" for i in range(16)]
    expected = [generate(model, tok, [chat_ids(tok, [{"role": "user", "content": p}])],
                         SamplingConfig(max_new_tokens=24, temperature=1.0, seed=100 + i,
                                        ban_ids=[ChatTemplate(tok).call]),  # no tools: no call
                         stop_ids=ChatTemplate(tok).stop_ids)[0].text for i, p in enumerate(prompts)]
    client = openai.AsyncOpenAI(base_url=setup["server"].url + "/v1", api_key=KEY, max_retries=0, timeout=60)

    async def one(i: int) -> tuple[str, str | None, int]:
        stream = await client.chat.completions.create(
            model="sft", messages=[{"role": "user", "content": prompts[i]}], max_tokens=24, temperature=1.0,
            seed=100 + i, stream=True)
        text, finish, n_chunks = "", None, 0
        async for chunk in stream:
            n_chunks += 1
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        return text, finish, n_chunks

    async def run_all():
        try:
            return await asyncio.gather(*(one(i) for i in range(16)))
        finally:
            await client.close()

    before = json.loads(json.dumps(engine.stats.__dict__))
    results = asyncio.run(run_all())
    after = engine.stats.__dict__
    assert [t for t, _, _ in results] == expected  # each equals the plain sampler with its own seed
    assert all(f in ("stop", "length") for _, f, _ in results)
    assert sum(n > 2 for _, _, n in results) >= 8  # streamed, not delivered whole
    steps, tokens = after["steps"] - before["steps"], after["tokens"] - before["tokens"]
    assert after["max_rows"] >= 4  # requests ran together in one batch
    assert steps < tokens / 2, (steps, tokens)  # far fewer forward passes than tokens: batched


def test_client_disconnect_cancels_generation(tmp_path, small_tok):
    ckpt, _ = tiny_checkpoint(tmp_path / "long", small_tok, block_size=1024)
    app = create_app(ckpt, device="cpu")
    engine = app.state.engine
    with BackgroundServer(app) as server:
        conn = HTTPConnection(server.host, server.port, timeout=30)
        body = json.dumps({"model": "long", "prompt": "Hello", "max_tokens": 1000, "temperature": 1.0,
                           "stream": True, "stop": ["never appears at all"]})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        conn.close()
        deadline = time.monotonic() + 20
        while engine.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.running == 0
        assert engine.stats.tokens < 900  # stopped early, not run to max_tokens
        # the engine API: leaving a stream early cancels too
        stream = engine.stream([[1, 2, 3]], GenParams(max_tokens=1000, temperature=1.0))
        next(stream)
        stream.close()
        deadline = time.monotonic() + 20
        while engine.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.running == 0 and engine.stats.tokens < 1800


def test_auth(setup):
    url = setup["server"].url
    status, body = http(url + "/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert http(url + "/v1/models", key="wrong")[0] == 401
    assert http(url + "/v1/completions", {"prompt": "x"}, headers={"Authorization": f"Basic {KEY}"})[0] == 401
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="sft", messages=[{"role": "user", "content": "hi"}])
    assert http(url + "/", method="GET")[0] == 200  # the page itself is public; it asks for the key


def test_errors_are_openai_shaped_and_never_500(setup):
    url, client = setup["server"].url, setup["client"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.BadRequestError, match="maximum context length is 64 tokens"):
        client.completions.create(model="sft", prompt="Hello " * 80, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Hello " * 80}])
    with pytest.raises(openai.BadRequestError, match="limit is 512"):
        client.completions.create(model="sft", prompt="Hi", max_tokens=100_000)
    status, body = http(url + "/v1/completions", b'{"model": "sft", "prompt": ', key=KEY)
    assert status == 422 and "malformed JSON" in body["error"]["message"]
    status, body = http(url + "/v1/completions", {"prompt": "x" * 200_000}, key=KEY)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    cases = {
        422: [{"prompt": "x", "temperature": 5}, {"prompt": "x", "n": 0}, {"prompt": "x", "max_tokens": -1},
              {"prompt": "x", "logprobs": 99}, {"prompt": "x", "top_p": 1.5}, {"prompt": {"a": 1}}, {},
              {"prompt": "x", "stop": 5}, {"prompt": "x", "seed": "abc"}, {"prompt": [1, "a", None]}, [1, 2], "str"],
        400: [{"prompt": []}, {"prompt": [[]]}, {"prompt": [-1]}, {"prompt": [10**9]}, {"prompt": [[1], [2**40]]}],
    }
    for want, bodies in cases.items():
        for b in bodies:
            status, body = http(url + "/v1/completions", json.dumps(b).encode(), key=KEY)
            assert status == want, (b, status, body)
            assert set(body["error"]) >= {"message", "type", "code"}
    status, body = http(url + "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, key=KEY)
    assert status == 400 and "messages" in body["error"]["message"], body  # a tool result without its call
    status, body = http(url + "/v1/chat/completions", {"messages": [{"role": "user"}]}, key=KEY)
    assert status == 400 and "content" in body["error"]["message"], body
    chat_422 = [{"messages": []}, {"messages": "hi"},
                {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 50}]
    for b in chat_422:
        assert http(url + "/v1/chat/completions", b, key=KEY)[0] == 422, b
    assert http(url + "/v1/nothing-here", {"a": 1}, key=KEY)[0] == 404
    assert http(url + "/detokenize", {"tokens": [99999]}, key=KEY)[0] == 400


def test_tokenizer_endpoints(setup):
    url, tok = setup["server"].url, setup["tok"]
    status, info = http(url + "/tokenizer_info", key=KEY)
    assert status == 200 and info["eos_token"] == "<|end|>" and info["model_max_length"] == 64
    assert "chat_template" in info
    _, enc = http(url + "/tokenize", {"prompt": "Hello world<|endoftext|>"}, key=KEY)
    assert enc["tokens"] == tok.encode("Hello world<|endoftext|>", allow_special=True) and enc["tokens"][-1] == 0
    _, dec = http(url + "/detokenize", {"tokens": enc["tokens"]}, key=KEY)
    assert dec["prompt"] == "Hello world<|endoftext|>"
    msgs = [{"role": "user", "content": "Hi"}]
    _, enc = http(url + "/tokenize", {"messages": msgs}, key=KEY)
    assert enc["tokens"] == chat_ids(tok, msgs)


def test_feedback_becomes_rankings(setup):
    url, root = setup["server"].url, setup["root"]
    one_turn = [{"role": "user", "content": "What is AI?"}]
    assert http(url + "/v1/feedback", {"messages": one_turn, "chosen": "A study.", "rejected": "No idea."},
                key=KEY) == (200, {"status": "ok", "kind": "comparison"})
    two_turns = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Joke?"}]
    assert http(url + "/v1/feedback", {"messages": two_turns, "responses": ["A", "B", "C"]}, key=KEY)[0] == 200
    assert http(url + "/v1/feedback", {"messages": one_turn, "response": "No idea.", "rating": -1}, key=KEY)[0] == 200
    for bad in ({"messages": one_turn, "chosen": "same", "rejected": "same"},
                {"messages": one_turn, "chosen": "a"},
                {"messages": one_turn, "chosen": "a", "rejected": "b", "response": "c", "rating": 1}):
        assert http(url + "/v1/feedback", bad, key=KEY)[0] == 400, bad
    assert http(url + "/v1/feedback", {"messages": one_turn, "response": "x", "rating": 5}, key=KEY)[0] == 422
    rankings = read_rankings(root / "feedback.jsonl")  # what `gptrecipe rm --data` trains on
    assert [(r.prompt, r.responses) for r in rankings] == [
        ("What is AI?", ["A study.", "No idea."]),
        ("System: Be kind.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Joke?", ["A", "B", "C"])]
    rating = json.loads((root / "feedback.ratings.jsonl").read_text())
    assert rating["rating"] == -1 and rating["prompt"] == "What is AI?" and rating["model"] == "sft"


def test_base_model_serves_completions_not_chat(tmp_path, small_tok):
    ckpt, _ = tiny_checkpoint(tmp_path / "pretrain", small_tok, stage="pretrain")
    with BackgroundServer(create_app(ckpt, device="cpu")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        assert client.models.list().data[0].model_extra["chat"] is False
        r = client.completions.create(model="pretrain", prompt="Hello", max_tokens=4, temperature=0)
        assert r.choices[0].finish_reason in ("length", "stop")
        with pytest.raises(openai.BadRequestError, match="base model"):
            client.chat.completions.create(model="pretrain", messages=[{"role": "user", "content": "hi"}])
        status, body = http(server.url + "/v1/feedback", {"messages": [{"role": "user", "content": "x"}],
                                                           "chosen": "a", "rejected": "b"})
        assert status == 400 and body["error"]["code"] == "feedback_off"


# per POST route: a body it serves, and one it cannot serve (400)
SERVABLE = {"/v1/completions": {"prompt": "Hi", "max_tokens": 1},
            "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            "/tokenize": {"prompt": "Hi"}, "/detokenize": {"tokens": [1]},
            "/v1/feedback": {"messages": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b"}}
UNSERVABLE = {"/v1/completions": {"prompt": []},
              "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hello " * 80}]},
              "/tokenize": {"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]},
              "/detokenize": {"tokens": [10**6]}, "/v1/feedback": {"messages": [{"role": "user", "content": "Hi"}]}}


def test_openapi_declares_every_error_each_route_returns(setup):
    url = setup["server"].url
    _, schema = http(url + "/openapi.json")
    assert set(schema["paths"]) == {"/health", "/v1/models", "/v1/models/{model}", "/tokenizer_info", *SERVABLE}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            route = url + path.replace("{model}", "sft")
            if method == "get":
                answers = [http(route), http(url + path.replace("{model}", "gpt-4"), key=KEY)]
            else:  # feedback is never recorded: every one of these fails before
                ok = SERVABLE[path]
                answers = [http(route, ok), http(route, {**ok, "model": "gpt-4"}, key=KEY),
                           http(route, UNSERVABLE[path], key=KEY), http(route, b"{", key=KEY),
                           http(route, {**ok, "pad": "x" * 200_000}, key=KEY)]
            errors = {status: body for status, body in answers if status >= 400}
            assert set(errors) <= {int(c) for c in op["responses"]}, (method, path, set(errors))
            assert method == "get" or set(errors) == {400, 401, 404, 413, 422}, (path, set(errors))
            for body in errors.values():
                assert set(body["error"]) == {"message", "type", "param", "code"}
            for code, resp in op["responses"].items():
                if int(code) >= 400:
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def _number_edges(prop: dict) -> list[tuple[float, float]]:
    """(the last value the schema allows, the first it does not) at each bound of a numeric property."""
    nodes = [prop, *prop.get("anyOf", [])]
    integer = any(n.get("type") == "integer" for n in nodes)
    steps = {"minimum": (0, -1), "maximum": (0, 1), "exclusiveMinimum": (1, 0), "exclusiveMaximum": (-1, 0)}
    edges = []
    for n in nodes:
        for key, (inside, outside) in steps.items():
            if key in n:
                v = int(n[key]) if integer else n[key]
                edges.append((v + inside, v + outside))
    return edges


def test_schema_valid_edges_are_served_and_invalid_ones_are_4xx(setup):
    url, vocab = setup["server"].url, setup["tok"].vocab_size
    _, schema = http(url + "/openapi.json")
    components, checked = schema["components"]["schemas"], set()
    for path, name in (("/v1/completions", "CompletionRequest"), ("/v1/chat/completions", "ChatRequest")):
        for field, prop in components[name]["properties"].items():
            for inside, outside in _number_edges(prop):
                status, body = http(url + path, {**SERVABLE[path], field: inside}, key=KEY)
                assert status == 200, (path, field, inside, body)
                status, body = http(url + path, {**SERVABLE[path], field: outside}, key=KEY)
                assert 400 <= status < 500, (path, field, outside, status, body)
                checked.add(field)
    assert {"n", "temperature", "top_p", "top_k", "seed", "logprobs", "max_tokens", "max_completion_tokens",
            "top_logprobs"} <= checked
    ids = components["CompletionRequest"]["properties"]["prompt"]["anyOf"][1]
    assert (ids["items"]["maximum"], ids["maxItems"]) == (vocab - 1, 64)
    for prompt, want in (([vocab - 1] * 64, 200), ([[0], [vocab - 1]], 200), (["", "Hi"], 200), ([vocab], 400),
                         ([0] * 65, 400), ([[]], 400), ([], 400), (["Hi"] * 129, 400)):
        status, body = http(url + "/v1/completions", {"prompt": prompt, "max_tokens": 1}, key=KEY)
        assert status == want, (prompt[:3], status, body)
    assert components["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"] == vocab - 1
    assert http(url + "/detokenize", {"tokens": [0, vocab - 1]}, key=KEY)[0] == 200
    for body, want in (({"messages": [{"role": "user", "content": "Hi"}]}, 200), ({"prompt": ""}, 200),
                       ({"prompt": "Hi", "messages": None}, 200), ({}, 400), ({"prompt": None}, 400)):
        assert http(url + "/tokenize", body, key=KEY)[0] == want, body
