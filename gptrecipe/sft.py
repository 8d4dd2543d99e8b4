"""Stage: supervised fine-tuning for chat (SFT): next-token loss on the assistant's tokens only.

    gptrecipe sft --init runs/speedrun/pretrain --data chats.jsonl train.max_steps=300

Data: JSONL of `{"messages": [{"role", "content"}, ...]}` (tool calls in the OpenAI shape too: assistant
`tool_calls`, `role: "tool"` messages) or `{"prompt", "response"}`, or `builtin:chatterbot` (the corpus' English
dialogues, alternating user / assistant). `tool_conversations=N` mixes N builtin tool-use conversations
(`gptrecipe.tool_use`) into the training data (never into the validation set, which stays the data's own).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .chat import ChatTemplate, Message, RenderedChat, read_conversations
from .config import RunConfig, load_config
from .data.corpora import chatterbot_conversations
from .data.loader import global_batch, pad_rows, rank_slice
from .data.readers import DataError
from .model import IGNORE_INDEX, PackedRows
from .report import md_table, plot_losses, write_markdown
from .sample import SamplingConfig, generate
from .stage import StageRun, n_val, seeded_split
from .tokenizer import Tokenizer
from .train import Batch, TrainConfig, TrainResult, TrainTask


@dataclass
class SFTConfig(RunConfig):
    name: str = "sft"
    init: str = ""  # the pretrained checkpoint (or run dir) to start from
    data: str = "builtin:chatterbot"  # JSONL path or builtin:chatterbot
    val_fraction: float = 0.1
    packing: bool = False  # several conversations per row, each computed as if alone (fewer pad tokens, faster)
    tool_conversations: int = 0  # builtin tool-use conversations (calculator, translator, retrieval) mixed in
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=300, micro_batch_size=16, lr=1e-3, warmup_steps=20, eval_every=100, checkpoint_every=100))
    sample: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=0.7,
                                                                           top_k=50, seed=0))
    sample_prompts: list[str] = field(default_factory=lambda: ["Hello", "What is AI?", "Tell me a joke."])


def load_sft_config(preset: str | None = None, overrides: list[str] = ()) -> SFTConfig:
    return load_config(SFTConfig, "sft", preset, overrides)


def load_chats(source: str) -> list[list[Message]]:
    if source == "builtin:chatterbot":
        return [[Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(conv)]
                for conv in chatterbot_conversations()]
    return read_conversations(source)


def render_all(template: ChatTemplate, convs: list[list[Message]], block_size: int) -> tuple[list[RenderedChat], int]:
    """Render and cut to the context; conversations left with no assistant token are dropped and counted."""
    out, dropped = [], 0
    for conv in convs:
        r = template.render(conv, max_len=block_size + 1)
        if r.n_trainable == 0:  # e.g. a long user turn filled the context: nothing to learn, never a NaN
            dropped += 1
            continue
        out.append(r)
    return out, dropped


def pack(examples: list[RenderedChat], row_len: int) -> list[RenderedChat]:
    """Greedily put whole conversations together into rows of at most row_len tokens, remembering where each
    begins (training computes each as if alone: `model.PackedRows`)."""
    rows: list[RenderedChat] = []
    ids: list[int] = []
    mask: list[bool] = []
    starts: list[int] = []
    for ex in examples:
        if ids and len(ids) + len(ex.ids) > row_len:
            rows.append(RenderedChat(ids, mask, starts=tuple(starts)))
            ids, mask, starts = [], [], []
        starts.append(len(ids))
        ids, mask = ids + ex.ids, mask + ex.mask
    if ids:
        rows.append(RenderedChat(ids, mask, starts=tuple(starts)))
    return rows


class MaskedLMTask(TrainTask):
    """A TrainTask for token sequences with a loss mask (SFT): the mean over the global batch's trainable tokens."""

    def __init__(self, rows: list[RenderedChat], val_rows: list[RenderedChat], pad_id: int, seed: int,
                 block_size: int, sample_fn=None, separate_packed: bool = True):
        if not rows:
            raise DataError("no training conversation has any assistant token inside the context")
        self.rows, self.val_rows, self.pad_id, self.seed = rows, val_rows, pad_id, seed
        self.tokens_per_row = block_size
        self.sample_fn = sample_fn
        self.separate_packed = separate_packed  # packed conversations computed as if alone (dense attention only)

    def _tensors(self, rows: list[RenderedChat]) -> tuple[torch.Tensor, ...]:
        ids = pad_rows([r.ids for r in rows], self.pad_id)
        tgt = pad_rows([[t if m else IGNORE_INDEX for t, m in zip(r.ids, r.mask, strict=True)] for r in rows],
                       IGNORE_INDEX)
        if not self.separate_packed or all(len(r.starts) == 1 for r in rows):
            return ids[:, :-1], tgt[:, 1:]
        starts = torch.zeros_like(ids, dtype=torch.bool)
        for i, r in enumerate(rows):
            starts[i, list(r.starts)] = True
        return ids[:, :-1], tgt[:, 1:], starts[:, :-1]  # packed: each conversation computed as if alone

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size) -> Batch:
        idx = global_batch(self.seed, step, len(self.rows), micro_batch_size * grad_accum * world_size)
        t = self._tensors([self.rows[i] for i in rank_slice(idx, micro_step, micro_batch_size, rank, world_size)])
        return Batch(t, {"lm": int((t[1] != IGNORE_INDEX).sum())}, t[0].numel(), t[0].size(1))

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        x, y, *starts = batch
        logits, _ = model(x, cache=PackedRows(starts[0]) if starts else None)
        return {"lm": F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                      ignore_index=IGNORE_INDEX, reduction="sum")}

    def evaluate(self, model, max_batches: int) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, min(len(self.val_rows), 16 * max_batches), 16):
            batch = tuple(t.to(device) for t in self._tensors(self.val_rows[i: i + 16]))
            total += self.loss(model, batch)["lm"].item()
            count += int((batch[1] != IGNORE_INDEX).sum())
        return {"val_loss": total / max(1, count)}

    def samples(self, model) -> list[str]:
        return self.sample_fn(model) if self.sample_fn else []


def chat_replies(model, tok: Tokenizer, prompts: list[str], cfg: SamplingConfig) -> list[str]:
    """One reply per user prompt, through the chat template (stops at <|end|>)."""
    template = ChatTemplate(tok)
    ids = [template.prompt_ids([Message("user", p)]) for p in prompts]
    return [c.text for c in generate(model, tok, ids, cfg, stop_ids=template.stop_ids)]


def sft(cfg: SFTConfig, *, resume: bool = False, log=print) -> TrainResult:
    run = StageRun(cfg, "sft", log)
    base = run.load_init(cfg.init, "init")
    model, tok = base.model, base.tokenizer
    template = ChatTemplate(tok)
    block = model.config.block_size
    convs = load_chats(cfg.data)
    train_convs, val_convs = seeded_split(convs, n_val(len(convs), cfg.val_fraction), cfg.train.seed)
    val, dropped_val = render_all(template, val_convs, block)
    rows, dropped = render_all(template, train_convs, block)
    truncated = sum(r.truncated for r in rows)
    run.log(f"sft: {len(rows)} train / {len(val)} val conversations; {truncated} truncated to the context, "
            f"{dropped + dropped_val} dropped (no assistant token left)")
    if cfg.tool_conversations:
        from .tool_use import tool_conversations

        tool_rows, _ = render_all(template, tool_conversations(cfg.tool_conversations, seed=cfg.train.seed), block)
        run.log(f"sft: {len(tool_rows)} tool-use conversations mixed into the training data")
        rows = rows + tool_rows
        random.Random(cfg.train.seed).shuffle(rows)  # packed rows mix both kinds
    dense = not any(b.attn.sparse for b in model.blocks)
    if cfg.packing:
        rows = pack(rows, block + 1)
        if not dense:
            run.log("sft: packed conversations see each other (sparse attention layers cannot keep them apart)")
    task = MaskedLMTask(rows, val, tok.id_of("<|pad|>"), cfg.train.seed, block, separate_packed=dense,
                        sample_fn=lambda m: [f"User: {p}\nAssistant: {r}" for p, r in
                                             zip(cfg.sample_prompts, chat_replies(m, tok, cfg.sample_prompts,
                                                                                  cfg.sample), strict=True)])
    result = run.train(model, task, base, resume, extras={"base_stage": base.meta.stage})
    run.report(write_sft_report, cfg, result, {"train conversations": len(rows) if not cfg.packing else "packed",
                                               "tool-use conversations": cfg.tool_conversations,
                                               "packed rows": len(rows) if cfg.packing else "-",
                                               "val conversations": len(val), "truncated": truncated,
                                               "dropped": dropped + dropped_val})
    return result


def write_sft_report(cfg: SFTConfig, result: TrainResult, data_stats: dict[str, Any]) -> Path:
    png = plot_losses(cfg.run_dir / "metrics.jsonl", cfg.run_dir / "loss.png", title=f"{cfg.name}: SFT loss")
    first, last = result.evals[0], result.evals[-1]
    final = [s["sample"] for s in result.samples if s["step"] == result.final_step]
    sections = [
        ("Result", md_table([{"metric": "val loss (assistant tokens)", "first eval": first["val_loss"],
                              "final": last["val_loss"]}]) + f"\n![loss]({png.name})\n"),
        ("Data", md_table([{"field": k, "value": v} for k, v in data_stats.items()])),
        ("Chat samples", "".join(f"```\n{s}\n```\n\n" for s in final)),
    ]
    return write_markdown(cfg.run_dir / "report.md", f"SFT run `{cfg.name}`", sections)
