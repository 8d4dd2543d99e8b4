"""Optional run trackers: the metrics the JSONL holds, mirrored live to TensorBoard and / or Weights & Biases.

    gptrecipe sft --init runs/speedrun/pretrain 'train.report_to=["tensorboard", "wandb"]'
    tensorboard --logdir runs/               # event files in RUN_DIR/tensorboard
    wandb sync runs/sft/wandb/offline-run-*  # an offline run (no API key configured), uploaded later

Off by default, and neither package is needed unless asked for. The training loop writes each metrics row to the
JSONL (still the source of truth for plots and reports) and hands its numbers to every tracker, on rank 0 only.
wandb runs offline when WANDB_MODE is unset and no API key is configured (WANDB_API_KEY or `wandb login`).
"""

from __future__ import annotations

import importlib
import netrc
import os
from pathlib import Path
from typing import Any, Protocol

from .config import ConfigError

TRACKERS = ("tensorboard", "wandb")


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _require(module: str, package: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"train.report_to names {name!r} but the {package} package is not installed "
                          f"(pip install {package}, or gptrecipe[logging])") from None


class TensorBoard:
    """Scalars in RUN_DIR/tensorboard; a resumed run first drops the events after its checkpoint's step."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        _require("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a killed run keeps what it logged, as its JSONL does

    def close(self) -> None:
        self.writer.close()


def wandb_logged_in() -> bool:
    """Whether wandb has an API key: WANDB_API_KEY, or the netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Wandb:
    """A wandb run in RUN_DIR/wandb (project $WANDB_PROJECT or "gptrecipe", named after the run dir)."""

    def __init__(self, run_dir: Path, stage: str, config: dict[str, Any]):
        wandb = _require("wandb", "wandb", "wandb")
        offline = not os.environ.get("WANDB_MODE") and not wandb_logged_in()
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "gptrecipe"), name=run_dir.name,
                              job_type=stage, dir=str(run_dir), config=config, mode="offline" if offline else None,
                              settings=wandb.Settings(console="off"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: list[str], run_dir: Path, *, stage: str, config: dict[str, Any],
                  resume_step: int | None) -> list[Tracker]:
    """The trackers `names` asks for (see TRACKERS), writing under `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    makers = {"tensorboard": lambda: TensorBoard(run_dir, resume_step), "wandb": lambda: Wandb(run_dir, stage, config)}
    return [makers[name]() for name in dict.fromkeys(names)]


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The metrics of a JSONL row (numbers only: not its step, an event's fields or a text sample)."""
    if "event" in record:
        return {}
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
