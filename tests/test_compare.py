import dataclasses
import io
import json

import pytest
import torch

from gptrecipe.compare import CompareConfig, ask_person, compare, order_from_scores, parse_order
from gptrecipe.labelers import load_labeler, positivity
from gptrecipe.model import GPT
from gptrecipe.sample import SamplingConfig
from tests.conftest import save_stage_checkpoint, tiny_config


@pytest.fixture
def sft_ckpt(small_tok, tmp_path):
    torch.manual_seed(0)
    m = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    return save_stage_checkpoint(tmp_path / "sft", m, small_tok)


def test_positivity_gold_score():
    assert positivity("I am glad, thank you, that is great!") == 5.0  # i, glad, thank, you, great
    assert positivity("") == 0.0 and positivity("the machine") == 0.0
    assert positivity("good good good good good") == 1.0 - 0.5 * 3  # repetition is penalised
    assert load_labeler("builtin:positivity")("p", ["nice", "bad"]) == [1.0, 0.0]
    assert load_labeler("gptrecipe.labelers:positivity_labeler")("p", ["nice"]) == [1.0]
    with pytest.raises(ValueError, match="unknown builtin labeler"):
        load_labeler("builtin:nope")


def test_orders():
    assert order_from_scores([0.1, 3.0, 1.0, 3.0]) == [1, 3, 2, 0]
    assert parse_order("2 1 3", 3) == [1, 0, 2] and parse_order("2,3,1", 3) == [1, 2, 0]
    assert parse_order("1 1 2", 3) is None and parse_order("1 2", 3) is None and parse_order("a b c", 3) is None


def test_ask_person_retries_until_a_permutation():
    answers = iter(["1 1 2", "3 1 2"])
    out = io.StringIO()
    assert ask_person("q?", ["a", "b", "c"], lambda _: next(answers), out) == [2, 0, 1]
    assert "PROMPT: q?" in out.getvalue() and "[3] c" in out.getvalue() and "exactly once" in out.getvalue()


def test_rank_with_labeler_saves_and_resumes(sft_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\nWhat is AI?\nTell me a joke.\n")
    out = tmp_path / "r.jsonl"
    calls = []

    def labeler(prompt, responses):
        calls.append(prompt)
        return [len(r) for r in responses]  # prefers longer responses

    cfg = CompareConfig(model=str(sft_ckpt), prompts=str(prompts), out=str(out), k=4, max_prompts=2,
                     sample=SamplingConfig(max_new_tokens=12, temperature=1.0, seed=0))
    compare(cfg, labeler=labeler, log=lambda *a: None)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Hello", "What is AI?"]
    assert all(len(r["responses"]) == 4 for r in rows)
    assert all([len(x) for x in r["responses"]] == sorted((len(x) for x in r["responses"]), reverse=True)
               for r in rows)
    compare(dataclasses.replace(cfg, max_prompts=0), labeler=labeler, log=lambda *a: None)  # resume: only the rest
    assert calls == ["Hello", "What is AI?", "Tell me a joke."]
    assert len(out.read_text().splitlines()) == 3
    # the compiled decode step samples the same replies (same seed, same batch), so it ranks the same
    for name, compiled in (("eager.jsonl", False), ("compiled.jsonl", True)):
        compare(dataclasses.replace(cfg, out=str(tmp_path / name), max_prompts=1, compile=compiled), labeler=labeler,
                log=lambda *a: None)
    assert (tmp_path / "compiled.jsonl").read_text() == (tmp_path / "eager.jsonl").read_text()


def test_rank_by_hand_skip_and_quit_keep_what_was_ranked(sft_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    out = tmp_path / "r.jsonl"
    answers = iter(["2 1", "s", "q"])
    cfg = CompareConfig(model=str(sft_ckpt), prompts=str(prompts), out=str(out), k=2,
                     sample=SamplingConfig(max_new_tokens=6, seed=0))
    with pytest.raises(KeyboardInterrupt):
        compare(cfg, inp=lambda _: next(answers), log=lambda *a: None)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt"] == "one"
