"""Stage: pretraining a base model on a weighted text mixture (next-token prediction).

    gptrecipe pretrain --config tiny train.max_steps=2000
    from gptrecipe.pretrain import PretrainConfig, pretrain; pretrain(PretrainConfig())
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, RunConfig, apply_overrides, find_preset, from_dict, load_toml, to_dict
from .data import BatchLoader, DataConfig, PreparedData, corpora_from_paths, prepare_data, read_documents
from .model import GPT, GPTConfig
from .report import md_table, plot_losses, write_markdown
from .runtime import rank_zero_first
from .sample import SamplingConfig, generate
from .stage import StageRun
from .tokenizer import Tokenizer, compression_stats
from .train import Batch, TrainConfig, TrainResult, TrainTask


@dataclass
class TokenizerSettings:
    path: str = "runs/tokenizer/tokenizer.json"
    vocab_size: int = 4096
    train_if_missing: bool = True  # train on the mixture's corpora when `path` does not exist yet
    max_chars: int = 20_000_000  # cap on training text (spread over the corpora)


@dataclass
class PretrainConfig(RunConfig):
    name: str = "pretrain"
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=80, seed=0, num_samples=2))
    sample_prompts: list[str] = field(default_factory=lambda: ["\n"])
    report: bool = True  # report.md and loss.png at the end (the scaling sweep's small runs skip them)


PRESET_DIRS = {"model": "models", "data": "data"}


def resolve_presets(raw: dict[str, Any]) -> dict[str, Any]:
    """Expand `preset = "NAME"` inside a table (model, data) into that preset file's contents."""
    raw = dict(raw)
    for key, kind in PRESET_DIRS.items():
        table = raw.get(key)
        if isinstance(table, str):
            table = {"preset": table}
        if isinstance(table, dict) and "preset" in table:
            base = load_toml(find_preset(kind, table["preset"]))
            raw[key] = {**base, **{k: v for k, v in table.items() if k != "preset"}}
    return raw


def load_pretrain_config(preset: str | None = None, overrides: list[str] = (), *,
                         model: str | None = None, data_paths: list[str] | None = None) -> PretrainConfig:
    """Dataclass defaults <- preset file (configs/pretrain/NAME.toml or a path) <- overrides."""
    raw = load_toml(find_preset("pretrain", preset)) if preset else {}
    if model:
        raw["model"] = {"preset": model}
    cfg = from_dict(PretrainConfig, resolve_presets(raw))
    if data_paths:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpora=corpora_from_paths(data_paths)))
    return apply_overrides(cfg, list(overrides))


def get_tokenizer(settings: TokenizerSettings, data: DataConfig, *, log=print) -> Tokenizer:
    """Load the tokenizer, or train it on the mixture's corpora (by weight) if it does not exist."""
    path = Path(settings.path)
    if path.exists():
        return Tokenizer.from_file(path)
    if not settings.train_if_missing:
        raise ConfigError(f"tokenizer.path: {path} does not exist (run `gptrecipe tokenizer train` first)")
    total_w = sum(c.weight for c in data.corpora)
    texts: list[str] = []
    for c in data.corpora:
        budget = int(settings.max_chars * c.weight / total_w)
        for doc in read_documents(c.source, text_field=c.text_field):
            texts.append(doc[:budget])
            budget -= len(texts[-1])
            if budget <= 0:
                break
    log(f"training a {settings.vocab_size}-token BPE tokenizer on {sum(map(len, texts)):,} chars -> {path}")
    tok = Tokenizer.train(texts, settings.vocab_size)
    tok.save(path)
    return tok


class NextTokenTask(TrainTask):
    """Pretraining as a TrainTask: B x T windows from the mixture, loss = mean next-token CE."""

    def __init__(self, loader: BatchLoader, data: PreparedData, tokenizer: Tokenizer, cfg: PretrainConfig):
        self.loader, self.data, self.tokenizer, self.cfg = loader, data, tokenizer, cfg
        self.tokens_per_row = cfg.model.block_size

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size) -> Batch:
        x, y = self.loader.get_batch(step, micro_step, micro_batch_size, grad_accum, rank, world_size)
        return Batch((x, y), {"lm": y.numel()}, x.numel(), x.size(1))

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"lm": model(x, y)[1] * y.numel()}  # every window position is a target: mean x count = sum

    def evaluate(self, model, max_batches: int) -> dict[str, float]:
        """Validation loss per corpus on its held-out split, and their weighted mean (weights normalised)."""
        device = next(model.parameters()).device
        out: dict[str, float] = {}
        total_w = sum(c.weight for c in self.data.corpora)
        weighted = 0.0
        for corpus in self.data.corpora:
            losses = [model(x.to(device), y.to(device))[1].item() for x, y in
                      self.loader.val_batches(corpus.name, self.cfg.train.micro_batch_size, max_batches)]
            out[f"val/{corpus.name}"] = sum(losses) / len(losses)
            weighted += corpus.weight / total_w * out[f"val/{corpus.name}"]
        return {"val_loss": weighted, **out}

    def samples(self, model) -> list[str]:
        cfg = self.cfg.sample
        prompts = [p for p in self.cfg.sample_prompts for _ in range(cfg.num_samples)]
        done = generate(model, self.tokenizer, prompts, dataclasses.replace(cfg, num_samples=1))
        return [p + c.text for p, c in zip(prompts, done, strict=True)]


def pretrain(cfg: PretrainConfig, *, resume: bool = False, log=print) -> TrainResult:
    """Train (or resume) a base model; writes checkpoints, metrics, loss.png and report.md in run_dir."""
    run = StageRun(cfg, "pretrain", log)
    with rank_zero_first(run.info):  # rank 0 trains the tokenizer and fills the token cache; the others reuse it
        tokenizer = get_tokenizer(cfg.tokenizer, cfg.data, log=run.log)
        data = prepare_data(cfg.data, tokenizer, block_size=cfg.model.block_size,
                            show_progress=cfg.train.progress and run.is_main)
    if cfg.model.vocab_size != tokenizer.vocab_size:
        run.log(f"model.vocab_size {cfg.model.vocab_size} -> {tokenizer.vocab_size} (the tokenizer's)")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
        run.cfg = cfg
    loader = BatchLoader(data, block_size=cfg.model.block_size, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)
    run.log(f"model: {model.num_params() / 1e6:.2f}M parameters, {cfg.model.n_layer} layers, d={cfg.model.n_embd}, "
            f"T={cfg.model.block_size}; run dir {cfg.run_dir}")
    task = NextTokenTask(loader, data, tokenizer, cfg)
    result = run.train(model, task, (tokenizer, Path(cfg.tokenizer.path)), resume)
    if result.checkpoint is not None and cfg.report:
        run.report(write_pretrain_report, cfg, result, data, tokenizer)
    return result


def _samples_md(samples: list[dict[str, Any]]) -> str:
    """Final samples in full, and how the first prompt's sample changed over training."""
    if not samples:
        return "(none)\n"
    last = samples[-1]["step"]
    steps = sorted({s["step"] for s in samples})
    first_per_step = [next(s for s in samples if s["step"] == st) for st in steps]
    out = "".join(f"```\n{s['sample']}\n```\n\n" for s in samples if s["step"] == last)
    if len(steps) > 1:
        out += "During training (first prompt):\n\n" + md_table(
            [{"step": s["step"], "sample": s["sample"][:160]} for s in first_per_step])
    return out


def corpus_compression(tok: Tokenizer, data: DataConfig, chars: int = 200_000) -> list[dict[str, Any]]:
    """Bytes per token of the tokenizer on (the first `chars` of) each corpus."""
    stats = []
    for c in data.corpora:
        docs: list[str] = []
        for doc in read_documents(c.source, text_field=c.text_field):
            docs.append(doc[: chars - sum(map(len, docs))])
            if sum(map(len, docs)) >= chars:
                break
        stats.append({"corpus": c.name, **compression_stats(tok, docs)})
    return stats


def write_pretrain_report(cfg: PretrainConfig, result: TrainResult, data: PreparedData, tok: Tokenizer) -> Path:
    run_dir = cfg.run_dir
    png = plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{cfg.name}: loss")
    first, last = result.evals[0], result.evals[-1]
    corpora = data.summary()
    stats = corpus_compression(tok, cfg.data)
    losses = sorted(result.losses.items())
    sections = [
        ("Result", md_table([
            {"metric": "final val loss (mixture)", "value": last["val_loss"]},
            {"metric": "first eval val loss", "value": first["val_loss"]},
            {"metric": "final train loss", "value": losses[-1][1] if losses else float("nan")},
            {"metric": "steps", "value": result.final_step},
            {"metric": "tokens/s (median)", "value": round(result.tokens_per_s)},
            {"metric": "MFU", "value": f"{100 * result.mfu:.1f}%"},
            {"metric": "grad accumulation", "value": result.grad_accum},
        ]) + f"\n![loss]({png.name})\n"),
        ("Validation loss per corpus", md_table([{"step": e["step"], **{k: v for k, v in e.items() if k != "step"}}
                                                 for e in result.evals])),
        ("Data mixture", md_table(corpora)),
        ("Tokenizer", f"{tok.vocab_size} tokens, `{cfg.tokenizer.path}`\n\n"
                      + md_table(stats, ["corpus", "bytes_per_token", "chars_per_token"])),
        ("Model", md_table([{"field": k, "value": v} for k, v in to_dict(cfg.model).items()])),
        ("Samples", _samples_md(result.samples)),
        ("Checkpoint", f"`{result.checkpoint}`\n"),
    ]
    return write_markdown(run_dir / "report.md", f"Pretraining run `{cfg.name}`", sections)
