"""Tool use (LaMDA, RECIPE.md section 10): the chat toolset, builtin tool-use conversations, the generation loop
over the chat template, and the held-out score with and without the toolset.

    toolset = chat_toolset()
    convs = tool_conversations(600, seed=0)             # SFT data: arithmetic, translation, retrieval
    turns = answer_with_tools(model, tok, [[Message("user", "What is 37*12?")]], cfg, toolset)
    turns[0].calls, turns[0].text                        # [("37*12", "444")], "444"

The format is made for a small model to copy: the question holds the bare query (`37*12`, `猫`, a word), the
call repeats it, and the answer copies what was asked for from the toolset's result (the number, the word's first
meaning, the source of the passage that mentions a word). Held-out questions (`split="heldout"`) are
a fixed tenth of the space of queries by a hash, never generated for training.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .chat import ChatTemplate, Message, format_results
from .report import md_table
from .sample import CallTurn, SamplingConfig, generate_with_calls
from .tools import Calculator, Retrieval, Toolset, Translator, file_documents

TOOLS = ("calculator", "translator", "retrieval")
MAX_CALLS = 3  # calls per turn before the model must answer


def chat_toolset(docs: Sequence[str | Path] = (), dictionary: str | Path | None = None) -> Toolset:
    """LaMDA's toolset as the chat format uses it: retrieval answers its best passage's source and first words
    (short results leave room in a small context). Training data and generation must use the same."""
    return Toolset([Calculator(), Translator(dictionary),
                    Retrieval(file_documents(docs) if docs else None, k=1, snippet_words=12)])


@dataclass
class ToolQuestion:
    """A question answered through one tool: the query to send, the toolset's result, the expected answer."""

    tool: str
    question: str
    query: str
    result: str

    @property
    def answer(self) -> str:
        """What the user asked for, copied verbatim from the result: the number, the word's first meaning ("It
        means" and the text after "word:" up to the next ";"), the source (the "[source #position]" before the
        snippet)."""
        if self.tool == "retrieval":
            return self.result.split("] ", 1)[0] + "]"
        if self.tool == "translator":  # " to delay" as in the result: the same tokens, a copy
            return "It means " + self.result.split(": ", 1)[1].split("; ")[0]
        return self.result

    def conversation(self) -> list[Message]:
        return [Message("user", self.question), Message("assistant", self.query, "toolset"),
                Message("tool", self.result), Message("assistant", self.answer)]


def _heldout(query: str) -> bool:
    return zlib.crc32(query.encode()) % 10 == 0


_ARITH = ["What is {q}?", "Compute {q}.", "How much is {q}?", "{q} = ?", "Calculate {q}, please."]
_TRANSLATE = ["What does {q} mean?", "Translate {q} into English.", "What is {q} in English?", "{q} means?"]
# the word to look up on its own line: tokenized as in the call (after a quote or a space it would be other tokens)
_RETRIEVE = ["Which text mentions this word?\n{q}", "Where does this word appear?\n{q}",
             "Find this word in the library:\n{q}", "What is the source of this word?\n{q}"]


def _arithmetic(rng: random.Random, toolset: Toolset) -> tuple[str, str]:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    q = f"{a}{rng.choice('+-*')}{b}"
    return rng.choice(_ARITH).format(q=q), q


@cache
def _common_words(retrieval: Retrieval, min_count: int = 20) -> frozenset[str]:
    """Lower-case English words seen at least `min_count` times in the retrieval collection (by default the
    embedded corpora the model is pretrained on: words it has learned to spell)."""
    counts = Counter(w for p in retrieval.passages for w in re.findall(r"[a-z]+", p.text.lower()))
    return frozenset(w for w, n in counts.items() if n >= min_count)


@cache
def _words(dictionary: str | None, common: frozenset[str]) -> list[str]:
    """Chinese words of one or two characters whose dictionary line is short (fits a small context) and whose
    first meaning is one or two common English words. A rare word ("medial malleolus") is a copy the tiny model
    misspells from its own statistics ("medial stringusial"), with the right line in its context."""
    zh_en, _ = Translator(dictionary)._tables
    return sorted(w for w, defs in zh_en.items() if len(w) <= 2 and len(f"{w}: {'; '.join(defs[:3])}") <= 32
                  and all("\u4e00" <= c <= "\u9fff" for c in w)
                  and len(defs[0].split()) <= 2 and all(x in common for x in defs[0].split()))


def _translation(rng: random.Random, toolset: Toolset) -> tuple[str, str]:
    dictionary = next(t.dictionary for t in toolset.tools if isinstance(t, Translator))
    retrieval = next(t for t in toolset.tools if isinstance(t, Retrieval))
    q = rng.choice(_words(None if dictionary is None else str(dictionary), _common_words(retrieval)))
    return rng.choice(_TRANSLATE).format(q=q), q


def _retrieval(rng: random.Random, toolset: Toolset) -> tuple[str, str]:
    """A word of five letters or more from a passage (a four-word quote was more than the tiny model copies)."""
    passages = next(t for t in toolset.tools if isinstance(t, Retrieval)).passages
    words: list[str] = []
    while not words:
        words = [w for w in rng.choice(passages).text.split() if len(w) >= 5 and w.isalpha()]
    q = rng.choice(words)
    return rng.choice(_RETRIEVE).format(q=q), q


_MAKERS: dict[str, Callable[[random.Random, Toolset], tuple[str, str]]] = {
    "calculator": _arithmetic, "translator": _translation, "retrieval": _retrieval}


def tool_questions(n: int, *, seed: int, split: str = "train", tools: Sequence[str] = TOOLS,
                   toolset: Toolset | None = None, weights: Sequence[float] | None = None) -> list[ToolQuestion]:
    """`n` questions, each answered through one of `tools` (drawn by `weights`), from the train or the held-out
    part of the query space; only questions whose tool answers the query are kept (and, for retrieval, only quotes
    that find their own passage first)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: 'train' or 'heldout', got {split!r}")
    toolset = toolset or chat_toolset()
    rng = random.Random(f"{seed}-{split}")
    out: list[ToolQuestion] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 100:
            raise ValueError(f"could not make {n} {split} tool questions")
        tool = rng.choices(list(tools), weights=weights)[0]
        question, query = _MAKERS[tool](rng, toolset)
        if _heldout(query) != (split == "heldout"):
            continue
        results = toolset(query)
        if not results or results[0].tool != tool or len(results) > 1:
            continue
        if tool == "retrieval" and not _own(toolset, query, results):
            continue
        out.append(ToolQuestion(tool, question, query, format_results(results)))
    return out


@cache
def _by_head(retrieval: Retrieval) -> dict[str, str]:
    return {f"[{p.source} #{p.position}]": p.text for p in retrieval.passages}


def _own(toolset: Toolset, query: str, results: list) -> bool:
    """Whether a query's best passage is one that contains it (not another passage with the same words)."""
    retrieval = next(t for t in toolset.tools if isinstance(t, Retrieval))
    return query in _by_head(retrieval).get(results[0].result.split("]")[0] + "]", "")


def tool_conversations(n: int, *, seed: int, toolset: Toolset | None = None) -> list[list[Message]]:
    """`n` training conversations with one tool call each, arithmetic, translation and retrieval 3:2:2. Measured in
    the main job's SFT (800 steps from its pretraining run, 150 held-out questions; exact with the toolset for
    arithmetic / translation / retrieval, dialogue val loss): 4:1:1 1.00 / 0.15 / 0.24, 1.85; 2:1:1 0.98 / 0.36 /
    0.38, 1.87; 3:2:2 1.00 / 0.51 / 0.32, 1.90; 1:1:1 0.96 / 0.46 / 0.44, 1.92: copying a word needs as many
    examples as copying digits."""
    return [q.conversation() for q in tool_questions(n, seed=seed, toolset=toolset, weights=(3, 2, 2))]


def answer_with_tools(model, tok, convs: Sequence[list[Message]], cfg: SamplingConfig, toolset: Toolset | None, *,
                      max_calls: int = MAX_CALLS, on_text=None, on_call=None) -> list[CallTurn]:
    """The assistant's next turn for each conversation; with a toolset its calls are run and their results forced
    in (LaMDA's loop); without one (`toolset=None`) the call token is banned: the model answers directly."""
    template = ChatTemplate(tok)

    def run_call(query: str) -> tuple[str, list[int]]:
        result = format_results(toolset(query)) if toolset is not None else "no result"
        return result, template.tool_result_ids(result)

    return generate_with_calls(model, tok, [template.prompt_ids(c) for c in convs], cfg,
                               stop_ids=template.stop_ids, call_id=template.call, run_call=run_call,
                               max_calls=max_calls if toolset is not None else 0, pad_id=tok.eot_id,
                               on_text=on_text, on_call=on_call)


def score_tools(model, tok, questions: Sequence[ToolQuestion], toolset: Toolset, *, batch_size: int = 64,
                max_new_tokens: int = 48) -> dict:
    """Exact-match accuracy per tool with the toolset and without it (the same model, the same prompts, greedy),
    examples of calls, and how many turns hit the call cap."""
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    out: dict = {"rows": [], "examples": [], "capped": 0, "questions": len(questions)}
    turns: dict[str, list[CallTurn]] = {"with": [], "without": []}
    for i in range(0, len(questions), batch_size):
        convs = [[Message("user", q.question)] for q in questions[i: i + batch_size]]
        turns["with"] += answer_with_tools(model, tok, convs, cfg, toolset)
        turns["without"] += answer_with_tools(model, tok, convs, cfg, None)
    for tool in TOOLS:
        idx = [i for i, q in enumerate(questions) if q.tool == tool]
        if not idx:
            continue
        right = {k: sum(turns[k][i].text.strip() == questions[i].answer for i in idx) for k in turns}
        out["rows"].append({"tool": tool, "questions": len(idx),
                            "with the toolset": round(right["with"] / len(idx), 3),
                            "without": round(right["without"] / len(idx), 3),
                            "called the right query": round(sum(
                                [c[0] for c in turns["with"][i].calls[:1]] == [questions[i].query]
                                for i in idx) / len(idx), 3)})
        for i in idx[:2]:
            t = turns["with"][i]
            out["examples"].append({"question": questions[i].question, "calls": t.calls, "answer": t.text,
                                    "without the toolset": turns["without"][i].text,
                                    "expected": questions[i].answer})
    out["capped"] = sum(t.capped for t in turns["with"])
    return out


def tools_md(score: dict) -> str:
    """The report section of `score_tools`."""
    examples = "".join(
        f"```\nUser: {e['question']}\n" + "".join(f"TS, {q}\n  -> {r}\n" for q, r in e["calls"])
        + f"Assistant: {e['answer']}\n(without the toolset: {e['without the toolset']})\n```\n"
        for e in score["examples"])
    return (f"Exact-match accuracy on {score['questions']} held-out questions the SFT model never saw (their queries "
            "are a fixed tenth of the query space, never generated for training), greedy, with LaMDA's toolset "
            f"loop (at most {MAX_CALLS} calls per turn) and without it (the call token banned: the same model, the "
            "same prompts):\n\n" + md_table(score["rows"])
            + f"\nTurns that hit the call cap: {score['capped']} of {score['questions']}.\n\nExamples:\n\n"
            + examples)
