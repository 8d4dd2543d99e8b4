"""Shared fixtures: a byte-level stand-in tokenizer and tiny models, so tests run in seconds on CPU."""

from __future__ import annotations

import os

import pytest
import torch

from gptrecipe.model import GPT, GPTConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("GPTRECIPE_CACHE", os.path.join(os.path.dirname(__file__), "..", "runs", "cache", "test"))


class ByteTokenizer:
    """ids = UTF-8 bytes; 256 = <|endoftext|>. Same interface as gptrecipe.tokenizer.Tokenizer."""

    eot_id = 256
    vocab_size = 257
    fingerprint = "bytes-v1"

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str], *, num_threads: int = 0) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@pytest.fixture
def byte_tok() -> ByteTokenizer:
    return ByteTokenizer()


def tiny_config(**kw) -> GPTConfig:
    base = dict(vocab_size=257, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config()).eval()


@pytest.fixture(scope="session")
def small_tok():
    """A real BPE tokenizer (with the chat special tokens) trained in a fraction of a second."""
    from gptrecipe.tokenizer import Tokenizer

    text = ("Hello! How are you? I am fine, thank you. What is AI? Artificial intelligence is the study of "
            "machines that think. Tell me a joke. Why did the chicken cross the road? ") * 50
    return Tokenizer.train([text], 400, show_progress=False)


def kill_after(run_dir, step: int) -> None:
    """Make a finished run look killed right after its checkpoint at `step` (later checkpoints gone)."""
    import shutil
    from pathlib import Path

    ckpts = Path(run_dir) / "checkpoints"
    for d in ckpts.glob("step_*"):
        if int(d.name.removeprefix("step_")) > step:
            shutil.rmtree(d)
    (ckpts / "latest").write_text(f"step_{step:07d}\n")


def save_stage_checkpoint(path, model, tok, stage: str = "sft"):
    """Save `model` (with its tokenizer) as a checkpoint of `stage`, as the stage commands would."""
    import dataclasses
    from pathlib import Path

    from gptrecipe.checkpoint import save_checkpoint

    path = Path(path)
    tok_path = path.parent / "tok.json"
    tok.save(tok_path)
    return save_checkpoint(path, model, {"stage": stage, "model": dataclasses.asdict(model.config)},
                           tokenizer_path=tok_path)


def write_rankings(path, rankings) -> None:
    """Rankings as the `rank` stage writes them: {"prompt", "responses": [best, ..., worst]} per line."""
    import json
    from pathlib import Path

    Path(path).write_text("".join(json.dumps({"prompt": r.prompt, "responses": r.responses}) + "\n"
                                  for r in rankings))
