"""Prompts as GPT-3 builds them: description, then K solved examples, then the query; and the assistant frame.

    Translate Chinese to English. 你好 -> hello, 谢谢 -> thank you, 销售 ->        (K = 2; the model continues " sales")

The examples are the task's train items (or, without any, the other test items), drawn by a seeded
permutation per (task, item): never the item itself, and the K = 1 example is the first of the K = 8 ones,
so a curve over K adds examples rather than redrawing them. K is capped by what fits the model's context.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .tasks import Item, Task


def split_format(fmt: str) -> tuple[str, str]:
    """"{input} -> {output}" -> ("{input} ->", " "): the query's text, and the gap the continuation starts with."""
    before = fmt[: fmt.index("{output}")]
    stripped = before.rstrip()
    return stripped, before[len(stripped):]


def render_example(task: Task, item: Item) -> str:
    return task.example_format.replace("{output}", item.output).replace("{input}", item.input)


def render_query(task: Task, item: Item) -> tuple[str, str]:
    """The query's text (up to the output, trailing space left to the continuation) and that space."""
    before, gap = split_format(task.example_format)
    return before.replace("{input}", item.input), gap


def build_prompt(task: Task, examples: list[Item], query: Item) -> str:
    """Description, the solved examples, the query: the text the model continues."""
    head = task.description + task.description_separator if task.description else ""
    body = "".join(render_example(task, ex) + task.separator for ex in examples)
    return head + body + render_query(task, query)[0]


def continuations(task: Task, item: Item) -> list[str]:
    """What the model is scored on after the prompt: each choice, or the target, after the format's gap."""
    gap = render_query(task, item)[1]
    return [gap + c for c in (item.choices if item.choices is not None else [item.output])]


def example_pool(task: Task, index: int) -> list[Item]:
    """Items that may be shown as solved examples for test item `index`: never the item itself (nor a copy
    of it), and each distinct example once."""
    query = task.test[index]
    pool = task.train if task.train else [it for j, it in enumerate(task.test) if j != index]
    return list({it.key: it for it in reversed(pool) if it.key != query.key}.values())[::-1]


def choose_examples(task: Task, index: int, k: int, seed: int) -> list[Item]:
    """K examples for test item `index`: the first K of a permutation seeded by (seed, task, item)."""
    pool = example_pool(task, index)
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), index])
    return [pool[i] for i in rng.permutation(len(pool))[:k]]


@dataclass
class Prompt:
    text: str
    k: int  # examples actually shown (<= the K asked for)
    continuations: list[str]


def fit_prompt(task: Task, index: int, k: int, seed: int, count_tokens: Callable[[str], int] | None,
               max_tokens: int | None, reserve: int) -> Prompt:
    """The prompt for test item `index` with K examples, dropping the last examples until the prompt plus
    `reserve` tokens (the longest continuation, or the generation budget) fit in `max_tokens`."""
    item = task.test[index]
    examples = choose_examples(task, index, k, seed)
    text = build_prompt(task, examples, item)
    if count_tokens is not None and max_tokens:
        while examples and count_tokens(text) + reserve > max_tokens:
            examples = examples[:-1]
            text = build_prompt(task, examples, item)
    return Prompt(text, len(examples), continuations(task, item))


# ---- prompting a base model as an assistant (the seeds' trick) -------------------------------------------

ASSISTANT_TEMPLATE = (
    "A conversation between a human and a helpful, honest AI assistant. The assistant answers every "
    "question politely and well.\n\n"
    "Human: Hello, who are you?\n"
    "Assistant: I am an AI assistant. How can I help you today?\n\n"
    "Human: {query}\n"
    "Assistant:"
)
ASSISTANT_STOP = "\nHuman:"  # the model would go on to write the human's next turn: stop there


def assistant_prompt(query: str, template: str = ASSISTANT_TEMPLATE) -> str:
    """Frame `query` as the next turn of a transcript between a human and a helpful assistant."""
    return template.replace("{query}", query.strip())
