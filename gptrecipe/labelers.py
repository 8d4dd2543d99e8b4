"""Programmatic labelers: simulated preferences with a checkable gold score.

A labeler is any callable `(prompt, responses) -> list[float]` (higher is better); `rank` turns the
scores into a best-to-worst order. `gptrecipe rank --labeler module.path:function` loads your own.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Callable

Labeler = Callable[[str, list[str]], list[float]]

# A clear preference a tiny model can learn and a person can check: warm, personal, positive replies.
# Dense on purpose: common words ("you", "i", "really") give even a weak SFT model a non-zero baseline.
POSITIVE_WORDS = frozenset(
    "you your i like love good great glad happy nice thank thanks yes sure please well fun friend enjoy "
    "wonderful beautiful best welcome excellent awesome kind really very certainly right feel".split())
_WORD = re.compile(r"[a-z']+")


def positivity(response: str) -> float:
    """Gold score: distinct words of POSITIVE_WORDS used, minus 0.5 for each repetition of a word beyond its
    second use (so degenerate 'good good good ...' replies, the classic reward hack, score low)."""
    words = _WORD.findall(response.lower())
    distinct_positive = len(POSITIVE_WORDS.intersection(words))
    repeats = sum(c - 2 for c in Counter(words).values() if c > 2)
    return float(distinct_positive) - 0.5 * repeats


def positivity_labeler(prompt: str, responses: list[str]) -> list[float]:
    return [positivity(r) for r in responses]


BUILTIN = {"positivity": positivity_labeler}


def load_labeler(spec: str) -> Labeler:
    """`builtin:positivity` or `package.module:function`."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN:
            raise ValueError(f"unknown builtin labeler {name!r}; known: {', '.join(BUILTIN)}")
        return BUILTIN[name]
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"labeler {spec!r} must look like package.module:function or builtin:NAME")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"labeler {spec!r}: {module} has no function {attr!r}")
    return fn
