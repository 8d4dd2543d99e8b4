"""Data mixture config: which corpora, and with what sampling weight (GPT-3 samples by weight, not by size).

As TOML (configs/data/default.toml; `[data] preset = "default"` in a run config):

    val_fraction = 0.05
    [[corpora]]
    name = "shakespeare"
    source = "builtin:shakespeare"
    weight = 0.6
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CorpusConfig:
    name: str  # label in logs, reports and the cache directory name
    source: str  # a .txt/.md/.jsonl/.parquet file, a directory, or builtin:shakespeare|kjv|chatterbot
    weight: float = 1.0  # sampling weight; normalised over the mixture
    text_field: str = "text"  # field (.jsonl) or column (.parquet) holding the text


def default_corpora() -> list[CorpusConfig]:
    """The embedded mixture, weighted by what the model should learn rather than by size.

    Sizes (chars; tokens with a 4,096-token BPE): Shakespeare 38 plays, 5.0 M, 1.5 M; KJV 66 books, 4.1 M,
    1.06 M; chatterbot 2,025 dialogues, 0.22 M, 0.08 M. Shakespeare is what the samples should read like,
    so it gets most of the rows. Chatterbot is 3% of the tokens; at 0.15 it is repeated ~5x as often as
    Shakespeare (2.0 vs 0.42 epochs per million training tokens): enough to teach the A:/B: turn taking
    that SFT builds on, below GPT-3's most upsampled corpus (Wikipedia, 3.4 epochs vs Common Crawl's 0.44:
    ~8x), as these are short canned answers, half of them tech support, not curated prose. 0.2 would spend
    a fifth of the compute on 3% of the data. The KJV (41% of the text) is a second register of English
    but not the style to imitate: 0.25. `icl` (generated, ~0.6 M tokens) holds documents of solved
    examples of random rules, one rule per document: a model learns to learn in context only from text where
    reading the context pays (GPT-3's "meta-learning" during pretraining). At 0.3 (23% of the rows) the tiny
    model of the main job learns it within its 700 steps; at 0.15 it did not (gptrecipe/evaluate/synthetic.py).
    """
    return [
        CorpusConfig("shakespeare", "builtin:shakespeare", 0.6),
        CorpusConfig("kjv", "builtin:kjv", 0.25),
        CorpusConfig("chatterbot", "builtin:chatterbot", 0.15),
        CorpusConfig("icl", "builtin:icl", 0.3),
    ]


@dataclass
class DataConfig:
    corpora: list[CorpusConfig] = field(default_factory=default_corpora)
    val_fraction: float = 0.05  # held-out tail of each corpus' token stream
    cache_dir: str = "runs/cache/tokens"  # tokenized shards, keyed by content and tokenizer
    shard_tokens: int = 50_000_000  # max tokens per shard file
    num_workers: int = 0  # tokenizer threads; 0 = os.cpu_count()


def corpora_from_paths(paths: list[str]) -> list[CorpusConfig]:
    """The user's own files or directories (or builtin:NAME) as a mixture of equal weights, named after
    the file stems; a repeated stem gets a number (x, x2, x3)."""
    names: list[str] = []
    for p in paths:
        stem = Path(p.removeprefix("builtin:")).stem or "corpus"
        name, k = stem, 1
        while name in names:
            k += 1
            name = f"{stem}{k}"
        names.append(name)
    return [CorpusConfig(n, p, 1.0) for n, p in zip(names, paths, strict=True)]
