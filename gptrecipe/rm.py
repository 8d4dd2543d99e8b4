"""Stage: reward model on ranked comparisons (InstructGPT section 3.5).

The SFT transformer with a scalar head. The reward of (prompt, response) is read from the final hidden
state of a <|reward|> token appended after the response's <|end|>. For a prompt with K responses ranked
best to worst, all K go through the model in the same batch element and the loss averages
-log sigmoid(r_better - r_worse) over all C(K,2) pairs (`--loss listwise`: Plackett-Luce over the
ranking). After training, the reward is shifted so the SFT responses' mean reward is 0.

    gptrecipe rm --init runs/speedrun/sft --data runs/speedrun/rankings.jsonl
    gptrecipe rm score runs/speedrun/rm --data pairs.jsonl      # {"prompt", "response"} per line
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .chat import ChatTemplate, Message, read_jsonl
from .checkpoint import load_checkpoint, unwrap
from .config import ConfigError, RunConfig, load_config
from .data.loader import global_batch, pad_rows, rank_slice
from .data.readers import DataError
from .heads import RewardModel
from .report import md_table, plot_losses, write_markdown
from .stage import StageRun, n_val, seeded_split
from .tokenizer import Tokenizer
from .train import Batch, TrainConfig, TrainResult, TrainTask


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
        return pad_rows(rows, self.pad).to(device), torch.tensor([len(r) for r in rows], device=device)


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


class RankingTask(TrainTask):
    """A TrainTask whose rows are prompts: all K responses of a prompt are scored in one batch element; the loss is
    the mean over prompts of each prompt's ranking loss."""

    def __init__(self, train_set: list[Ranking], val_set: list[Ranking], enc: RewardEncoder, loss: str, seed: int):
        if loss not in ("pairwise", "listwise"):
            raise ConfigError(f"loss must be pairwise or listwise, got {loss!r}")
        self.train_set, self.val_set, self.enc, self.loss_name, self.seed = train_set, val_set, enc, loss, seed
        self.tokens_per_row = enc.block
        self.loss_fn = pairwise_loss if loss == "pairwise" else listwise_loss

    def _encode(self, group: list[Ranking]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [self.enc.ids(r.prompt, resp) for r in group for resp in r.responses]
        return *self.enc.batch(rows), torch.tensor([len(r.responses) for r in group])

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size) -> Batch:
        idx = global_batch(self.seed, step, len(self.train_set), micro_batch_size * grad_accum * world_size)
        mine = rank_slice(idx, micro_step, micro_batch_size, rank, world_size)
        ids, lengths, sizes = self._encode([self.train_set[i] for i in mine])
        return Batch((ids, lengths, sizes), {"ranking": len(sizes)}, ids.numel(), ids.size(1))

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        ids, lengths, sizes = batch
        rewards = model(ids, lengths)
        return {"ranking": torch.stack([self.loss_fn(r) for r in rewards.split(sizes.tolist())]).sum()}

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

    @torch.no_grad()
    def finish(self, model) -> None:
        """InstructGPT: shift the reward so the SFT model's responses (the ranked samples) average 0."""
        rm = unwrap(model)
        rm.shift.zero_()
        was_training = rm.training
        rm.eval()
        rewards = score(rm, self.enc, [r.prompt for r in self.train_set for _ in r.responses],
                        [x for r in self.train_set for x in r.responses])
        rm.shift.fill_(float(np.mean(rewards)))
        rm.train(was_training)


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
    init: str = ""  # SFT checkpoint the reward model starts from
    data: str = ""  # rankings JSONL
    loss: str = "pairwise"  # pairwise | listwise
    val_fraction: float = 0.1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, micro_batch_size=8, lr=3e-4, warmup_steps=20, eval_every=50, checkpoint_every=100))


def load_rm_config(preset: str | None = None, overrides: list[str] = ()) -> RMConfig:
    return load_config(RMConfig, "rm", preset, overrides)


def train_reward_model(cfg: RMConfig, *, resume: bool = False, log=print) -> TrainResult:
    run = StageRun(cfg, "rm", log)
    if not cfg.init or not cfg.data:
        raise ConfigError("rm: set init=<SFT checkpoint> and data=<rankings.jsonl>")
    base = run.load_init(cfg.init, "init")
    config = dataclasses.replace(base.model.config, dropout=0.0)
    torch.manual_seed(cfg.train.seed)  # the new head's init is part of the run: same seed, same reward model
    model = RewardModel(config)
    model.gpt.load_state_dict(base.model.state_dict())
    enc = RewardEncoder(base.tokenizer, config.block_size)
    rankings = read_rankings(cfg.data)
    train_set, val = seeded_split(rankings, n_val(len(rankings), cfg.val_fraction), cfg.train.seed)
    run.log(f"rm: {len(train_set)} train / {len(val)} val prompts, "
            f"{sum(len(r.responses) * (len(r.responses) - 1) // 2 for r in train_set)} train pairs")
    result = run.train(model, RankingTask(train_set, val, enc, cfg.loss, cfg.train.seed), base, resume)
    run.report(write_rm_report, cfg, result, float(model.shift), len(train_set), len(val))
    return result


def write_rm_report(cfg: RMConfig, result: TrainResult, shift: float, n_train: int, n_val: int) -> Path:
    png = plot_losses(cfg.run_dir / "metrics.jsonl", cfg.run_dir / "loss.png", title=f"{cfg.name}: RM loss")
    rows = [{"step": e["step"], "val loss": e["val_loss"], "val pairwise accuracy": e["val_accuracy"]}
            for e in result.evals]
    sections = [("Held-out pairwise accuracy", md_table(rows) + f"\n![loss]({png.name})\n"),
                ("Data", f"{n_train} train prompts, {n_val} held-out prompts, loss `{cfg.loss}`\n"),
                ("Normalisation", f"rewards shifted by {-shift:+.4f} so the SFT responses' mean reward is 0\n")]
    return write_markdown(cfg.run_dir / "report.md", f"Reward model `{cfg.name}`", sections)


def score_file(checkpoint: str, data: str, out=None) -> list[float]:
    """`gptrecipe rm score`: reward of each {"prompt", "response"} line, printed as JSONL."""
    rm = load_checkpoint(checkpoint, expect=RewardModel)
    model, enc = rm.model.eval(), RewardEncoder(rm.tokenizer, rm.model.config.block_size)
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

