"""LaMDA's toolset: the calculator's results and refusals, the translator, retrieval, the toolset's order, the CLI."""

from __future__ import annotations

import json

import pytest

from gptrecipe.cli import main
from gptrecipe.tools import Calculator, Retrieval, Toolset, Translator, passages


@pytest.mark.parametrize("query, want", [
    ("37 * 12", "444"), ("37*12=", "444"), ("What is 7 + 5?".split("is ")[1], "12"), ("2^10", "1024"),
    ("2 ** 10", "1024"), ("7 / 2", "3.5"), ("6/3", "2"), ("-(3 + 4) * 2", "-14"), ("17 // 3", "5"),
    ("17 % 5", "2"), ("1.5 * 4", "6"), ("2 ** -2", "0.25"), ("0.1 + 0.2", "0.3"), ("12 × 3", "36"),
    ("99999999999 * 99999999999", "9999999999800000000001"), ("+5", "5"), ("(((1 + 2)))", "3"),
])
def test_calculator_results(query, want):
    assert Calculator()(query) == [want]


@pytest.mark.parametrize("query", [
    "__import__('os')", "os.system('ls')", "abs(-3)", "x + 1", "(1).real", "True + 1", "'a' * 3", "hello",
    "import os", "lambda: 1", "[1, 2] * 3", "1 if 2 else 3", "2 < 3", "3 & 1", "", "what is love?",
])
def test_calculator_leaves_what_is_not_arithmetic_to_other_tools(query):
    assert Calculator()(query) == []


@pytest.mark.parametrize("query, why", [
    ("9**9**9", "exponent"), ("10 ** 5000", "exponent"), ("2 ** 1000 * 2 ** 1000 * 2 ** 1000 * 2 ** 1000 * 2 ** 1000",
                                                          "bits"),
    ("1 / 0", "division by zero"), ("5 % 0", "division by zero"), ("(-8) ** 0.5", "negative"),
    ("10.0 ** 400", "too large"), ("1" + "+1" * 600, "longer than"), ("1" * 10_000_000, "longer than"),
])
def test_calculator_refuses_too_large_or_undefined(query, why):
    (out,) = Calculator()(query)
    assert out.startswith("refused:") and why in out


def test_calculator_refuses_past_its_time_limit():
    (out,) = Calculator(timeout_s=0.0)("1 + 2 * 3")
    assert out.startswith("refused:") and "longer than 0.0 s" in out


@pytest.fixture
def dictionary(tmp_path):
    path = tmp_path / "dict.tsv"
    path.write_text("# a small dictionary\n猫\tcat; to hide\n狗\tdog\n水\twater\n你好\thello; hi\n", encoding="utf-8")
    return path


def test_translator_both_ways_on_a_tsv(dictionary):
    tr = Translator(dictionary)
    assert tr("猫") == ["猫: cat; to hide"]
    assert tr("translate 你好 and 狗") == ["你好: hello; hi", "狗: dog"]
    assert tr("translate cat to Chinese") == ["cat: 猫"]
    assert tr("what is water in Mandarin?") == ["water: 水"]
    assert tr("the Chinese word for dog") == ["dog: 狗"]
    assert tr("cat") == [] and tr("37 * 12") == [] and tr("translate zebra to Chinese") == []


def test_translator_tsv_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("猫\tcat\nno tab here\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"bad.tsv: line 2: expected 'chinese<TAB>english'"):
        Translator(bad)("猫")


def test_translator_reads_cc_cedict():
    tr = Translator()
    (cat,) = tr("猫")
    assert cat.startswith("猫: ") and "cat" in cat
    (back,) = tr("translate cat to Chinese")
    assert "猫" in back.split(": ")[1].split(", ")


DOCS = [("farm.txt", "The farmer keeps three goats in the barn.\n\nHis dog guards the sheep at night."),
        ("city.txt", "The museum opens at nine. Tickets cost twelve dollars for adults.")]


def test_retrieval_finds_the_passage_with_its_source_and_caches_the_index(tmp_path):
    r = Retrieval(DOCS, k=1, cache_dir=tmp_path)
    assert r("how much do museum tickets cost") == ["[city.txt #0] The museum opens at nine. Tickets cost twelve "
                                                    "dollars for adults."]
    # short paragraphs share a passage
    assert r("who guards the sheep") == ["[farm.txt #0] The farmer keeps three goats in the barn. His dog guards the "
                                         "sheep at night."]
    assert r("37 * 12") == [] and r("zebra") == []
    (cached,) = (tmp_path / "retrieval").iterdir()
    again = Retrieval(DOCS, k=1, cache_dir=tmp_path)
    assert again("who guards the sheep") == r("who guards the sheep") and len(again.passages) == 2
    assert list((tmp_path / "retrieval").iterdir()) == [cached]  # loaded, not rebuilt


def test_passages_split_long_documents_and_keep_positions():
    found = passages([("a", " ".join(f"w{i}" for i in range(130)))], words=60)
    assert [(p.source, p.position, len(p.text.split())) for p in found] == [("a", 0, 60), ("a", 1, 60), ("a", 2, 10)]


def test_toolset_order_and_empty_results(dictionary, tmp_path):
    ts = Toolset([Calculator(), Translator(dictionary), Retrieval(DOCS, k=1, cache_dir=tmp_path)])
    assert [(r.tool, r.result) for r in ts("37 * 12")] == [("calculator", "444")]
    out = ts("translate 狗: the dog guards sheep")
    assert [r.tool for r in out] == ["translator", "retrieval"]
    assert ts("__import__('zebra')") == []


def test_cli_toolset_json(tmp_path, capsys):
    assert main(["toolset", "37 * 12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"tool": "calculator", "result": "444"} in out
    docs = tmp_path / "notes.txt"
    docs.write_text(DOCS[0][1], encoding="utf-8")
    assert main(["toolset", "__import__('os')", "--json", "--docs", str(docs)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and not any(r["tool"] == "calculator" for r in out)
    assert main(["toolset", "x", "--docs", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err
