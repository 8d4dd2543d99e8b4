"""Stage: RLHF with PPO-ptx (InstructGPT section 3.5), on the shared training loop.

Policy and reference start from the SFT model, the value model from the reward model; the reward model
and the reference stay frozen. One optimizer step of the shared loop is one PPO minibatch update; every
`ppo_epochs * minibatches` steps the task draws a new rollout batch with the KV-cache sampler:

    reward_t  = -beta * (log pi(y_t) - log pi_ref(y_t))   (+ RM score, + truncation penalty, at the last token)
    A_t       = GAE(discount, lambda) over the response tokens, whitened over the batch
    loss      = token-mean of max(-A r, -A clip(r, 1-eps, 1+eps))
              + vf_coef * 0.5 * max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2)   (the same token mean)
              + gamma_ptx * next-token loss on pretraining text (PPO-ptx; 0 = plain PPO; mean over its tokens)

A minibatch (rollout_batch / minibatches rows) is split over grad accumulation steps of at most
train.micro_batch_size rows per process; the loop takes each token mean over the whole minibatch. The
checkpoint holds the actor-critic; loading it (`sample`, `chat`, `serve`, `sft --init`) gives the policy.

    gptrecipe ppo --sft runs/speedrun/sft --rm runs/speedrun/rm train.max_steps=64
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .chat import ChatTemplate, Message
from .checkpoint import load_checkpoint
from .compare import load_prompts
from .config import ConfigError, RunConfig, load_config
from .data import BatchLoader, CorpusConfig, DataConfig, prepare_data
from .data.loader import pad_rows
from .heads import RewardModel
from .labelers import load_labeler
from .model import GPT
from .rm import RewardEncoder, score
from .runtime import rank_zero_first
from .sample import SamplingConfig, generate_rows
from .stage import StageRun, seeded_split
from .tokenizer import Tokenizer
from .train import Batch, TrainConfig, TrainResult, TrainTask


@dataclass
class PPOConfig(RunConfig):
    name: str = "ppo"
    sft: str = ""  # SFT checkpoint: the frozen KL reference (and the policy's init unless policy_init)
    policy_init: str = ""  # start the policy from another checkpoint (e.g. the previous RLHF round's policy)
    rm: str = ""  # reward model checkpoint: frozen scorer and value-model init
    prompts: str = "builtin:chatterbot"
    val_prompts: int = 32  # held out from `prompts` for evaluation
    rollout_batch: int = 32  # prompts per rollout
    minibatches: int = 4  # minibatches per PPO epoch
    ppo_epochs: int = 2
    max_new_tokens: int = 32
    temperature: float = 1.0  # the same temperature in rollout and rescoring; top-k/top-p off (no negative KL)
    beta: float = 0.05  # KL coefficient (initial, if adaptive)
    target_kl: float = 0.0  # > 0: adaptive KL controller towards this KL per sequence (nats)
    kl_horizon: int = 10_000
    discount: float = 1.0  # GAE's gamma (not gamma_ptx)
    lam: float = 0.95
    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    truncation_penalty: float = -1.0  # added to the score of a response that never emitted <|end|>
    gamma_ptx: float = 0.0  # PPO-ptx coefficient on the pretraining LM loss (per-token mean)
    ptx_source: str = "builtin:shakespeare"
    ptx_batch: int = 4
    gold_labeler: str = ""  # optional programmatic gold score to report beside the RM (e.g. builtin:positivity)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=64, micro_batch_size=8, lr=1e-5, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0,
        eval_every=16, checkpoint_every=16))

    @property
    def updates_per_rollout(self) -> int:
        return self.ppo_epochs * self.minibatches


def load_ppo_config(preset: str | None = None, overrides: list[str] = ()) -> PPOConfig:
    return load_config(PPOConfig, "ppo", preset, overrides)


# ---- the math, as small pure functions (tested against hand-computed examples) -----------------


def kl_rewards(logp: torch.Tensor, logp_ref: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
               beta: float) -> torch.Tensor:
    """Per-token reward -beta (log pi - log pi_ref), plus the sequence score on its last response token (the last
    column the mask marks: responses start after their prompt, so not at mask.sum() - 1)."""
    rewards = -beta * (logp - logp_ref) * mask
    last = mask.size(1) - 1 - mask.flip(1).argmax(1)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, discount: float, lam: float):
    """Generalised advantage estimation over right-padded rows; zero past each row's last token."""
    T = rewards.size(1)
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + discount * next_v - values[:, t]
        last = (delta + discount * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * mask


def policy_loss(logp, logp_old, adv, mask, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate summed over the response tokens (the loop takes the token mean); and how many of those
    tokens were clipped."""
    ratio = torch.exp(logp - logp_old)
    loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    clipped = ((ratio - 1).abs() > clip).float()
    return (loss * mask).sum(), (clipped * mask).sum()


def value_loss(v, v_old, returns, mask, clip: float) -> torch.Tensor:
    """Clipped value loss summed over the response tokens."""
    v_clipped = v_old + (v - v_old).clamp(-clip, clip)
    loss = 0.5 * torch.max((v - returns) ** 2, (v_clipped - returns) ** 2)
    return (loss * mask).sum()


class AdaptiveKL:
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            err = max(-0.2, min(0.2, kl / self.target - 1))
            self.beta *= 1 + err * n / self.horizon


# ---- models ----------------------------------------------------------------------------------


class ActorCritic(nn.Module):
    """The trainable pair: the policy (a GPT) and the value model (reward-model body, a value per token)."""

    def __init__(self, policy: GPT, value: RewardModel):
        super().__init__()
        self.policy, self.value = policy, value
        self.config = policy.config

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, temperature: float, ptx_x: torch.Tensor | None = None,
                ptx_y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probs of the response tokens, V(state before each token) and, for PPO-ptx, the LM loss summed over
        the pretraining tokens: everything a PPO update differentiates, in one call so DDP can wrap it."""
        logp, _ = token_logprobs(self.policy, ids, temperature, mask)
        ptx = self.policy(ptx_x, ptx_y)[1] * ptx_y.numel() if ptx_x is not None else None
        return logp, self.value.token_values(ids)[:, :-1], ptx


def token_logprobs(model: GPT, ids: torch.Tensor, temperature: float, mask: torch.Tensor | None = None,
                   entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(ids[:, t+1] | ids[:, :t+1]) at the sampling temperature, (B, T-1), and optionally the entropy.

    Given the response mask, the output layer (a vocab-sized matmul) runs only from the first column any row
    needs; earlier columns are returned as 0. The prompt's own predictions are never used in PPO.
    """
    start = int(mask.any(0).nonzero()[0]) if mask is not None and bool(mask.any()) else 0
    h = model.hidden_states(ids[:, :-1])[:, start:]
    logp_all = F.log_softmax(model.lm_head(h).float() / temperature, -1)
    logp = F.pad(logp_all.gather(-1, ids[:, start + 1:, None]).squeeze(-1), (start, 0))
    if not entropy:
        return logp, None
    return logp, F.pad(-(logp_all.exp() * logp_all).sum(-1), (start, 0))


# ---- the task --------------------------------------------------------------------------------


class PPOTask(TrainTask):
    """Rollouts and PPO minibatches as a TrainTask (one loop step = one minibatch update)."""

    def __init__(self, cfg: PPOConfig, ac: ActorCritic, ref: GPT, rm: RewardModel, tok: Tokenizer,
                 prompts: list[str], val_prompts: list[str], ptx_loader=None, gold=None):
        self.cfg, self.ac, self.ref, self.rm, self.tok = cfg, ac, ref, rm, tok
        self.template = ChatTemplate(tok)
        self.enc = RewardEncoder(tok, ac.config.block_size)
        self.prompts, self.val_prompts = prompts, val_prompts
        self.ptx_loader, self.gold = ptx_loader, gold
        self.kl_ctl = AdaptiveKL(cfg.beta, cfg.target_kl, cfg.kl_horizon)
        self.buffer: dict[str, torch.Tensor] | None = None
        self.buffer_step = -1
        self._metrics: dict[str, float] = {}
        self.last_rollout: dict[str, float] = {}
        self.pad = tok.id_of("<|pad|>")

    # rollouts -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_responses(self, model: GPT, prompts: list[str], seed: int, temperature: float | None = None):
        """Responses (token lists without the end token) and whether each ended with <|end|>."""
        ids = [self.template.prompt_ids([Message("user", p)]) for p in prompts]
        scfg = SamplingConfig(max_new_tokens=self.cfg.max_new_tokens, top_k=0, top_p=1.0, seed=seed,
                              temperature=self.cfg.temperature if temperature is None else temperature)
        rows = generate_rows(model, ids, scfg, stop_ids=self.template.stop_ids, pad_id=self.pad)
        return ids, [r.tokens for r in rows], [r.stop_token for r in rows]

    def sequences(self, prompt_ids: list[list[int]], responses: list[list[int]], ended: list[bool], device):
        """Right-padded prompt + response (+ <|end|> when produced) ids, no position shift, and the response mask.

        mask[:, t] = 1 where token t+1 is a response token: the positions whose log-probs, values and rewards count.
        """
        seqs = [p + r + ([self.template.end] if e else []) for p, r, e in zip(prompt_ids, responses, ended,
                                                                               strict=True)]
        ids = pad_rows(seqs, self.pad)
        mask = torch.zeros(len(seqs), ids.size(1) - 1)
        for i, (s, p) in enumerate(zip(seqs, prompt_ids, strict=True)):
            mask[i, len(p) - 1: len(s) - 1] = 1.0
        if bool((mask.sum(1) == 0).any()):  # a response that is only <|end|> still has one token; none can be empty
            raise RuntimeError("rollout produced a row without response tokens")
        return ids.to(device), mask.to(device)

    @torch.no_grad()
    def rollout(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        device = next(self.ac.parameters()).device
        rng = np.random.default_rng([cfg.train.seed, step])
        batch = [self.prompts[i] for i in rng.integers(0, len(self.prompts), cfg.rollout_batch)]
        self.ac.eval()
        prompt_ids, responses, ended = self.sample_responses(self.ac.policy, batch, seed=cfg.train.seed + step)
        ids, mask = self.sequences(prompt_ids, responses, ended, device)
        logp, entropy = token_logprobs(self.ac.policy, ids, cfg.temperature, mask, entropy=True)
        logp_ref, _ = token_logprobs(self.ref, ids, cfg.temperature, mask)
        values = self.ac.value.token_values(ids)[:, :-1]  # V(state before each token)
        scores = torch.tensor(score(self.rm, self.enc, prompt_ids, responses), device=device)
        penalty = torch.tensor([0.0 if e else cfg.truncation_penalty for e in ended], device=device)
        rewards = kl_rewards(logp, logp_ref, scores + penalty, mask, self.kl_ctl.beta)
        adv, returns = gae(rewards, values * mask, mask, cfg.discount, cfg.lam)
        adv = whiten(adv, mask)
        kl_seq = ((logp - logp_ref) * mask).sum(1)
        self.last_rollout = {
            "rm_score": scores.mean().item(), "kl": kl_seq.mean().item(), "beta": self.kl_ctl.beta,
            "entropy": ((entropy * mask).sum() / mask.sum()).item(),
            "response_len": mask.sum(1).mean().item(), "ended_frac": float(np.mean(ended)),
        }
        if self.gold is not None:
            self.last_rollout["gold_score"] = self.gold_mean(batch, responses)
        self.kl_ctl.update(kl_seq.mean().item(), len(batch))
        self.ac.train()
        return {"ids": ids, "mask": mask, "logp": logp, "values": values * mask, "adv": adv, "returns": returns}

    def gold_mean(self, prompts: list[str], responses: list[list[int]]) -> float:
        return float(np.mean([self.gold(p, [self.tok.decode(r)])[0] for p, r in zip(prompts, responses, strict=True)]))

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.kl_ctl.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_ctl.beta = float(state["beta"])

    # the TrainTask interface ----------------------------------------------------------------
    def minibatch_rows(self) -> int:
        return self.cfg.rollout_batch // self.cfg.minibatches

    def grad_accum(self, cfg: TrainConfig, world_size: int) -> int:
        """A minibatch split into pieces of at most micro_batch_size rows per process; refused if one would be
        empty."""
        rows = self.minibatch_rows()
        if cfg.batch_tokens:
            raise ConfigError("ppo: train.batch_tokens does not apply: one update is rollout_batch / minibatches "
                              f"= {rows} rows, in micro batches of train.micro_batch_size; set train.batch_tokens=0")
        accum = math.ceil(rows / (cfg.micro_batch_size * world_size))
        if rows < accum * world_size:
            raise ConfigError(f"ppo: a minibatch of rollout_batch / minibatches = {rows} rows cannot feed "
                              f"{accum} micro steps x {world_size} processes; raise rollout_batch or "
                              "train.micro_batch_size, or lower minibatches")
        return accum

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size) -> Batch:
        cfg = self.cfg
        rollout_step = step - step % cfg.updates_per_rollout
        if self.buffer is None or self.buffer_step != rollout_step:
            self.buffer, self.buffer_step = self.rollout(rollout_step), rollout_step
        k = step % cfg.updates_per_rollout
        epoch, mb = divmod(k, cfg.minibatches)
        perm = np.random.default_rng([cfg.train.seed, rollout_step, epoch]).permutation(cfg.rollout_batch)
        size = self.minibatch_rows()
        rows = perm[mb * size: (mb + 1) * size]
        mine = np.array_split(rows, grad_accum * world_size)[micro_step * world_size + rank]  # every row, once
        idx = torch.as_tensor(mine, device=self.buffer["ids"].device)
        b = {k: v[idx] for k, v in self.buffer.items()}
        out = [b["ids"], b["mask"], b["logp"], b["values"], b["adv"], b["returns"]]
        counts, tokens = {"policy": float(b["mask"].sum())}, b["ids"].numel()
        if self.ptx_loader is not None and cfg.gamma_ptx > 0:
            ptx = list(self.ptx_loader.get_batch(step, micro_step, cfg.ptx_batch, grad_accum, rank, world_size))
            out += ptx
            counts["ptx"] = ptx[1].numel()
            tokens += ptx[0].numel()
        return Batch(tuple(out), counts, tokens, b["ids"].size(1))

    def flops(self, model, batch: Batch) -> float:
        """Policy and value model on the rollout rows; the policy alone on the pretraining rows."""
        ids = batch.tensors[0]
        ptx = batch.tokens - ids.numel()
        return (ids.numel() * 2 + ptx) * self.ac.policy.flops_per_token(ids.size(1))

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        ids, mask, logp_old, v_old, adv, returns = batch[:6]
        logp, v, ptx = model(ids, mask, self.cfg.temperature, *batch[6:8])  # through DDP when distributed
        pg, clipped = policy_loss(logp, logp_old, adv, mask, self.cfg.clip)
        vf = value_loss(v, v_old, returns, mask, self.cfg.clip_value)
        n = mask.sum().clamp(min=1)
        self._metrics = {"policy_loss": (pg / n).item(), "value_loss": (vf / n).item(),
                         "clip_frac": (clipped / n).item(),
                         "approx_kl_old": ((logp_old - logp) * mask).sum().item() / n.item()}
        out = {"policy": pg + self.cfg.vf_coef * vf}
        if ptx is not None:
            out["ptx"] = self.cfg.gamma_ptx * ptx
            self._metrics["ptx_loss"] = ptx.item() / batch[7].numel()
        return out

    def metrics(self) -> dict[str, float]:
        return {**self.last_rollout, **self._metrics}

    @torch.no_grad()
    def evaluate(self, model, max_batches: int) -> dict[str, float]:
        """Held-out prompts: mean RM score (and gold score), KL to the reference, length."""
        prompts = self.val_prompts
        prompt_ids, responses, ended = self.sample_responses(model.policy, prompts, seed=12345)
        scores = score(self.rm, self.enc, prompt_ids, responses)
        out = {"val_rm_score": float(np.mean(scores)), "val_ended_frac": float(np.mean(ended)),
               "val_response_len": float(np.mean([len(r) for r in responses]))}
        ids, mask = self.sequences(prompt_ids, responses, ended, next(model.parameters()).device)
        logp, entropy = token_logprobs(model.policy, ids, self.cfg.temperature, mask, entropy=True)
        logp_ref, _ = token_logprobs(self.ref, ids, self.cfg.temperature, mask)
        out["val_kl"] = ((logp - logp_ref) * mask).sum(1).mean().item()  # nats per response, incl. <|end|>
        out["val_entropy"] = ((entropy * mask).sum() / mask.sum()).item()
        if self.gold is not None:
            out["val_gold_score"] = self.gold_mean(prompts, responses)
        return out

    def samples(self, model) -> list[str]:
        prompts = self.val_prompts[:4]
        _, responses, _ = self.sample_responses(model.policy, prompts, seed=7, temperature=0.7)
        return [f"User: {p}\nAssistant: {self.tok.decode(r)}" for p, r in zip(prompts, responses, strict=True)]


def ppo(cfg: PPOConfig, *, resume: bool = False, log=print) -> TrainResult:
    if not cfg.sft or not cfg.rm:
        raise ConfigError("ppo: set sft=<SFT checkpoint> and rm=<reward model checkpoint>")
    if cfg.train.checkpoint_every % cfg.updates_per_rollout:
        raise ConfigError(f"ppo: train.checkpoint_every ({cfg.train.checkpoint_every}) must be a multiple of the "
                          f"updates per rollout ({cfg.updates_per_rollout}), so a resumed run restarts at a rollout")
    if cfg.rollout_batch % cfg.minibatches:
        raise ConfigError(f"ppo: rollout_batch {cfg.rollout_batch} must be divisible by minibatches {cfg.minibatches}")
    run = StageRun(cfg, "ppo", log)
    sft = run.load_init(cfg.sft, "sft")
    policy = run.load_init(cfg.policy_init, "policy_init").model if cfg.policy_init else sft.model
    ref = load_checkpoint(sft.path).model
    rm_ckpt = load_checkpoint(cfg.rm, expect=RewardModel)
    rm = rm_ckpt.model
    value = RewardModel(rm.config)
    value.load_state_dict(rm.state_dict())
    for m in (policy, ref, rm, value):  # pitfall: dropout anywhere makes the first ratio != 1
        m.config.dropout = 0.0
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    for m in (ref, rm):
        m.eval().requires_grad_(False)
    tok = sft.tokenizer
    if tok.fingerprint != rm_ckpt.tokenizer.fingerprint:
        raise ConfigError("ppo: the SFT model and the reward model use different tokenizers")
    ac = ActorCritic(policy, value)
    prompts, too_long = ChatTemplate(tok).prompts_that_fit(load_prompts(cfg.prompts), cfg.max_new_tokens,
                                                           policy.config.block_size)
    if not prompts:
        raise ConfigError(f"ppo: no prompt of {cfg.prompts} fits the context with max_new_tokens={cfg.max_new_tokens}")
    train_prompts, val_prompts = seeded_split(prompts, cfg.val_prompts, cfg.train.seed)
    ptx_loader = None
    if cfg.gamma_ptx > 0:
        with rank_zero_first(run.info):  # rank 0 fills the token cache, the others read it
            data = prepare_data(DataConfig(corpora=[CorpusConfig("ptx", cfg.ptx_source)]), tok,
                                block_size=policy.config.block_size, show_progress=False)
        ptx_loader = BatchLoader(data, block_size=policy.config.block_size, seed=cfg.train.seed)
    gold = load_labeler(cfg.gold_labeler) if cfg.gold_labeler else None
    task = PPOTask(cfg, ac, ref, rm, tok, train_prompts, val_prompts, ptx_loader, gold)
    run.log(f"ppo: {len(train_prompts)} train / {len(val_prompts)} held-out prompts ({too_long} too long, skipped); "
            f"{cfg.rollout_batch} rollouts per {cfg.updates_per_rollout} updates")
    return run.train(ac, task, sft, resume, extras={"rm": str(cfg.rm)})
