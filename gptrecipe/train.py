"""The one training loop every stage shares (pretraining, SFT, reward model, PPO, GPT-1 fine-tuning).

A stage supplies a `TrainTask`: the micro batch of (step, micro step, rank) with the size of each loss
term and the tokens it computes, and the loss terms as sums. The loop supplies everything else: all
normalisation (each term divided by its count over the global batch, across accumulation and ranks),
AdamW with decay on matrices only, linear warmup then cosine decay to `min_lr_ratio`, gradient
accumulation to a target batch size in tokens, clipping, mixed precision (loss scaling for fp16),
optional torch.compile, DDP under torchrun, metrics JSONL, a progress bar with true tokens/s and
MFU, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_trainer_state,
    load_weights,
    prune_checkpoints,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
    unwrap,
)
from .io import complete_lines
from .model import GPT, optimizer_groups
from .runtime import all_reduce_sum, autocast, init_distributed, measure_peak_flops, pick_dtype
from .trackers import TRACKERS, Tracker, numbers, open_trackers


@dataclass
class TrainConfig:
    max_steps: int = 1000
    micro_batch_size: int = 16  # rows per forward pass
    batch_tokens: int = 0  # target tokens per optimizer step (accumulates gradients); 0 = one micro batch
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio (GPT-3: 10%)
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast); auto = bf16 where the hardware is fast at it
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    eval_every: int = 100  # 0 = only at the end
    eval_batches: int = 20
    sample_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    progress: bool = True
    report_to: list[str] = field(default_factory=list)  # also log metrics to "tensorboard" and / or "wandb"

    def validate(self) -> None:
        if unknown := [n for n in self.report_to if n not in TRACKERS]:
            raise ValueError(f"train.report_to: unknown tracker {unknown[0]!r}; known: {', '.join(TRACKERS)}")


@dataclass
class Batch:
    """One micro batch as the loop sees it.

    `counts` gives, for each loss term the task returns, how many items (targets, pairs, examples) its sum runs
    over in this micro batch: the loop divides every term by its count over the whole global batch (all micro
    steps, all ranks), so the gradient is the same however the batch is split. `tokens` is the number of
    positions the forward pass computes (rows x padded width), for tokens/s and MFU; `width` the padded width.
    """

    tensors: tuple[torch.Tensor, ...]
    counts: dict[str, float]
    tokens: int
    width: int


class TrainTask(ABC):
    """What a stage plugs into the loop. `get_batch` and `loss` are required (abstract); the rest have defaults."""

    tokens_per_row: int = 0  # nominal tokens per row, for train.batch_tokens arithmetic

    @abstractmethod
    def get_batch(self, step: int, micro_step: int, micro_batch_size: int, grad_accum: int,
                  rank: int, world_size: int) -> Batch:
        """Micro batch `micro_step` of this rank's share of step `step`'s global batch."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Each loss term summed over the micro batch (the keys of the batch's `counts`)."""

    def grad_accum(self, cfg: TrainConfig, world_size: int) -> int:
        """Micro steps per optimizer step."""
        return grad_accum_steps(cfg, self.tokens_per_row, world_size)

    def flops(self, model: torch.nn.Module, batch: Batch) -> float:
        """Training FLOPs of one micro batch (forward + backward) through every GPT inside the model."""
        return batch.tokens * sum(m.flops_per_token(batch.width) for m in model.modules() if isinstance(m, GPT))

    def metrics(self) -> dict[str, float]:
        """The stage's own numbers of the last step, logged beside the loss (e.g. PPO's KL)."""
        return {}

    def evaluate(self, model: torch.nn.Module, max_batches: int) -> dict[str, float]:
        return {}

    def samples(self, model: torch.nn.Module) -> list[str]:
        return []

    def finish(self, model: torch.nn.Module) -> None:
        """Called once after the last optimizer step, before the final checkpoint (e.g. the reward shift)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The stage's state beyond the weights that a resumed run needs (e.g. PPO's adaptive KL coefficient)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup for `warmup_steps`, then cosine decay to lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def grad_accum_steps(cfg: TrainConfig, tokens_per_row: int, world_size: int) -> int:
    per_pass = cfg.micro_batch_size * tokens_per_row * world_size
    if cfg.batch_tokens <= 0:
        return 1
    if cfg.batch_tokens % per_pass:
        raise ValueError(
            f"train.batch_tokens={cfg.batch_tokens} is not a multiple of micro_batch_size x tokens x processes "
            f"= {cfg.micro_batch_size} x {tokens_per_row} x {world_size} = {per_pass}"
        )
    return cfg.batch_tokens // per_pass


@dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> train loss
    evals: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    checkpoint: Path | None = None
    grad_accum: int = 1

    def replay(self, rows: list[dict[str, Any]]) -> None:
        """Take back what a resumed run's metrics.jsonl holds up to its checkpoint: losses, evals and samples
        (so a run resumed at its last step still reports its curve)."""
        for row in rows:
            if "sample" in row:
                self.samples.append(row)
            elif "dt" in row:
                self.losses[row["step"]], self.final_step = row["loss"], row["step"]
            elif "event" not in row:
                self.evals.append(row)


class MetricsLog:
    """Append-only JSONL of metrics; on resume, lines from steps after the checkpoint are dropped. Each row's
    numbers also go to the `trackers` (TensorBoard, wandb), if any; `close` ends them."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None, trackers: list[Tracker] = ()):
        self.path, self.enabled, self.trackers = path, enabled, list(trackers)
        self.kept: list[dict[str, Any]] = []  # on resume: the rows up to the checkpoint
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            self.kept = [row for row in map(json.loads, complete_lines(path)) if row["step"] <= resume_step]
            path.write_text("".join(json.dumps(row) + "\n" for row in self.kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.trackers and (metrics := numbers(record)):
                for tracker in self.trackers:
                    tracker.log(metrics, record["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (one kernel for all parameters) on CPU and CUDA."""
    return torch.optim.AdamW(optimizer_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=device.type in ("cuda", "cpu"))


class Trainer:
    """The loop's state and its named steps: `step` (one optimizer step over grad_accum micro batches),
    `maybe_evaluate`, `maybe_sample`, `maybe_checkpoint`. `train()` runs them for every step."""

    def __init__(self, model: torch.nn.Module, task: TrainTask, cfg: TrainConfig, run_dir: Path,
                 meta: CheckpointMeta, tokenizer_path: str | Path | None):
        self.task, self.cfg, self.run_dir, self.meta, self.tokenizer_path = task, cfg, run_dir, meta, tokenizer_path
        self.info, self.device = init_distributed(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        if self.device.type == "cuda":  # TF32 tensor cores for whatever still runs in fp32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)
        self.accum = task.grad_accum(cfg, self.info.world_size)
        self.ckpt_root = run_dir / "checkpoints"
        self.optimizer = make_optimizer(model, cfg, self.device)
        # fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step_no, self.tokens_seen = 0, 0
        self.fwd: torch.nn.Module = torch.compile(model) if cfg.compile else model
        if self.info.enabled:
            self.fwd = DDP(self.fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.peak = measure_peak_flops(self.device, self.dtype) if self.info.is_main else 0.0
        self.result = TrainResult(run_dir=run_dir, final_step=0, grad_accum=self.accum)

    # ---- one optimizer step -----------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """Gradients of the global batch's loss (each term divided by its global count), clip, AdamW step."""
        cfg, info, step = self.cfg, self.info, self.step_no
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        # under the step's autocast: a task that computes its batch with the model (PPO's rollouts) decodes in
        # the training precision and scores old log-probs through the very path the update takes
        with autocast(self.device, self.dtype):
            batches = [self.task.get_batch(step, m, cfg.micro_batch_size, self.accum, info.rank, info.world_size)
                       for m in range(self.accum)]
        terms = sorted({k for b in batches for k in b.counts})
        mine = [*(sum(b.counts.get(k, 0) for b in batches) for k in terms), sum(b.tokens for b in batches),
                sum(self.task.flops(unwrap(self.model), b) for b in batches)]
        *totals, tokens, flops = all_reduce_sum(torch.tensor(mine, dtype=torch.float64), info, self.device).tolist()
        counts, tokens = dict(zip(terms, totals, strict=True)), int(tokens)
        parts = torch.zeros(len(terms), dtype=torch.float64)
        for m, b in enumerate(batches):
            tensors = tuple(t.to(self.device, non_blocking=True) for t in b.tensors)
            # DDP all-reduces (averages) gradients on the last micro step only; x world_size undoes its mean
            sync = nullcontext() if (not info.enabled or m == self.accum - 1) else self.fwd.no_sync()
            with sync:
                with autocast(self.device, self.dtype):
                    sums = self.task.loss(self.fwd, tensors)
                scaled = torch.stack([sums[k].float() / max(counts[k], 1.0) for k in terms])
                self.scaler.scale(scaled.sum() * info.world_size).backward()
            parts += scaled.detach().double().cpu()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        parts = all_reduce_sum(parts, info, self.device)
        self.step_no += 1
        self.tokens_seen += tokens
        row = {"step": self.step_no, "loss": parts.sum().item(), "lr": lr, "grad_norm": grad_norm,
               "tokens": self.tokens_seen}
        if len(terms) > 1:
            row.update({f"loss/{k}": v.item() for k, v in zip(terms, parts, strict=True)})
        return {**row, "_tokens": tokens, "_flops": flops}

    # ---- the maybe-steps ------------------------------------------------------------------------------
    def _due(self, every: int) -> bool:
        return self.step_no == self.cfg.max_steps or bool(every and self.step_no % every == 0)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with autocast(self.device, self.dtype):
            out = self.task.evaluate(self.model, self.cfg.eval_batches)
        self.model.train()
        means = all_reduce_sum(torch.tensor(list(out.values()), dtype=torch.float64), self.info, self.device)
        return dict(zip(out, (means / self.info.world_size).tolist(), strict=True))

    def maybe_evaluate(self, log: MetricsLog, bar, on_eval) -> None:
        if not self._due(self.cfg.eval_every):
            return
        ev = self.evaluate()
        if self.info.is_main:
            log.write({"step": self.step_no, **ev})
            self.result.evals.append({"step": self.step_no, **ev})
            bar.write(f"step {self.step_no}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
            if on_eval:
                on_eval(self.step_no, ev)

    def maybe_sample(self, log: MetricsLog) -> None:
        if not (self.info.is_main and self._due(self.cfg.sample_every)):
            return
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.dtype):
            texts = self.task.samples(self.model)
        self.model.train()
        for text in texts:
            log.write({"step": self.step_no, "sample": text})
            self.result.samples.append({"step": self.step_no, "sample": text})

    def maybe_checkpoint(self) -> None:
        if self.step_no == self.cfg.max_steps:
            self.task.finish(self.model)
        elif not self._due(self.cfg.checkpoint_every):
            return
        path = self.ckpt_root / f"step_{self.step_no:07d}"
        if self.info.is_main:
            state = {"step": self.step_no, "tokens": self.tokens_seen, "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
                     "task": self.task.state_dict()}
            if torch.cuda.is_available():
                state["rng_cuda"] = torch.cuda.get_rng_state_all()
            save_checkpoint(path, self.model, self.meta, trainer_state=state, tokenizer_path=self.tokenizer_path)
            prune_checkpoints(self.ckpt_root, self.cfg.keep_checkpoints)
        if self.info.enabled:
            dist.barrier()
        self.result.checkpoint = path

    def restore(self) -> None:
        """Weights, optimizer, loss scale, RNG and the task's state from the latest checkpoint, if any."""
        try:
            path = resolve_checkpoint(self.ckpt_root)
        except CheckpointError:
            return  # nothing saved yet: --resume on a fresh run simply starts
        self.meta.check_resumes(read_meta(path), path)
        load_weights(self.model, path)
        state = load_trainer_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        self.task.load_state_dict(state.get("task") or {})
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.model.to(self.device)
        self.step_no, self.tokens_seen = int(state["step"]), int(state.get("tokens", 0))
        self.result.final_step = self.step_no


def train(
    model: torch.nn.Module,
    task: TrainTask,
    cfg: TrainConfig,
    run_dir: str | Path,
    meta: CheckpointMeta | None = None,
    *,
    tokenizer_path: str | Path | None = None,
    resume: bool = False,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train `model` on `task` for cfg.max_steps optimizer steps; checkpoints go to run_dir/checkpoints.

    `meta` describes the checkpoints (stage, model config, tokenizer); a resumed run must match it."""
    run_dir = Path(run_dir)
    t = Trainer(model, task, cfg, run_dir, meta or CheckpointMeta("custom"), tokenizer_path)
    if resume:
        t.restore()
    start, info, result = t.step_no, t.info, t.result
    trackers = (open_trackers(cfg.report_to, run_dir, stage=t.meta.stage, config=t.meta.run,
                              resume_step=start if resume else None) if info.is_main and cfg.report_to else [])
    log = MetricsLog(run_dir / "metrics.jsonl", info.is_main, start if resume else None, trackers)
    result.replay(log.kept)
    if info.is_main:
        log.write({"step": start, "event": "start", "device": str(t.device), "dtype": str(t.dtype),
                   "world_size": info.world_size, "grad_accum": t.accum,
                   "params": sum(p.numel() for p in unwrap(model).parameters())})
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not (cfg.progress and info.is_main),
               desc=run_dir.name, dynamic_ncols=True)
    if start == 0 and cfg.eval_every and cfg.max_steps > 0:  # the curve starts at the untrained model
        ev = t.evaluate()
        if info.is_main:
            log.write({"step": 0, **ev})
            result.evals.append({"step": 0, **ev})
    timed: list[tuple[float, int, float]] = []  # (seconds, tokens, flops) of each step
    while t.step_no < cfg.max_steps:
        t0 = time.perf_counter()
        row = t.step()
        dt = time.perf_counter() - t0
        tokens, flops = row.pop("_tokens"), row.pop("_flops")
        timed.append((dt, tokens, flops))
        mfu = flops / dt / (t.peak * info.world_size) if t.peak else 0.0
        row.update({"tok_per_s": tokens / dt, "mfu": mfu, "dt": dt, **task.metrics()})
        log.write(row)
        result.losses[t.step_no], result.final_step = row["loss"], t.step_no
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{tokens / dt:,.0f}", mfu=f"{100 * mfu:.1f}%",
                        refresh=False)
        bar.update(1)
        t.maybe_evaluate(log, bar, on_eval)
        t.maybe_sample(log)
        t.maybe_checkpoint()
    bar.close()
    log.close()  # trackers flush each row, and wandb finishes its run at exit should the loop raise
    # medians over the steady steps, skipping the first (warm-up, compilation) steps
    steady = sorted(timed[min(len(timed) - 1, 3):], key=lambda x: x[1] / x[0]) if timed else []
    if steady:
        dt, tokens, flops = steady[len(steady) // 2]
        result.tokens_per_s = tokens / dt
        result.mfu = flops / dt / (t.peak * info.world_size) if t.peak else 0.0
    return result
