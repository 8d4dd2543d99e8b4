"""`gptrecipe ape`: the pure search parts against hand computations, log-prob scoring, endpoints, the CLI."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import torch

from gptrecipe.ape import (
    OPRO_ENTRY,
    ApeConfig,
    ModelSpec,
    adaptive_filter,
    ape,
    clean_proposals,
    opro_meta_prompt,
    score_all,
    ucb_search,
)
from gptrecipe.cli import main
from gptrecipe.data.icl import as_instruction, icl_documents, or_list
from gptrecipe.evaluate.harness import LocalBackend, item_scores
from gptrecipe.evaluate.tasks import Item, Task
from gptrecipe.serve.api import BackgroundServer, create_app
from tests.serve_util import local_logprobs, scripted_server, send_json, tiny_checkpoint


def matrix_fn(scores: np.ndarray, calls: list):
    def fn(pairs):
        calls.append(list(pairs))
        return [float(scores[c, i]) for c, i in pairs]
    return fn


# ---- the pure parts ------------------------------------------------------------------------------------------

def test_adaptive_filter_keeps_the_best_and_spends_fewer_evaluations():
    rng = np.random.default_rng(0)
    p = np.linspace(0.1, 0.6, 20)
    p[13] = 0.95  # the best candidate
    scores = (rng.random((20, 30)) < p[:, None]).astype(float)
    calls: list = []
    res = adaptive_filter(20, 30, matrix_fn(scores, calls), subset=3, keep=0.5, final=3,
                          rng=np.random.default_rng(1))
    assert res.order[0] == int(np.argmax(scores.mean(1))) == 13
    # by hand: 20 x 3 (keep 10), 10 x 3 (keep 5), 5 x 3 (keep 3), then the 3 on the other 21 items
    assert res.evaluations == 20 * 3 + 10 * 3 + 5 * 3 + 3 * 21 == 168 < 20 * 30
    assert [len(c) for c in calls] == [60, 30, 15, 63]
    subsets = [{i for _, i in c} for c in calls[:3]]
    assert all(len(s) == 3 for s in subsets) and len(set().union(*subsets)) == 9  # new, non-overlapping subsets
    assert res.counts[13] == 30 and res.mean(13) == scores[13].mean()
    assert sorted(res.order[:3]) == sorted(c for c in range(20) if res.counts[c] == 30)
    full = score_all(20, 30, matrix_fn(scores, []))
    assert full.evaluations == 600 and full.order[0] == 13


def test_ucb_pulls_the_best_arm_most():
    p = [0.2, 0.5, 0.8, 0.4, 0.3]
    scores = np.array([[float(i < q * 20) for i in range(20)] for q in p])  # arm c's mean over all items is p[c]
    calls: list = []
    res = ucb_search(5, 20, matrix_fn(scores, calls), rounds=40, arms=1, samples=4, c=1.0,
                     rng=np.random.default_rng(0))
    assert [c for c, _ in calls[0]] == [0] * 4  # unpulled arms go first, in order
    assert {calls[r][0][0] for r in range(5)} == {0, 1, 2, 3, 4}
    assert int(np.argmax(res.counts)) == 2 and res.order[0] == 2
    assert res.counts[2] > sum(res.counts) / 2 and res.evaluations == 40 * 4 == sum(res.counts)
    # the bound by hand after the first 5 rounds: pull the arm with the highest mean + sqrt(ln 20 / 4)
    sums = [sum(scores[c, i] for _, i in calls[c]) for c in range(5)]
    bound = [s / 4 + np.sqrt(np.log(20) / 4) for s in sums]
    assert calls[5][0][0] == int(np.argmax(bound))


def test_clean_proposals_drops_empty_and_duplicates():
    raw = [" label each pair as red or green.\nf x -> red", "Label each pair as  RED or green", "", "  ", ".",
           "answer red", "Answer red:"]
    assert clean_proposals(raw) == (["Label each pair as red or green.", "Answer red."], 3, 2)
    assert clean_proposals(["answer red", "say x"], seen=["Answer red."]) == (["Say x."], 0, 1)
    assert as_instruction("") == "" and or_list(["a"]) == "a" and or_list(["a", "b", "c"]) == "a, b or c"


def test_opro_meta_prompt_lists_the_best_in_ascending_order():
    history = [("A.", 0.5), ("B.", 0.25), ("C.", 0.75)]
    got = opro_meta_prompt(history, "x -> y", template="[HISTORY]\n--\n[DEMOS]\nnew:", entry=OPRO_ENTRY, shown=2)
    assert got == "text: A.\nscore: 50\n\ntext: C.\nscore: 75\n--\nx -> y\nnew:"


def test_icl_documents_state_the_rule_before_or_after():
    docs = [d for _, d in zip(range(400), icl_documents(), strict=False)]
    after = [d for d in docs if ". The instruction was to " in d]
    before = [d for d in docs if not d.startswith("Classify: ")]
    assert 0.05 < len(after) / 400 < 0.25 and 0.05 < (len(before) - len(after)) / 400 < 0.25
    for d in after:  # the labels named are exactly the labels of the examples
        examples, rule = d.rstrip(".\n").split(". The instruction was to ")
        labels = {e.split(" -> ")[1] for e in examples.split(", ")}
        assert all(lab in rule for lab in labels)


# ---- scoring through the harness ---------------------------------------------------------------------------

def test_logprob_score_equals_a_hand_computation(small_tok):
    torch.manual_seed(0)
    from gptrecipe.model import GPT
    from tests.conftest import tiny_config

    model = GPT(tiny_config(vocab_size=small_tok.vocab_size, block_size=128)).eval()
    task = Task(name="t", train=[Item("How are you", target="fine thank you")], test=[Item("x", target="y")],
                example_format="Q: {input} A: {output}", description_separator=" ")
    got = item_scores(LocalBackend(model, small_tok), task, [("Answer politely.", 0), ("", 0)], metric="logprob")
    for ins, score in zip(["Answer politely. ", ""], got, strict=True):
        ctx = [small_tok.eot_id, *small_tok.encode(ins + "Q: How are you A:")]
        cont = small_tok.encode(" fine thank you")
        lps = local_logprobs(model, ctx + cont)[len(ctx) - 1:]
        assert score == pytest.approx(sum(lps) / len(lps), abs=1e-5)
    # with a solved example (shots=1) between the instruction and the item: never the item itself
    pool = [Item("How are you", target="fine thank you"), Item("Hi", target="hello")]
    (got,) = item_scores(LocalBackend(model, small_tok), task, [("Answer.", 0)], metric="logprob", shots=1, pool=pool)
    ctx = [small_tok.eot_id, *small_tok.encode("Answer. Q: Hi A: hello\nQ: How are you A:")]
    lps = local_logprobs(model, ctx + small_tok.encode(" fine thank you"))[len(ctx) - 1:]
    assert got == pytest.approx(sum(lps) / len(lps), abs=1e-5)


# ---- endpoints ------------------------------------------------------------------------------------------------

GOOD = "label each pair as red"


class ScriptedHandler(BaseHTTPRequestHandler):
    """/v1/completions. Sampled requests (proposals): a good, a duplicate, an empty and a bad instruction, in turn.
    Greedy requests (answers): " red" after the good instruction, else " blue". Echo: -1 per token unless
    `no_logprobs`."""

    requests: list = []
    no_logprobs = False

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            if body.get("echo"):
                toks = prompt.split(" ")
                offs = [sum(len(t) + 1 for t in toks[:k]) for k in range(len(toks))]
                lp = {"tokens": toks, "token_logprobs": [None] + [-1.0] * (len(toks) - 1), "text_offset": offs}
                choices.append({"index": i, "text": prompt, **({} if self.no_logprobs else {"logprobs": lp})})
            elif body["temperature"] > 0:
                choices.append({"index": i, "text": [f" {GOOD}.", f" {GOOD}", "", " say blue"][i % 4]})
            else:
                choices.append({"index": i, "text": " red, x" if prompt.startswith("Label each pair") else " blue"})
        send_json(self, {"choices": choices})

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    ScriptedHandler.requests, ScriptedHandler.no_logprobs = [], False
    with scripted_server(ScriptedHandler) as url:
        yield url


def red_task(path, n_train: int = 12):
    rows = [{"name": "red", "description": "Answer:", "separator": ", ", "description_separator": " "}]
    rows += [{"input": f"q{i}", "target": "red", "split": "train"} for i in range(n_train)]
    rows += [{"input": f"t{i}", "target": "red"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_endpoint_proposer_and_scorer_against_a_scripted_server(scripted, tmp_path, monkeypatch):
    monkeypatch.setenv("APE_TEST_KEY", "sk-x")
    spec = ModelSpec(model="m", base_url=scripted, api_key_env="APE_TEST_KEY", batch_size=4)
    cfg = ApeConfig(tasks=[str(red_task(tmp_path / "red.jsonl"))], proposer=spec, subsets=2, per_subset=4, demos=3,
                    out_dir=str(tmp_path), progress=False, strategy="both", opro_steps=2, opro_proposals=4)
    res = ape(cfg, log=lambda *a: None)
    run = res.runs[0]
    a = run["strategies"]["ape"]
    assert a["best"] == "Label each pair as red." and a["proposals"] == 8
    assert (a["empty"], a["duplicates"]) == (2, 4) and len(a["candidates"]) == 2  # good and "Say blue."
    assert run["test"]["ape best"]["accuracy"] == 1.0 and run["test"]["no instruction"]["accuracy"] == 0.0
    assert run["test"]["task description"]["accuracy"] == 0.0
    sampled = [r for r in ScriptedHandler.requests if r["temperature"] > 0]
    assert all(r["top_p"] == 0.9 and r["temperature"] == 0.9 and "seed" in r for r in sampled)
    assert sampled[0]["prompt"][0].startswith("I gave a friend an instruction.")
    # every request counted: 2 proposer batches of 4 (APE) + OPRO's; scorer: the evaluations + the test items
    assert run["proposer_requests"] == 8 + run["strategies"]["opro"]["proposals"]
    assert run["scorer_requests"] == a["evaluations"] + run["strategies"]["opro"]["evaluations"] + 5 * 3
    assert run["strategies"]["opro"]["evaluations"] <= a["evaluations"]
    assert run["strategies"]["opro"]["best"] == "Label each pair as red."
    # OPRO alone: step 2's meta-prompt lists step 1's instructions with their scores, worst first
    opro = ape(ApeConfig(**{**cfg.__dict__, "strategy": "opro", "name": "opro"}), log=lambda *a: None)
    assert opro.runs[0]["strategies"]["opro"]["evaluations"] == 7 * 3  # "", then the two new ones, on 7 items
    last = [r for r in ScriptedHandler.requests if r["temperature"] > 0][-1]["prompt"][0]
    assert "text: Say blue.\nscore: 0\n\ntext: Label each pair as red.\nscore: 100" in last


def test_endpoint_errors_are_one_line(scripted, tmp_path, capsys):
    task = str(red_task(tmp_path / "red.jsonl"))
    ScriptedHandler.no_logprobs = True
    args = ["ape", "--task", task, "--proposer", "m", "--proposer-base-url", scripted, "--metric", "logprob",
            f"out_dir={tmp_path}", "progress=false"]
    assert main(args) == 2
    assert "no echoed logprobs" in capsys.readouterr().err
    assert main([*args[:5], "--proposer-base-url", "http://127.0.0.1:9/v1", f"out_dir={tmp_path}"]) == 2
    assert "cannot reach the endpoint" in capsys.readouterr().err
    few = str(red_task(tmp_path / "few.jsonl", n_train=4))
    assert main(["ape", "--task", few, "--proposer", "m", "--proposer-base-url", scripted, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "few.jsonl: 4 train items" in err and err.count("\n") == 1


def test_gptrecipe_serve_scores_as_the_local_checkpoint(tmp_path, small_tok):
    ckpt, model = tiny_checkpoint(tmp_path / "m", small_tok, stage="pretrain", block_size=128)
    task = str(red_task(tmp_path / "red.jsonl"))
    # fp32 on both sides: bf16 (what dtype=auto picks on CPUs with native bf16) rounds batched and single rows apart
    common = dict(tasks=[task], subsets=2, per_subset=2, demos=3, max_new_tokens=6, metric="logprob", search="all",
                  out_dir=str(tmp_path), progress=False, dtype="fp32")
    local = ape(ApeConfig(name="local", proposer=ModelSpec(model=str(ckpt)), **common), log=lambda *a: None)
    with BackgroundServer(create_app(ckpt, model_name="tiny", device="cpu", dtype="fp32")) as server:
        spec = ModelSpec(model="tiny", base_url=server.url + "/v1", prompt_prefix="<|endoftext|>")
        remote = ape(ApeConfig(name="remote", proposer=ModelSpec(model=str(ckpt)), scorer=spec, **common),
                     log=lambda *a: None)
    lc, rc = (r.runs[0]["strategies"]["ape"]["candidates"] for r in (local, remote))
    assert [c["instruction"] for c in lc] == [c["instruction"] for c in rc] and lc
    assert [c["score"] for c in rc] == pytest.approx([c["score"] for c in lc], abs=1e-4)
    assert remote.runs[0]["test"] == local.runs[0]["test"]


# ---- the command line -------------------------------------------------------------------------------------------

def test_cli_ape_is_reproducible(tmp_path, small_tok, capsys):
    with pytest.raises(SystemExit):
        main(["ape", "--help"])
    assert "--proposer-base-url" in capsys.readouterr().out
    ckpt, _ = tiny_checkpoint(tmp_path / "m", small_tok, stage="pretrain", block_size=128)
    args = ["ape", "--task", "builtin:synthetic/classify", "--proposer", str(ckpt),
            "synthetic.tasks_per_family=1", "synthetic.test_items=4", "synthetic.choices=4", "subsets=3",
            "per_subset=3", "max_new_tokens=8", "max_answer_tokens=3",
            "template=[DEMOS]. The instruction was to", "stop=[\".\", \"\\n\"]", "mc_rounds=1", "mc_top=2",
            "mc_variants=2",
            f"out_dir={tmp_path}", "progress=false", "--seeds", "0", "1"]
    assert main([*args, "--name", "a"]) == 0
    assert "no instruction: test accuracy" in capsys.readouterr().out
    assert main([*args, "--name", "b"]) == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
    assert a["runs"] == b["runs"] and len(a["runs"]) == 2
    r0, r1 = a["runs"]
    assert r0["strategies"]["ape"]["candidates"] != r1["strategies"]["ape"]["candidates"]  # seeds differ
    assert r0["strategies"]["ape"]["evaluations"] < r0["strategies"]["ape"]["evaluations_if_all"]
    assert (tmp_path / "a" / "ape.png").stat().st_size > 0
    assert "Test accuracy" in (tmp_path / "a" / "report.md").read_text()
