"""Data mixture config: which corpora, and with what sampling weight (GPT-3 samples by weight, not size)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CorpusConfig:
    name: str  # label in logs and reports
    source: str  # a file, a directory, or builtin:shakespeare | builtin:kjv | builtin:chatterbot
    weight: float = 1.0  # sampling weight; normalised over the mixture
    text_field: str = "text"  # field / column holding the text in .jsonl / .parquet


def default_corpora() -> list[CorpusConfig]:
    """Shakespeare (5 MB) weighted up, the KJV Bible (4 MB) and the dialogues (0.2 MB, so ~20 epochs)."""
    return [
        CorpusConfig("shakespeare", "builtin:shakespeare", 0.6),
        CorpusConfig("kjv", "builtin:kjv", 0.25),
        CorpusConfig("chatterbot", "builtin:chatterbot", 0.15),
    ]


@dataclass
class DataConfig:
    corpora: list[CorpusConfig] = field(default_factory=default_corpora)
    val_fraction: float = 0.05  # held-out tail of each corpus' token stream
    cache_dir: str = "runs/cache/tokens"
    shard_tokens: int = 50_000_000  # max tokens per shard file
    num_workers: int = 0  # tokenizer threads; 0 = all cores


def corpora_from_paths(paths: list[str]) -> list[CorpusConfig]:
    """The user's own files or directories as a mixture of equal weights, named after the files."""
    names: list[str] = []
    for p in paths:
        stem = Path(p.removeprefix("builtin:")).stem or "corpus"
        names.append(stem if stem not in names else f"{stem}{len(names)}")
    return [CorpusConfig(n, p, 1.0) for n, p in zip(names, paths, strict=True)]
