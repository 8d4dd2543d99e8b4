"""Stage: GPT-1 style supervised fine-tuning with a task head (Radford et al. 2018, section 3.2-3.3).

A linear head reads the final hidden state of an extract token appended to the input; the loss is
L3 = L2 + lambda * L1: the task's cross entropy plus lambda (0.5) times the language-model loss on the
same inputs. The task's structured input becomes token sequences:

    classification   [start; text; extract]
    entailment       [start; premise; delim; hypothesis; extract]
    similarity       [start; a; delim; b; extract] and [start; b; delim; a; extract], hidden states added
    multiple_choice  [start; context; delim; answer_k; extract] for each k, one score each, softmax over k

start is <|endoftext|>, delim <|reserved_0|>, extract <|reserved_1|> (their embeddings are learned here).

    gptrecipe finetune --init runs/speedrun/pretrain --task entailment --data nli.jsonl --val-data nli_val.jsonl

JSONL, one example per line: {"text", "label"} | {"premise", "hypothesis", "label"} | {"text_a", "text_b",
"label"} | {"context", "choices": [...], "answer": index}. Labels are strings or integers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .chat import read_jsonl
from .checkpoint import load_checkpoint
from .config import ConfigError, RunConfig, load_config
from .data.loader import global_batch, pad_rows, rank_slice
from .data.readers import DataError
from .heads import TaskHeadModel
from .report import md_table, plot_losses, write_markdown
from .stage import StageRun, n_val, seeded_split
from .tokenizer import Tokenizer
from .train import Batch, TrainConfig, TrainResult, TrainTask

TASK_FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"), "similarity": ("text_a", "text_b"),
               "multiple_choice": ("context",)}
DELIM, EXTRACT = "<|reserved_0|>", "<|reserved_1|>"


@dataclass
class Example:
    parts: list[str]  # the text fields, in TASK_FIELDS order (multiple choice: context)
    label: Any  # label value (multiple choice: index of the right answer)
    choices: list[str] | None = None
    where: str = ""


def read_examples(path: str | Path, task: str) -> list[Example]:
    """Examples of `task` from JSONL; errors name the file, the line and the field."""
    if task not in TASK_FIELDS:
        raise ConfigError(f"task must be one of {', '.join(TASK_FIELDS)}, got {task!r}")
    out = []
    for n, obj in read_jsonl(path):
        where = f"{path}: line {n}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object")
        parts = []
        for f in TASK_FIELDS[task]:
            if not isinstance(obj.get(f), str):
                raise DataError(f"{where}: field {f!r}: {'missing' if f not in obj else 'must be a string'} "
                                f"({task} examples have {', '.join(TASK_FIELDS[task])} and "
                                f"{'choices, answer' if task == 'multiple_choice' else 'label'})")
            parts.append(obj[f])
        if task == "multiple_choice":
            ch, ans = obj.get("choices"), obj.get("answer")
            if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
                raise DataError(f"{where}: field 'choices': must be a list of at least 2 strings")
            if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(ch):
                raise DataError(f"{where}: field 'answer': must be the index (0..{len(ch) - 1}) of the right choice")
            out.append(Example(parts, ans, ch, where))
        else:
            label = obj.get("label")
            if isinstance(label, bool) or not isinstance(label, str | int):
                what = "missing" if "label" not in obj else "must be a string or an integer"
                raise DataError(f"{where}: field 'label': {what}")
            out.append(Example(parts, label, None, where))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


class InputEncoder:
    """The GPT-1 input transformations: an example -> its token sequences (each ends with the extract token)."""

    def __init__(self, tok: Tokenizer, task: str, block_size: int):
        self.tok, self.task, self.block = tok, task, block_size
        self.start, self.delim, self.extract = tok.eot_id, tok.id_of(DELIM), tok.id_of(EXTRACT)
        self.pad = tok.id_of("<|pad|>")

    def _seq(self, a: list[int], b: list[int] | None = None) -> list[int]:
        """[start; a; (delim; b;) extract], cut to the context: a lone text keeps its start; of a pair, the
        longer text loses tokens first (a from the left, keeping a context's end next to the answer)."""
        if b is None:
            return [self.start, *a[: self.block - 2], self.extract]
        la, lb = len(a), len(b)
        while la + lb > self.block - 3:
            la, lb = (la - 1, lb) if la >= lb else (la, lb - 1)
        return [self.start, *a[len(a) - la:], self.delim, *b[:lb], self.extract]

    def sequences(self, ex: Example) -> list[list[int]]:
        enc = self.tok.encode
        if self.task == "classification":
            return [self._seq(enc(ex.parts[0]))]
        if self.task == "entailment":
            return [self._seq(enc(ex.parts[0]), enc(ex.parts[1]))]
        if self.task == "similarity":
            a, b = enc(ex.parts[0]), enc(ex.parts[1])
            return [self._seq(a, b), self._seq(b, a)]
        ctx = enc(ex.parts[0])
        return [self._seq(ctx, enc(c)) for c in ex.choices or []]


def collate(seqs: list[list[list[int]]], labels: list[int], pad: int) -> tuple[torch.Tensor, ...]:
    """Examples' sequences -> (ids (N, W) right-padded, lengths (N,), sizes (B,), labels (B,))."""
    flat = [s for group in seqs for s in group]
    return (pad_rows(flat, pad), torch.tensor([len(s) for s in flat]), torch.tensor([len(g) for g in seqs]),
            torch.tensor(labels, dtype=torch.long))


class HeadTask(TrainTask):
    """A TrainTask: batches of encoded examples, loss L2 (mean over examples) + lm_coef * L1 (mean over text
    tokens), validation accuracy."""

    def __init__(self, train_set: list[tuple[list[list[int]], int]], val_set: list[tuple[list[list[int]], int]],
                 pad: int, block_size: int, lm_coef: float, seed: int, ignore: tuple[int, ...] = ()):
        if not train_set:
            raise DataError("finetune: no training examples")
        self.train_set, self.val_set, self.pad, self.lm_coef, self.seed = train_set, val_set, pad, lm_coef, seed
        self.tokens_per_row = block_size
        self.ignore = set(ignore)

    def _batch(self, rows) -> tuple[torch.Tensor, ...]:
        return collate([r[0] for r in rows], [r[1] for r in rows], self.pad)

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size) -> Batch:
        idx = global_batch(self.seed, step, len(self.train_set), micro_batch_size * grad_accum * world_size)
        rows = [self.train_set[i] for i in rank_slice(idx, micro_step, micro_batch_size, rank, world_size)]
        n_lm = sum(t not in self.ignore for seqs, _ in rows for s in seqs for t in s[1:])
        tensors = self._batch(rows)
        return Batch(tensors, {"task": len(rows), "lm": n_lm}, tensors[0].numel(), tensors[0].size(1))

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        ids, lengths, sizes, labels = batch
        logits, lm_sum = model(ids, lengths, sizes)
        return {"task": F.cross_entropy(logits.float(), labels, reduction="sum"), "lm": self.lm_coef * lm_sum}

    @torch.no_grad()
    def evaluate(self, model, max_batches: int) -> dict[str, float]:
        device = next(model.parameters()).device
        correct = total = 0
        losses = []
        for i in range(0, min(len(self.val_set), 32 * max_batches), 32):
            ids, lengths, sizes, labels = (t.to(device) for t in self._batch(self.val_set[i: i + 32]))
            logits, _ = model(ids, lengths, sizes)
            losses.append(F.cross_entropy(logits.float(), labels, reduction="sum").item())
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        return {"val_loss": sum(losses) / max(1, total), "val_accuracy": correct / max(1, total)}


@dataclass
class FinetuneConfig(RunConfig):
    name: str = "finetune"
    init: str = ""  # pretrained (or SFT) checkpoint or run dir
    task: str = "classification"  # classification | entailment | similarity | multiple_choice
    data: str = ""  # training JSONL
    val_data: str = ""  # validation JSONL; empty = hold out val_fraction of data
    val_fraction: float = 0.1
    lm_coef: float = 0.5  # lambda in L3 = L2 + lambda * L1 (GPT-1: 0.5)
    head_dropout: float = 0.1  # GPT-1: 0.1 on the classifier
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=300, micro_batch_size=32, lr=6.25e-5, warmup_steps=10, eval_every=50, checkpoint_every=100))


def load_finetune_config(preset: str | None = None, overrides: list[str] = ()) -> FinetuneConfig:
    return load_config(FinetuneConfig, "finetune", preset, overrides)


def label_index(examples: list[Example], task: str) -> list[str]:
    """The label set (as strings, sorted) of non-multiple-choice training examples."""
    return [] if task == "multiple_choice" else sorted({str(e.label) for e in examples})


def encode_examples(enc: InputEncoder, examples: list[Example], labels: list[str]) -> list[tuple[list[list[int]], int]]:
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for e in examples:
        if enc.task == "multiple_choice":
            y = e.label
        elif str(e.label) in index:
            y = index[str(e.label)]
        else:
            raise DataError(f"{e.where}: field 'label': {e.label!r} is not a training label ({', '.join(labels)})")
        out.append((enc.sequences(e), y))
    return out


def finetune(cfg: FinetuneConfig, *, resume: bool = False, log=print) -> TrainResult:
    """Fine-tune `cfg.init` with a task head; checkpoints (stage "finetune") and report.md go to run_dir."""
    if not cfg.init or not cfg.data:
        raise ConfigError("finetune: set init=<pretrained checkpoint> and data=<train JSONL> (--init, --data)")
    if cfg.task not in TASK_FIELDS:
        raise ConfigError(f"task must be one of {', '.join(TASK_FIELDS)}, got {cfg.task!r}")
    run = StageRun(cfg, "finetune", log)
    base = run.load_init(cfg.init, "init")
    tok = base.tokenizer
    examples = read_examples(cfg.data, cfg.task)
    if cfg.val_data:
        train_ex, val_ex = examples, read_examples(cfg.val_data, cfg.task)
    else:
        train_ex, val_ex = seeded_split(examples, n_val(len(examples), cfg.val_fraction), cfg.train.seed)
    labels = label_index(train_ex, cfg.task)
    enc = InputEncoder(tok, cfg.task, base.model.config.block_size)
    train_set, val_set = encode_examples(enc, train_ex, labels), encode_examples(enc, val_ex, labels)
    run.log(f"finetune ({cfg.task}): {len(train_set)} train / {len(val_set)} val examples"
            + (f", labels {labels}" if labels else ""))
    torch.manual_seed(cfg.train.seed)  # the head's init is part of the run
    ignore = (enc.delim, enc.extract)
    model = TaskHeadModel(base.model.config, cfg.task, max(1, len(labels)), cfg.head_dropout, ignore)
    model.gpt.load_state_dict(base.model.state_dict())
    task = HeadTask(train_set, val_set, enc.pad, model.config.block_size, cfg.lm_coef, cfg.train.seed, ignore)
    result = run.train(model, task, base, resume, extras={"task": cfg.task, "labels": labels, "head_dropout":
                                                          cfg.head_dropout, "ignore_tokens": [DELIM, EXTRACT]})
    run.report(write_finetune_report, cfg, result, labels, len(train_set), len(val_set))
    return result


@torch.no_grad()
def predict(model: TaskHeadModel, tok: Tokenizer, examples: list[Example], labels: list[str],
            batch_size: int = 32) -> list[Any]:
    """The predicted label of each example (multiple choice: the index of the chosen answer)."""
    enc = InputEncoder(tok, model.task, model.config.block_size)
    device = next(model.parameters()).device
    out: list[Any] = []
    for i in range(0, len(examples), batch_size):
        seqs = [enc.sequences(e) for e in examples[i: i + batch_size]]
        ids, lengths, sizes, _ = collate(seqs, [0] * len(seqs), enc.pad)
        logits, _ = model(ids.to(device), lengths.to(device), sizes.to(device))
        out += [int(j) if model.task == "multiple_choice" else labels[int(j)] for j in logits.argmax(-1).tolist()]
    return out


def score_file(checkpoint: str, data: str, out=None) -> float:
    """`gptrecipe finetune score`: predictions for a JSONL file (printed as JSONL) and the accuracy."""
    loaded = load_checkpoint(checkpoint, expect=TaskHeadModel)
    model, tok, meta = loaded.model.eval(), loaded.tokenizer, loaded.meta.extras
    examples = read_examples(data, meta["task"])
    preds = predict(model, tok, examples, meta["labels"])
    gold = [e.label if meta["task"] == "multiple_choice" else str(e.label) for e in examples]
    if out is not None:
        for e, p in zip(examples, preds, strict=True):
            out.write(json.dumps({"where": e.where, "prediction": p}, ensure_ascii=False) + "\n")
    return sum(p == g for p, g in zip(preds, gold, strict=True)) / len(gold)


def write_finetune_report(cfg: FinetuneConfig, result: TrainResult, labels: list[str], n_train: int,
                          n_val: int) -> Path:
    png = plot_losses(cfg.run_dir / "metrics.jsonl", cfg.run_dir / "loss.png",
                      title=f"{cfg.name}: L2 + {cfg.lm_coef} L1")
    rows = [{"step": e["step"], "val loss (task)": e["val_loss"], "val accuracy": e["val_accuracy"]}
            for e in result.evals]
    sections = [("Validation accuracy", md_table(rows) + f"\n![loss]({png.name})\n"),
                ("Task", f"`{cfg.task}`, {n_train} train / {n_val} validation examples"
                         + (f", labels {labels}" if labels else "") + f"; loss L2 + {cfg.lm_coef} x L1\n")]
    return write_markdown(cfg.run_dir / "report.md", f"Fine-tuning `{cfg.name}` (GPT-1 task head)", sections)
