"""Tokenize each corpus once into numpy memmap shards (uint16/uint32), cached by content hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .corpora import builtin_id
from .mixture import CorpusConfig, DataConfig
from .readers import DataError, read_documents, source_files

FORMAT_VERSION = 1
PIECE_CHARS = 100_000  # long documents are tokenized in pieces of about this size, in parallel
BATCH_CHARS = 4_000_000  # text handed to the tokenizer's thread pool at once


class TokenShards:
    """A corpus split as one long token sequence stored in one or more memmap shard files."""

    def __init__(self, files: list[Path], dtype: np.dtype):
        self.arrays = [np.memmap(f, dtype=dtype, mode="r") for f in files if f.stat().st_size]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries if needed."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while filled < length:
            a = self.arrays[i]
            lo = start + filled - int(self.offsets[i])
            take = min(length - filled, len(a) - lo)
            out[filled: filled + take] = a[lo: lo + take]
            filled += take
            i += 1
        return out


@dataclass
class CorpusTokens:
    name: str
    weight: float  # normalised mixture weight
    train: TokenShards
    val: TokenShards
    meta: dict[str, Any]


@dataclass
class PreparedData:
    corpora: list[CorpusTokens]
    vocab_size: int
    eot_id: int

    def corpus(self, name: str) -> CorpusTokens:
        for c in self.corpora:
            if c.name == name:
                return c
        raise DataError(f"no corpus named {name!r}; have {', '.join(c.name for c in self.corpora)}")

    def summary(self) -> list[dict[str, Any]]:
        return [{"corpus": c.name, "weight": round(c.weight, 4), "documents": c.meta["documents"],
                 "chars": c.meta["chars"], "train_tokens": len(c.train), "val_tokens": len(c.val),
                 "epochs_per_1M_tokens": round(c.weight * 1e6 / max(1, len(c.train)), 3)} for c in self.corpora]


def cache_key(corpus: CorpusConfig, cfg: DataConfig, fingerprint: str) -> str:
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION}|{fingerprint}|{corpus.text_field}|{cfg.val_fraction}|".encode())
    if corpus.source.startswith("builtin:"):
        h.update(builtin_id(corpus.source.removeprefix("builtin:")).encode())
    else:
        files = source_files(corpus.source)
        if not files or not all(f.is_file() for f in files):
            raise DataError(f"corpus {corpus.name!r}: {corpus.source} has no readable files")
        for f in files:
            h.update(str(f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def split_pieces(doc: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut a long document after newlines into pieces of about `size` chars; "".join(pieces) == doc."""
    pieces, start = [], 0
    while len(doc) - start > size:
        cut = doc.rfind("\n", start + size // 2, start + size)
        cut = cut + 1 if cut != -1 else start + size
        pieces.append(doc[start:cut])
        start = cut
    pieces.append(doc[start:])
    return pieces


def _batches(docs: Iterator[str]) -> Iterator[tuple[list[str], list[bool]]]:
    """Group document pieces into batches; the flag marks the first piece of each document."""
    texts: list[str] = []
    starts: list[bool] = []
    size = 0
    for doc in docs:
        for i, piece in enumerate(split_pieces(doc)):
            texts.append(piece)
            starts.append(i == 0)
            size += len(piece)
        if size >= BATCH_CHARS:
            yield texts, starts
            texts, starts, size = [], [], 0
    if texts:
        yield texts, starts


class _ShardWriter:
    def __init__(self, directory: Path, prefix: str, dtype, shard_tokens: int):
        self.dir, self.prefix, self.dtype, self.limit = directory, prefix, dtype, shard_tokens
        self.index, self.count, self.fh = 0, 0, None
        self.files: list[Path] = []

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.fh is None or self.count >= self.limit:
                self._next()
            take = min(len(tokens), self.limit - self.count)
            self.fh.write(tokens[:take].astype(self.dtype).tobytes())
            self.count += take
            tokens = tokens[take:]

    def _next(self) -> None:
        if self.fh:
            self.fh.close()
        path = self.dir / f"{self.prefix}_{self.index:03d}.bin"
        self.files.append(path)
        self.fh, self.count = open(path, "wb"), 0
        self.index += 1

    def close(self) -> None:
        if self.fh is None:
            self._next()
        self.fh.close()


def _tokenize_corpus(corpus: CorpusConfig, cfg: DataConfig, tokenizer, out: Path, show_progress: bool) -> dict:
    """Tokenize into a temp dir: a document is <|endoftext|> followed by its tokens."""
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    all_path = tmp / "all.tmp"
    n_docs = n_chars = n_tokens = 0
    bar = tqdm(desc=f"tokenizing {corpus.name}", unit="char", unit_scale=True, disable=not show_progress)
    with open(all_path, "wb") as fh:
        docs = read_documents(corpus.source, text_field=corpus.text_field)
        for texts, starts in _batches(docs):
            ids = tokenizer.encode_batch(texts, num_threads=cfg.num_workers)
            for piece_ids, is_start in zip(ids, starts, strict=True):
                if is_start:
                    fh.write(np.array([tokenizer.eot_id], dtype=dtype).tobytes())
                    n_tokens += 1
                    n_docs += 1
                fh.write(np.asarray(piece_ids, dtype=dtype).tobytes())
                n_tokens += len(piece_ids)
            chars = sum(map(len, texts))
            n_chars += chars
            bar.update(chars)
    bar.close()
    stream = np.memmap(all_path, dtype=dtype, mode="r")
    n_val = int(round(n_tokens * cfg.val_fraction))
    if n_val < 2 or n_tokens - n_val < 2:
        raise DataError(f"corpus {corpus.name!r} ({corpus.source}) is too small to split: {n_tokens} tokens "
                        f"with val_fraction {cfg.val_fraction}")
    for prefix, part in (("train", stream[: n_tokens - n_val]), ("val", stream[n_tokens - n_val:])):
        w = _ShardWriter(tmp, prefix, dtype, cfg.shard_tokens)
        for i in range(0, len(part), 1 << 24):
            w.write(np.asarray(part[i: i + (1 << 24)]))
        w.close()
    del stream
    all_path.unlink()
    meta = {"name": corpus.name, "source": corpus.source, "dtype": np.dtype(dtype).name, "documents": n_docs,
            "chars": n_chars, "tokens": n_tokens, "train_tokens": n_tokens - n_val, "val_tokens": n_val,
            "tokenizer": tokenizer.fingerprint, "format": FORMAT_VERSION}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if out.exists():  # another process finished first: keep theirs
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, out)
    return meta


def prepare_data(cfg: DataConfig, tokenizer, *, show_progress: bool = True) -> PreparedData:
    """Tokenize every corpus of the mixture (or reuse the cache) and memory-map the shards."""
    if not cfg.corpora:
        raise DataError("data.corpora is empty: give at least one corpus")
    if not 0 < cfg.val_fraction < 1:
        raise DataError(f"data.val_fraction must be in (0, 1), got {cfg.val_fraction}")
    names = [c.name for c in cfg.corpora]
    if len(set(names)) != len(names):
        raise DataError(f"corpus names must be unique: {names}")
    bad = [c.name for c in cfg.corpora if not c.weight > 0]
    if bad:
        raise DataError(f"corpus weights must be > 0: {bad}")
    total = sum(c.weight for c in cfg.corpora)
    out = []
    for c in cfg.corpora:
        d = Path(cfg.cache_dir) / f"{c.name}-{cache_key(c, cfg, tokenizer.fingerprint)}"
        if not (d / "meta.json").exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            _tokenize_corpus(c, cfg, tokenizer, d, show_progress)
        meta = json.loads((d / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        out.append(CorpusTokens(c.name, c.weight / total, TokenShards(sorted(d.glob("train_*.bin")), dtype),
                                TokenShards(sorted(d.glob("val_*.bin")), dtype), meta))
    return PreparedData(out, tokenizer.vocab_size, tokenizer.eot_id)
