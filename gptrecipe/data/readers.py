"""Readers: documents (strings) out of .txt/.md, .jsonl and .parquet files, directories and builtin corpora.

    read_documents("notes.txt")                 # the whole file is one document
    read_documents("web.jsonl", text_field="t") # one document per line, from field "t"
    read_documents("dump/")                     # every supported file below, in sorted path order
    read_documents("builtin:shakespeare")       # an embedded corpus (see corpora.py)

Every problem with the input raises DataError naming the file, the line (or row) and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..io import DataError, decode_utf8, read_jsonl
from .corpora import builtin_documents

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for lineno, obj in read_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {lineno}: expected a JSON object with a {text_field!r} field, "
                            f"got {type(obj).__name__}")
        text = obj.get(text_field)
        if not isinstance(text, str):
            what = "missing" if text_field not in obj else f"not a string ({type(text).__name__})"
            raise DataError(f"{path}: line {lineno}: field {text_field!r} is {what}")
        yield text


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet files needs pyarrow: "
                        "pip install 'gptrecipe[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(names)})")
    batches = pf.iter_batches(columns=[text_field], batch_size=PARQUET_BATCH_ROWS)
    for row, value in enumerate((v for batch in batches for v in batch.column(0).to_pylist()), start=1):
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{path}: row {row}: column {text_field!r} is not text ({type(value).__name__})")
        yield value


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        yield decode_utf8(path.read_bytes(), path, line=1)
    elif suffix == ".jsonl":
        yield from _read_jsonl(path, text_field)
    elif suffix == ".parquet":
        yield from _read_parquet(path, text_field)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(SUFFIXES)})")


def source_files(source: str | Path) -> list[Path]:
    """The files a (non-builtin) source reads, in reading order: the file itself, or the supported files
    below a directory (recursively, sorted, hidden files and folders skipped)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{path}: the directory has no {', '.join(SUFFIXES)} files")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{path}: no such file or directory")


def read_documents(source: str | Path, *, text_field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of a file, a directory (recursively) or `builtin:NAME`."""
    src = str(source)
    if src.startswith("builtin:"):
        docs = builtin_documents(src.removeprefix("builtin:"))
    else:
        docs = (doc for f in source_files(src) for doc in _read_file(f, text_field))
    count = 0
    for doc in docs:
        if doc.strip():
            count += 1
            yield doc
    if count == 0:
        raise DataError(f"empty corpus: {src} holds no non-empty document")
