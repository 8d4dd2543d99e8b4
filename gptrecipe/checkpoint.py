"""One checkpoint format for every stage: safetensors weights + JSON config + resumable trainer state.

A checkpoint is a directory:
    model.safetensors          weights (safetensors: no pickle, safe to load from strangers)
    config.json                {"stage": ..., "model": GPTConfig fields, "run": the stage's config, ...}
    tokenizer.json             copy of the tokenizer, so a checkpoint is self-contained
    trainer_state.safetensors  optimizer moments, RNG states (tensors)
    trainer_state.json         step, optimizer hyper-parameters, anything else (plain JSON)
It is written into a temporary directory and renamed into place, so a killed run never leaves a
half-written checkpoint; `latest` (a small text file, also replaced atomically) names the newest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from safetensors.torch import load_model as load_safetensors_into

from .model import GPT, GPTConfig


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match the config it is loaded into."""


# ---- generic (nested dict/list/tensor) <-> (JSON, flat tensors) packing, so no pickle is needed ----


def pack_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[pack_state(k, tensors, f"{path}.k{i}"), pack_state(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, list | tuple):
        items = [pack_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (at {path})")


def unpack_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {unpack_state(k, tensors): unpack_state(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(unpack_state(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    return obj


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    *,
    trainer_state: dict[str, Any] | None = None,
    tokenizer_path: str | Path | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.with_name(f".{ckpt_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(unwrap(model), str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    if trainer_state is not None:
        tensors: dict[str, torch.Tensor] = {}
        tree = pack_state(trainer_state, tensors)
        save_file(tensors, str(tmp / "trainer_state.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(tree))
    if ckpt_dir.exists():  # replace an older checkpoint of the same name without a window of none
        old = ckpt_dir.with_name(f".{ckpt_dir.name}.old{os.getpid()}")
        os.rename(ckpt_dir, old)
        os.rename(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, ckpt_dir)
    _atomic_write_text(ckpt_dir.parent / "latest", ckpt_dir.name + "\n")
    return ckpt_dir


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint dir, a run dir (uses checkpoints/latest) or a checkpoints/ dir."""
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "model.safetensors").is_file():
            return cand
        latest = cand / "latest"
        if latest.is_file():
            target = cand / latest.read_text().strip()
            if (target / "model.safetensors").is_file():
                return target
    raise CheckpointError(f"no checkpoint found at {p} (expected model.safetensors or a 'latest' file)")


def read_config(ckpt: str | Path) -> dict[str, Any]:
    ckpt = resolve_checkpoint(ckpt)
    try:
        return json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / 'config.json'}: unreadable checkpoint config ({e})") from None


def check_model_config(saved: dict[str, Any], wanted: GPTConfig, where: Path) -> None:
    """Refuse to load weights into a model of another shape, naming the differing fields."""
    want = dataclasses.asdict(wanted)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {want[k]!r}" for k in want
             if k != "dropout" and saved.get(k) != want[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {where} was made with another model config: " + "; ".join(diffs))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Load a GPT from a checkpoint (dir, run dir, or checkpoints/ dir). Returns (model, config)."""
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    try:
        model_cfg = GPTConfig(**cfg["model"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt / 'config.json'}: bad 'model' section ({e})") from None
    model = GPT(model_cfg)
    load_weights(model, ckpt)
    return model.to(device), cfg


def load_weights(model: torch.nn.Module, ckpt: str | Path) -> None:
    ckpt = resolve_checkpoint(ckpt)
    try:
        missing, unexpected = load_safetensors_into(unwrap(model), str(ckpt / "model.safetensors"), strict=False)
    except Exception as e:  # safetensors raises several types for shape mismatch or corruption
        raise CheckpointError(f"{ckpt / 'model.safetensors'}: cannot load weights ({e})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt / 'model.safetensors'}: weights do not match the model "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


def load_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    ckpt = resolve_checkpoint(ckpt)
    try:
        tensors = load_file(str(ckpt / "trainer_state.safetensors"))
        tree = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: no usable trainer state to resume from ({e})") from None
    return unpack_state(tree, tensors)


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    """Keep the newest `keep` step_* checkpoints (the one `latest` names is always kept)."""
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    latest = (ckpt_root / "latest").read_text().strip() if (ckpt_root / "latest").is_file() else None
    for p in steps[: max(0, len(steps) - keep)]:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)
