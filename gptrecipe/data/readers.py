"""Readers: documents (strings) out of .txt, .jsonl, .parquet files, directories, and builtin corpora."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if line is None:  # find the line of the bad byte for the message
            line = raw[: e.start].count(b"\n") + 1
            offset = e.start
        else:
            offset = e.start
        raise DataError(f"{path}: line {line}: invalid UTF-8 byte 0x{raw[e.start]:02x} at byte offset {offset} "
                        "(convert the file to UTF-8)") from None


def _read_txt(path: Path) -> Iterator[str]:
    yield _decode(path.read_bytes(), path)


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object with a {text_field!r} field")
            text = obj.get(text_field)
            if not isinstance(text, str):
                what = "missing" if text_field not in obj else f"not a string ({type(text).__name__})"
                raise DataError(f"{path}: line {lineno}: field {text_field!r} is {what}")
            yield text


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'gptrecipe[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"{path}: row {row}: column {text_field!r} is not text")
            yield value


def read_documents(source: str | Path, *, text_field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of a file, a directory (recursively) or `builtin:NAME`."""
    src = str(source)
    count = 0
    for doc in _iter_source(src, text_field):
        if doc.strip():
            count += 1
            yield doc
    if count == 0:
        raise DataError(f"empty corpus: {src} has no non-empty documents")


def _iter_source(src: str, text_field: str) -> Iterator[str]:
    if src.startswith("builtin:"):
        from .corpora import builtin_documents

        yield from builtin_documents(src.removeprefix("builtin:"))
        return
    path = Path(src)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"{path}: directory has no {', '.join(SUFFIXES)} files")
        for f in files:
            yield from _iter_file(f, text_field)
    elif path.is_file():
        yield from _iter_file(path, text_field)
    else:
        raise DataError(f"{path}: no such file or directory")


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix in (".txt", ".md"):
        yield from _read_txt(path)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path, text_field)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path, text_field)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(SUFFIXES)})")


def source_files(src: str) -> list[Path]:
    """The files a (non-builtin) source reads, for content hashing."""
    path = Path(src)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    return [path]
