"""One checkpoint format for every stage: safetensors weights + JSON config + resumable trainer state.

A checkpoint is a directory:
    model.safetensors          weights (safetensors: no pickle, safe to load from strangers)
    config.json                CheckpointMeta: stage, model (GPTConfig fields), tokenizer fingerprint, run, extras
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model

from .heads import RewardModel, TaskHeadModel
from .io import atomic_write_text, fsync_tree
from .model import GPT, GPTConfig
from .runtime import pick_dtype
from .tokenizer import Tokenizer


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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


@dataclass
class CheckpointMeta:
    """What a checkpoint is (config.json): the stage that wrote it, the model it holds, the tokenizer it needs,
    the stage's run config, where it started from, and the stage's own extras (a task head's labels, ...)."""

    stage: str
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig fields
    tokenizer_fingerprint: str = ""
    run: dict[str, Any] = field(default_factory=dict)
    init: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, stage: str, model_config: GPTConfig, tokenizer, run: Any = None, init: str | Path = "",
           **extras: Any) -> CheckpointMeta:
        run_dict = dataclasses.asdict(run) if dataclasses.is_dataclass(run) else dict(run or {})
        return cls(stage, dataclasses.asdict(model_config), getattr(tokenizer, "fingerprint", ""), run_dict,
                   str(init), extras)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CheckpointMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        extras = {**obj.get("extras", {}), **{k: v for k, v in obj.items() if k not in names}}  # older flat files
        return cls(**{k: v for k, v in obj.items() if k in names and k != "extras"}, extras=extras)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @property
    def gpt_config(self) -> GPTConfig:
        try:
            return GPTConfig(**self.model)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"bad 'model' section in a {self.stage!r} checkpoint ({e})") from None

    def check_resumes(self, saved: CheckpointMeta, where: Path) -> None:
        """Refuse to continue a run from a checkpoint of another model shape or tokenizer, naming what differs."""
        a, b = saved.tokenizer_fingerprint, self.tokenizer_fingerprint
        if a and b and a != b:
            raise CheckpointError(f"checkpoint {where} was trained with another tokenizer "
                                  f"(fingerprint {a[:12]} vs {b[:12]}); start a new run instead")
        if self.model:
            check_model_config(saved.model, self.gpt_config, where)


def save_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    meta: CheckpointMeta,
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
    (tmp / "config.json").write_text(meta.to_json())
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    if trainer_state is not None:
        tensors: dict[str, torch.Tensor] = {}
        tree = pack_state(trainer_state, tensors)
        save_file(tensors, str(tmp / "trainer_state.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(tree))
    fsync_tree(tmp)
    if ckpt_dir.exists():  # replace an older checkpoint of the same name without a window of none
        old = ckpt_dir.with_name(f".{ckpt_dir.name}.old{os.getpid()}")
        os.rename(ckpt_dir, old)
        os.rename(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, ckpt_dir)
    atomic_write_text(ckpt_dir.parent / "latest", ckpt_dir.name + "\n")
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


def read_meta(ckpt: str | Path) -> CheckpointMeta:
    ckpt = resolve_checkpoint(ckpt)
    try:
        return CheckpointMeta.from_json(json.loads((ckpt / "config.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt / 'config.json'}: unreadable checkpoint config ({e})") from None


def check_model_config(saved: dict[str, Any], wanted: GPTConfig, where: Path) -> None:
    """Refuse to load weights into a model of another shape, naming the differing fields."""
    want = dataclasses.asdict(wanted)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {want[k]!r}" for k in want
             if k != "dropout" and saved.get(k) != want[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {where} was made with another model config: " + "; ".join(diffs))


@dataclass
class Loaded:
    model: torch.nn.Module  # GPT, RewardModel or TaskHeadModel, by stage
    tokenizer: Tokenizer
    meta: CheckpointMeta
    path: Path


def build_model(meta: CheckpointMeta, tok: Tokenizer) -> torch.nn.Module:
    """An untrained model of the kind a checkpoint of `meta.stage` holds."""
    config = meta.gpt_config
    if meta.stage == "rm":
        return RewardModel(config)
    if meta.stage == "finetune":
        x = meta.extras
        return TaskHeadModel(config, x["task"], max(1, len(x["labels"])), x.get("head_dropout", 0.1),
                             tuple(tok.id_of(t) for t in x.get("ignore_tokens", [])))
    return GPT(config)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    expect: type[torch.nn.Module] = GPT, dtype: str | None = None) -> Loaded:
    """The one loader: a checkpoint (dir, run dir or checkpoints/ dir) of any stage, with its tokenizer.

    A PPO checkpoint holds the actor-critic; the model loaded from it is the policy. A checkpoint whose model is
    not an `expect` (by default a GPT language model) is refused; `expect=torch.nn.Module` takes any.
    `dtype` (inference only: auto | fp32 | bf16 | fp16): the weights' precision; auto = bf16 where the hardware
    computes it natively (half the bytes per decoded token, and the fast matmuls), else as saved (fp32)."""
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    if not (ckpt / "tokenizer.json").is_file():
        raise CheckpointError(f"{ckpt}: no tokenizer.json in the checkpoint")
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    model = build_model(meta, tok)
    if not isinstance(model, expect):
        want = "a language model" if expect is GPT else f"a {expect.__name__}"
        raise CheckpointError(f"{ckpt} is a {meta.stage!r} checkpoint ({type(model).__name__}), not {want}")
    if tok.vocab_size > meta.gpt_config.vocab_size:
        raise CheckpointError(f"{ckpt}: the tokenizer has {tok.vocab_size} tokens but the model only "
                              f"{meta.gpt_config.vocab_size}")
    load_weights(model, ckpt, prefix="policy." if meta.stage == "ppo" else "")
    model = model.to(device)
    if dtype is not None:
        model = model.to(pick_dtype(dtype, torch.device(device), key="dtype"))
    return Loaded(model, tok, meta, ckpt)


def load_weights(model: torch.nn.Module, ckpt: str | Path, prefix: str = "") -> None:
    """Load the checkpoint's weights (those under `prefix`, if any are) into `model`; every tensor must match."""
    file = resolve_checkpoint(ckpt) / "model.safetensors"
    try:
        state = load_file(str(file))
        if prefix and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix)}
        missing, unexpected = unwrap(model).load_state_dict(state, strict=False)
    except Exception as e:  # safetensors / torch raise several types for shape mismatch or corruption
        raise CheckpointError(f"{file}: cannot load weights ({e})") from None
    # a tied tensor (the LM head is the token embedding) is saved once, under one of its names
    ptr = {k: t.data_ptr() for k, t in unwrap(model).state_dict().items()}
    loaded = {ptr[k] for k in state if k in ptr}
    missing = [k for k in missing if ptr[k] not in loaded]
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not match the model "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")


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
