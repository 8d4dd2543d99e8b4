"""A checkpoint made ready to talk to: model, tokenizer, chat or base, and the engine's stop tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..chat import ChatTemplate, Message
from ..checkpoint import load_checkpoint
from ..model import GPT
from ..runtime import pick_device
from ..tokenizer import Tokenizer

CHAT_STAGES = ("sft", "ppo")  # checkpoints of these stages were trained on the chat template


@dataclass
class ServedModel:
    name: str
    model: GPT
    tokenizer: Tokenizer
    chat: bool  # True: the chat template (SFT / PPO); False: a base model, plain text continuation
    stage: str
    checkpoint: Path

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    @property
    def stop_ids(self) -> list[int]:
        """Tokens that end a reply: <|end|> (and <|endoftext|>) for chat models, <|endoftext|> for base models."""
        return ChatTemplate(self.tokenizer).stop_ids if self.chat else [self.tokenizer.eot_id]

    def chat_ids(self, messages: list[Message]) -> list[int]:
        """The conversation rendered with the chat template, ending in <|assistant|>."""
        return ChatTemplate(self.tokenizer).prompt_ids(messages)


def default_name(ckpt: Path) -> str:
    """runs/speedrun/sft/checkpoints/step_0000150 -> "sft"; a plain checkpoint dir -> its name."""
    return ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name


def load_served(checkpoint: str | Path, *, device: str = "auto", dtype: str | None = None, chat: bool | None = None,
                name: str | None = None) -> ServedModel:
    """Load a checkpoint (dir or run dir) with its tokenizer (weights in `dtype`, see `load_checkpoint`);
    `chat=None` decides from the stage it was saved by (sft / ppo are chat models, anything else a base model)."""
    loaded = load_checkpoint(checkpoint, pick_device(device), dtype=dtype)
    is_chat = loaded.meta.stage in CHAT_STAGES if chat is None else chat
    return ServedModel(name or default_name(loaded.path), loaded.model.eval(), loaded.tokenizer, is_chat,
                       loaded.meta.stage, loaded.path)
