"""The one training loop every stage shares (pretraining, and later SFT / reward model / fine-tuning).

A stage supplies a `TrainTask`: how to get a batch for (step, micro step, rank), how to compute
the loss, and how to evaluate / sample. The loop supplies everything else: AdamW with decay on
matrices only, linear warmup then cosine decay to `min_lr_ratio`, gradient accumulation to a
target batch size in tokens, clipping, mixed precision, optional torch.compile, DDP under torchrun,
metrics JSONL, a progress bar with tokens/s and MFU, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from . import checkpoint as ckpt_lib
from .model import optimizer_groups
from .runtime import DistInfo, all_reduce_mean, autocast, init_distributed, measure_peak_flops, pick_dtype


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


class TrainTask(Protocol):
    """What a stage plugs into the loop."""

    tokens_per_row: int  # for tokens/s and batch-size arithmetic

    def get_batch(self, step: int, micro_step: int, micro_batch_size: int, grad_accum: int,
                  rank: int, world_size: int) -> tuple[torch.Tensor, ...]: ...

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor: ...

    def evaluate(self, model: torch.nn.Module, max_batches: int) -> dict[str, float]: ...

    def samples(self, model: torch.nn.Module) -> list[str]: ...


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


class MetricsLog:
    """Append-only JSONL of metrics; on resume, lines from steps after the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [ln for ln in _complete_lines(path) if json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _complete_lines(path: Path) -> list[str]:
    """Non-empty lines, without a torn last line (no newline yet) that a kill -9 mid-write leaves behind."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return [ln for ln in text.splitlines() if ln.strip()]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (one kernel for all parameters) on CPU and CUDA."""
    return torch.optim.AdamW(optimizer_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=device.type in ("cuda", "cpu"))


def train(
    model: torch.nn.Module,
    task: TrainTask,
    cfg: TrainConfig,
    run_dir: str | Path,
    run_config: dict[str, Any],
    *,
    tokenizer_path: str | Path | None = None,
    resume: bool = False,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train `model` on `task` for cfg.max_steps optimizer steps; checkpoints go to run_dir/checkpoints."""
    run_dir = Path(run_dir)
    info, device = init_distributed(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if device.type == "cuda":  # TF32 tensor cores for whatever still runs in fp32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    model.to(device)
    accum = grad_accum_steps(cfg, task.tokens_per_row, info.world_size)
    ckpt_root = run_dir / "checkpoints"

    optimizer = make_optimizer(ckpt_lib.unwrap(model), cfg, device)
    start_step = 0
    if resume:
        start_step = _restore(model, optimizer, task, ckpt_root, run_config, device)
    fwd_model: torch.nn.Module = torch.compile(model) if cfg.compile else model
    if info.enabled:
        fwd_model = DDP(fwd_model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics = MetricsLog(run_dir / "metrics.jsonl", info.is_main, start_step if resume else None)
    result = TrainResult(run_dir=run_dir, final_step=start_step, grad_accum=accum)
    flops_per_token = _flops_per_token(model, task.tokens_per_row)
    peak = measure_peak_flops(device, dtype) if info.is_main else 0.0
    tokens_per_step = cfg.micro_batch_size * task.tokens_per_row * accum * info.world_size
    if info.is_main:
        (run_dir).mkdir(parents=True, exist_ok=True)
        metrics.write({"step": start_step, "event": "start", "device": str(device), "dtype": str(dtype),
                       "world_size": info.world_size, "grad_accum": accum, "tokens_per_step": tokens_per_step,
                       "params": sum(p.numel() for p in ckpt_lib.unwrap(model).parameters())})

    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not (cfg.progress and info.is_main),
               desc=run_dir.name, dynamic_ncols=True)
    step_times: list[float] = []
    if start_step == 0 and cfg.eval_every and cfg.max_steps > 0:  # the curve starts at the untrained model
        ev = _evaluate(model, task, cfg, device, dtype, info)
        if info.is_main:
            metrics.write({"step": 0, **ev})
            result.evals.append({"step": 0, **ev})
    for step in range(start_step, cfg.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum = 0.0
        for micro in range(accum):
            batch = tuple(t.to(device, non_blocking=True) for t in task.get_batch(
                step, micro, cfg.micro_batch_size, accum, info.rank, info.world_size))
            # DDP: all-reduce gradients only on the last micro step
            sync = nullcontext() if (not info.enabled or micro == accum - 1) else fwd_model.no_sync()
            with sync:
                with autocast(device, dtype):
                    loss = task.loss(fwd_model, batch) / accum
                loss.backward()
            loss_sum += loss.detach().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_val = all_reduce_mean(loss_sum, info, device)
        dt = time.perf_counter() - t0
        step_times.append(dt)
        tok_s = tokens_per_step / dt
        mfu = flops_per_token * tok_s / (peak * info.world_size) if peak else 0.0
        result.losses[step + 1] = loss_val
        result.final_step = step + 1
        extra = getattr(task, "last_metrics", None) or {}  # a stage's own per-step numbers (e.g. PPO's KL)
        metrics.write({"step": step + 1, "loss": loss_val, "lr": lr, "grad_norm": grad_norm,
                       "tokens": (step + 1) * tokens_per_step, "tok_per_s": tok_s, "mfu": mfu, "dt": dt, **extra})
        bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.1f}%", refresh=False)
        bar.update(1)
        last = step + 1 == cfg.max_steps
        if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
            ev = _evaluate(model, task, cfg, device, dtype, info)
            if info.is_main:
                metrics.write({"step": step + 1, **ev})
                result.evals.append({"step": step + 1, **ev})
                bar.write(f"step {step + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
                if on_eval:
                    on_eval(step + 1, ev)
        if info.is_main and (last or (cfg.sample_every and (step + 1) % cfg.sample_every == 0)):
            texts = _samples(model, task, device, dtype)
            for text in texts:
                metrics.write({"step": step + 1, "sample": text})
                result.samples.append({"step": step + 1, "sample": text})
        if last or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
            result.checkpoint = _save(model, optimizer, task, ckpt_root, step + 1, run_config, tokenizer_path, info,
                                      cfg)
    bar.close()
    # median step time, skipping the first (warm-up, compilation) steps
    steady = sorted(step_times[min(len(step_times) - 1, 3):]) if step_times else []
    if steady:
        result.tokens_per_s = tokens_per_step / steady[len(steady) // 2]
        result.mfu = flops_per_token * result.tokens_per_s / (peak * info.world_size) if peak else 0.0
    return result


def _flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    m = ckpt_lib.unwrap(model)
    if hasattr(m, "flops_per_token"):
        return m.flops_per_token(seq_len)
    return 6.0 * sum(p.numel() for p in m.parameters())


@torch.no_grad()
def _evaluate(model, task: TrainTask, cfg: TrainConfig, device, dtype, info: DistInfo) -> dict[str, float]:
    model.eval()
    with autocast(device, dtype):
        out = task.evaluate(model, cfg.eval_batches)
    model.train()
    return {k: all_reduce_mean(v, info, device) for k, v in out.items()}


@torch.no_grad()
def _samples(model, task: TrainTask, device, dtype) -> list[str]:
    model.eval()
    with autocast(device, dtype):
        texts = task.samples(model)
    model.train()
    return texts


def _save(model, optimizer, task, ckpt_root: Path, step: int, run_config: dict[str, Any],
          tokenizer_path, info: DistInfo, cfg: TrainConfig) -> Path:
    path = ckpt_root / f"step_{step:07d}"
    if info.is_main:
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng_cpu": torch.get_rng_state()}
        if hasattr(task, "state_dict"):  # a stage's own state (e.g. PPO's adaptive KL coefficient)
            state["task"] = task.state_dict()
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        ckpt_lib.save_checkpoint(path, model, run_config, trainer_state=state, tokenizer_path=tokenizer_path)
        ckpt_lib.prune_checkpoints(ckpt_root, cfg.keep_checkpoints)
    if info.enabled:
        dist.barrier()
    return path


def _restore(model, optimizer, task, ckpt_root: Path, run_config: dict[str, Any], device) -> int:
    """Load weights, optimizer and RNG from the latest checkpoint; returns the step to continue from."""
    try:
        path = ckpt_lib.resolve_checkpoint(ckpt_root)
    except ckpt_lib.CheckpointError:
        return 0  # nothing saved yet: --resume on a fresh run simply starts
    saved = ckpt_lib.read_config(path)
    fp_saved, fp_now = saved.get("tokenizer_fingerprint"), run_config.get("tokenizer_fingerprint")
    if fp_saved and fp_now and fp_saved != fp_now:
        raise ckpt_lib.CheckpointError(f"checkpoint {path} was trained with another tokenizer "
                                       f"(fingerprint {fp_saved[:12]} vs {fp_now[:12]}); start a new run instead")
    if "model" in run_config:
        from .model import GPTConfig

        ckpt_lib.check_model_config(saved.get("model", {}), GPTConfig(**run_config["model"]), path)
    ckpt_lib.load_weights(model, path)
    state = ckpt_lib.load_trainer_state(path)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if "task" in state and hasattr(task, "load_state_dict"):
        task.load_state_dict(state["task"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    model.to(device)
    return int(state["step"])
