"""OpenAI tool calling through the official `openai` client, against a tiny model taught to call (in seconds)."""

from __future__ import annotations

import json

import openai
import pytest
import torch
import torch.nn.functional as F

from gptrecipe.chat import TOOLSET_FUNCTION, ChatTemplate, Message
from gptrecipe.model import GPT, IGNORE_INDEX
from gptrecipe.serve.api import BackgroundServer, create_app
from gptrecipe.tools import Calculator, Toolset
from tests.conftest import save_stage_checkpoint, tiny_config

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CONVS = [
    [Message("user", "What is 2+2?"), Message("assistant", "2+2", "toolset"), Message("tool", "4"),
     Message("assistant", "4")],
    [Message("user", "Weather in Paris?"), Message("assistant", 'weather {"city": "Paris"}', "toolset"),
     Message("tool", "sunny"), Message("assistant", "It is sunny.")],
    [Message("user", "Hello!"), Message("assistant", "Hi there.")],
]


def taught_model(tok) -> GPT:
    """A tiny GPT that has memorised CONVS (greedy decoding replays them)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=2))
    t = ChatTemplate(tok)
    rows = [t.render(c) for c in CONVS]
    n = max(len(r.ids) for r in rows)
    x = torch.tensor([r.ids + [0] * (n - len(r.ids)) for r in rows])
    y = torch.tensor([[i if m else IGNORE_INDEX for i, m in zip(r.ids, r.mask, strict=True)]
                      + [IGNORE_INDEX] * (n - len(r.ids)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return model.eval()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, small_tok):
    root = tmp_path_factory.mktemp("tools")
    ckpt = save_stage_checkpoint(root / "sft", taught_model(small_tok), small_tok)
    client_app = create_app(ckpt, device="cpu")
    builtin_app = create_app(ckpt, device="cpu", toolset=Toolset([Calculator()]))
    with BackgroundServer(client_app) as a, BackgroundServer(builtin_app) as b:
        yield (openai.OpenAI(base_url=a.url + "/v1", api_key="x", max_retries=0, timeout=60),
               openai.OpenAI(base_url=b.url + "/v1", api_key="x", max_retries=0, timeout=60))


def ask(client, content: str, **kw):
    return client.chat.completions.create(model="sft", messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=40, **kw)


def test_auto_returns_tool_calls_with_ids_and_json_arguments(servers):
    client, _ = servers
    assert client.models.list().data[0].model_extra["tools"] == [TOOLSET_FUNCTION]
    r = ask(client, "What is 2+2?", tools=[TOOLSET_FUNCTION, WEATHER])
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    (call,) = ch.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "toolset"
    assert json.loads(call.function.arguments) == {"query": "2+2"}
    r = ask(client, "Weather in Paris?", tools=[TOOLSET_FUNCTION, WEATHER])
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}
    # no tools offered (or "none"): the model answers in text, never a call
    for kw in ({}, {"tools": [TOOLSET_FUNCTION], "tool_choice": "none"}):
        r = ask(client, "What is 2+2?", **kw)
        assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None


def test_streamed_tool_calls_match_non_streamed(servers):
    client, _ = servers
    chunks = list(ask(client, "Weather in Paris?", tools=[WEATHER, TOOLSET_FUNCTION], stream=True))
    calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "weather" and calls[0].id.startswith("call_")
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]
    # a plain reply still streams as content
    text = "".join(ch.delta.content or "" for c in ask(client, "Hello!", tools=[WEATHER], stream=True)
                   for ch in c.choices)
    assert text == ask(client, "Hello!").choices[0].message.content == "Hi there."


def test_required_and_named_tool_choice_force_a_call(servers):
    client, _ = servers
    r = ask(client, "Weather in Paris?", tools=[TOOLSET_FUNCTION, WEATHER],
            tool_choice={"type": "function", "function": {"name": "weather"}})
    assert r.choices[0].message.tool_calls[0].function.name == "weather"
    r = ask(client, "Hello!", tools=[TOOLSET_FUNCTION], tool_choice="required")  # would answer; must call
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "toolset"
    with pytest.raises(openai.BadRequestError, match="tool_choice names the function 'nope'"):
        ask(client, "Hi", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})


def test_tool_round_trip_and_bad_tool_messages_are_400(servers):
    client, _ = servers
    first = ask(client, "What is 2+2?", tools=[TOOLSET_FUNCTION]).choices[0].message
    call = first.tool_calls[0]
    history = [{"role": "user", "content": "What is 2+2?"}, first.model_dump(exclude_none=True)]
    r = client.chat.completions.create(model="sft", temperature=0, max_tokens=20, tools=[TOOLSET_FUNCTION],
                                       messages=[*history, {"role": "tool", "tool_call_id": call.id, "content": "4"}])
    assert r.choices[0].message.content == "4" and r.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match=r"messages\[2\]\.tool_call_id: 'nope'"):
        client.chat.completions.create(model="sft", messages=[*history, {"role": "tool", "tool_call_id": "nope",
                                                                         "content": "4"}])
    bad = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                "function": {"name": "toolset", "arguments": "{oops"}}]}
    with pytest.raises(openai.BadRequestError, match=r"messages\[1\]\.tool_calls\[0\]\.function\.arguments"):
        client.chat.completions.create(model="sft", messages=[history[0], bad,
                                                              {"role": "tool", "tool_call_id": "c1", "content": "4"}])


def test_builtin_tools_run_server_side_and_return_the_answer(servers):
    _, builtin = servers
    for stream in (False, True):
        r = ask(builtin, "What is 2+2?", stream=stream)
        if stream:
            chunks = list(r)
            text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
            reasons = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
        else:
            text, reasons = r.choices[0].message.content, [r.choices[0].finish_reason]
        assert (text, reasons) == ("4", ["stop"])  # the calculator ran here; the client sees the answer only
    with pytest.raises(openai.BadRequestError, match="runs the builtin toolset itself"):
        ask(builtin, "Hi", tools=[WEATHER])
