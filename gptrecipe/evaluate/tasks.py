"""In-context tasks: the JSONL format, the loader, and the builtin tasks.

A task is one JSONL file or one directory. In a file, an optional first line without "input" is the
header; every other line is an item:

    {"name": "zh-en", "description": "Translate Chinese to English.", "example_format": "{input} -> {output}",
     "separator": ", ", "description_separator": " "}
    {"input": "你好", "target": "hello", "split": "train"}
    {"input": "销售", "target": "sales"}
    {"input": "2 + 2", "choices": ["3", "4", "5"], "answer": 1}

Each item has a string "input" and either a free-form "target" (scored by generation: exact and
normalized match) or "choices" (scored by the log-likelihood of each) with "answer" (the index of the
right choice, or the right choice itself). "split" is "train" (solved examples for the prompts) or "test"
(the default: the items scored). Without train items, an item's examples are drawn from the other test
items. A directory holds `test.jsonl` (required), `train.jsonl` and `task.json` (the header) -- or, if it
has no test.jsonl, each .jsonl file and sub-directory inside is one task (a suite).

Every error names the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..io import DataError, read_jsonl

HEADER_FIELDS = ("name", "description", "example_format", "separator", "description_separator", "stop")
ITEM_FIELDS = ("input", "target", "choices", "answer", "split")


@dataclass
class Item:
    input: str
    target: str | None = None  # free-form answer (scored by generation)
    choices: list[str] | None = None  # or: candidate continuations (scored by log-likelihood)
    answer: int | None = None  # index of the right choice
    where: str = ""  # "file: line N", for messages

    @property
    def output(self) -> str:
        """The right answer, as shown when this item is a solved example."""
        return self.choices[self.answer or 0] if self.choices is not None else self.target or ""

    @property
    def key(self) -> tuple[str, str]:
        """Two items with the same key are the same item (never shown as an example of itself)."""
        return self.input, self.output


@dataclass
class Task:
    name: str
    test: list[Item]
    train: list[Item] = field(default_factory=list)
    description: str = ""
    example_format: str = "{input} -> {output}"
    separator: str = "\n"  # between solved examples, and between the last example and the query
    description_separator: str = "\n"  # between the description and the first example (or the query)
    stop: list[str] = field(default_factory=list)  # generation stops; default: the separator and a newline
    source: str = ""

    def __post_init__(self) -> None:
        check_format(self.example_format, self.source or self.name)

    @property
    def kind(self) -> str:
        """"choices" if every test item has choices, "target" if none has, else "mixed"."""
        n = sum(it.choices is not None for it in self.test)
        return "choices" if n == len(self.test) else "target" if n == 0 else "mixed"

    @property
    def stop_strings(self) -> list[str]:
        stops = self.stop or [self.separator.rstrip() or self.separator, "\n"]
        return list(dict.fromkeys(s for s in stops if s))


def check_format(fmt: str, where: str) -> None:
    """The example format must hold {input} then {output}, with {output} last (the model continues there)."""
    if fmt.count("{input}") != 1 or fmt.count("{output}") != 1 or fmt.index("{input}") > fmt.index("{output}"):
        raise DataError(f"{where}: field 'example_format': needs one {{input}} and then one {{output}}, got {fmt!r}")
    if not fmt.endswith("{output}"):
        raise DataError(f"{where}: field 'example_format': must end with {{output}} (the model completes "
                        f"the output), got {fmt!r}")


def parse_header(obj: dict, where: str) -> dict:
    if unknown := sorted(set(obj) - set(HEADER_FIELDS)):
        raise DataError(f"{where}: unknown header field(s) {', '.join(map(repr, unknown))}; "
                        f"valid: {', '.join(HEADER_FIELDS)} (items need an 'input')")
    for k, v in obj.items():
        if k == "stop":
            if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
                raise DataError(f"{where}: field 'stop': must be a list of non-empty strings")
        elif not isinstance(v, str):
            raise DataError(f"{where}: field {k!r}: must be a string, got {type(v).__name__}")
    if "example_format" in obj:
        check_format(obj["example_format"], where)
    return dict(obj)


def parse_item(obj: object, where: str) -> tuple[Item, str]:
    """An item and its split from one JSON object."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if unknown := sorted(set(obj) - set(ITEM_FIELDS)):
        raise DataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; valid: {', '.join(ITEM_FIELDS)}")
    if not isinstance(obj.get("input"), str):
        raise DataError(f"{where}: field 'input': {'missing' if 'input' not in obj else 'must be a string'}")
    split = obj.get("split", "test")
    if split not in ("train", "test"):
        raise DataError(f"{where}: field 'split': must be 'train' or 'test', got {split!r}")
    has_target, has_choices = "target" in obj, "choices" in obj
    if has_target == has_choices:
        raise DataError(f"{where}: field 'target'/'choices': give exactly one of them "
                        f"(a free-form target string, or a list of choices with an answer)")
    if has_target:
        if not isinstance(obj["target"], str) or not obj["target"].strip():
            raise DataError(f"{where}: field 'target': must be a non-empty string")
        if "answer" in obj:
            raise DataError(f"{where}: field 'answer': only items with 'choices' have an answer")
        return Item(obj["input"], target=obj["target"], where=where), split
    choices = obj["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: field 'choices': must be a list of at least 2 non-empty strings")
    if len(set(choices)) != len(choices):
        raise DataError(f"{where}: field 'choices': the choices must differ")
    answer = obj.get("answer")
    if isinstance(answer, str) and answer in choices:
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(f"{where}: field 'answer': must be the index (0..{len(choices) - 1}) of the right choice "
                        f"or the right choice itself, got {answer!r}")
    return Item(obj["input"], choices=list(choices), answer=answer, where=where), split


def _read_items(path: Path, header_allowed: bool) -> tuple[dict, list[Item], list[Item]]:
    header: dict = {}
    train: list[Item] = []
    test: list[Item] = []
    for n, (lineno, obj) in enumerate(read_jsonl(path)):
        where = f"{path}: line {lineno}"
        if header_allowed and n == 0 and isinstance(obj, dict) and "input" not in obj:
            header = parse_header(obj, where)
        else:
            item, split = parse_item(obj, where)
            (train if split == "train" else test).append(item)
    return header, train, test


def _make_task(path: Path, header: dict, train: list[Item], test: list[Item]) -> Task:
    if not test:
        raise DataError(f"{path}: no test items (lines without \"split\": \"train\")")
    if len(test) == 1 and not train:
        raise DataError(f"{path}: one test item and no train items: no example can be shown")
    return Task(name=header.get("name") or path.stem, test=test, train=train, source=str(path),
                **{k: v for k, v in header.items() if k != "name"})


def load_task_file(path: str | Path) -> Task:
    path = Path(path)
    return _make_task(path, *_read_items(path, header_allowed=True))


def load_task_dir(path: Path) -> Task:
    header: dict = {}
    meta = path / "task.json"
    if meta.is_file():
        try:
            raw = json.loads(meta.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{meta}: line 1: malformed JSON ({e})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{meta}: line 1: expected a JSON object")
        header = parse_header(raw, f"{meta}: line 1")
    header.setdefault("name", path.name)
    train: list[Item] = []
    if (path / "train.jsonl").is_file():  # every item of train.jsonl is a solved example
        _, marked, unmarked = _read_items(path / "train.jsonl", False)
        train = marked + unmarked
    _, test_train, test = _read_items(path / "test.jsonl", False)
    if test_train:
        raise DataError(f"{test_train[0].where}: field 'split': items of test.jsonl are test items")
    return _make_task(path / "test.jsonl", header, train, test)


def load_task_files(spec: str) -> list[Task]:
    """The tasks of a .jsonl file, a task directory or a suite directory (builtins: `run.load_tasks`)."""
    path = Path(spec)
    if path.is_file():
        return [load_task_file(path)]
    if path.is_dir():
        if (path / "test.jsonl").is_file():
            return [load_task_dir(path)]
        members = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                         and ((p.is_file() and p.suffix == ".jsonl") or (p.is_dir() and (p / "test.jsonl").is_file())))
        if not members:
            raise DataError(f"{path}: a task directory needs test.jsonl, or .jsonl task files / task directories")
        return [t for p in members for t in load_task_files(str(p))]
    raise DataError(f"{spec}: no such task file or directory (or builtin:translate-zh-en, builtin:synthetic)")
