"""Stage: supervised fine-tuning for chat (SFT): next-token loss on the assistant's tokens only.

    gptrecipe sft --init runs/speedrun/pretrain --data chats.jsonl train.max_steps=300

Data: JSONL of `{"messages": [{"role", "content"}, ...]}` or `{"prompt", "response"}`, or
`builtin:chatterbot` (the corpus' English dialogues, alternating user / assistant).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .chat import ChatTemplate, Message, RenderedChat, read_conversations
from .checkpoint import load_model, resolve_checkpoint
from .config import ConfigError, RunConfig, dump_toml, load_config, to_dict
from .data.loader import global_batch, rank_slice
from .data.readers import DataError
from .model import IGNORE_INDEX
from .report import md_table, plot_losses, write_markdown
from .runtime import init_distributed
from .sample import SamplingConfig, generate
from .tokenizer import Tokenizer
from .train import TrainConfig, TrainResult, train


@dataclass
class SFTConfig(RunConfig):
    name: str = "sft"
    out_dir: str = "runs"
    init: str = ""  # the pretrained checkpoint (or run dir) to start from
    data: str = "builtin:chatterbot"  # JSONL path or builtin:chatterbot
    val_fraction: float = 0.1
    packing: bool = False  # several conversations per row (fewer pad tokens, faster)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=300, micro_batch_size=16, lr=1e-3, warmup_steps=20, eval_every=100, checkpoint_every=100))
    sample: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=0.7,
                                                                           top_k=50, seed=0))
    sample_prompts: list[str] = field(default_factory=lambda: ["Hello", "What is AI?", "Tell me a joke."])


def load_sft_config(preset: str | None = None, overrides: list[str] = ()) -> SFTConfig:
    return load_config(SFTConfig, "sft", preset, overrides)


def load_chats(source: str) -> list[list[Message]]:
    if source == "builtin:chatterbot":
        from .data.corpora import chatterbot_conversations

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
    """Greedily put whole conversations together into rows of at most row_len tokens."""
    rows: list[RenderedChat] = []
    cur = RenderedChat([], [])
    for ex in examples:
        if cur.ids and len(cur.ids) + len(ex.ids) > row_len:
            rows.append(cur)
            cur = RenderedChat([], [])
        cur = RenderedChat(cur.ids + ex.ids, cur.mask + ex.mask)
    if cur.ids:
        rows.append(cur)
    return rows


class MaskedLMTask:
    """A TrainTask for token sequences with a loss mask (SFT), token-level mean over the global batch."""

    def __init__(self, rows: list[RenderedChat], val_rows: list[RenderedChat], pad_id: int, seed: int,
                 block_size: int, sample_fn=None):
        if not rows:
            raise DataError("no training conversation has any assistant token inside the context")
        self.rows, self.val_rows, self.pad_id, self.seed = rows, val_rows, pad_id, seed
        self.tokens_per_row = block_size
        self.counts = np.array([max(0, sum(r.mask[1:])) for r in rows])
        self.sample_fn = sample_fn

    def _tensors(self, rows: list[RenderedChat]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        tgt = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            t = torch.tensor(r.ids)
            ids[i, : len(r.ids)] = t
            tgt[i, : len(r.ids)] = torch.where(torch.tensor(r.mask), t, IGNORE_INDEX)
        return ids[:, :-1], tgt[:, 1:]

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size):
        idx = global_batch(self.seed, step, len(self.rows), micro_batch_size * grad_accum * world_size)
        x, y = self._tensors([self.rows[i] for i in rank_slice(idx, micro_step, micro_batch_size, rank, world_size)])
        # normaliser: trainable tokens of the whole global batch, so the gradient is their token mean
        norm = torch.tensor(max(1, int(self.counts[idx].sum())) / (grad_accum * world_size), dtype=torch.float32)
        return x, y, norm

    def loss(self, model, batch) -> torch.Tensor:
        x, y, norm = batch
        logits, _ = model(x)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="sum")
        return ce / norm

    def evaluate(self, model, max_batches: int) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, min(len(self.val_rows), 16 * max_batches), 16):
            x, y = self._tensors(self.val_rows[i: i + 16])
            logits, _ = model(x.to(device))
            y = y.to(device)
            total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((y != IGNORE_INDEX).sum())
        return {"val_loss": total / max(1, count)}

    def samples(self, model) -> list[str]:
        return self.sample_fn(model) if self.sample_fn else []


def chat_replies(model, tok: Tokenizer, prompts: list[str], cfg: SamplingConfig) -> list[str]:
    """One reply per user prompt, through the chat template (stops at <|end|>)."""
    template = ChatTemplate(tok)
    ids = [template.prompt_ids([Message("user", p)]) for p in prompts]
    return [c.text for c in generate(model, tok, ids, cfg, stop_ids=template.stop_ids)]


def sft(cfg: SFTConfig, *, resume: bool = False, log=print) -> TrainResult:
    if not cfg.init:
        raise ConfigError("sft: set init=<pretrained checkpoint or run dir> (e.g. init=runs/speedrun/pretrain)")
    info, _ = init_distributed(cfg.train.device)
    ckpt = resolve_checkpoint(cfg.init)
    model, base_config = load_model(ckpt)
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    template = ChatTemplate(tok)
    block = model.config.block_size
    convs = load_chats(cfg.data)
    rng = np.random.default_rng(cfg.train.seed)
    order = rng.permutation(len(convs))
    n_val = max(1, int(len(convs) * cfg.val_fraction))
    val, dropped_val = render_all(template, [convs[i] for i in order[:n_val]], block)
    rows, dropped = render_all(template, [convs[i] for i in order[n_val:]], block)
    truncated = sum(r.truncated for r in rows)
    log(f"sft: {len(rows)} train / {len(val)} val conversations; {truncated} truncated to the context, "
        f"{dropped + dropped_val} dropped (no assistant token left)")
    if cfg.packing:
        rows = pack(rows, block + 1)
    if info.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "config.toml").write_text(dump_toml(cfg))
    task = MaskedLMTask(rows, val, tok.id_of("<|pad|>"), cfg.train.seed, block,
                        sample_fn=lambda m: [f"User: {p}\nAssistant: {r}" for p, r in
                                             zip(cfg.sample_prompts, chat_replies(m, tok, cfg.sample_prompts,
                                                                                  cfg.sample), strict=True)])
    run_config = {"stage": "sft", "model": dataclasses.asdict(model.config), "run": to_dict(cfg),
                  "init": str(ckpt), "tokenizer_fingerprint": tok.fingerprint,
                  "base": base_config.get("stage")}
    result = train(model, task, cfg.train, cfg.run_dir, run_config, tokenizer_path=ckpt / "tokenizer.json",
                   resume=resume)
    if info.is_main and result.evals:
        write_sft_report(cfg, result, {"train conversations": len(rows) if not cfg.packing else "packed",
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
