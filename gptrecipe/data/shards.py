"""Tokenize each corpus once into numpy memmap shards (uint16, or uint32 for vocabularies over 65,536).

    <cache_dir>/<corpus name>-<hash16>/train_000.bin train_001.bin ... val_000.bin meta.json

A corpus is one token stream: every document is preceded by <|endoftext|> (the separator), and the last
`val_fraction` of the stream is the validation split. The directory name holds a hash of everything the
tokens depend on (tokenizer, source bytes or builtin package version, text field, val fraction, format), so
a second run reuses the shards without tokenizing, and a changed input gets a new directory. Directories are
written under a temporary name and renamed when complete, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..io import temp_path
from .corpora import builtin_id
from .mixture import CorpusConfig, DataConfig
from .readers import TEXT_SUFFIXES, DataError, read_documents, source_files

FORMAT_VERSION = 2
PIECE_CHARS = 100_000  # long documents are tokenized in pieces of about this size, in parallel
BATCH_CHARS = 4_000_000  # text handed to the tokenizer's thread pool at once
COPY_TOKENS = 1 << 24  # tokens per read when moving the validation tail out of the train shards


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class TokenShards:
    """A token sequence stored in one or more memmapped shard files, or a contiguous view of one.

    Behaves like a 1-D array for what training needs: len(), slicing (`s[a:b]`, native dtype) and
    `window(start, length)` (int64), reading across shard boundaries where needed.
    """

    def __init__(self, arrays: list[np.ndarray], start: int = 0, stop: int | None = None):
        self.arrays = [a for a in arrays if len(a)]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        total = int(self.offsets[-1])
        self.start, self.stop = start, total if stop is None else stop
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"view [{start}, {stop}) out of range for {total} tokens")

    @classmethod
    def open(cls, files: list[Path], dtype: np.dtype) -> TokenShards:
        return cls([np.memmap(f, dtype=dtype, mode="r") for f in files if f.stat().st_size])

    @property
    def dtype(self) -> np.dtype:
        return self.arrays[0].dtype if self.arrays else np.dtype(np.uint16)

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self, start: int, stop: int) -> TokenShards:
        """Tokens [start, stop) of this sequence, without copying."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"view [{start}, {stop}) out of range for {len(self)} tokens")
        return TokenShards(self.arrays, self.start + start, self.start + stop)

    def __getitem__(self, s: slice) -> np.ndarray:
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise TypeError("TokenShards supports contiguous slices only, e.g. tokens[a:b]")
        lo, hi, _ = s.indices(len(self))
        return self._read(lo, max(0, hi - lo))

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) out of range for {len(self)} tokens")
        return self._read(start, length).astype(np.int64)

    def _read(self, start: int, length: int) -> np.ndarray:
        start += self.start
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while length > 0:
            lo = start - int(self.offsets[i])
            part = self.arrays[i][lo: lo + length]
            parts.append(part)
            start += len(part)
            length -= len(part)
            i += 1
        if not parts:
            return np.empty(0, self.dtype)
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])  # copies out of the memmap


@dataclass
class CorpusTokens:
    """One corpus of the mixture: its token stream, split into train (head) and val (tail)."""

    name: str
    weight: float  # normalised mixture weight
    stream: TokenShards  # train shards then val shards
    val_start: int  # train = stream[:val_start], val = stream[val_start:]
    meta: dict[str, Any]
    train: TokenShards = field(init=False, repr=False)
    val: TokenShards = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.train = self.stream.view(0, self.val_start)
        self.val = self.stream.view(self.val_start, len(self.stream))

    def fit_block_size(self, block_size: int) -> CorpusTokens:
        """This corpus with at least one (block_size + 1)-token window in each split: the train/val
        boundary moves earlier if the val tail is shorter (tiny corpora); DataError if it cannot."""
        need, n = block_size + 1, len(self.stream)
        n_val = max(len(self.val), need)
        if n - n_val < need:
            raise DataError(f"corpus {self.name!r} ({self.meta.get('source')}) has {n:,} tokens: too few "
                            f"for a train and a val split of at least block_size + 1 = {need} tokens each; "
                            "add text or use a shorter context (model.block_size)")
        return self if n_val == len(self.val) else dataclasses.replace(self, val_start=n - n_val)


@dataclass
class PreparedData:
    """The tokenized mixture: per corpus its weight and memmapped train/val tokens."""

    corpora: list[CorpusTokens]
    vocab_size: int
    eot_id: int

    def corpus(self, name: str) -> CorpusTokens:
        for c in self.corpora:
            if c.name == name:
                return c
        raise DataError(f"no corpus named {name!r}; have {', '.join(c.name for c in self.corpora)}")

    def fit_block_size(self, block_size: int) -> PreparedData:
        """Every corpus with at least one block_size + 1 window in train and in val (see CorpusTokens)."""
        return dataclasses.replace(self, corpora=[c.fit_block_size(block_size) for c in self.corpora])

    def summary(self) -> list[dict[str, Any]]:
        """One row per corpus for reports; `epochs_per_1M` = passes over its train split per million
        training tokens drawn from the mixture (weight, not size, decides it)."""
        return [{"corpus": c.name, "source": c.meta["source"], "weight": round(c.weight, 4),
                 "documents": c.meta["documents"], "chars": c.meta["chars"], "train_tokens": len(c.train),
                 "val_tokens": len(c.val), "epochs_per_1M": round(c.weight * 1e6 / max(1, len(c.train)), 3)}
                for c in self.corpora]


# ---- cache key ---------------------------------------------------------------------------------------------

def cache_key(corpus: CorpusConfig, val_fraction: float, fingerprint: str) -> str:
    """16 hex digits of sha256 over everything the shards depend on."""
    h = hashlib.sha256()
    h.update(f"format{FORMAT_VERSION}|{fingerprint}|{corpus.text_field}|{val_fraction!r}|".encode())
    if corpus.source.startswith("builtin:"):
        h.update(builtin_id(corpus.source.removeprefix("builtin:")).encode())
    else:
        root = Path(corpus.source)
        for f in source_files(root):
            rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
            h.update(f"|{rel}|{f.stat().st_size}|".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


# ---- tokenizing --------------------------------------------------------------------------------------------

def _cut(doc: str, lo: int, hi: int) -> int:
    """A cut in doc[lo:hi] where tokenization does not change: after a newline that precedes a non-space
    character, else before a space that follows a non-space character, else at hi."""
    i = doc.rfind("\n", lo, hi)
    while i != -1 and doc[i + 1: i + 2].isspace():
        i = doc.rfind("\n", lo, i)
    if i != -1:
        return i + 1
    i = doc.rfind(" ", lo + 1, hi)
    while i != -1 and doc[i - 1].isspace():
        i = doc.rfind(" ", lo + 1, i)
    return i if i != -1 else hi


def split_pieces(doc: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut a long document into pieces of at most `size` chars (at least size/2 unless it ends);
    "".join(pieces) == doc, and the cuts fall at line (else word) boundaries."""
    pieces, start = [], 0
    while len(doc) - start > size:
        cut = _cut(doc, start + size // 2, start + size)
        pieces.append(doc[start:cut])
        start = cut
    pieces.append(doc[start:])
    return pieces


def _batches(docs: Iterable[str]) -> Iterator[tuple[list[str], list[bool]]]:
    """Document pieces in batches of about BATCH_CHARS; the flags mark the first piece of each document."""
    texts: list[str] = []
    firsts: list[bool] = []
    size = 0
    for doc in docs:
        for i, piece in enumerate(split_pieces(doc, PIECE_CHARS)):
            texts.append(piece)
            firsts.append(i == 0)
            size += len(piece)
            if size >= BATCH_CHARS:
                yield texts, firsts
                texts, firsts, size = [], [], 0
    if texts:
        yield texts, firsts


class _ShardWriter:
    """Appends tokens to <prefix>_000.bin, <prefix>_001.bin, ... of at most `limit` tokens each."""

    def __init__(self, directory: Path, prefix: str, dtype: np.dtype, limit: int):
        self.dir, self.prefix, self.dtype, self.limit = directory, prefix, dtype, limit
        self.files: list[Path] = []
        self.fh, self.count, self.total = None, 0, 0  # count: tokens in the current file

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.fh is None or self.count >= self.limit:
                self._next()
            take = min(len(tokens), self.limit - self.count)
            self.fh.write(tokens[:take].astype(self.dtype, copy=False).tobytes())
            self.count += take
            self.total += take
            tokens = tokens[take:]

    def _next(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.files.append(self.dir / f"{self.prefix}_{len(self.files):03d}.bin")
        self.fh, self.count = open(self.files[-1], "wb"), 0

    def close(self) -> None:
        if self.fh is None:
            self._next()
        self.fh.close()


def _move_tail(train: _ShardWriter, val: _ShardWriter, n_val: int) -> None:
    """Move the last n_val tokens of the (closed) train shards into `val`, truncating the train shards."""
    itemsize = train.dtype.itemsize
    sizes = [f.stat().st_size // itemsize for f in train.files]
    cut = sum(sizes) - n_val
    begin = 0
    for f, n in zip(train.files, sizes, strict=True):
        lo = max(cut - begin, 0)
        for i in range(lo, n, COPY_TOKENS):
            val.write(np.fromfile(f, dtype=train.dtype, count=min(COPY_TOKENS, n - i), offset=i * itemsize))
        if lo < n:
            os.truncate(f, lo * itemsize)
        begin += n
    for f in [f for f in train.files if not f.stat().st_size]:
        f.unlink()
        train.files.remove(f)
    val.close()


def _total_bytes(corpus: CorpusConfig) -> int | None:
    """Text bytes to tokenize when known in advance (plain-text sources), for the progress bar."""
    if corpus.source.startswith("builtin:"):
        return None
    files = source_files(corpus.source)
    return sum(f.stat().st_size for f in files) if all(f.suffix.lower() in TEXT_SUFFIXES for f in files) else None


def _tokenize_corpus(corpus: CorpusConfig, cfg: DataConfig, tokenizer, out: Path, key: str,
                     show_progress: bool) -> None:
    """Tokenize one corpus into `out` (written as a temp dir, renamed when complete)."""
    dtype = token_dtype(tokenizer.vocab_size)
    threads = cfg.num_workers or os.cpu_count() or 1
    tmp = temp_path(out)
    tmp.mkdir(parents=True)
    try:
        train = _ShardWriter(tmp, "train", dtype, cfg.shard_tokens)
        eot = np.array([tokenizer.eot_id], dtype=dtype)
        n_docs = n_chars = n_bytes = 0
        with tqdm(desc=f"tokenizing {corpus.name}", total=_total_bytes(corpus), unit="B", unit_scale=True,
                  disable=not show_progress) as bar:
            for texts, firsts in _batches(read_documents(corpus.source, text_field=corpus.text_field)):
                parts = []
                encoded = tokenizer.encode_batch(texts, num_threads=threads)
                for ids, first in zip(encoded, firsts, strict=True):
                    if first:
                        parts.append(eot)
                        n_docs += 1
                    parts.append(np.asarray(ids, dtype=dtype))
                train.write(np.concatenate(parts))
                size = sum(len(t.encode("utf-8")) for t in texts)
                n_chars += sum(map(len, texts))
                n_bytes += size
                bar.update(size)
                bar.set_postfix(docs=n_docs, tokens=train.total, refresh=False)
        train.close()
        n_tokens = train.total
        n_val = round(n_tokens * cfg.val_fraction)
        if n_val < 2 or n_tokens - n_val < 2:
            raise DataError(f"corpus {corpus.name!r} ({corpus.source}) is too small to split into train "
                            f"and val: {n_tokens} tokens with val_fraction {cfg.val_fraction}")
        val = _ShardWriter(tmp, "val", dtype, cfg.shard_tokens)
        _move_tail(train, val, n_val)
        meta = {"format": FORMAT_VERSION, "name": corpus.name, "source": corpus.source, "key": key,
                "text_field": corpus.text_field, "val_fraction": cfg.val_fraction,
                "tokenizer": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id, "dtype": dtype.name, "documents": n_docs, "chars": n_chars,
                "bytes": n_bytes, "tokens": n_tokens, "train_tokens": n_tokens - n_val, "val_tokens": n_val,
                "train_shards": [f.name for f in train.files], "val_shards": [f.name for f in val.files]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists() and not (out / "meta.json").exists():
            shutil.rmtree(out)  # leftovers of an older, incomplete layout
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "meta.json").exists():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_corpus(d: Path, name: str, weight: float) -> CorpusTokens:
    meta = json.loads((d / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    try:
        stream = TokenShards.open([d / f for f in meta["train_shards"] + meta["val_shards"]], dtype)
    except OSError as e:
        raise DataError(f"token cache {d} is damaged ({e}); delete the directory and run again") from None
    if len(stream) != meta["tokens"]:
        raise DataError(f"token cache {d} holds {len(stream)} tokens, its meta.json says {meta['tokens']}; "
                        "delete the directory and run again")
    return CorpusTokens(name, weight, stream, meta["train_tokens"], meta)


def _check_config(cfg: DataConfig) -> None:
    if not cfg.corpora:
        raise DataError("data.corpora is empty: give at least one corpus")
    names = [c.name for c in cfg.corpora]
    if len(set(names)) != len(names):
        raise DataError(f"data.corpora: names must be unique, got {names}")
    for c in cfg.corpora:
        if not c.name or any(ch in c.name for ch in "/\\:") or c.name.startswith("."):
            raise DataError(f"data.corpora: name {c.name!r} must be a plain label (no / \\ : or leading dot)")
        if not (math.isfinite(c.weight) and c.weight > 0):
            raise DataError(f"data.corpora: corpus {c.name!r}: weights must be > 0, got {c.weight}")
    if not 0 < cfg.val_fraction < 1:
        raise DataError(f"data.val_fraction must be in (0, 1), got {cfg.val_fraction}")
    if cfg.shard_tokens < 1:
        raise DataError(f"data.shard_tokens must be >= 1, got {cfg.shard_tokens}")
    if cfg.num_workers < 0:
        raise DataError(f"data.num_workers must be >= 0 (0 = all cores), got {cfg.num_workers}")


def prepare_data(cfg: DataConfig, tokenizer, *, block_size: int | None = None,
                 show_progress: bool = True) -> PreparedData:
    """Tokenize every corpus of the mixture (or reuse the cache) and memory-map its shards.

    `tokenizer` needs encode_batch(texts, num_threads=), eot_id, vocab_size and fingerprint. With
    `block_size`, every corpus is checked (and its val split enlarged if needed) to hold at least one
    block_size + 1 window per split; BatchLoader does the same.
    """
    _check_config(cfg)
    total = sum(c.weight for c in cfg.corpora)
    corpora = []
    for c in cfg.corpora:
        key = cache_key(c, cfg.val_fraction, tokenizer.fingerprint)
        d = Path(cfg.cache_dir) / f"{c.name}-{key}"
        if not (d / "meta.json").exists():
            _tokenize_corpus(c, cfg, tokenizer, d, key, show_progress)
        corpora.append(_load_corpus(d, c.name, c.weight / total))
    data = PreparedData(corpora, tokenizer.vocab_size, tokenizer.eot_id)
    return data.fit_block_size(block_size) if block_size else data
