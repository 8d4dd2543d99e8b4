"""GPT-1 style fine-tuning: input transformations, L2 + lambda * L1, the four task types learning toy tasks, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptrecipe.checkpoint import load_checkpoint
from gptrecipe.cli import main
from gptrecipe.data.readers import DataError
from gptrecipe.finetune import (
    DELIM,
    EXTRACT,
    FinetuneConfig,
    HeadTask,
    InputEncoder,
    TaskHeadModel,
    encode_examples,
    finetune,
    label_index,
    read_examples,
    score_file,
)
from gptrecipe.model import GPT, IGNORE_INDEX
from gptrecipe.train import TrainConfig
from tests.conftest import assert_resume_is_exact, save_stage_checkpoint, tiny_config

SKY = ["sun", "moon", "star", "sky", "cloud", "rain"]
FARM = ["cat", "dog", "cow", "pig", "hen", "fox"]


def words(rng, pool, n: int) -> str:
    return " ".join(pool[i] for i in rng.integers(0, len(pool), n))


def toy(task: str, n: int, seed: int) -> list[dict]:
    """Separable toy data: the label depends on which word pools the texts come from (for pairs: both from
    SKY, half of the examples; else any other combination)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t1, t2 = (0, 0) if rng.random() < 0.5 else [(0, 1), (1, 0), (1, 1)][int(rng.integers(0, 3))]
        p1, p2 = (SKY, FARM)[t1], (SKY, FARM)[t2]
        if task == "classification":
            out.append({"text": words(rng, p1, 4), "label": ["sky", "farm"][t1]})
        elif task == "entailment":
            out.append({"premise": words(rng, p1, 4), "hypothesis": words(rng, p2, 2),
                        "label": "entailment" if t1 == t2 == 0 else "contradiction"})
        elif task == "similarity":
            out.append({"text_a": words(rng, p1, 3), "text_b": words(rng, p2, 3), "label": int(t1 == t2 == 0)})
        else:
            right, wrong = words(rng, p1, 2), words(rng, (FARM, SKY)[t1], 2)
            answer = int(rng.integers(0, 2))
            out.append({"context": words(rng, p1, 4), "choices": [right, wrong] if answer == 0 else [wrong, right],
                        "answer": answer})
    return out


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def base_ckpt(small_tok, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=small_tok.vocab_size, n_embd=48, n_head=4))
    return save_stage_checkpoint(tmp_path / "base", model, small_tok, stage="pretrain")


def test_input_transformations(small_tok):
    s, d, x = small_tok.eot_id, small_tok.id_of(DELIM), small_tok.id_of(EXTRACT)
    enc = small_tok.encode
    ex = {"classification": read_rows(small_tok, "classification", {"text": "Hello", "label": 1}),
          "entailment": read_rows(small_tok, "entailment", {"premise": "Hello", "hypothesis": "you", "label": 0}),
          "similarity": read_rows(small_tok, "similarity", {"text_a": "Hello", "text_b": "you", "label": 0}),
          "multiple_choice": read_rows(small_tok, "multiple_choice",
                                       {"context": "Hello", "choices": ["you", "me", "it"], "answer": 2})}
    assert ex["classification"] == [[s, *enc("Hello"), x]]
    assert ex["entailment"] == [[s, *enc("Hello"), d, *enc("you"), x]]
    assert ex["similarity"] == [[s, *enc("Hello"), d, *enc("you"), x], [s, *enc("you"), d, *enc("Hello"), x]]
    assert ex["multiple_choice"] == [[s, *enc("Hello"), d, *enc(c), x] for c in ("you", "me", "it")]
    # a pair longer than the context: the longer text is cut, the extract token always ends the sequence
    long = InputEncoder(small_tok, "entailment", 16)._seq(list(range(100, 130)), [300, 301, 302])
    assert long == [s, *range(120, 130), d, 300, 301, 302, x]  # 13 text tokens: the premise keeps its last 10


def read_rows(tok, task, obj):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = write_jsonl(Path(d) / "x.jsonl", [obj])
        return InputEncoder(tok, task, 64).sequences(read_examples(p, task)[0])


def test_loss_is_task_loss_plus_lambda_times_lm_loss(small_tok):
    """L3 = L2 + 0.5 * L1 against a hand computation from the model's own pieces: the task's sums divided by the
    batch's counts (what the loop does) are the mean over examples plus 0.5 x the mean over text tokens."""
    torch.manual_seed(0)
    enc = InputEncoder(small_tok, "classification", 64)
    seqs = [enc._seq(small_tok.encode(t)) for t in ("Hello there", "What is AI?", "Tell me a joke.")]
    for ignore in [(), (enc.extract,)]:  # the stage leaves delimiter / extract out of L1
        model = TaskHeadModel(tiny_config(vocab_size=small_tok.vocab_size), "classification", 3, head_dropout=0.0,
                              ignore=ignore)
        task = HeadTask([([q], i) for i, q in enumerate(seqs)], [], enc.pad, 64, lm_coef=0.5, seed=0, ignore=ignore)
        batch = task.get_batch(0, 0, 3, 1, 0, 1)
        terms = task.loss(model, batch.tensors)
        got = sum(terms[k] / batch.counts[k] for k in terms)
        ids, lengths, _, labels = batch.tensors
        h = model.gpt.hidden_states(ids)
        l2 = F.cross_entropy(model.head(h[torch.arange(3), lengths - 1]), labels)
        targets = torch.full_like(ids, IGNORE_INDEX)[:, 1:]
        for i, n in enumerate(lengths.tolist()):
            targets[i, : n - 1] = ids[i, 1:n]
        for t in ignore:
            targets[targets == t] = IGNORE_INDEX
        l1 = model.gpt(ids[:, :-1], targets)[1]
        assert got.item() == pytest.approx((l2 + 0.5 * l1).item(), rel=1e-5)
        assert batch.counts["lm"] == int((targets != IGNORE_INDEX).sum()) and batch.counts["task"] == 3


@pytest.mark.parametrize("task,steps", [("classification", 40), ("entailment", 60), ("similarity", 60),
                                        ("multiple_choice", 150)])  # 60 steps: 0.67 on one of 10 seeds
def test_each_task_type_learns_a_separable_toy_task(task, steps, base_ckpt, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", toy(task, 400, seed=1))
    val_file = write_jsonl(tmp_path / "val.jsonl", toy(task, 64, seed=2))
    cfg = FinetuneConfig(name=task, out_dir=str(tmp_path), init=str(base_ckpt), task=task, data=train_file,
                         val_data=val_file, train=TrainConfig(max_steps=steps, micro_batch_size=16, lr=1e-2,
                                                              warmup_steps=5, eval_every=0, checkpoint_every=0,
                                                              device="cpu", progress=False, dtype="fp32"))
    result = finetune(cfg, log=lambda *a: None)
    assert result.evals[-1]["val_accuracy"] > 0.9, result.evals
    loaded = load_checkpoint(cfg.run_dir, expect=TaskHeadModel)
    model, tok, extras = loaded.model, loaded.tokenizer, loaded.meta.extras
    assert extras["task"] == task and model.ignore == [tok.id_of(DELIM), tok.id_of(EXTRACT)]
    assert (tmp_path / task / "report.md").exists()
    assert score_file(str(cfg.run_dir), val_file) == pytest.approx(result.evals[-1]["val_accuracy"])


def test_finetune_resume_is_exact(base_ckpt, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", toy("entailment", 100, seed=3))

    def cfg(name: str) -> FinetuneConfig:
        return FinetuneConfig(name=name, out_dir=str(tmp_path), init=str(base_ckpt), task="entailment", data=data,
                              train=TrainConfig(max_steps=8, micro_batch_size=8, lr=3e-3, warmup_steps=2,
                                                eval_every=0, checkpoint_every=4, device="cpu", progress=False,
                                                dtype="fp32"))

    assert_resume_is_exact(lambda name, resume: finetune(cfg(name), resume=resume, log=lambda *a: None), tmp_path)


def test_bad_examples_name_file_line_and_field(tmp_path, small_tok):
    p = tmp_path / "d.jsonl"
    p.write_text('{"premise": "a", "hypothesis": "b", "label": "x"}\n{"premise": "a", "label": "y"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: line 2: field 'hypothesis': missing"):
        read_examples(p, "entailment")
    p.write_text('{"context": "a", "choices": ["x", "y"], "answer": 2}\n')
    with pytest.raises(DataError, match=r"d.jsonl: line 1: field 'answer'"):
        read_examples(p, "multiple_choice")
    p.write_text('{"text": "a", "label": "pos"}\n')
    q = tmp_path / "v.jsonl"
    q.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neutral"}\n')
    train_ex = read_examples(p, "classification")
    enc = InputEncoder(small_tok, "classification", 64)
    with pytest.raises(DataError, match=r"v.jsonl: line 2: field 'label': 'neutral' is not a training label"):
        encode_examples(enc, read_examples(q, "classification"), label_index(train_ex, "classification"))


def test_cli_finetune(base_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "multiple_choice" in capsys.readouterr().out
    data = write_jsonl(tmp_path / "t.jsonl", toy("classification", 40, seed=4))
    assert main(["finetune", "--init", str(base_ckpt), "--task", "classification", "--data", data,
                 f"out_dir={tmp_path}", "name=cli", "train.max_steps=2", "train.eval_every=0",
                 "train.progress=false", "train.device=cpu"]) == 0
    assert "val accuracy" in capsys.readouterr().out
    assert main(["finetune", "score", str(tmp_path / "cli"), "--data", data]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 41 and lines[-1].startswith("accuracy ")
