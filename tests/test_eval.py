"""In-context evaluation: GPT-3 prompts, example choice, K caps, scoring, corpus metrics, the endpoint backend, CLI."""

from __future__ import annotations

import itertools
import json
import math
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from gptrecipe.cli import main
from gptrecipe.data.readers import DataError, read_documents
from gptrecipe.evaluate.harness import (
    LocalBackend,
    curve,
    evaluate_tasks,
    exact_match,
    normalize_answer,
    normalized_match,
)
from gptrecipe.evaluate.lm_metrics import corpus_metrics, induction_score
from gptrecipe.evaluate.openai_backend import EndpointError, OpenAIBackend
from gptrecipe.evaluate.prompts import (
    ASSISTANT_TEMPLATE,
    assistant_prompt,
    build_prompt,
    choose_examples,
    fit_prompt,
)
from gptrecipe.evaluate.run import load_tasks
from gptrecipe.evaluate.synthetic import (
    FAMILIES,
    SyntheticConfig,
    label_set_baseline,
    pretraining_rules,
    synthetic_suite,
    translation_task,
)
from gptrecipe.evaluate.tasks import Item, Task, load_task_file
from gptrecipe.model import GPT
from tests.conftest import ByteTokenizer, save_stage_checkpoint, tiny_config
from tests.serve_util import scripted_server, send_json

SEEDS_TASK = dict(description="Translate Chinese to English.", separator=", ", description_separator=" ")


def zh_en(train: list[tuple[str, str]]) -> Task:
    return Task(name="zh-en", train=[Item(a, target=b) for a, b in train], test=[Item("销售", target="sales")],
                **SEEDS_TASK)


# ---- prompts ------------------------------------------------------------------------------------------------

def test_golden_prompts_k0_k1_k3():
    """The seeds' zero-, one- and few-shot prompts, character for character."""
    one = zh_en([("你好", "hello")])
    assert fit_prompt(one, 0, 0, 1234, None, None, 0).text == "Translate Chinese to English. 销售 ->"
    assert fit_prompt(one, 0, 1, 1234, None, None, 0).text == "Translate Chinese to English. 你好 -> hello, 销售 ->"
    three = zh_en([("你好", "hello"), ("谢谢", "thank you"), ("猫", "cat")])
    p3 = fit_prompt(three, 0, 3, 1234, None, None, 0)
    assert p3.text == "Translate Chinese to English. 你好 -> hello, 谢谢 -> thank you, 猫 -> cat, 销售 ->"
    assert p3.k == 3 and p3.continuations == [" sales"]
    # the default format (a JSONL task without a header): one example per line, "{input} -> {output}"
    plain = Task(name="rev", train=[Item("abc", target="cba"), Item("xy", target="yx"), Item("pqr", target="rqp")],
                 test=[Item("dog", choices=["god", "dog"], answer=0)], description="Reverse the word.")
    assert fit_prompt(plain, 0, 0, 7, None, None, 0).text == "Reverse the word.\ndog ->"
    assert fit_prompt(plain, 0, 3, 7, None, None, 0).text == ("Reverse the word.\npqr -> rqp\nxy -> yx\n"
                                                              "abc -> cba\ndog ->")
    assert fit_prompt(plain, 0, 1, 7, None, None, 0).continuations == [" god", " dog"]
    # K = 1's example is the first of K = 3's: a curve over K adds examples, it does not redraw them
    assert choose_examples(three, 0, 1, 1234) == choose_examples(three, 0, 3, 1234)[:1]
    # a custom format and separator
    qa = Task(name="qa", train=[Item("2+2", target="4")], test=[Item("3+3", target="6")],
              example_format="Q: {input}\nA: {output}", separator="\n\n")
    assert build_prompt(qa, qa.train, qa.test[0]) == "Q: 2+2\nA: 4\n\nQ: 3+3\nA:"


def test_item_is_never_among_its_own_examples():
    # no train split: examples come from the other test items; a duplicate of the item is never shown either
    items = [Item(f"w{i}", target=f"o{i}") for i in range(12)] + [Item("w3", target="o3")]
    task = Task(name="dup", test=items)
    with_train = Task(name="tr", test=items[:5], train=items)  # the train split holds every test item too
    for seed in range(200):
        for t in (task, with_train):
            for i, item in enumerate(t.test):
                ex = choose_examples(t, i, 20, seed)
                assert item.key not in {e.key for e in ex}
                assert len(ex) == len({id(e) for e in ex})  # no example twice
    assert len(choose_examples(task, 0, 20, 0)) == 11  # all the other distinct items


def test_k_is_capped_by_the_context_and_reported():
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=48)).eval()
    backend = LocalBackend(model, tok)
    task = Task(name="letters", train=[Item(f"{c} {c}", target=c.upper()) for c in "abcdefghij"],
                test=[Item("k k", choices=["K", "Z"], answer=0), Item("m m", choices=["M", "Q"], answer=0)])
    p = fit_prompt(task, 0, 8, 0, backend.count_tokens, backend.max_tokens, reserve=3)
    assert p.k < 8 and len(tok.encode(p.text)) + 3 <= 48  # 10 bytes per example: only 4 fit
    assert p.k == 4
    scores = evaluate_tasks(backend, [task], [0, 1, 8], progress=False)
    by_k = {s.k: s for s in scores}
    assert by_k[0].capped == by_k[1].capped == 0 and by_k[1].k_mean == 1
    assert by_k[8].capped == 2 and by_k[8].k_mean == 4 and by_k[8].k_min == 4
    assert [r["capped"] for r in curve(scores)] == [0, 0, 2]


# ---- scoring ------------------------------------------------------------------------------------------------

class Bigram(nn.Module):
    """A 'model' whose logits we control: logits at a position = table[token at that position]."""

    def __init__(self, vocab: int = 257, block_size: int = 64):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab))
        self.config = SimpleNamespace(block_size=block_size)

    lm_head = nn.Identity()  # the "hidden state" is already the logits

    def hidden_states(self, idx, cache=None):
        return self.table[idx]

    def forward(self, idx, targets=None, cache=None):
        return self.table[idx], None

    def new_cache(self, batch_size, max_len=None, pad=None):
        """No keys to keep: a bigram reads only the current token."""
        return SimpleNamespace(select=lambda rows: None)


def logp(model: Bigram, prev: int, nxt: int) -> float:
    return torch.log_softmax(model.table[prev], -1)[nxt].item()


def test_multiple_choice_picks_the_answer_the_logits_favour():
    tok = ByteTokenizer()
    model = Bigram()
    with torch.no_grad():
        model.table[ord(" "), ord("4")] = 6.0  # after a space, "4" is likely
    backend = LocalBackend(model, tok)
    task = Task(name="sum", test=[Item("2+2", choices=["5", "4", "3"], answer=1),
                                  Item("1+2", choices=["3", "4"], answer=0)])
    scores = evaluate_tasks(backend, [task], [0], progress=False)[0]
    assert scores.acc == 0.5 and scores.n == 2  # "4" wins both: right once
    assert scores.chance == pytest.approx((1 / 3 + 1 / 2) / 2)
    # the log-likelihood is the sum over the continuation's tokens given everything before them
    (lp, n), = backend.loglikelihood([("2+2 ->", " 4")])
    assert n == 2 and lp == pytest.approx(logp(model, ord(">"), ord(" ")) + logp(model, ord(" "), ord("4")), abs=1e-5)
    # one-token continuations of the same context share a forward pass: same numbers, in request order
    got = backend.loglikelihood([("2+2 = ", "4"), ("1+1 ->", " 2"), ("2+2 = ", "5"), ("2+2 = ", "4")])
    assert [n for _, n in got] == [1, 2, 1, 1] and got[0] == got[3]
    assert got[2][0] == pytest.approx(logp(model, ord(" "), ord("5")), abs=1e-5)
    assert got[0][0] == pytest.approx(logp(model, ord(" "), ord("4")), abs=1e-5)


@pytest.mark.parametrize("attention", ["dense", "dense,strided(4)"])
def test_shared_context_scoring_equals_one_full_forward_per_request(attention):
    """Contexts run once (left-padded, cached) and choices go on from copies of the cache: the same numbers as
    running each context + continuation alone from scratch, for 0- to 4-token continuations."""
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=tok.vocab_size, block_size=64, attention=attention)).eval()
    backend = LocalBackend(model, tok, batch_size=3)
    ctxs = ["The capital of France ->", "2+2 =", "a b c d e f g h i j k l ->", "x"]
    requests = [(c, x) for c in ctxs for x in [" Paris", " 4", "", " z", "!!"]] + [("q ->", " yes")]
    got = backend.loglikelihood(requests)
    for (ctx, cont), (lp, n) in zip(requests, got, strict=True):
        ids, c = [tok.eot_id, *tok.encode(ctx)], tok.encode(cont)
        assert n == len(c)
        with torch.no_grad():
            logits = model(torch.tensor([ids + c]))[0][0]
        want = torch.log_softmax(logits[len(ids) - 1: len(ids) + len(c) - 1], -1)
        want = want.gather(-1, torch.tensor(c, dtype=torch.long)[:, None]).sum().item() if c else 0.0
        assert lp == pytest.approx(want, abs=1e-4), (ctx, cont)


def test_sum_versus_length_normalized_choice():
    """A long answer of likely characters loses on the sum but wins per character (lm-eval's acc_norm)."""
    tok = ByteTokenizer()
    model = Bigram()
    with torch.no_grad():
        model.table[ord(" "), ord("a")] = -6.0  # the first "a" costs ~11.5 nats either way
        model.table[ord("a"), ord("a")] = 4.6  # then each further "a" ~1.3 nats, a "b" ~4.3
        model.table[ord("a"), ord("b")] = 1.6
    task = Task(name="len", test=[Item("x", choices=["ab", "aaaaaa"], answer=1)], separator="\n")
    s = evaluate_tasks(LocalBackend(model, tok), [task], [0], progress=False)[0]
    assert s.acc == 0.0 and s.acc_norm == 1.0


class CannedBackend:
    """A backend that answers every prompt with the same generation."""

    name, max_tokens = "canned", None

    def __init__(self, answer: str):
        self.answer, self.prompts = answer, []

    def count_tokens(self, text):
        return len(text)

    def loglikelihood(self, requests, bar=None):
        return [(-float(len(c)), len(c)) for _, c in requests]

    def generate(self, prompts, max_new_tokens, stop, bar=None):
        self.prompts += [(p, tuple(stop)) for p in prompts]
        return [self.answer.split(stop[0])[0] for _ in prompts]


def test_exact_and_normalized_match():
    assert normalize_answer("  The Cat,  sat!") == "cat sat" and exact_match(" hello ", "hello")
    assert not exact_match("Hello", "hello") and normalized_match("Hello.", "hello")
    task = Task(name="t", test=[Item("猫", target="cat"), Item("狗", target="dog")],
                train=[Item("你好", target="hello")], **SEEDS_TASK)
    s = evaluate_tasks(CannedBackend(" The cat, 狗 -> dog"), [task], [1], progress=False)[0]
    assert (s.exact, s.normalized, s.score, s.chance) == (0.0, 0.5, 0.0, 0.0)
    backend = CannedBackend(" cat, 狗 -> dog")
    assert evaluate_tasks(backend, [task], [1], progress=False)[0].exact == 0.5
    assert backend.prompts[0] == ("Translate Chinese to English. 你好 -> hello, 猫 ->", (",", "\n"))


def test_local_backend_generation_and_curve_run_end_to_end(tiny_model):
    backend = LocalBackend(tiny_model, ByteTokenizer(), batch_size=3)
    tasks = [translation_task(), *synthetic_suite(SyntheticConfig(tasks_per_family=1, test_items=3))]
    scores = evaluate_tasks(backend, tasks, [0, 1], max_items=4, max_new_tokens=4, progress=False)
    assert {(s.task, s.k) for s in scores} == {(t.name, k) for t in tasks for k in (0, 1)}
    rows = curve(scores)
    assert [r["k"] for r in rows] == [0, 1] and all(0 <= r["score"] <= 1 for r in rows)
    assert {r["group"] for r in curve(scores, by_group=True)} == {"translate-zh-en", "classify", "letter_map",
                                                                  "word_map"}


def test_compiled_generation_answers_what_eager_generation_answers(tiny_model):
    prompts = ["Q: 2+2?\nA:", "Translate: chat ->", "abc"]
    eager = LocalBackend(tiny_model, ByteTokenizer(), batch_size=3).generate(prompts, 8, ["\n"])
    compiled = LocalBackend(tiny_model, ByteTokenizer(), batch_size=3, compile=True).generate(prompts, 8, ["\n"])
    assert compiled == eager and any(eager)


# ---- corpus metrics ------------------------------------------------------------------------------------------

def test_bits_per_byte_against_a_hand_computation(small_tok, tmp_path):
    docs = ["Hello! How are you? I am fine, thank you.", "What is AI? The study of machines that think."]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    stream = [t for d in docs for t in [small_tok.eot_id, *small_tok.encode(d)]]
    torch.manual_seed(0)
    model = Bigram(small_tok.vocab_size, block_size=len(stream) - 1)  # one window: every token after the first
    with torch.no_grad():
        model.table.normal_()
    m = corpus_metrics(model, small_tok, str(tmp_path / "c.jsonl"), split="all", val_fraction=0.2,
                       cache_dir=tmp_path / "cache")
    nats = -sum(logp(model, a, b) for a, b in zip(stream[:-1], stream[1:], strict=True))
    n_bytes = sum(len(d.encode()) for d in docs)  # <|endoftext|> counts its loss but no bytes
    assert m["tokens"] == len(stream) - 1 and m["bytes"] == n_bytes
    assert m["loss"] == pytest.approx(nats / (len(stream) - 1), rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(nats / (len(stream) - 1)), rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    with pytest.raises(DataError, match="too few for a train and a val split"):
        corpus_metrics(Bigram(small_tok.vocab_size, block_size=500), small_tok, str(tmp_path / "c.jsonl"),
                       split="val", val_fraction=0.2, cache_dir=tmp_path / "cache")


# ---- task files ---------------------------------------------------------------------------------------------

def test_task_jsonl_format_and_errors(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"description": "Antonyms.", "separator": "; "}\n'
                 '{"input": "hot", "target": "cold", "split": "train"}\n\n'
                 '{"input": "up", "choices": ["down", "left"], "answer": "down"}\n')
    t = load_task_file(p)
    assert (t.name, t.description, t.separator, len(t.train), t.test[0].answer) == ("t", "Antonyms.", "; ", 1, 0)
    assert build_prompt(t, t.train, t.test[0]) == "Antonyms.\nhot -> cold; up ->"

    def bad(text: str, pattern: str) -> None:
        p.write_text(text)
        with pytest.raises(DataError, match=pattern):
            load_task_file(p)

    bad('{"input": "a", "target": "b"}\n{"input": 3, "target": "b"}\n', r"t.jsonl: line 2: field 'input': must be")
    bad('{"input": "a", "target": "b"}\n{"input": "c"\n', r"t.jsonl: line 2: malformed JSON")
    bad('{"input": "a", "target": "b", "choices": ["x", "y"]}\n', r"line 1: field 'target'/'choices': give exactly one")
    bad('{"input": "a", "choices": ["x", "y"], "answer": 2}\n{"input": "b", "target": "c"}\n',
        r"t.jsonl: line 1: field 'answer': must be the index \(0..1\)")
    bad('{"input": "a", "choices": ["x"], "answer": 0}\n', r"line 1: field 'choices': must be a list of at least 2")
    bad('{"input": "a", "target": "b", "split": "dev"}\n', r"line 1: field 'split'")
    bad('{"descripton": "typo"}\n{"input": "a", "target": "b"}\n', r"line 1: unknown header field\(s\) 'descripton'")
    bad('{"example_format": "{output} <- {input}"}\n{"input": "a", "target": "b"}\n',
        r"line 1: field 'example_format': needs one \{input\} and then one \{output\}")
    bad('{"input": "a", "target": "b", "split": "train"}\n', r"t.jsonl: no test items")
    # a directory task and a suite directory
    d = tmp_path / "suite" / "antonyms"
    d.mkdir(parents=True)
    (d / "task.json").write_text('{"description": "Antonyms."}')
    (d / "train.jsonl").write_text('{"input": "hot", "target": "cold"}\n')
    (d / "test.jsonl").write_text('{"input": "up", "target": "down"}\n')
    (tmp_path / "suite" / "other.jsonl").write_text('{"input": "a", "target": "b"}\n{"input": "c", "target": "d"}\n')
    tasks = load_tasks(str(tmp_path / "suite"))
    assert [t.name for t in tasks] == ["antonyms", "other"]
    assert tasks[0].description == "Antonyms." and len(tasks[0].train) == 1 and len(tasks[1].test) == 2
    with pytest.raises(DataError, match="unknown builtin task"):
        load_tasks("builtin:nope")


# ---- synthetic tasks and the in-context pretraining corpus --------------------------------------------------

def test_synthetic_tasks_are_seeded_and_held_out():
    a, b = synthetic_suite(), synthetic_suite()
    assert [(t.name, [i.key for i in t.test]) for t in a] == [(t.name, [i.key for i in t.test]) for t in b]
    for t in a:
        assert len(t.test) == 12 and len(t.train) == 24
        assert not {i.key for i in t.test} & {i.key for i in t.train}
        assert all(len(i.choices) == 8 and i.output == i.choices[i.answer] for i in t.test)
    # held out: no evaluation rule instance (its whole input -> output table) is the rule of a pretraining document
    seen = {frozenset(r.universe) for r, _ in pretraining_rules()}
    held = synthetic_suite(SyntheticConfig(families=["classify", "letter_map", "word_map"], tasks_per_family=20))
    assert not {frozenset((i.input, i.output) for i in t.train + t.test) for t in held} & seen
    assert all(f in FAMILIES for f in SyntheticConfig().families)
    # distractors: "other" never offers an output the rule gives; "rule" offers the rule's other outputs first
    for mode in ("other", "rule"):
        for t in synthetic_suite(SyntheticConfig(families=["classify"], tasks_per_family=3, distractors=mode)):
            outputs = {i.output for i in t.train + t.test}
            for item in t.test:
                wrong = [c for j, c in enumerate(item.choices) if j != item.answer]
                assert len(wrong) == 7 and (not set(wrong) & outputs if mode == "other" else set(wrong) & outputs)
    # a reader who knows the labels but not the mapping: 1 / n_labels with "rule" distractors, always right with "other"
    rule = synthetic_suite(SyntheticConfig(families=["classify"], tasks_per_family=6, distractors="rule"))
    n_labels = [len({i.output for i in t.train + t.test}) for t in rule]
    assert set(n_labels) <= {2, 3, 4} and len(set(n_labels)) > 1
    assert label_set_baseline(rule) == pytest.approx(sum(1 / n for n in n_labels) / len(n_labels))
    assert label_set_baseline(synthetic_suite(SyntheticConfig(families=["classify"], distractors="other"))) == 1.0
    docs = list(itertools.islice(read_documents("builtin:icl"), 50))
    assert docs[:3] == list(itertools.islice(read_documents("builtin:icl"), 3))
    assert all(" -> " in d and ", " in d for d in docs)


# ---- the OpenAI-compatible endpoint -------------------------------------------------------------------------

class CompletionsHandler(BaseHTTPRequestHandler):
    """/v1/completions: echoes the prompt as whitespace-separated tokens, token i of length L scored -0.5 * L."""

    requests: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            if body.get("echo"):
                toks, offs, pos = [], [], 0
                for piece in prompt.replace(" ", "\0 ").split("\0"):
                    if piece:
                        toks.append(piece)
                        offs.append(pos)
                        pos += len(piece)
                lps = [None] + [-0.5 * len(t) for t in toks[1:]]
                choices.append({"index": i, "text": prompt,
                                "logprobs": {"tokens": toks, "token_logprobs": lps, "text_offset": offs}})
            else:
                choices.append({"index": i, "text": " hello, world"})
        send_json(self, {"choices": choices[::-1]})  # out of order: the backend sorts by index

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    CompletionsHandler.requests = []
    with scripted_server(CompletionsHandler) as url:
        yield url


def test_openai_backend_against_a_local_server(endpoint):
    backend = OpenAIBackend(endpoint, "tiny-gpt", api_key="sk-test", batch_size=2)
    got = backend.loglikelihood([("Translate: cat ->", " chat"), ("x ->", " big dog")])
    assert got == [(-2.5, 1), (-4.0, 2)]  # " chat": 5 chars; " big" + " dog": 4 + 4 chars
    path, auth, body = CompletionsHandler.requests[0]
    assert path == "/v1/completions" and auth == "Bearer sk-test"
    assert body == {"model": "tiny-gpt", "prompt": ["Translate: cat -> chat", "x -> big dog"], "max_tokens": 0,
                    "echo": True, "logprobs": 1, "temperature": 0}
    assert backend.generate(["a ->"], 5, [",", "\n"]) == [" hello"]
    assert CompletionsHandler.requests[-1][2] == {"model": "tiny-gpt", "prompt": ["a ->"], "max_tokens": 5,
                                                  "temperature": 0, "stop": [",", "\n"]}
    # the same harness on the endpoint
    task = Task(name="t", test=[Item("x", choices=["big dog", "cat"], answer=1), Item("y", target="hello")],
                train=[Item("z", target="w")], separator=", ")
    s = evaluate_tasks(backend, [task], [1], progress=False)[0]
    assert (s.acc, s.exact, s.score) == (1.0, 1.0, 1.0)
    # a prefix (e.g. <|endoftext|> for `gptrecipe serve`) goes before every prompt and is not scored
    prefixed = OpenAIBackend(endpoint, "tiny-gpt", prefix="<|endoftext|>")
    assert prefixed.loglikelihood([("x ->", " big dog")]) == [(-4.0, 2)]
    assert CompletionsHandler.requests[-1][2]["prompt"] == ["<|endoftext|>x -> big dog"]
    with pytest.raises(EndpointError, match="cannot reach"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", timeout=2).generate(["a"], 1, [])


# ---- assistant prompt and the command line ------------------------------------------------------------------

GOLDEN_ASSISTANT = (
    "A conversation between a human and a helpful, honest AI assistant. The assistant answers every "
    "question politely and well.\n\nHuman: Hello, who are you?\n"
    "Assistant: I am an AI assistant. How can I help you today?\n\nHuman: What is AI?\nAssistant:")


def test_sample_assistant_prints_the_golden_template(small_tok, tmp_path, capsys):
    assert assistant_prompt(" What is AI? ") == GOLDEN_ASSISTANT
    assert ASSISTANT_TEMPLATE.replace("{query}", "What is AI?") == GOLDEN_ASSISTANT
    torch.manual_seed(0)
    ckpt = save_stage_checkpoint(tmp_path / "m", GPT(tiny_config(vocab_size=small_tok.vocab_size, block_size=256)),
                                 small_tok, stage="pretrain")
    assert main(["sample", str(ckpt), "--assistant", "-p", "What is AI?", "-n", "3", "-t", "0"]) == 0
    assert capsys.readouterr().out.startswith(GOLDEN_ASSISTANT)


def test_cli_eval(small_tok, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "--base-url" in capsys.readouterr().out
    torch.manual_seed(0)
    ckpt = save_stage_checkpoint(tmp_path / "m", GPT(tiny_config(vocab_size=small_tok.vocab_size, block_size=128)),
                                 small_tok, stage="pretrain")
    task = tmp_path / "task.jsonl"
    task.write_text('{"description": "Answer."}\n' + "".join(
        json.dumps({"input": f"q{i}", "choices": ["yes", "no"], "answer": i % 2}) + "\n" for i in range(6)))
    corpus = tmp_path / "c.txt"
    corpus.write_text("Hello! How are you? What is AI? " * 200)
    # overrides may come before and after the options
    assert main(["eval", str(ckpt), "synthetic.tasks_per_family=1", "--tasks", str(task),
                 "builtin:synthetic/letter_map", "-k", "0", "2", "--corpus", str(corpus), "--name", "eval",
                 f"out_dir={tmp_path}", f"cache_dir={tmp_path}/cache", "progress=false"]) == 0
    out = capsys.readouterr().out
    assert "K=0: accuracy" in out and "K=2: accuracy" in out and "bits/byte" in out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["k"] for r in res["curve"]] == [0, 2] and {t["task"] for t in res["tasks"]} == {"task", "letter_map-00"}
    assert res["corpora"][0]["bits_per_byte"] > 0
    assert (tmp_path / "eval" / "icl.png").stat().st_size > 0
    assert "Accuracy vs K" in (tmp_path / "eval" / "report.md").read_text()
    assert main(["eval", f"out_dir={tmp_path}"]) == 2  # neither a checkpoint nor an endpoint: a clear error
    assert "give a checkpoint" in capsys.readouterr().err


class Copier(nn.Module):
    """A perfect induction head for sequences of `length` tokens after <|endoftext|>, repeated once: at position p
    it predicts the token that followed the current token's first occurrence, the input at p + 1 - length."""

    def __init__(self, length: int, vocab: int = 257):
        super().__init__()
        self.config = SimpleNamespace(block_size=64)
        self.length, self.vocab, self.w = length, vocab, nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        back = torch.full_like(idx, 256)
        back[:, self.length:] = idx[:, 1: idx.size(1) - self.length + 1]  # position p predicts idx[p + 1 - length]
        return torch.nn.functional.one_hot(back, self.vocab).float(), None


def test_induction_score_is_one_for_a_copier_and_zero_without_copying(byte_tok):
    assert induction_score(Copier(15), byte_tok) == 1.0
    constant = Copier(15)
    constant.forward = lambda idx: (torch.nn.functional.one_hot(torch.full_like(idx, 256), 257).float(), None)
    assert induction_score(constant, byte_tok) == 0.0  # <|endoftext|> is never in the sequences
    torch.manual_seed(0)
    model = GPT(tiny_config())
    a, b = induction_score(model, byte_tok, seed=3), induction_score(model, byte_tok, seed=3)
    assert a == b and 0.0 <= a <= 1.0 and model.training  # seeded; the model's mode is restored
