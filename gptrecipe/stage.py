"""The stage skeleton: what every training stage does around the one loop, written once.

    run = StageRun(cfg, "sft", log)                 # joins torchrun; ranks other than 0 log nothing
    base = run.load_init(cfg.init, "init")          # model + tokenizer + metadata of the start checkpoint
    train_set, val_set = seeded_split(items, n_val(len(items), cfg.val_fraction), cfg.train.seed)
    result = run.train(model, task, base, resume)   # rank 0 writes config.toml; checkpoints carry CheckpointMeta
    run.report(write_report, cfg, result)           # rank 0 only, and only when the run evaluated

Under torchrun only rank 0 writes shared files: every write a stage makes goes through `run.train`,
`run.report` or `run.on_main`, the one guard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .checkpoint import CheckpointMeta, Loaded, load_checkpoint, unwrap
from .config import ConfigError, RunConfig, dump_toml
from .runtime import init_distributed
from .tokenizer import Tokenizer
from .train import TrainResult, TrainTask, train

T = TypeVar("T")


def seeded_split(items: Sequence[T], n_val: int, seed: int) -> tuple[list[T], list[T]]:
    """(train, val): `n_val` items held out by a seeded permutation; train falls back to val when nothing is left."""
    order = np.random.default_rng(seed).permutation(len(items))
    val = [items[i] for i in order[:n_val]]
    return [items[i] for i in order[n_val:]] or val, val


def n_val(n: int, fraction: float) -> int:
    """How many of n items a validation fraction holds out (at least one)."""
    return max(1, int(n * fraction))


def quiet(*args: Any, **kwargs: Any) -> None:
    """Log sink for ranks other than 0."""


class StageRun:
    """One run of a training stage: its config, its process group, and the one rank-0 guard for writes."""

    def __init__(self, cfg: RunConfig, stage: str, log: Callable[..., None] = print):
        self.cfg, self.stage = cfg, stage
        self.info, self.device = init_distributed(cfg.train.device)
        self.is_main = self.info.is_main
        self.log = log if self.is_main else quiet

    def load_init(self, path: str, key: str) -> Loaded:
        """The language model a stage starts from (`key` names the config field, for the error)."""
        if not path:
            raise ConfigError(f"{self.stage}: set {key}=<checkpoint or run dir>")
        return load_checkpoint(path)

    def train(self, model: torch.nn.Module, task: TrainTask, base: Loaded | tuple[Tokenizer, Path],
              resume: bool = False, extras: dict[str, Any] | None = None) -> TrainResult:
        """Write the run's config.toml (rank 0), then train with checkpoints of this stage. `base` is the start
        checkpoint, or (tokenizer, its file) for a run from scratch."""
        tok, tok_path, init = ((base.tokenizer, base.path / "tokenizer.json", base.path) if isinstance(base, Loaded)
                               else (*base, ""))
        meta = CheckpointMeta.of(self.stage, unwrap(model).config, tok, self.cfg, init, **(extras or {}))
        self.on_main(self._write_config)
        return train(model, task, self.cfg.train, self.cfg.run_dir, meta, tokenizer_path=tok_path, resume=resume)

    def _write_config(self) -> None:
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (self.cfg.run_dir / "config.toml").write_text(dump_toml(self.cfg))

    def on_main(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Run `fn` on rank 0 only (the writes of a run)."""
        return fn(*args) if self.is_main else None

    def report(self, fn: Callable[..., Path], cfg: RunConfig, result: TrainResult, *args: Any) -> Path | None:
        """The stage's report.md, on rank 0 and only when the run evaluated."""
        return self.on_main(fn, cfg, result, *args) if result.evals else None
