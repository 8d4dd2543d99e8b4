"""Synthetic in-context tasks whose rule lives only in the examples, and the seeds' translation task.

Each family draws a random *rule instance* from a seed: a random labelling of letter pairs with 2-4 label
words (`classify`), a random letter -> letter cipher (`letter_map`), a random word -> word dictionary
(`word_map`), `copy` or `reverse` of letter strings (same description, so only the examples tell which),
counting a random letter (`count`), a random arithmetic operation (`arithmetic`). A rule instance's items
are split into train (solved examples) and test (queries with multiple choices: the answer and distractors,
either the rule's other outputs or outputs it never gives).

    Classify: f x -> green, s w -> iron, x b -> green, f d ->            (continues " green")

The `builtin:icl` pretraining corpus is made of such rules too: documents of many solved examples of one
random rule each, so that the only way to predict an output is to read the examples before it. Evaluation
tasks come from a disjoint seed space: their rule instances never occur in pretraining.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..data.readers import DataError
from .prompts import render_example
from .tasks import Item, Task

SEPARATOR = ", "  # between examples (as in the seeds' one-shot example)
DESCRIPTION_SEPARATOR = " "
EXAMPLE_FORMAT = "{input} -> {output}"
PRETRAIN_SEED_SPACE = 0x1C1  # documents of builtin:icl
EVAL_SEED_SPACE = 0xE7A1  # held-out evaluation tasks: a different seed space, so rules never seen in pretraining
CORPUS_VERSION = 2  # bump when the documents change (part of the token cache key)

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
                _any(LABELS, 1))


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


@dataclass
class SyntheticConfig:
    """The held-out synthetic suite (`builtin:synthetic`)."""

    families: list[str] = field(default_factory=lambda: ["classify", "letter_map", "word_map"])
    tasks_per_family: int = 8
    test_items: int = 12  # queries per task
    train_items: int = 24  # solved examples to draw from per task
    choices: int = 8  # answer + distractors (chance = 1 / choices)
    # "rule": distractors are the rule's other outputs first (right only if the mapping itself was read from the
    # examples); "other": outputs this rule never gives (right once the task's outputs were read from them; meant
    # for rules whose outputs are a random subset of a larger space: classify, letter_map, word_map)
    distractors: str = "rule"
    seed: int = 0


def _choices(rule: Rule, x: str, y: str, n: int, rng: np.random.Generator, mode: str) -> tuple[list[str], int]:
    own = [o for o in dict.fromkeys(o for _, o in rule.universe) if o != y]
    picks: list[str] = []
    if mode == "rule":
        hard = [c for c in dict.fromkeys(rule.confusers(x)) if c != y]
        picks = (hard + [own[i] for i in rng.permutation(len(own)) if own[i] not in hard])[: n - 1]
    elif mode != "other":
        raise DataError(f"synthetic.distractors must be 'rule' or 'other', got {mode!r}")
    never = set(own) | {y}
    for _ in range(1000):  # outputs of the family's shape that this rule never gives
        if len(picks) >= n - 1:
            break
        c = rule.any_output(rng)
        if c not in never and c not in picks:
            picks.append(c)
    options = [y, *picks]
    order = rng.permutation(len(options))
    return [options[i] for i in order], int(np.argmax(order == 0))


def make_task(rule: Rule, name: str, rng: np.random.Generator, cfg: SyntheticConfig) -> Task:
    """Split a rule instance's items into train and test; test items get multiple choices."""
    order = rng.permutation(len(rule.universe))
    test_ix, train_ix = order[: cfg.test_items], order[cfg.test_items: cfg.test_items + cfg.train_items]
    test = []
    for i in test_ix:
        x, y = rule.universe[i]
        choices, answer = _choices(rule, x, y, cfg.choices, rng, cfg.distractors)
        test.append(Item(x, choices=choices, answer=answer, where=f"{name} item {len(test)}"))
    train = [Item(*rule.universe[i], where=f"{name} train {j}") for j, i in enumerate(train_ix)]
    return Task(name=name, test=test, train=train, description=rule.description, example_format=EXAMPLE_FORMAT,
                separator=SEPARATOR, description_separator=DESCRIPTION_SEPARATOR, source=f"builtin:synthetic/{name}")


def synthetic_suite(cfg: SyntheticConfig | None = None) -> list[Task]:
    """`tasks_per_family` held-out tasks of each family (rules from the evaluation seed space)."""
    cfg = cfg or SyntheticConfig()
    tasks = []
    for f in cfg.families:
        if f not in FAMILIES:
            raise DataError(f"unknown synthetic family {f!r}; known: {', '.join(FAMILIES)}")
        fi = list(FAMILIES).index(f)
        for i in range(cfg.tasks_per_family):
            rng = np.random.default_rng([EVAL_SEED_SPACE, cfg.seed, fi, i])
            tasks.append(make_task(FAMILIES[f](rng), f"{f}-{i:02d}", rng, cfg))
    return tasks


def label_set_baseline(tasks: list[Task]) -> float:
    """Mean accuracy of a reader who knows each task's outputs (those of its solved examples) but not which
    input takes which: per query, 1 / (how many of its choices are outputs of the task)."""
    accs = []
    for t in tasks:
        outputs = {i.target for i in t.train}
        accs += [1 / max(1, sum(c in outputs for c in i.choices)) for i in t.test]
    return sum(accs) / len(accs)


def pretraining_rules(n_docs: int = 6_000, seed: int = 0) -> Iterator[tuple[Rule, np.random.Generator]]:
    """The rule of each `builtin:icl` document (and the generator that goes on to draw its examples)."""
    names, weights = list(PRETRAIN_FAMILIES), np.array(list(PRETRAIN_FAMILIES.values()))
    for d in range(n_docs):
        rng = np.random.default_rng([PRETRAIN_SEED_SPACE, seed, d])
        yield FAMILIES[names[rng.choice(len(names), p=weights / weights.sum())]](rng), rng


def icl_documents(n_docs: int = 6_000, seed: int = 0) -> Iterator[str]:
    """The `builtin:icl` pretraining corpus: each document is one random rule and 8..28 solved examples of it
    (drawn with replacement), in the evaluation format, so reading the context is the way to predict outputs."""
    for rule, rng in pretraining_rules(n_docs, seed):
        task = Task(name=rule.family, test=[], example_format=EXAMPLE_FORMAT)
        picks = rng.integers(0, len(rule.universe), int(rng.integers(8, 29)))
        examples = [render_example(task, Item(*rule.universe[i])) for i in picks]
        yield rule.description + DESCRIPTION_SEPARATOR + SEPARATOR.join(examples) + "\n"


# ---- the seeds' example: Chinese -> English words ---------------------------------------------------------

ZH_EN = [("你好", "hello"), ("谢谢", "thank you"), ("猫", "cat"), ("狗", "dog"), ("水", "water"), ("火", "fire"),
         ("书", "book"), ("山", "mountain"), ("月亮", "moon"), ("太阳", "sun"), ("苹果", "apple"), ("老师", "teacher"),
         ("学生", "student"), ("朋友", "friend"), ("电脑", "computer"), ("音乐", "music"), ("早上", "morning"),
         ("红色", "red"), ("吃", "eat"), ("喝", "drink"), ("家", "home"), ("爱", "love"), ("时间", "time"),
         ("钱", "money"), ("天气", "weather"), ("医生", "doctor"), ("飞机", "airplane"), ("学校", "school"),
         ("茶", "tea"), ("销售", "sales")]


def translation_task() -> Task:
    """Chinese -> English word translation as in the seeds: "Translate Chinese to English. 你好 -> hello, 销售 ->".
    The first 12 words are the solved examples, the other 18 the queries (scored by generation)."""
    items = [Item(zh, target=en, where=f"translate-zh-en word {i}") for i, (zh, en) in enumerate(ZH_EN)]
    return Task(name="translate-zh-en", train=items[:12], test=items[12:], description="Translate Chinese to English.",
                example_format=EXAMPLE_FORMAT, separator=SEPARATOR, description_separator=DESCRIPTION_SEPARATOR,
                source="builtin:translate-zh-en")


def builtin_tasks(name: str, cfg: SyntheticConfig | None = None) -> list[Task]:
    """builtin:translate-zh-en, builtin:synthetic (the held-out suite) or builtin:synthetic/FAMILY."""
    cfg = cfg or SyntheticConfig()
    if name == "translate-zh-en":
        return [translation_task()]
    if name == "synthetic":
        return synthetic_suite(cfg)
    if name.startswith("synthetic/"):
        from dataclasses import replace

        return synthetic_suite(replace(cfg, families=name.removeprefix("synthetic/").split(",")))
    raise DataError(f"unknown builtin task {name!r}; known: builtin:translate-zh-en, builtin:synthetic, "
                    f"builtin:synthetic/FAMILY (FAMILY: {', '.join(FAMILIES)})")
