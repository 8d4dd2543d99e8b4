import json

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptrecipe.cli import main
from gptrecipe.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, compression_stats

ENGLISH = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
           "want of a wife. However little known the feelings or views of such a man may be on his first entering "
           "a neighbourhood, this truth is so well fixed in the minds of the surrounding families. I'll say we've "
           "2024 reasons, 3.14159 and 1,000,000 more!\n\n")
CHINESE = "销售额增长了百分之十二。你好，世界！我们今天学习字节级的BPE分词器，中文没有空格。"
EMOJI = "I love it 😀👍🏽🏳️‍🌈 👨‍👩‍👧‍👦 ✨🔥 "


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = [ENGLISH * 30, CHINESE * 40, EMOJI * 40, "def f(x):\n    return x ** 2\r\n\t\t" * 30]
    return Tokenizer.train(texts, 800, show_progress=False)


MIXED = st.lists(st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=20),  # CJK
    st.sampled_from(["😀", "👍🏽", "🏳️‍🌈", "👨‍👩‍👧", "e\u0301", "\r\n", "  ", "\t", "123456", "'ll", "'S", "销售 ->"]),
    st.text(alphabet=" \n\r\t\u00a0\u3000", max_size=8),
), max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=st.one_of(st.text(), MIXED))
def test_tiktoken_equals_hf_and_roundtrips(tok, s):
    if any(sp in s for sp in SPECIAL_TOKENS):  # HF parses special-token strings; plain encode must not
        return
    ids = tok.encode(s)
    assert ids == tok.encode_hf(s)
    assert tok.decode(ids) == s
    assert tok.encode_batch([s, s]) == [ids, ids]


def test_merges_are_used_on_english_chinese_emoji(tok):
    for text in (ENGLISH, CHINESE, EMOJI):
        ids = tok.encode(text)
        assert ids == tok.encode_hf(text) and tok.decode(ids) == text
        assert len(ids) < len(text.encode()) / 2  # real compression, not raw bytes


def test_saved_file_loads_in_hf_tokenizers(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.encode(ENGLISH + CHINESE).ids == tok.encode(ENGLISH + CHINESE)
    again = Tokenizer.from_file(path)
    assert again.fingerprint == tok.fingerprint and again.encode(EMOJI) == tok.encode(EMOJI)
    assert not list(path.parent.glob(".*tmp*"))


def test_special_tokens(tok):
    assert [tok.id_of(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eot_id == tok.id_of("<|endoftext|>") and 300 < tok.vocab_size <= 800
    text = "a<|endoftext|>b"
    assert tok.eot_id not in tok.encode(text)  # user text cannot inject a document boundary
    assert tok.eot_id in tok.encode(text, allow_special=True)
    assert tok.decode(tok.encode(text, allow_special=True)) == text
    with pytest.raises(TokenizerError, match="unknown special token"):
        tok.id_of("<|nope|>")


def test_compression_stats(tok):
    s = compression_stats(tok, [ENGLISH * 5])
    assert s["bytes_per_token"] > 2.0 and s["tokens"] == len(tok.encode(ENGLISH * 5))


@pytest.mark.parametrize("case", ["small_vocab", "empty", "missing", "corrupt", "not_bpe"])
def test_bad_inputs(case, tmp_path):
    path = tmp_path / "tokenizer.json"
    if case == "small_vocab":
        with pytest.raises(TokenizerError, match="too small"):
            Tokenizer.train(["abc"], 100)
    elif case == "empty":
        with pytest.raises(TokenizerError, match="empty corpus"):
            Tokenizer.train([], 400)
    elif case == "missing":
        with pytest.raises(TokenizerError, match="not found: .*tokenizer.json"):
            Tokenizer.from_file(path)
    elif case == "corrupt":
        path.write_text("{not json")
        with pytest.raises(TokenizerError, match="tokenizer.json: not a valid"):
            Tokenizer.from_file(path)
    else:
        tokenizers.Tokenizer(tokenizers.models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
        with pytest.raises(TokenizerError, match="lacks special tokens"):
            Tokenizer.from_file(path)


def test_cli_train_encode_decode_stats(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(ENGLISH * 20 + CHINESE * 10)
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "400", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["model"]["type"] == "BPE"
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "你好 world"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", "--tokenizer", str(out), *ids]) == 0
    assert capsys.readouterr().out == "你好 world\n"
    assert main(["tokenizer", "stats", "--tokenizer", str(out), "--input", str(corpus)]) == 0
    assert "bytes/token" in capsys.readouterr().out
    assert main(["tokenizer", "decode", "--tokenizer", str(out), "99999"]) == 2
    assert "out of range" in capsys.readouterr().err
