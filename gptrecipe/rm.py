"""Stage: reward model on ranked comparisons (InstructGPT section 3.5).

The SFT transformer with a scalar head. The reward of (prompt, response) is read from the final hidden
state of a <|reward|> token appended after the response's <|end|>. For a prompt with K responses ranked
best to worst, all K go through the model in the same batch element and the loss averages
-log sigmoid(r_better - r_worse) over all C(K,2) pairs (`--loss listwise`: Plackett-Luce over the
ranking). After training, the head's bias is shifted so the SFT responses' mean reward is 0.

    gptrecipe rm --init runs/speedrun/sft --data runs/speedrun/rankings.jsonl
    gptrecipe rm score runs/speedrun/rm --data pairs.jsonl      # {"prompt", "response"} per line
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .chat import ChatTemplate, Message, read_jsonl
from .checkpoint import (
    CheckpointError,
    load_model,
    load_weights,
    read_config,
    resolve_checkpoint,
)
from .config import ConfigError, RunConfig, dump_toml, load_config, to_dict
from .data.loader import global_batch, rank_slice
from .data.readers import DataError
from .model import GPT, GPTConfig, optimizer_groups
from .report import md_table, plot_losses, write_markdown
from .runtime import init_distributed
from .tokenizer import Tokenizer
from .train import TrainConfig, TrainResult, train


@dataclass
class Ranking:
    prompt: str
    responses: list[str]  # best first


def read_rankings(path: str | Path) -> list[Ranking]:
    """`{"prompt", "responses": [best, ..., worst]}` or TRL's `{"prompt", "chosen", "rejected"}` per line."""
    out = []
    for n, obj in read_jsonl(path):
        where = f"{path}: line {n}"
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise DataError(f"{where}: expected an object with a string 'prompt'")
        if "responses" in obj:
            rs = obj["responses"]
            if not isinstance(rs, list) or len(rs) < 2 or not all(isinstance(r, str) for r in rs):
                raise DataError(f"{where}: 'responses' must be a list of at least 2 strings, best first")
        elif isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
            rs = [obj["chosen"], obj["rejected"]]
        else:
            raise DataError(f"{where}: expected 'responses' (ranked best first) or 'chosen' and 'rejected'")
        out.append(Ranking(obj["prompt"], rs))
    if not out:
        raise DataError(f"{path}: no rankings")
    return out


class RewardModel(nn.Module):
    """A GPT body and a scalar head on the hidden state of the reward readout token."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gpt = GPT(config)
        self.config = config
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (config.n_embd + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of right-padded rows; each is read at its last real token (the readout token)."""
        h = self.gpt.hidden_states(ids)
        last = h[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return self.head(last.float()).squeeze(-1)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        return optimizer_groups(self, weight_decay)


class RewardEncoder:
    """The one way (prompt, response) becomes reward-model input: train, eval, PPO and chat all use it."""

    def __init__(self, tok: Tokenizer, block_size: int):
        self.tok, self.template, self.block = tok, ChatTemplate(tok), block_size
        self.readout = tok.id_of("<|reward|>")
        self.pad = tok.id_of("<|pad|>")

    def ids(self, prompt: str | list[int], response: str | list[int]) -> list[int]:
        p = self.template.prompt_ids([Message("user", prompt)]) if isinstance(prompt, str) else list(prompt)
        r = self.tok.encode(response) if isinstance(response, str) else list(response)
        tail = [self.template.end, self.readout]
        room = self.block - len(tail)
        return (p + r)[:room] + tail  # an over-long pair keeps its start; the readout token always ends it

    def batch(self, rows: list[list[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        lengths = torch.tensor([len(r) for r in rows])
        return ids.to(device), lengths.to(device)


def pairwise_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Mean over all C(K,2) pairs (i better than j for i < j) of -log sigmoid(r_i - r_j)."""
    i, j = torch.triu_indices(len(rewards), len(rewards), offset=1)
    return -F.logsigmoid(rewards[i] - rewards[j]).mean()


def listwise_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the ranking (best first)."""
    rev_lse = torch.logcumsumexp(rewards.flip(0), 0).flip(0)  # logsumexp of r_i..r_K
    return -(rewards - rev_lse)[:-1].sum()


def pairwise_accuracy(rewards: torch.Tensor) -> tuple[int, int]:
    i, j = torch.triu_indices(len(rewards), len(rewards), offset=1)
    return int((rewards[i] > rewards[j]).sum()), len(i)


class RankingTask:
    """A TrainTask whose rows are prompts: all K responses of a prompt are scored in one batch element."""

    def __init__(self, train_set: list[Ranking], val_set: list[Ranking], enc: RewardEncoder, loss: str, seed: int):
        if loss not in ("pairwise", "listwise"):
            raise ConfigError(f"loss must be pairwise or listwise, got {loss!r}")
        self.train_set, self.val_set, self.enc, self.loss_name, self.seed = train_set, val_set, enc, loss, seed
        self.tokens_per_row = enc.block
        self.loss_fn = pairwise_loss if loss == "pairwise" else listwise_loss

    def _encode(self, group: list[Ranking]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, sizes = [], []
        for r in group:
            rows += [self.enc.ids(r.prompt, resp) for resp in r.responses]
            sizes.append(len(r.responses))
        ids, lengths = self.enc.batch(rows)
        return ids, lengths, torch.tensor(sizes)

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size):
        idx = global_batch(self.seed, step, len(self.train_set), micro_batch_size * grad_accum * world_size)
        mine = rank_slice(idx, micro_step, micro_batch_size, rank, world_size)
        return self._encode([self.train_set[i] for i in mine])

    def loss(self, model, batch) -> torch.Tensor:
        ids, lengths, sizes = batch
        rewards = model(ids, lengths)
        return torch.stack([self.loss_fn(r) for r in rewards.split(sizes.tolist())]).mean()

    @torch.no_grad()
    def evaluate(self, model, max_batches: int) -> dict[str, float]:
        device = next(model.parameters()).device
        correct = total = 0
        losses = []
        for i in range(0, min(len(self.val_set), 16 * max_batches), 16):
            ids, lengths, sizes = self._encode(self.val_set[i: i + 16])
            rewards = model(ids.to(device), lengths.to(device)).float()
            for r in rewards.split(sizes.tolist()):
                c, t = pairwise_accuracy(r)
                correct, total = correct + c, total + t
                losses.append(self.loss_fn(r).item())
        return {"val_loss": float(np.mean(losses)), "val_accuracy": correct / max(1, total)}

    def samples(self, model) -> list[str]:
        return []


@torch.no_grad()
def score(model: RewardModel, enc: RewardEncoder, prompts: list, responses: list, batch_size: int = 32) -> list[float]:
    """Rewards of (prompt, response) pairs (strings or token ids), batched."""
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        rows = [enc.ids(p, r) for p, r in zip(prompts[i: i + batch_size], responses[i: i + batch_size], strict=True)]
        out += model(*enc.batch(rows, device)).float().tolist()
    return out


@dataclass
class RMConfig(RunConfig):
    name: str = "rm"
    out_dir: str = "runs"
    init: str = ""  # SFT checkpoint the reward model starts from
    data: str = ""  # rankings JSONL
    loss: str = "pairwise"  # pairwise | listwise
    val_fraction: float = 0.1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, micro_batch_size=8, lr=3e-4, warmup_steps=20, eval_every=50, checkpoint_every=100))


def load_rm_config(preset: str | None = None, overrides: list[str] = ()) -> RMConfig:
    return load_config(RMConfig, "rm", preset, overrides)


def load_reward_model(path: str | Path, device="cpu") -> tuple[RewardModel, Tokenizer, RewardEncoder]:
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    if cfg.get("stage") != "rm":
        raise CheckpointError(f"{ckpt} is a {cfg.get('stage')!r} checkpoint, not a reward model")
    model = RewardModel(GPTConfig(**cfg["model"]))
    load_weights(model, ckpt)
    with torch.no_grad():
        model.head.bias -= float(cfg.get("reward_shift", 0.0))
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    return model.to(device).eval(), tok, RewardEncoder(tok, model.config.block_size)


def train_reward_model(cfg: RMConfig, *, resume: bool = False, log=print) -> TrainResult:
    if not cfg.init or not cfg.data:
        raise ConfigError("rm: set init=<SFT checkpoint> and data=<rankings.jsonl>")
    init_distributed(cfg.train.device)
    ckpt = resolve_checkpoint(cfg.init)
    sft_model, _ = load_model(ckpt)
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    config = dataclasses.replace(sft_model.config, dropout=0.0)
    torch.manual_seed(cfg.train.seed)  # the new head's init is part of the run: same seed, same reward model
    model = RewardModel(config)
    model.gpt.load_state_dict(sft_model.state_dict())
    enc = RewardEncoder(tok, config.block_size)
    rankings = read_rankings(cfg.data)
    order = np.random.default_rng(cfg.train.seed).permutation(len(rankings))
    n_val = max(1, int(len(rankings) * cfg.val_fraction))
    val = [rankings[i] for i in order[:n_val]]
    train_set = [rankings[i] for i in order[n_val:]] or val
    log(f"rm: {len(train_set)} train / {len(val)} val prompts, "
        f"{sum(len(r.responses) * (len(r.responses) - 1) // 2 for r in train_set)} train pairs")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.toml").write_text(dump_toml(cfg))
    task = RankingTask(train_set, val, enc, cfg.loss, cfg.train.seed)
    run_config = {"stage": "rm", "model": dataclasses.asdict(config), "run": to_dict(cfg), "init": str(ckpt),
                  "tokenizer_fingerprint": tok.fingerprint}
    result = train(model, task, cfg.train, cfg.run_dir, run_config, tokenizer_path=ckpt / "tokenizer.json",
                   resume=resume)
    # InstructGPT: shift the reward so the SFT model's responses (the ranked samples) average 0. The shift is
    # recorded in the checkpoint's config and applied on load, so the trained weights stay resumable as saved.
    model.eval()
    rewards = score(model, enc, [r.prompt for r in train_set for _ in r.responses],
                    [x for r in train_set for x in r.responses])
    shift = float(np.mean(rewards))
    if result.checkpoint is not None:
        saved = read_config(result.checkpoint)
        tmp = result.checkpoint / f".config.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps({**saved, "reward_shift": shift}, indent=2))
        os.replace(tmp, result.checkpoint / "config.json")
    if result.evals:
        write_rm_report(cfg, result, shift, len(train_set), len(val))
    return result


def write_rm_report(cfg: RMConfig, result: TrainResult, shift: float, n_train: int, n_val: int) -> Path:
    png = plot_losses(cfg.run_dir / "metrics.jsonl", cfg.run_dir / "loss.png", title=f"{cfg.name}: RM loss")
    rows = [{"step": e["step"], "val loss": e["val_loss"], "val pairwise accuracy": e["val_accuracy"]}
            for e in result.evals]
    sections = [("Held-out pairwise accuracy", md_table(rows) + f"\n![loss]({png.name})\n"),
                ("Data", f"{n_train} train prompts, {n_val} held-out prompts, loss `{cfg.loss}`\n"),
                ("Normalisation", f"bias shifted by {-shift:+.4f} so the SFT responses' mean reward is 0\n")]
    return write_markdown(cfg.run_dir / "report.md", f"Reward model `{cfg.name}`", sections)


def score_file(checkpoint: str, data: str, out=None) -> list[float]:
    """`gptrecipe rm score`: reward of each {"prompt", "response"} line, printed as JSONL."""
    model, tok, enc = load_reward_model(checkpoint)
    pairs = []
    for n, obj in read_jsonl(data):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not isinstance(
                obj.get("response"), str):
            raise DataError(f"{data}: line {n}: expected {{'prompt': string, 'response': string}}")
        pairs.append((obj["prompt"], obj["response"]))
    rewards = score(model, enc, [p for p, _ in pairs], [r for _, r in pairs])
    if out is not None:
        for (p, r), s in zip(pairs, rewards, strict=True):
            out.write(json.dumps({"prompt": p, "response": r, "reward": round(s, 6)}) + "\n")
    return rewards

