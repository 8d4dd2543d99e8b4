"""File I/O of every stage: JSONL with errors naming file and line, durable appends, atomic writes (imports
nothing from gptrecipe)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data or data config; the message names the file, line and field involved."""


def decode_utf8(raw: bytes, path: str | Path, line: int, offset: int = 0) -> str:
    """UTF-8 decode `raw` (which starts at byte `offset` of the file, on line `line`)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line += raw.count(b"\n", 0, e.start)
        raise DataError(f"{path}: line {line}: invalid UTF-8 byte 0x{raw[e.start]:02x} at byte offset "
                        f"{offset + e.start} (convert the file to UTF-8)") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, object) for each non-blank line; bad UTF-8 or JSON raises DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_utf8(raw, path, lineno, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            yield lineno, obj


def append_line(path: str | Path, obj: Any) -> None:
    """Append `obj` as one JSON line, flushed and fsynced (creates the folder if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def drop_torn_line(path: str | Path) -> bool:
    """Cut a last line without its newline (a write interrupted by kill -9); True if there was one."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if not data or data.endswith(b"\n"):
        return False
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def complete_lines(path: str | Path) -> list[str]:
    """Non-empty lines, without a torn last line (no newline yet) that a kill -9 mid-write leaves behind."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [ln for ln in text[: text.rfind("\n") + 1].splitlines() if ln.strip()]


def temp_path(path: str | Path) -> Path:
    """A unique hidden sibling of `path` with the same suffix (libraries pick the format by it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def fsync_tree(path: str | Path) -> None:
    """fsync a file, or a folder and everything below it (before renaming it into place)."""
    root = Path(path)
    for p in [*(root.rglob("*") if root.is_dir() else []), root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp file path to write (e.g. savefig, np.save); on success it is fsynced and renamed onto
    `path`, on error removed. Readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_tree(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
