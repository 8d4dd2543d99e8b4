"""Random rules whose solved examples make the `builtin:icl` corpus (and evaluate/synthetic.py's held-out tasks).

Each family draws a *rule instance* from a seed: a random labelling of letter pairs with 2-4 label words
(`classify`), a letter cipher (`letter_map`), a word dictionary (`word_map`), `copy` or `reverse` of letters
(same description: only the examples tell which), counting a letter (`count`), an arithmetic operation.
A document holds many solved examples of one rule, so predicting an output means reading the examples before it.
Some documents also state the rule in words (`INSTRUCTION_SHARE`, families with `PHRASINGS`): before the examples,
as the description, or after them ("..., c d -> gold. The instruction was to label each pair as gold or sun."),
so a model learns both to follow an instruction and to write one (what `gptrecipe ape` needs of a proposer).
"""

from __future__ import annotations

import hashlib
import itertools
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache

import numpy as np

SEPARATOR = ", "  # between examples (as in the seeds' one-shot example)
DESCRIPTION_SEPARATOR = " "
EXAMPLE_FORMAT = "{input} -> {output}"
PRETRAIN_SEED_SPACE = 0x1C1  # documents of builtin:icl

LOWER = list(string.ascii_lowercase)
UPPER = list(string.ascii_uppercase)
WORDS = ("king queen lord sword horse house bread water fire stone gold land sea sun moon star tree bird dog "
         "cat ship hand heart eye head door book city field night day wind rain light blood bone wine milk "
         "salt iron rose lamb lion wolf fish ring crown tower river hill").split()
LABELS = "red green black white gold silver iron stone fire water sun moon".split()  # classify's label words


@dataclass
class Rule:
    """One random rule instance: its description and every (input, output) it defines."""

    family: str
    description: str
    universe: list[tuple[str, str]]
    any_output: Callable[[np.random.Generator], str]  # a random output of this family's shape (any instance)
    confusers: Callable[[str], list[str]] = field(default=lambda x: [])  # hard distractors for an input
    words: dict[str, list[str]] = field(default_factory=dict)  # what a statement of the rule names (PHRASINGS)


def _letters(rng: np.random.Generator, alphabet: list[str], n: int) -> list[str]:
    return [alphabet[i] for i in rng.choice(len(alphabet), n, replace=False)]


def _any(alphabet: list[str], n: int) -> Callable[[np.random.Generator], str]:
    """Random outputs of n symbols of `alphabet`."""
    return lambda rng: " ".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


def classify(rng: np.random.Generator) -> Rule:
    """A random labelling: the first of two letters (6 possible) decides which of 2-4 random label words."""
    dom = _letters(rng, LOWER, 6)
    labels = _letters(rng, LABELS, int(rng.integers(2, 5)))
    order = [dom[j] for j in rng.permutation(len(dom))]
    g = {a: labels[i % len(labels)] for i, a in enumerate(order)}  # every label is used
    return Rule("classify", "Classify:", [(f"{a} {b}", g[a]) for a, b in itertools.product(dom, dom)],
                _any(LABELS, 1), words={"labels": labels})


def letter_map(rng: np.random.Generator) -> Rule:
    """A random cipher of 6 lowercase letters to 6 uppercase ones, applied to 2-letter inputs."""
    dom, rng_ = _letters(rng, LOWER, 6), _letters(rng, UPPER, 6)
    m = dict(zip(dom, rng_, strict=True))
    return Rule("letter_map", "Substitute the letters:",
                [(f"{a} {b}", f"{m[a]} {m[b]}") for a, b in itertools.product(dom, dom)], _any(UPPER, 2))


def word_map(rng: np.random.Generator) -> Rule:
    """A random dictionary of 6 words to 6 other words, applied to 2-word inputs."""
    words = _letters(rng, list(WORDS), 12)
    m = dict(zip(words[:6], words[6:], strict=True))
    return Rule("word_map", "Translate the words:",
                [(f"{a} {b}", f"{m[a]} {m[b]}") for a, b in itertools.product(words[:6], words[:6])],
                _any(list(WORDS), 2))


def _strings(rng: np.random.Generator, n_letters: int, length: int) -> list[list[str]]:
    return [list(t) for t in itertools.product(_letters(rng, LOWER, n_letters), repeat=length)]


def copy(rng: np.random.Generator) -> Rule:
    return Rule("copy", "Rearrange the letters:", [(" ".join(s), " ".join(s)) for s in _strings(rng, 5, 3)],
                _any(LOWER, 3), confusers=lambda x: [" ".join(reversed(x.split()))])


def reverse(rng: np.random.Generator) -> Rule:
    return Rule("reverse", "Rearrange the letters:",
                [(" ".join(s), " ".join(reversed(s))) for s in _strings(rng, 5, 3)], _any(LOWER, 3),
                confusers=lambda x: [x])


def count(rng: np.random.Generator) -> Rule:
    """How many times a random letter (of a 3-letter alphabet) occurs in 4 letters."""
    strings = _strings(rng, 3, 4)
    target = strings[int(rng.integers(len(strings)))][0]
    return Rule("count", "Count:", [(" ".join(s), str(s.count(target))) for s in strings],
                lambda r: str(int(r.integers(0, 10))))


OPS: dict[str, Callable[[int, int], int]] = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b,
                                             "multiply": lambda a, b: a * b}


def arithmetic(rng: np.random.Generator) -> Rule:
    """A random operation (+, -, x) on two digits; the examples never name it."""
    op = OPS[list(OPS)[int(rng.integers(len(OPS)))]]
    return Rule("arithmetic", "Compute:", [(f"{a} {b}", str(op(a, b))) for a in range(10) for b in range(10)],
                lambda r: str(int(r.integers(-9, 82))))


FAMILIES: dict[str, Callable[[np.random.Generator], Rule]] = {
    "classify": classify, "letter_map": letter_map, "word_map": word_map, "copy": copy, "reverse": reverse,
    "count": count, "arithmetic": arithmetic}
# Families of the pretraining documents and their shares. Random labellings only: within the main job's
# budget (700 steps of a 4-layer model) they are what a tiny model learns to read from its context; with the
# other families in the mix it learned none (their lookups need induction heads, which form much later).
PRETRAIN_FAMILIES = {"classify": 1.0}


def pretraining_rules(n_docs: int = 6_000, seed: int = 0) -> Iterator[tuple[Rule, np.random.Generator]]:
    """The rule of each `builtin:icl` document (and the generator that goes on to draw its examples)."""
    names, weights = list(PRETRAIN_FAMILIES), np.array(list(PRETRAIN_FAMILIES.values()))
    for d in range(n_docs):
        rng = np.random.default_rng([PRETRAIN_SEED_SPACE, seed, d])
        yield FAMILIES[names[rng.choice(len(names), p=weights / weights.sum())]](rng), rng


# ---- the rule in words ------------------------------------------------------------------------------------

INSTRUCTION_LEAD = "The instruction was to"  # after the examples, the rule in words follows this
INSTRUCTION_SHARE = 0.3  # of the documents of a family with phrasings: half state the rule before, half after
# How a family's rule is said, {NAME} filled from Rule.words (a list of words becomes "a, b or c"). Classify's rule
# in words is its label set: what the main job's tiny model can read from examples and use (not the mapping).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "classify": ("label each pair as {labels}", "classify each pair as {labels}", "answer {labels}",
                 "tag each pair with {labels}")}


def or_list(words: list[str]) -> str:
    """["a", "b", "c"] -> "a, b or c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def as_instruction(text: str) -> str:
    """An instruction as it stands before examples: one line, capitalised, ending in a full stop
    ("label each pair as gold or sun" -> "Label each pair as gold or sun."); "" stays ""."""
    text = text.split("\n")[0].strip().rstrip(".:;, ").strip()
    return text[:1].upper() + text[1:] + "." if text else ""


def state_rule(rule: Rule, rng: np.random.Generator) -> str | None:
    """The rule in words (a random phrasing, the words in random order), or None for a family without phrasings."""
    phrasings = PHRASINGS.get(rule.family)
    if not phrasings:
        return None
    text = phrasings[int(rng.integers(len(phrasings)))]
    for name, words in rule.words.items():
        text = text.replace("{" + name + "}", or_list([words[i] for i in rng.permutation(len(words))]))
    return text


def icl_documents(n_docs: int = 6_000, seed: int = 0) -> Iterator[str]:
    """The `builtin:icl` pretraining corpus: each document is one random rule and 8..28 solved examples of it
    (drawn with replacement), in the evaluation format, so reading the context is the way to predict outputs.
    `INSTRUCTION_SHARE` of them state the rule in words instead of the family's description, or after the
    examples (`INSTRUCTION_LEAD`), drawn from their own generator (the examples stay those of the plain corpus)."""
    for d, (rule, rng) in enumerate(pretraining_rules(n_docs, seed)):
        picks = rng.integers(0, len(rule.universe), int(rng.integers(8, 29)))
        examples = SEPARATOR.join(EXAMPLE_FORMAT.format(input=x, output=y)
                                  for x, y in (rule.universe[i] for i in picks))
        words = np.random.default_rng([PRETRAIN_SEED_SPACE, seed, d, 1])
        stated = state_rule(rule, words) if words.random() < INSTRUCTION_SHARE else None
        if stated is None:
            yield rule.description + DESCRIPTION_SEPARATOR + examples + "\n"
        elif words.random() < 0.5:
            yield as_instruction(stated) + DESCRIPTION_SEPARATOR + examples + "\n"
        else:
            yield examples + f". {INSTRUCTION_LEAD} {stated}.\n"


@cache
def fingerprint() -> str:
    """sha256 of the `builtin:icl` documents (part of the token cache key): changes exactly when they do."""
    return hashlib.sha256("\0".join(icl_documents()).encode("utf-8")).hexdigest()
