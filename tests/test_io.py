"""gptrecipe.io: JSONL errors naming file and line, torn lines, atomic writes; the builtin:icl cache key."""

import numpy as np
import pytest

from gptrecipe.data import CorpusConfig, icl
from gptrecipe.data.shards import cache_key
from gptrecipe.io import (
    DataError,
    append_line,
    atomic_path,
    atomic_write_text,
    complete_lines,
    drop_torn_line,
    read_jsonl,
)


def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"x": 1}\n\n[2]\n{"x": \n')
    with pytest.raises(DataError, match=r"a.jsonl: line 4: malformed JSON"):
        list(read_jsonl(p))
    p.write_bytes(b'{"x": 1}\n\n[2]\n')
    assert list(read_jsonl(p)) == [(1, {"x": 1}), (3, [2])]
    p.write_bytes(b'{"x": 1}\n{"x": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"a.jsonl: line 2: invalid UTF-8 byte 0xe9 at byte offset 19"):
        list(read_jsonl(p))
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_append_line_and_torn_lines(tmp_path):
    p = tmp_path / "sub" / "r.jsonl"
    append_line(p, {"a": "é"})
    append_line(p, {"b": 2})
    assert p.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'
    assert not drop_torn_line(p) and complete_lines(p) == ['{"a": "é"}', '{"b": 2}']
    with open(p, "a") as f:
        f.write('{"c": ')  # kill -9 mid-write
    assert complete_lines(p) == ['{"a": "é"}', '{"b": 2}']
    assert drop_torn_line(p) and p.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'
    assert not drop_torn_line(p)
    p.write_text("torn")
    assert complete_lines(p) == [] and drop_torn_line(p) and p.read_bytes() == b""
    assert not drop_torn_line(tmp_path / "missing.jsonl")


def test_atomic_writes_replace_and_leave_no_temp(tmp_path):
    p = tmp_path / "out" / "report.md"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new ✓")
    assert p.read_text(encoding="utf-8") == "new ✓"
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert p.read_text(encoding="utf-8") == "new ✓"
    with atomic_path(tmp_path / "out" / "a.npy") as tmp:  # the suffix is kept: np.save adds none
        np.save(tmp, np.arange(3))
    assert np.load(tmp_path / "out" / "a.npy").tolist() == [0, 1, 2]
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["a.npy", "report.md"]


@pytest.fixture
def fresh_icl_fingerprint():
    icl.fingerprint.cache_clear()
    yield
    icl.fingerprint.cache_clear()


def test_icl_cache_key_follows_the_generated_documents(monkeypatch, fresh_icl_fingerprint):
    calls = []

    def generator(first: str):
        def docs(n_docs: int = 6_000, seed: int = 0):
            calls.append(first)
            yield from (first, "Classify: a b -> red\n")
        return docs

    corpus = CorpusConfig("icl", "builtin:icl", 1.0)
    monkeypatch.setattr(icl, "icl_documents", generator("Classify: x y -> red\n"))
    key = cache_key(corpus, 0.1, "tok")
    assert cache_key(corpus, 0.1, "tok") == key and len(calls) == 1  # generated once per process
    icl.fingerprint.cache_clear()
    assert cache_key(corpus, 0.1, "tok") == key  # same documents, same key
    icl.fingerprint.cache_clear()
    monkeypatch.setattr(icl, "icl_documents", generator("Classify: x y -> green\n"))
    assert cache_key(corpus, 0.1, "tok") != key
