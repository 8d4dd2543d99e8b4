"""Language-modeling metrics of a checkpoint on any corpus: loss, perplexity and bits per byte.

The corpus goes through the pretraining data layer (same readers, token cache and train/val split), so
`split="val"` is exactly the held-out tail the pretraining stage reports. Windows of block_size + 1 tokens
are laid end to end (evenly spread when capped by `max_tokens`); every token after a window's first is
scored once. Bits per byte = summed loss in nats / ln 2 / the UTF-8 bytes of the scored tokens (special
tokens such as <|endoftext|> add loss but no bytes), so it compares across tokenizers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import CorpusConfig, DataConfig, DataError, corpora_from_paths, prepare_data

SPLITS = ("val", "train", "all")


def token_byte_lengths(tok) -> np.ndarray:
    """UTF-8 bytes of each token id (0 for special tokens)."""
    special = {tok.eot_id, *getattr(tok, "specials", {}).values()}
    decode = getattr(tok, "decode_bytes", None)
    return np.array([0 if i in special else len(decode([i]) if decode else tok.decode([i]).encode("utf-8"))
                     for i in range(tok.vocab_size)], dtype=np.int64)


@torch.no_grad()
def corpus_metrics(model: torch.nn.Module, tok, source: str, *, split: str = "val", val_fraction: float = 0.05,
                   text_field: str = "text", max_tokens: int = 100_000, batch_size: int = 16,
                   cache_dir: str | Path = "runs/cache/tokens", name: str | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Loss (nats/token), perplexity and bits per byte of `model` on `source` (a file, directory or builtin:NAME).

    `name` is the corpus' label (the token cache is per name): a pretraining mixture's corpus name reuses its
    tokens and gives exactly its validation split.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    name = name or corpora_from_paths([source])[0].name
    cfg = DataConfig(corpora=[CorpusConfig(name, source, 1.0, text_field)], val_fraction=val_fraction,
                     cache_dir=str(cache_dir))
    block = model.config.block_size
    # as in pretraining, a small corpus' val split grows to one window (block_size + 1 tokens)
    corpus = prepare_data(cfg, tok, block_size=None if split == "all" else block, show_progress=progress).corpora[0]
    tokens = {"val": corpus.val, "train": corpus.train, "all": corpus.stream}[split]
    n_windows = (len(tokens) - 1) // block
    if n_windows < 1:
        raise DataError(f"{source}: the {split} split has {len(tokens)} tokens, fewer than a window of "
                        f"block_size + 1 = {block + 1}")
    take = max(1, min(n_windows, max_tokens // block))
    starts = np.linspace(0, n_windows - 1, take).round().astype(np.int64) * block
    nbytes = token_byte_lengths(tok)
    device = next(model.parameters()).device
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for b in range(0, take, batch_size):
        rows = torch.from_numpy(np.stack([tokens.window(int(s), block + 1) for s in starts[b: b + batch_size]]))
        x, y = rows[:, :-1].to(device), rows[:, 1:]
        logits = model(x)[0].float()
        total_nats += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1).to(device),
                                      reduction="sum").item()
        total_tokens += y.numel()
        total_bytes += int(nbytes[y.numpy()].sum())
    loss = total_nats / total_tokens
    return {"corpus": name, "source": source, "split": split, "tokens": total_tokens, "bytes": total_bytes,
            "loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": total_nats / math.log(2) / total_bytes if total_bytes else float("nan")}


@torch.no_grad()
def induction_score(model: torch.nn.Module, tok, *, sequences: int = 64, length: int = 15, seed: int = 0) -> float:
    """Copying from the context, the skill of induction heads (Olsson et al. 2022): `sequences` random sequences of
    `length` ordinary tokens, each after <|endoftext|> and repeated once; the share of the second copy's tokens after
    its first that the model predicts greedily. Near 0 without induction heads (the model cannot copy what a tool
    returns, or an operand of a question), near 1 with them."""
    length = min(length, (model.config.block_size - 1) // 2)
    ordinary = torch.from_numpy(np.flatnonzero(token_byte_lengths(tok) > 0))
    g = torch.Generator().manual_seed(seed)
    x = ordinary[torch.randint(len(ordinary), (sequences, length), generator=g)]
    ids = torch.cat([torch.full((sequences, 1), tok.eot_id), x, x], 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = model(ids[:, :-1].to(device))[0]
    model.train(was_training)
    # position p predicts ids[p + 1]; the second copy's tokens 2..length are ids[length + 2:]
    pred = logits[:, length + 1:].argmax(-1).cpu()
    return float((pred == ids[:, length + 2:]).float().mean())
