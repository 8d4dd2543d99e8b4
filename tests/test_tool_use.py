"""Tool use: the protocol in the chat format, OpenAI-shape reading, the tool loop, the builtin data."""

from __future__ import annotations

import json

import pytest
import torch

from gptrecipe.chat import (
    BUILTIN_FUNCTION,
    TOOL_TOKEN,
    TOOLSET_TOKEN,
    ChatTemplate,
    Message,
    parse_call,
    parse_messages,
    read_conversations,
)
from gptrecipe.io import DataError
from gptrecipe.sample import SamplingConfig, generate_with_calls

OPENAI = {"messages": [
    {"role": "user", "content": "What is 37*12 and 2+2?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": BUILTIN_FUNCTION, "arguments": '{"query": "37*12"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_a", "content": "444"},
    {"role": "assistant", "content": "444, and it is sunny."}]}


def test_openai_shape_reads_into_calls_and_results_in_order():
    msgs = parse_messages(OPENAI, "x")
    assert [(m.role, m.to, m.content) for m in msgs] == [
        ("user", "user", "What is 37*12 and 2+2?"),
        # each call right before its result, in the order of the results
        ("assistant", "toolset", 'weather {"city": "Paris"}'), ("tool", "user", "sunny"),
        ("assistant", "toolset", "37*12"), ("tool", "user", "444"),
        ("assistant", "user", "444, and it is sunny.")]
    assert parse_call("37*12") == (BUILTIN_FUNCTION, {"query": "37*12"})
    assert parse_call('weather {"city": "Paris"}', ["weather"]) == ("weather", {"city": "Paris"})
    assert parse_call('weather {"city": "Paris"}') == (BUILTIN_FUNCTION, {"query": 'weather {"city": "Paris"}'})


def test_golden_loss_mask_zero_on_tool_results_one_on_the_call(small_tok):
    t = ChatTemplate(small_tok)
    sp, enc = small_tok.id_of, small_tok.encode
    r = t.render(parse_messages(OPENAI, "x"))
    call, tool, end, asst = sp(TOOLSET_TOKEN), sp(TOOL_TOKEN), sp("<|end|>"), sp("<|assistant|>")
    expected = [  # (token, trained)
        (small_tok.eot_id, 0), (sp("<|user|>"), 0), *((i, 0) for i in enc("What is 37*12 and 2+2?")), (end, 0),
        (asst, 0), (call, 1), *((i, 1) for i in enc('weather {"city": "Paris"}')), (end, 1),
        (tool, 0), *((i, 0) for i in enc("sunny")), (end, 0),
        (asst, 0), (call, 1), *((i, 1) for i in enc("37*12")), (end, 1),
        (tool, 0), *((i, 0) for i in enc("444")), (end, 0),
        (asst, 0), *((i, 1) for i in enc("444, and it is sunny.")), (end, 1)]
    assert list(zip(r.ids, map(int, r.mask), strict=True)) == expected
    # a chat without tools renders exactly as before the tool protocol
    plain = t.render([Message("user", "Hi"), Message("assistant", "Hello")])
    assert plain.ids == [small_tok.eot_id, sp("<|user|>"), *enc("Hi"), end, asst, *enc("Hello"), end]


@pytest.mark.parametrize("bad, where", [
    ({"role": "tool", "tool_call_id": "nope", "content": "444"}, r"messages\[2\]\.tool_call_id: 'nope'"),
    ({"role": "tool", "tool_call_id": "call_a", "content": 5}, r"messages\[2\]\.content"),
    ({"role": "user", "content": "and?"}, r"messages\[2\]: the tool calls before it have no role 'tool' answer"),
])
def test_bad_tool_messages_name_the_field(bad, where, tmp_path):
    msgs = [OPENAI["messages"][0], {"role": "assistant", "tool_calls": [OPENAI["messages"][1]["tool_calls"][0]]}, bad]
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl: line 1: " + where):
        read_conversations(p)


@pytest.mark.parametrize("arguments, where", [
    ("{oops", r"tool_calls\[0\]\.function\.arguments: not valid JSON"),
    ('["a"]', r"tool_calls\[0\]\.function\.arguments: expected a JSON object"),
    ('{"q": "1+1"}', r"tool_calls\[0\]\.function\.arguments: the toolset function takes"),
])
def test_malformed_arguments_name_the_field(arguments, where):
    call = {"id": "c", "type": "function", "function": {"name": BUILTIN_FUNCTION, "arguments": arguments}}
    with pytest.raises(DataError, match=r"here: messages\[1\]\." + where):
        parse_messages({"messages": [{"role": "user", "content": "q"},
                                     {"role": "assistant", "tool_calls": [call]}]}, "here")


class ScriptedModel(torch.nn.Module):
    """A 'model' that always writes the same tokens: `script` after each <|assistant|>, position by position."""

    def __init__(self, vocab: int, block: int, assistant: int, script: list[int]):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(block_size=block, attention_kinds=lambda: ["dense"])
        self.vocab, self.assistant, self.script = vocab, assistant, script
        self.w = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch, max_len, pad):
        return {"ids": None}

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.full((ids.size(0), ids.size(1), self.vocab), -1e9)
        for b in range(ids.size(0)):
            since = None
            for t in range(ids.size(1)):
                if ids[b, t].item() == self.assistant:
                    since = 0
                elif since is not None:
                    since += 1
                nxt = self.script[min(since, len(self.script) - 1)] if since is not None else 0
                out[b, t, nxt] = 0.0
        return out

    def hidden_states(self, ids, cache):
        cache["ids"] = ids if cache["ids"] is None else torch.cat([cache["ids"], ids], 1)
        return self._logits(cache["ids"])[:, -ids.size(1):]

    def lm_head(self, h):
        return h

    def forward(self, ids, cache=None):
        return self.hidden_states(ids, cache), None


def test_tool_loop_calls_forces_the_result_and_stops_at_the_cap(small_tok):
    t = ChatTemplate(small_tok)
    query = small_tok.encode("2+2")
    # always "TS 2+2 <|end|>": a model that never stops calling
    model = ScriptedModel(small_tok.vocab_size, 128, t.role_ids["assistant"], [t.call, *query, t.end])
    seen = []

    def run_call(q: str) -> tuple[str, list[int]]:
        seen.append(q)
        return "4", t.tool_result_ids("4")

    prompt = t.prompt_ids([Message("user", "What is 2+2?")])
    turns = generate_with_calls(model, small_tok, [prompt, prompt], SamplingConfig(max_new_tokens=10, temperature=0),
                                stop_ids=t.stop_ids, call_id=t.call, run_call=run_call, max_calls=2,
                                pad_id=small_tok.eot_id)
    assert seen == ["2+2"] * 4  # two calls per row, then the cap
    assert all(x.calls == [("2+2", "4"), ("2+2", "4")] and x.capped for x in turns)
    assert all(t.call not in x.token_ids for x in turns)  # the last round could not call: it answered
    # a model that answers after one call: the forced result is in its context, it copies nothing else
    model.script = [t.call, *query, t.end]
    answers = []

    def once(q: str) -> tuple[str, list[int]]:
        model.script = [*small_tok.encode("4"), t.end]  # after the result, the scripted model answers
        return "4", t.tool_result_ids("4")

    turns = generate_with_calls(model, small_tok, [prompt], SamplingConfig(max_new_tokens=10, temperature=0),
                                stop_ids=t.stop_ids, call_id=t.call, run_call=once, max_calls=3,
                                pad_id=small_tok.eot_id, on_text=lambda i, p: answers.append(p))
    assert turns[0].calls == [("2+2", "4")] and turns[0].text == "4" and not turns[0].capped
    assert "".join(answers) == "4"  # only the answer streams, not the call


def test_builtin_questions_answer_from_the_result_and_hold_out_their_queries():
    from gptrecipe.tool_use import tool_questions

    train = tool_questions(200, seed=0)
    heldout = tool_questions(30, seed=0, split="heldout")
    assert {q.tool for q in train} == {"calculator", "translator", "retrieval"}
    assert not {q.query for q in train} & {q.query for q in heldout}
    for q in train + heldout:
        assert q.query in q.question and q.answer and q.answer.removeprefix("It means ") in q.result
        if q.tool == "retrieval":  # "[kjv #12] In the beginning ..." -> the source
            assert q.result.startswith(q.answer + " ") and q.answer.startswith("[") and q.answer.endswith("]"), q
        elif q.tool == "translator":  # "猫: cat; ..." -> "It means cat": its first meaning, words the corpora use
            meaning = q.answer.removeprefix("It means ")
            assert (q.result + ";").startswith(f"{q.query}: {meaning};"), q
            assert meaning and all(w.isalpha() and w.islower() for w in meaning.split()), q
        else:
            assert q.answer == q.result, q
    assert tool_questions(200, seed=0) == train  # seeded
