"""lm-evaluation-harness (`--model local-completions`) evaluates a model through the live server, offline.

A tiny local few-shot multiple-choice task (log-likelihoods through echo + logprobs) and a generation task
(greedy, stop strings) run against the server with the tokenizer exported as a Hugging Face folder, and
again with lm-eval's remote tokenizer (/tokenizer_info, /tokenize, /detokenize). Every score lm-eval gets
must equal our own local scoring of the same prompts: a forward pass of the model to 1e-4, and the
sampler's greedy generations exactly.
"""

from __future__ import annotations

import json

import pytest
import torch

from gptrecipe.chat import ChatTemplate, Message
from gptrecipe.cli import main
from gptrecipe.sample import SamplingConfig, generate
from gptrecipe.serve.api import BackgroundServer, create_app
from tests.serve_util import local_logprobs, tiny_checkpoint

MC = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)], "answer": i % 3}
      for i, (a, b) in enumerate([(1, 2), (2, 3), (3, 4), (4, 5), (5, 1), (2, 2), (6, 3)])]
GEN = [{"question": q, "answer": a} for q, a in [("Hello!", "How are you?"), ("What is AI?", "A study."),
                                                  ("Tell me a joke.", "Why not?")]]


def write_tasks(root) -> None:
    """Two lm-eval tasks over local JSONL files (no download)."""
    (root / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in MC))
    (root / "gen.jsonl").write_text("".join(json.dumps(x) + "\n" for x in GEN))
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_mc.yaml").write_text(f"""task: gptrecipe_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    train: {root / "mc.jsonl"}
    test: {root / "mc.jsonl"}
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: answer
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (root / "tasks" / "tiny_gen.yaml").write_text(f"""task: gptrecipe_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "gen.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of (context, continuation) into tokens (trailing spaces move to the continuation)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation, allow_special=True)
    ctx = tok.encode(context, allow_special=True)
    return ctx, whole[len(ctx):]


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_tok):
    root = tmp_path_factory.mktemp("lmeval")
    ckpt, model = tiny_checkpoint(root / "base", small_tok, stage="pretrain", block_size=128)
    write_tasks(root)
    assert main(["serve", str(ckpt), "--export-tokenizer", str(root / "hf_tokenizer")]) == 0
    with BackgroundServer(create_app(ckpt, device="cpu")) as server:
        yield {"root": root, "server": server, "model": model, "tok": small_tok}


def evaluate(served, monkeypatch, tasks: list[str], backend: str, num_fewshot: int | None = 2) -> dict:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(served["root"] / "datasets_cache"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    root, url = served["root"], served["server"].url
    tokenizer = f",tokenizer={root / 'hf_tokenizer'}" if backend == "huggingface" else ""
    args = (f"base_url={url}/v1/completions,model=base,tokenizer_backend={backend}{tokenizer},max_length=128,"
            "tokenized_requests=True,max_retries=1")
    return lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=tasks, num_fewshot=num_fewshot,
                                   task_manager=TaskManager(include_path=str(root / "tasks")), log_samples=True)


def test_lm_eval_scores_equal_local_forward_pass(served, monkeypatch):
    model, tok = served["model"], served["tok"]
    res = evaluate(served, monkeypatch, ["gptrecipe_tiny_mc", "gptrecipe_tiny_gen"], "huggingface")
    mc = res["samples"]["gptrecipe_tiny_mc"]
    assert len(mc) == len(MC)
    correct = []
    for sample in mc:
        ours = []
        for (context, continuation), (ll, greedy) in zip(sample["arguments"], sample["filtered_resps"], strict=True):
            assert context.count("Question:") == 3  # two few-shot examples and the query
            ctx, cont = encode_pair(tok, context, continuation)
            lps = local_logprobs(model, ctx + cont)[len(ctx) - 1:]
            assert ll == pytest.approx(sum(lps), abs=1e-4)
            with torch.no_grad():
                best = model(torch.tensor([ctx + cont]))[0][0, len(ctx) - 1: -1].argmax(-1).tolist()
            assert greedy == (best == cont)
            ours.append(sum(lps))
        correct.append(float(max(range(len(ours)), key=ours.__getitem__) == sample["target"]))
    assert res["results"]["gptrecipe_tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    gen = res["samples"]["gptrecipe_tiny_gen"]
    matches = []
    for sample in gen:
        (context, kwargs), = sample["arguments"]
        ref = generate(model, tok, [tok.encode(context, allow_special=True)],
                       SamplingConfig(max_new_tokens=kwargs["max_gen_toks"], temperature=0,
                                      stop=[*kwargs["until"], "<|endoftext|>"]), stop_ids=[tok.eot_id])[0]
        assert sample["filtered_resps"][0] == ref.text
        matches.append(float(ref.text == sample["target"]))
    assert res["results"]["gptrecipe_tiny_gen"]["exact_match,none"] == pytest.approx(sum(matches) / len(matches))


def test_lm_eval_remote_tokenizer_backend_gives_the_same_scores(served, monkeypatch):
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    url, tok = served["server"].url + "/v1/completions", served["tok"]
    assert check_remote_tokenizer_support(url)
    remote = RemoteTokenizer(url)
    text = "Question: What is 1 plus 2?\nAnswer: 3<|endoftext|>"
    assert remote.encode(text) == tok.encode(text, allow_special=True)
    assert remote.decode(tok.encode(text, allow_special=True)) == text
    assert remote.eos_token_id == tok.eot_id
    hf = evaluate(served, monkeypatch, ["gptrecipe_tiny_mc"], "huggingface", num_fewshot=0)
    rm = evaluate(served, monkeypatch, ["gptrecipe_tiny_mc"], "remote", num_fewshot=0)
    lls = [[ll for ll, _ in s["filtered_resps"]] for s in hf["samples"]["gptrecipe_tiny_mc"]]
    assert [[ll for ll, _ in s["filtered_resps"]] for s in rm["samples"]["gptrecipe_tiny_mc"]] == lls


def test_exported_tokenizer_loads_in_transformers(tmp_path, small_tok):
    from transformers import AutoTokenizer

    ckpt, _ = tiny_checkpoint(tmp_path / "sft", small_tok, stage="sft")
    assert main(["serve", str(ckpt), "--export-tokenizer", str(tmp_path / "hf")]) == 0
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ["Hello world", "  two  spaces\n\nand lines", "日本語 and emoji 🤖", "a<|end|>b<|endoftext|>"]:
        ids = hf(text).input_ids  # no BOS is added
        assert ids == small_tok.encode(text, allow_special=True)
        assert hf.decode(ids) == text
    assert (hf.eos_token, hf.pad_token, hf.model_max_length) == ("<|end|>", "<|pad|>", 64)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is AI?"}]
    ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids == ChatTemplate(small_tok).prompt_ids([Message(m["role"], m["content"]) for m in messages])
