"""Held-out tasks of the rules of data/icl.py (from a seed space `builtin:icl` never uses), and the seeds' task.

A rule instance's items are split into train (solved examples) and test (queries with multiple choices: the
answer and distractors, either the rule's other outputs or outputs it never gives).

    Classify: f x -> green, s w -> iron, x b -> green, f d ->            (continues " green")
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..data.icl import DESCRIPTION_SEPARATOR, EXAMPLE_FORMAT, FAMILIES, SEPARATOR, Rule
from ..data.icl import pretraining_rules as pretraining_rules
from ..io import DataError
from .tasks import Item, Task

EVAL_SEED_SPACE = 0xE7A1  # held-out evaluation tasks: a different seed space, so rules never seen in pretraining


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
    for j, (x, y) in enumerate(rule.universe[i] for i in test_ix):
        choices, answer = _choices(rule, x, y, cfg.choices, rng, cfg.distractors)
        test.append(Item(x, choices=choices, answer=answer, where=f"{name} item {j}"))
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
        return synthetic_suite(replace(cfg, families=name.removeprefix("synthetic/").split(",")))
    raise DataError(f"unknown builtin task {name!r}; known: builtin:translate-zh-en, builtin:synthetic, "
                    f"builtin:synthetic/FAMILY (FAMILY: {', '.join(FAMILIES)})")
