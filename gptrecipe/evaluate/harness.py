"""Scoring in-context tasks through a model backend: a local checkpoint, or an OpenAI-compatible endpoint.

Items with choices are scored by the log-likelihood of each continuation given the prompt (the prompt runs
once for all its choices, then each choice goes on from a copy of its KV cache): `acc` picks the highest
sum of log-probabilities, `acc_norm` the highest per character (lm-evaluation-harness' length
normalisation). Items with a target are answered by greedy generation until a stop string; `exact`
compares the stripped strings, `normalized` after lowercasing and dropping punctuation, articles and
extra spaces (SQuAD's normalisation).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..sample import SamplingConfig, generate
from .prompts import Prompt, build_prompt, continuations, fit_prompt, render_query
from .tasks import Item, Task


class Backend(Protocol):
    """What the harness needs from a model."""

    name: str
    max_tokens: int | None  # context length in tokens (prompt + continuation); None = unknown, K is not capped

    def count_tokens(self, text: str) -> int: ...

    def loglikelihood(self, requests: Sequence[tuple[str, str]], bar=None) -> list[tuple[float, int]]:
        """(sum of log P(continuation tokens | context), number of continuation tokens) per (context, continuation)."""
        ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str], bar=None, *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """Completions cut before the first stop string: greedy, or sampled (temperature > 0, top-p, seeded)."""
        ...


class LocalBackend:
    """A GPT checkpoint in this process. Every prompt starts with <|endoftext|>, a document start as in pretraining."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_size: int = 32, name: str = "local",
                 compile: bool = False):
        self.model, self.tok, self.batch_size, self.name = model.eval(), tokenizer, batch_size, name
        self.compile = compile  # generation through the compiled decode step (sample.generate_ids)
        self.max_tokens = model.config.block_size
        self.device = next(model.parameters()).device

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text))

    def _ids(self, text: str) -> list[int]:
        return [self.tok.eot_id, *self.tok.encode(text)]

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, str]], bar=None) -> list[tuple[float, int]]:
        """Requests sharing a context (the choices of an item) share its forward pass: a batch of distinct
        contexts runs once, left-padded, into a KV cache; the context's last position scores every first
        continuation token, and longer continuations go on from a copy of their context's cache. A context
        too long for the batch's longest continuation loses its start."""
        block = self.model.config.block_size
        conts = [self.tok.encode(cont) for _, cont in requests]
        groups: dict[str, list[int]] = {}
        for i, (ctx, _) in enumerate(requests):
            groups.setdefault(ctx, []).append(i)
        ids = {ctx: self._ids(ctx) for ctx in groups}
        order = sorted(groups, key=lambda c: -len(ids[c]))  # similar lengths batch together
        out: list[tuple[float, int]] = [(0.0, 0)] * len(requests)
        for b in range(0, len(order), self.batch_size):
            batch = order[b: b + self.batch_size]
            extra = max(0, max(len(conts[i]) for c in batch for i in groups[c]) - 1)  # tokens fed after the context
            rows = [ids[c][-(block - extra):] for c in batch]
            width = max(map(len, rows))
            x = torch.full((len(rows), width), self.tok.eot_id, dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, width - len(r):] = torch.tensor(r)
            pad = torch.tensor([width - len(r) for r in rows])
            cache = self.model.new_cache(len(rows), max_len=width + extra, pad=pad)
            h = self.model.hidden_states(x.to(self.device), cache)[:, -1]
            first = F.log_softmax(self.model.lm_head(h).float(), dim=-1)  # (contexts, vocab): the next token
            longer = []
            for j, c in enumerate(batch):
                for i in groups[c]:
                    n = len(conts[i])
                    out[i] = (first[j, conts[i][0]].item() if n else 0.0, n)
                    if n > 1:
                        longer.append((j, i))
            for s in range(0, len(longer), self.batch_size):  # continuations, on copies of their context's cache
                part = longer[s: s + self.batch_size]
                xc = torch.full((len(part), extra), self.tok.eot_id, dtype=torch.long)
                for r, (_, i) in enumerate(part):
                    xc[r, : len(conts[i]) - 1] = torch.tensor(conts[i][:-1])
                sub = cache.select(torch.tensor([j for j, _ in part], device=self.device))
                lp = F.log_softmax(self.model(xc.to(self.device), cache=sub)[0].float(), dim=-1)
                for r, (_, i) in enumerate(part):
                    tgt = torch.tensor(conts[i][1:], device=self.device)
                    rest = lp[r, : len(tgt)].gather(-1, tgt[:, None]).sum().item()
                    out[i] = (out[i][0] + rest, out[i][1])
            if bar is not None:
                bar.update(sum(len(groups[c]) for c in batch))
        return out

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str], bar=None, *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """Batches of `batch_size` prompts; a sampled batch draws from its own generator, seeded by (seed, batch)."""
        block = self.model.config.block_size
        out: list[str] = []
        for b in range(0, len(prompts), self.batch_size):
            cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=list(stop),
                                 seed=None if seed is None else seed * 1_000_003 + b)
            ids = [self._ids(p)[-(block - 1):] for p in prompts[b: b + self.batch_size]]  # room for one token
            out += [c.text for c in generate(self.model, self.tok, ids, cfg, compile=self.compile)]
            if bar is not None:
                bar.update(len(ids))
        return out


# ---- metrics --------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD's normalisation)."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, target: str) -> bool:
    return prediction.strip() == target.strip()


def normalized_match(prediction: str, target: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(target)


def pick_choice(scores: Sequence[tuple[float, int]], choices: Sequence[str], normalize: bool) -> int:
    """Index of the best choice: by summed log-likelihood, or (normalize) per character of the choice."""
    vals = [lp / max(1, len(c)) if normalize else lp for (lp, _), c in zip(scores, choices, strict=True)]
    return max(range(len(vals)), key=vals.__getitem__)


def item_scores(backend: Backend, task: Task, queries: Sequence[tuple[str, int]], *, metric: str = "accuracy",
                split: str = "train", max_new_tokens: int = 16, shots: int = 0, pool: Sequence[Item] = (),
                seed: int = 0, bar=None) -> list[float]:
    """Scores of (description, item index) pairs: the task's prompt with that description, then `shots` solved
    examples of `pool` (never the item itself; the same ones for every description of an item, seeded), then the
    item. `accuracy`: the right choice by log-likelihood, or a greedy answer equal to the target after
    normalisation (normalize_answer); `logprob`: the mean log-probability per token of the right output."""
    if metric not in ("accuracy", "logprob"):
        raise ValueError(f"metric must be 'accuracy' or 'logprob', got {metric!r}")
    items = task.train if split == "train" else task.test

    def examples(i: int) -> list[Item]:
        if not shots:
            return []
        own = [it for it in pool if it.key != items[i].key]
        rng = np.random.default_rng([seed, split == "test", i])
        return [own[k] for k in rng.permutation(len(own))[:shots]]
    shown = {i: examples(i) for i in dict.fromkeys(i for _, i in queries)}
    prompts = [(build_prompt(replace(task, description=d), shown[i], items[i]), items[i]) for d, i in queries]
    out: list[float] = [0.0] * len(queries)
    ll = [(j, p, c) for j, (p, it) in enumerate(prompts) if metric == "logprob" or it.choices is not None
          for c in (continuations(task, it) if metric == "accuracy" else [render_query(task, it)[1] + it.output])]
    scores = iter(backend.loglikelihood([(p, c) for _, p, c in ll], bar=bar) if ll else [])
    for j, (_, it) in enumerate(prompts):
        if metric == "logprob":
            lp, n = next(scores)
            out[j] = lp / max(n, 1)
        elif it.choices is not None:
            out[j] = float(pick_choice([next(scores) for _ in it.choices], it.choices, False) == it.answer)
    gen = [j for j, (_, it) in enumerate(prompts) if metric == "accuracy" and it.choices is None]
    if gen:
        texts = backend.generate([prompts[j][0] for j in gen], max_new_tokens, task.stop_strings, bar=bar)
        for j, text in zip(gen, texts, strict=True):
            out[j] = float(normalized_match(text, prompts[j][1].output))
    return out


@dataclass
class TaskScore:
    """One task at one K."""

    task: str
    group: str  # the family of a synthetic task (letter_map-03 -> letter_map), else the task name
    k: int  # examples asked for
    n: int  # items scored
    k_mean: float  # examples actually shown (the context caps K), mean over items
    k_min: int
    capped: int  # items that got fewer than K examples
    score: float  # acc for items with choices, exact match for items with a target
    chance: float  # expected score of a uniform guess among the choices (0 for free-form targets)
    acc: float | None = None
    acc_norm: float | None = None
    exact: float | None = None
    normalized: float | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _group(name: str) -> str:
    head, _, tail = name.rpartition("-")
    return head if head and tail.isdigit() else name


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def evaluate_tasks(backend: Backend, tasks: Sequence[Task], ks: Sequence[int], *, seed: int = 1234,
                   max_items: int = 0, max_new_tokens: int = 16, progress: bool = True) -> list[TaskScore]:
    """Score every task at every K (zero-, one-, few-shot) in one batched pass per scoring kind."""
    plan: list[tuple[Task, int, int, Prompt]] = []  # (task, K, item index, prompt)
    for task in tasks:
        n = min(len(task.test), max_items) if max_items else len(task.test)
        for k in ks:
            if k < 0:
                raise ValueError(f"K must be >= 0, got {k}")
            for i in range(n):
                item = task.test[i]
                reserve = (max(backend.count_tokens(c) for c in item.choices) + 1 if item.choices is not None
                           else max_new_tokens)
                prompt = fit_prompt(task, i, k, seed, backend.count_tokens, backend.max_tokens, reserve)
                plan.append((task, k, i, prompt))
    ll_requests = [(p.text, c) for t, _, i, p in plan if t.test[i].choices is not None for c in p.continuations]
    gen_plan = [j for j, (t, _, i, _) in enumerate(plan) if t.test[i].choices is None]
    with tqdm(total=len(ll_requests) + len(gen_plan), desc="in-context eval", unit="seq", disable=not progress,
              dynamic_ncols=True) as bar:
        ll = iter(backend.loglikelihood(ll_requests, bar=bar)) if ll_requests else iter(())
        generations: dict[int, str] = {}
        by_stop: dict[tuple[str, ...], list[int]] = {}
        for j in gen_plan:
            by_stop.setdefault(tuple(plan[j][0].stop_strings), []).append(j)
        for stop, js in by_stop.items():
            texts = backend.generate([plan[j][3].text for j in js], max_new_tokens, list(stop), bar=bar)
            generations.update(zip(js, texts, strict=True))

    per: dict[tuple[str, int], dict[str, list]] = {}
    for j, (task, k, i, prompt) in enumerate(plan):
        item = task.test[i]
        rec = per.setdefault((task.name, k), {"shown": [], "acc": [], "acc_norm": [], "exact": [],
                                              "normalized": [], "correct": [], "chance": []})
        rec["shown"].append(prompt.k)
        rec["chance"].append(1 / len(item.choices) if item.choices is not None else 0.0)
        if item.choices is not None:
            scores = [next(ll) for _ in item.choices]
            ok = pick_choice(scores, item.choices, False) == item.answer
            rec["acc"].append(float(ok))
            rec["acc_norm"].append(float(pick_choice(scores, item.choices, True) == item.answer))
        else:
            ok = exact_match(generations[j], item.output)
            rec["exact"].append(float(ok))
            rec["normalized"].append(float(normalized_match(generations[j], item.output)))
        rec["correct"].append(float(ok))
    out = []
    for (name, k), rec in per.items():
        shown = rec["shown"]
        out.append(TaskScore(task=name, group=_group(name), k=k, n=len(shown), k_mean=sum(shown) / len(shown),
                             k_min=min(shown), capped=sum(s < k for s in shown), score=_mean(rec["correct"]) or 0.0,
                             chance=_mean(rec["chance"]) or 0.0, acc=_mean(rec["acc"]), acc_norm=_mean(rec["acc_norm"]),
                             exact=_mean(rec["exact"]), normalized=_mean(rec["normalized"])))
    return out


def curve(scores: Sequence[TaskScore], by_group: bool = False) -> list[dict[str, Any]]:
    """Accuracy against K: the mean score over tasks (or over the tasks of each group) at each K."""
    keys = sorted({(s.group if by_group else "all", s.k) for s in scores}, key=lambda t: (t[0], t[1]))
    rows = []
    for g, k in keys:
        sel = [s for s in scores if s.k == k and (not by_group or s.group == g)]
        rows.append({"group": g, "k": k, "score": sum(s.score for s in sel) / len(sel),
                     "chance": sum(s.chance for s in sel) / len(sel), "k_mean": sum(s.k_mean for s in sel) / len(sel),
                     "capped": sum(s.capped for s in sel), "items": sum(s.n for s in sel), "tasks": len(sel)})
    return rows
