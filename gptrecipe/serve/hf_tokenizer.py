"""The tokenizer as a folder Hugging Face `transformers.AutoTokenizer.from_pretrained` loads.

tokenizer.json is already a standard `tokenizers` file (no BOS is added, special-token strings in text are
read as the special tokens); tokenizer_config.json and special_tokens_map.json name the special tokens,
the context length and the chat template (Jinja), so tools such as lm-evaluation-harness
(`tokenizer=DIR`) count and split tokens exactly as the server does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..chat import ROLES

# The chat format of gptrecipe.chat.ChatTemplate: <|endoftext|> then <|role|>content<|end|> per message.
CHAT_TEMPLATE = (
    "{{ '<|endoftext|>' }}{% for message in messages %}"
    "{% if message['role'] not in " + json.dumps(list(ROLES)) + " %}"
    "{{ raise_exception('roles are " + "/".join(ROLES) + "') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def tokenizer_info(tokenizer, *, model_max_length: int, chat: bool) -> dict[str, Any]:
    """Special tokens and limits, as tokenizer_config.json and the server's /tokenizer_info give them."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
            "eos_token": "<|end|>" if chat else "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": None,
            "model_max_length": model_max_length, "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "vocab_size": tokenizer.vocab_size,
            **({"chat_template": CHAT_TEMPLATE} if chat else {})}


def export_hf_tokenizer(tokenizer, out_dir: str | Path, *, model_max_length: int, chat: bool = False) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tokenizer.hf.to_str(pretty=False))
    config = tokenizer_info(tokenizer, model_max_length=model_max_length, chat=chat)
    config.pop("vocab_size")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return out
