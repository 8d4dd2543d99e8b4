"""Byte-level BPE tokenizer: tiktoken == HF ids, lossless round trips, file format, specials, errors, CLI."""

import argparse
import hashlib
import io
import json
import random

import numpy as np
import pytest
import tiktoken
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptrecipe.tokenizer import (
    DIGIT_PAIRS,
    GPT4_SPLIT_PATTERN,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    _hf_from_ranks,
    add_cli,
    canonical_merges,
    compression_stats,
    consistent_ranks,
)

WORDS = ("the of and to in is was that for it with as his on be at by had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more no "
         "if out so said what up its about into than them can only other new some could time these two "
         "may then do first any my now such like our over man me even most made after also did many "
         "before must through back years where much your way well down should because each just those "
         "people how too little state good very make world still own see men work long get here "
         "between both life being under never day same another know while last might us great old year "
         "off come since against go came right used take three").split()
CHINESE = ("销售额增长了百分之十二。", "你好，世界！", "我们今天学习字节级的分词器。",
           "中文的词语之间没有空格。", "机器学习需要大量的数据和计算。", "这个模型可以回答问题，也可以写诗。",
           "北京是中国的首都。")
EMOJI = ("😀", "👍🏽", "🏳️‍🌈", "👨‍👩‍👧‍👦", "🧑🏿‍💻", "❤️", "✨", "🔥", "🇫🇷", "1️⃣")
CODE = "def f(x):\r\n    return x ** 2  # square\r\n\tif x > 10_000:\n\t\tprint(f'{x:,}')\n"


def english(rng: random.Random, n_sentences: int) -> str:
    out = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), rng.choice(["I'll", "we've", "don't", "it's", "THEY'RE"]))
        end = rng.choice([".", ".", ",", "!", "?", ";"]) + rng.choice([" ", " ", "\n"])
        out.append(" ".join(words) + end)
    return "".join(out)


def corpus(seed: int = 0) -> list[str]:
    """~300 kB: English-like prose, Chinese, emoji and code, as documents."""
    rng = random.Random(seed)
    docs = [english(rng, 60) for _ in range(80)]
    docs += ["".join(rng.choice(CHINESE) for _ in range(40)) for _ in range(20)]
    docs += [" ".join(rng.choice(EMOJI) + rng.choice(WORDS) for _ in range(40)) for _ in range(10)]
    docs += [CODE * 5 for _ in range(10)]
    return docs


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(corpus(), 1024, show_progress=False)


@pytest.fixture(scope="module")
def token_texts(tok) -> list[str]:
    """Vocabulary tokens that are whole UTF-8 strings (many multi-byte: Chinese, emoji)."""
    out = []
    for i in range(len(SPECIAL_TOKENS), tok.vocab_size):
        try:
            out.append(tok.decode_bytes([i]).decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return out


def check_same_ids_and_roundtrip(tok: Tokenizer, s: str) -> None:
    ids = tok.encode(s)
    assert ids == tok.encode_hf(s)
    assert tok.decode(ids) == s
    ids = tok.encode(s, allow_special=True)
    assert ids == tok.encode_hf(s, allow_special=True)
    assert tok.decode(ids) == s


# ---- tiktoken == HF, lossless ----------------------------------------------------------------------------

WHITESPACE = st.text(alphabet=" \t\n\r\x0b\x0c\x85\xa0\u2028\u3000", min_size=1, max_size=8)
FRAGMENTS = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=12),
    st.text(alphabet=st.characters(categories=["Mn", "Mc", "Me"]), min_size=1, max_size=4),  # combining
    st.sampled_from(EMOJI + ("\u200d", "\ufe0f", "🏻", "🏿", "e\u0301", "n\u0303\u0323")),
    WHITESPACE,
    st.sampled_from(["\r\n", "\n\n", "\r", "   ", "\t\t"]),
    st.text(alphabet="0123456789٣৫", min_size=1, max_size=7),  # digits, incl. Arabic-Indic and Bengali
    st.sampled_from(["'s", "'LL", "'ve", "'ſ", "'", "’s", "don't", "I'M"]),
    st.sampled_from(SPECIAL_TOKENS + ("<|", "|>", "<|endoftext", "<<|end|>>")),
    st.sampled_from(CHINESE + tuple(WORDS[:30])),
)
MIXED = st.lists(FRAGMENTS, max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=st.text())
def test_arbitrary_unicode(tok, s):
    check_same_ids_and_roundtrip(tok, s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=MIXED)
def test_mixed_scripts_emoji_whitespace(tok, s):
    check_same_ids_and_roundtrip(tok, s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=10), sep=st.sampled_from(["", " ", "\n"]))
def test_concatenated_vocabulary_tokens(tok, token_texts, picks, sep):
    """Strings made of whole vocabulary tokens hit the merge order at every boundary."""
    check_same_ids_and_roundtrip(tok, sep.join(token_texts[p % len(token_texts)] for p in picks))


def test_every_token_and_the_training_text(tok, token_texts):
    assert sum(len(t.encode()) > 2 for t in token_texts) > 50  # multi-byte merges exist (CJK, emoji)
    for text in token_texts:
        check_same_ids_and_roundtrip(tok, text)
    docs = corpus(seed=1)
    assert [tok.encode_hf(d) for d in docs] == tok.encode_batch(docs) == [tok.encode(d) for d in docs]
    for n in (1, 2, 0):
        assert tok.encode_batch(docs[:20], num_threads=n) == [tok.encode(d) for d in docs[:20]]


def test_lone_surrogates_become_replacement_characters(tok):
    for s, clean in (("a\ud800b", "a\ufffdb"), ("\udfff", "\ufffd"), ("x\ud83d\ude00", "x😀")):
        assert tok.encode(s) == tok.encode_hf(s) == tok.encode(clean)
        assert tok.decode(tok.encode(s)) == clean


def test_regex_engines_agree_on_every_code_point():
    """The split regex runs in two engines (tiktoken: fancy-regex, HF: Oniguruma); their Unicode tables
    for the classes the pattern uses must agree on every code point (planes 4-13 are unassigned)."""
    text = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x40000), *range(0xE0000, 0xE1000)]))
    byte_ranks = {bytes([b]): b for b in range(256)}
    for pattern in (r"\p{L}", r"\p{N}", r"\s", r"[\r\n]", r"(?i:[sdmt]|ll|ve|re)"):
        enc = tiktoken.Encoding("t", pat_str=pattern, mergeable_ranks=byte_ranks, special_tokens={})
        tt_matches = enc.decode(enc.encode_ordinary(text))  # tiktoken drops what the pattern does not match
        split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="removed", invert=True)
        hf_matches = "".join(piece for piece, _ in split.pre_tokenize_str(text))
        assert tt_matches == hf_matches, pattern


def test_token_without_canonical_merge_is_dropped():
    """tiktoken ranks tokens, HF applies merges; a token with no canonical merge would make them differ."""
    specials = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    ranks = {bytes([b]): 16 + b for b in range(256)} | {b"abc": 272, b"bc": 273}
    tt = tiktoken.Encoding("t", pat_str=GPT4_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    # tiktoken merges b+c (rank 273), then a+bc (272): no merge list applied in order does that
    assert tt.encode_ordinary("abcd") == [272, 16 + ord("d")]
    merges, orphans = canonical_merges(ranks)
    assert merges == [(b"b", b"c")] and orphans == [b"abc"]
    fixed = consistent_ranks(ranks, first_id=16)
    assert b"abc" not in fixed and fixed[b"bc"] == 272 and fixed[b"a"] == 16 + ord("a")
    fixed_tok = Tokenizer(_hf_from_ranks(fixed, specials))
    assert fixed_tok.encode("abcd") == fixed_tok.encode_hf("abcd") == [16 + ord("a"), 272, 16 + ord("d")]


def test_trained_merges_are_canonical(tok):
    """Ids are in merge order: the HF merge list is exactly tiktoken's rank order."""
    merges = json.loads(tok.hf.to_str())["model"]["merges"]
    vocab = tok.hf.get_vocab()
    assert [vocab["".join(m)] for m in merges] == list(range(16 + 256, tok.vocab_size))


def test_every_two_digit_string_is_one_token_and_the_vocabulary_keeps_its_size(tok, tmp_path):
    """Numbers split in chunks of two digits, each chunk one token (the rarest merges made room); a tokenizer
    file with GPT-4's three-digit chunks still loads and splits as before."""
    assert tok.vocab_size == 1024 and all(len(tok.encode(p.decode())) == 1 for p in DIGIT_PAIRS)
    assert [tok.decode([i]) for i in tok.encode("786600 -175 7")] == ["78", "66", "00", " ", "-", "17", "5", " ", "7"]
    text = "Hello  world!! 786600 don't 世界 🙂 3.14159"
    assert tok.encode(text) == tok.encode_hf(text) and tok.decode(tok.encode(text)) == text
    plain = Tokenizer.train(corpus(), 300, show_progress=False)  # too small a vocabulary to give 100 of it up
    assert plain.vocab_size == 300 and len(plain.encode("78")) == 2
    path = tmp_path / "gpt4.json"
    tok.save(path)
    config = json.loads(path.read_text())
    config["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = GPT4_SPLIT_PATTERN
    path.write_text(json.dumps(config))
    old = Tokenizer.from_file(path)
    assert [old.decode([i]) for i in old.encode("786600")] == ["78", "6", "6", "00"]  # 786|600, then pairs
    assert old.encode("786600 x") == old.encode_hf("786600 x")


# ---- compression, streaming decode -----------------------------------------------------------------------


def test_compression(tok):
    text = english(random.Random(7), 200)
    s = compression_stats(tok, [text, text[:100]])
    assert set(s) == {"bytes", "tokens", "chars", "bytes_per_token", "chars_per_token"}
    assert s["tokens"] == len(tok.encode(text)) + len(tok.encode(text[:100]))
    assert s["bytes"] == len(text.encode()) + len(text[:100].encode())
    assert s["bytes_per_token"] > 2.0, s
    zh = compression_stats(tok, ["".join(CHINESE)])
    assert zh["bytes_per_token"] > 2.5 and zh["chars_per_token"] > 0.8, zh  # CJK char = 3 bytes
    assert compression_stats(tok, [])["bytes_per_token"] == 0.0


def test_streaming_decode_bytes(tok):
    text = "你好，世界 👨‍👩‍👧‍👦!"
    ids = tok.encode(text)
    pieces = [tok.decode_bytes([i]) for i in ids]
    assert b"".join(pieces) == text.encode()
    assert tok.decode(np.array(ids)) == text == tok.decode(tuple(ids))
    half = tok.tt.encode_single_token(b"\xc3")  # the first byte of "é"
    assert tok.decode([half]) == "\ufffd" and tok.decode_bytes([half]) == b"\xc3"
    with pytest.raises(TokenizerError, match="valid ids are 0..1023"):
        tok.decode([5, 1024])
    with pytest.raises(TokenizerError, match="valid ids"):
        tok.decode([-1])


# ---- special tokens ---------------------------------------------------------------------------------------


def test_special_tokens(tok):
    assert SPECIAL_TOKENS[:7] == ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>",
                                  "<|end|>", "<|reward|>")
    assert SPECIAL_TOKENS[7:] == tuple(f"<|reserved_{i}|>" for i in range(9))
    assert [tok.id_of(s) for s in SPECIAL_TOKENS] == list(range(16))
    assert tok.eot_id == 0 and tok.vocab_size == 1024
    text = "a<|endoftext|>b<|user|>"
    plain = tok.encode(text)
    assert tok.eot_id not in plain and tok.id_of("<|user|>") not in plain  # user text cannot inject specials
    assert plain == tok.encode_hf(text) == tok.encode_batch([text])[0]
    parsed = tok.encode(text, allow_special=True)
    assert parsed.count(tok.eot_id) == 1 and parsed[-1] == tok.id_of("<|user|>")
    assert parsed == tok.encode_hf(text, allow_special=True)
    assert tok.decode(parsed) == tok.decode(plain) == text
    with pytest.raises(TokenizerError, match="unknown special token '<|nope|>'"):
        tok.id_of("<|nope|>")


# ---- files -------------------------------------------------------------------------------------------------


def test_save_load(tok, tmp_path):
    path = tmp_path / "sub" / "dir" / "tokenizer.json"
    tok.save(path)
    tok.save(path)  # overwriting is fine
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp files left
    assert tok.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    sample = english(random.Random(3), 20) + "".join(CHINESE) + "".join(EMOJI)
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.encode(sample).ids == tok.encode(sample)
    assert hf.decode(tok.encode(sample)) == sample
    again = Tokenizer.from_file(path)
    assert again.fingerprint == tok.fingerprint and again.vocab_size == tok.vocab_size
    assert again.encode(sample) == tok.encode(sample) == again.encode_hf(sample)
    assert again.specials == tok.specials and again.decode(again.encode(sample)) == sample


def test_fingerprint_is_stable(tok):
    docs = corpus()
    assert Tokenizer.train(docs, 1024, show_progress=False).fingerprint == tok.fingerprint
    assert Tokenizer.train(docs, 1000, show_progress=False).fingerprint != tok.fingerprint
    assert len(tok.fingerprint) == 64


def test_bad_training_inputs():
    with pytest.raises(TokenizerError, match="vocab_size 272 is too small.*at least 273"):
        Tokenizer.train(["abc abc"], 272)
    assert Tokenizer.train(["abc abc"], 273, show_progress=False).vocab_size == 273
    with pytest.raises(TokenizerError, match="too small"):
        Tokenizer.train(["abc"], "4096")
    for empty in ([], ["", ""], iter([])):
        with pytest.raises(TokenizerError, match="empty corpus"):
            Tokenizer.train(empty, 400, show_progress=False)
    with pytest.raises(TokenizerError, match="not a single string"):
        Tokenizer.train("just one string", 400)
    with pytest.raises(TokenizerError, match="#1 is a bytes"):
        Tokenizer.train(["ok", b"bytes"], 400, show_progress=False)


def test_bad_files(tok, tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match=f"not found: {missing}"):
        Tokenizer.from_file(missing)
    with pytest.raises(TokenizerError, match=f"cannot read tokenizer file {tmp_path}"):
        Tokenizer.from_file(tmp_path)  # a directory
    path = tmp_path / "tok.json"
    path.write_text('{"model": {"type": "BPE", ')
    with pytest.raises(TokenizerError, match=r"tok\.json: not a valid tokenizer\.json"):
        Tokenizer.from_file(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(TokenizerError, match=r"tok\.json: not a valid tokenizer\.json"):
        Tokenizer.from_file(path)
    word_level = tokenizers.models.WordLevel({"hi": 0, "[UNK]": 1}, unk_token="[UNK]")
    tokenizers.Tokenizer(word_level).save(str(path))
    with pytest.raises(TokenizerError, match=r"tok\.json: not a BPE"):
        Tokenizer.from_file(path)
    plain = tokenizers.ByteLevelBPETokenizer()
    plain.train_from_iterator(["hello world"] * 10, vocab_size=300, show_progress=False)
    plain.save(str(path))
    with pytest.raises(TokenizerError, match=r"tok\.json: tokenizer lacks the special tokens <\|endoft"):
        Tokenizer.from_file(path)

    good = json.loads(tok.hf.to_str())

    def write(edit) -> None:
        config = json.loads(json.dumps(good))
        edit(config)
        path.write_text(json.dumps(config))

    write(lambda c: c["model"]["merges"].__setitem__(slice(0, 2), c["model"]["merges"][1::-1]))
    with pytest.raises(TokenizerError, match=r"tok\.json: merges are not the canonical merges"):
        Tokenizer.from_file(path)
    write(lambda c: c["model"].__setitem__("dropout", 0.1))
    with pytest.raises(TokenizerError, match="BPE options differ"):
        Tokenizer.from_file(path)
    write(lambda c: c.__setitem__("pre_tokenizer", {"type": "ByteLevel", "add_prefix_space": True,
                                                    "trim_offsets": True, "use_regex": True}))
    with pytest.raises(TokenizerError, match="pre-tokenizer is neither the GPT-4 split regex .* nor GPT-2's"):
        Tokenizer.from_file(path)
    # GPT-2's split (imported GPT-2 vocabularies): tiktoken reproduces it, so the same vocabulary is fine with it
    write(lambda c: c.__setitem__("pre_tokenizer", {"type": "ByteLevel", "add_prefix_space": False,
                                                    "trim_offsets": True, "use_regex": True}))
    gpt2_split = Tokenizer.from_file(path)
    text = "Hello  world!! 54321 don't   stop\n\n  ünïcödé 世界 🙂"  # GPT-2: 5|43|21, ours: 54|32|1
    assert gpt2_split.encode(text) == gpt2_split.encode_hf(text) != tok.encode(text)
    write(lambda c: c["model"]["vocab"].pop("Ā"))  # the byte 0x00
    with pytest.raises(TokenizerError, match="255 of the 256 single-byte tokens"):
        Tokenizer.from_file(path)


# ---- command line ------------------------------------------------------------------------------------------


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gptrecipe")
    add_cli(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["tokenizer", *argv])
    return args.func(args)


def test_cli_train_encode_decode_stats(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(english(random.Random(5), 300))
    b.write_text("".join(CHINESE) * 20)
    out = tmp_path / "out" / "tokenizer.json"
    assert cli("train", "--input", str(a), "--input", str(b), "--vocab-size", "400", "--out", str(out)) == 0
    assert "400-token tokenizer" in capsys.readouterr().out
    tok = Tokenizer.from_file(out)
    assert tok.vocab_size == 400 and len(tok.encode("我们")) < 6  # both inputs were used

    assert cli("encode", "--tokenizer", str(out), "你好", "world") == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tok.encode("你好 world")
    assert cli("decode", "--tokenizer", str(out), *ids) == 0
    assert capsys.readouterr().out == "你好 world\n"

    monkeypatch.setattr("sys.stdin", io.StringIO("line one\nline two\n"))
    assert cli("encode", "--tokenizer", str(out)) == 0
    ids = capsys.readouterr().out.split()
    monkeypatch.setattr("sys.stdin", io.StringIO("[" + ", ".join(ids) + "]\n"))
    assert cli("decode", "--tokenizer", str(out)) == 0
    assert capsys.readouterr().out == "line one\nline two\n"

    assert cli("encode", "--tokenizer", str(out), "--allow-special", "<|endoftext|>") == 0
    assert capsys.readouterr().out == "0\n"
    assert cli("encode", "--tokenizer", str(out), "<|endoftext|>") == 0
    assert capsys.readouterr().out != "0\n"

    assert cli("stats", "--tokenizer", str(out), "--input", str(a), str(b)) == 0
    table = capsys.readouterr().out
    assert "bytes/token" in table and str(a) in table and str(b) in table

    with pytest.raises(TokenizerError, match="valid ids are 0..399"):
        cli("decode", "--tokenizer", str(out), "5", "400")
    with pytest.raises(TokenizerError, match="integer ids"):
        cli("decode", "--tokenizer", str(out), "hello")


def test_cli_max_chars_and_help(tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aaa bbb " * 1000)
    b.write_text("ccc ddd " * 1000)
    out = tmp_path / "tokenizer.json"
    assert cli("train", "--input", str(a), str(b), "--max-chars", "3000", "--vocab-size", "300",
               "--out", str(out)) == 0
    assert "on 3,000 chars" in capsys.readouterr().out
    vocab = Tokenizer.from_file(out).hf.get_vocab()
    assert "ccc" in vocab and "Ġddd" in vocab  # the second input got its share
    for command in ("train", "encode", "decode", "stats"):
        with pytest.raises(SystemExit) as exit_:
            cli(command, "--help")
        assert exit_.value.code == 0
        assert "usage: gptrecipe tokenizer " + command in capsys.readouterr().out
