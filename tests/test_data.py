import json
from pathlib import Path

import numpy as np
import pytest

from gptrecipe.data import (
    BatchLoader,
    CorpusConfig,
    DataConfig,
    DataError,
    chatterbot_conversations,
    corpora_from_paths,
    prepare_data,
    read_documents,
)
from gptrecipe.data.shards import split_pieces


def write(p: Path, text: str | bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_readers_txt_jsonl_dir(tmp_path):
    write(tmp_path / "d" / "a.txt", "first doc")
    write(tmp_path / "d" / "sub" / "b.jsonl", '{"text": "x"}\n\n{"text": "y", "id": 3}\n')
    write(tmp_path / "d" / "ignored.bin", b"\x00\x01")
    assert list(read_documents(tmp_path / "d")) == ["first doc", "x", "y"]
    write(tmp_path / "c.jsonl", '{"body": "z"}\n')
    assert list(read_documents(tmp_path / "c.jsonl", text_field="body")) == ["z"]


def test_parquet_reader(tmp_path):
    pa = pytest.importorskip("pyarrow")  # the optional extra; installed in CI
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "two"]}), tmp_path / "t.parquet")
    assert list(read_documents(tmp_path / "t.parquet")) == ["one", "two"]
    with pytest.raises(DataError, match="no column 'body'"):
        list(read_documents(tmp_path / "t.parquet", text_field="body"))


@pytest.mark.parametrize("content,msg", [
    ('{"text": "ok"}\n{"text": broken}\n', r"bad.jsonl: line 2: malformed JSON"),
    ('{"text": "ok"}\n[1, 2]\n', r"bad.jsonl: line 2: expected a JSON object"),
    ('{"body": "ok"}\n', r"bad.jsonl: line 1: field 'text' is missing"),
    ('{"text": 5}\n', r"bad.jsonl: line 1: field 'text' is not a string"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"bad.jsonl: line 2: invalid UTF-8 byte 0xe9"),
    ("\n\n", r"empty corpus"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, msg):
    p = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError, match=msg):
        list(read_documents(p))


def test_bad_txt_and_paths(tmp_path):
    p = write(tmp_path / "x.txt", b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=r"x.txt: line 2: invalid UTF-8 byte 0xff at byte offset 14"):
        list(read_documents(p))
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        list(read_documents(write(tmp_path / "x.csv", "a,b")))
    with pytest.raises(DataError, match="no such file"):
        list(read_documents(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="unknown builtin corpus 'nope'"):
        list(read_documents("builtin:nope"))


def test_builtin_corpora():
    play = next(read_documents("builtin:shakespeare"))
    assert play.startswith("A Midsummer Night's Dream") and "\nTHESEUS:\nNow, fair Hippolyta" in play
    assert not any(c in play for c in "*#_\\")
    bible = next(read_documents("builtin:kjv"))
    assert bible.startswith("In the beginning God created the heaven and the earth.") and "[" not in bible
    dialogue = next(read_documents("builtin:chatterbot"))
    assert dialogue.startswith("A: ") and "\nB: " in dialogue
    convs = chatterbot_conversations()
    assert len(convs) > 1000 and all(len(c) >= 2 for c in convs)


def test_split_pieces_reassembles_exactly():
    doc = "".join(f"line {i} " + "x" * (i % 50) + "\n" for i in range(3000))
    pieces = split_pieces(doc, size=1000)
    assert "".join(pieces) == doc and len(pieces) > 10
    assert all(len(p) <= 1000 for p in pieces) and all(p.endswith("\n") for p in pieces[:-1])
    assert split_pieces("y" * 2500, size=1000) == ["y" * 1000, "y" * 1000, "y" * 500]  # no newline: hard cut


def mixture(tmp_path: Path, big: int = 40_000, small: int = 4_000) -> DataConfig:
    write(tmp_path / "big.txt", "".join(f"big document line {i}\n" for i in range(big // 20)))
    write(tmp_path / "small.jsonl", "".join(json.dumps({"text": f"small {i}"}) + "\n" for i in range(small // 8)))
    return DataConfig(corpora=[CorpusConfig("big", str(tmp_path / "big.txt"), 1.0),
                               CorpusConfig("small", str(tmp_path / "small.jsonl"), 3.0)],
                      val_fraction=0.1, cache_dir=str(tmp_path / "cache"), shard_tokens=5_000)


def test_prepare_tokenizes_once_and_splits(tmp_path, byte_tok, monkeypatch):
    cfg = mixture(tmp_path)
    data = prepare_data(cfg, byte_tok, show_progress=False)
    big = data.corpus("big")
    assert big.train.arrays[0].dtype == np.uint16 and len(big.train.arrays) > 1  # several shards
    total = big.meta["tokens"]
    assert len(big.train) + len(big.val) == total and len(big.val) == round(total * 0.1)
    text = (tmp_path / "big.txt").read_text()
    stream = np.concatenate([big.train.window(0, len(big.train)), big.val.window(0, len(big.val))])
    assert stream[0] == byte_tok.eot_id and bytes(stream[1:].astype(np.uint8)).decode() == text
    small = data.corpus("small")
    assert small.meta["documents"] == 500 and (small.train.window(0, len(small.train)) == 256).sum() > 400
    assert data.corpora[1].weight == pytest.approx(0.75)

    calls = []
    real = type(byte_tok).encode_batch
    monkeypatch.setattr(type(byte_tok), "encode_batch", lambda self, t, num_threads=0: calls.append(1) or real(self, t))
    again = prepare_data(cfg, byte_tok, show_progress=False)  # cache hit: no tokenization at all
    assert calls == [] and len(again.corpus("big").train) == len(big.train)
    write(tmp_path / "big.txt", text + "one more line\n")  # content changed: tokenized again
    changed = prepare_data(cfg, byte_tok, show_progress=False)
    assert calls and changed.corpus("big").meta["tokens"] == total + len("one more line\n")


def test_loader_mixture_follows_weights_not_sizes(tmp_path, byte_tok):
    data = prepare_data(mixture(tmp_path), byte_tok, show_progress=False)
    loader = BatchLoader(data, block_size=16, seed=0)
    rows = [r for s in range(50) for r in loader.rows(s, 64)]
    frac_small = np.mean([i == 1 for i, _ in rows])
    assert abs(frac_small - 0.75) < 0.03  # weight 3:1 although 'small' is 10x smaller


def test_loader_batches_deterministic_shifted_and_sharded(tmp_path, byte_tok):
    data = prepare_data(mixture(tmp_path), byte_tok, show_progress=False)
    loader = BatchLoader(data, block_size=16, seed=0)
    x, y = loader.get_batch(3, 0, 4, 1)
    assert x.shape == (4, 16) and x.dtype.is_floating_point is False
    assert (x[:, 1:] == y[:, :-1]).all()
    x2, _ = BatchLoader(data, block_size=16, seed=0).get_batch(3, 0, 4, 1)
    assert (x == x2).all()
    assert not (x == loader.get_batch(4, 0, 4, 1)[0]).all()
    assert not (x == BatchLoader(data, block_size=16, seed=1).get_batch(3, 0, 4, 1)[0]).all()
    # 1 process x 2 accumulation steps == 2 processes x 1 step: the same rows
    one = [loader.get_batch(7, m, 4, 2, 0, 1)[0] for m in range(2)]
    two = [loader.get_batch(7, 0, 4, 1, r, 2)[0] for r in range(2)]
    assert all((a == b).all() for a, b in zip(one, two, strict=True))


def test_val_batches_fixed_windows(tmp_path, byte_tok):
    data = prepare_data(mixture(tmp_path), byte_tok, show_progress=False)
    loader = BatchLoader(data, block_size=16, seed=0)
    a = [x for x, _ in loader.val_batches("big", 4, 3)]
    b = [x for x, _ in loader.val_batches("big", 4, 3)]
    assert len(a) == 3 and all((p == q).all() for p, q in zip(a, b, strict=True))
    with pytest.raises(DataError, match="fewer than model.block_size"):
        BatchLoader(data, block_size=10_000)


def test_mixture_errors(tmp_path, byte_tok):
    cfg = mixture(tmp_path)
    with pytest.raises(DataError, match="weights must be > 0"):
        prepare_data(DataConfig(corpora=[CorpusConfig("a", cfg.corpora[0].source, 0.0)]), byte_tok)
    with pytest.raises(DataError, match="names must be unique"):
        prepare_data(DataConfig(corpora=[cfg.corpora[0], cfg.corpora[0]]), byte_tok)
    write(tmp_path / "tiny.txt", "ab")
    with pytest.raises(DataError, match="too small to split"):
        prepare_data(DataConfig(corpora=[CorpusConfig("t", str(tmp_path / "tiny.txt"))],
                                cache_dir=str(tmp_path / "c2")), byte_tok, show_progress=False)
    assert [c.name for c in corpora_from_paths(["a/x.txt", "b/x.txt", "y"])] == ["x", "x1", "y"]
