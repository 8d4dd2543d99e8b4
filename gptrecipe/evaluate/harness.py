"""Scoring in-context tasks through a model backend: a local checkpoint, or an OpenAI-compatible endpoint.

Items with choices are scored by the log-likelihood of each continuation given the prompt (one forward
pass over a right-padded batch of prompt + choice rows): `acc` picks the highest sum of log-probabilities,
`acc_norm` the highest per character (lm-evaluation-harness' length normalisation). Items with a target
are answered by greedy generation until a stop string; `exact` compares the stripped strings, `normalized`
after lowercasing and dropping punctuation, articles and extra spaces (SQuAD's normalisation).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..sample import SamplingConfig, generate
from .prompts import Prompt, fit_prompt
from .tasks import Task


class Backend(Protocol):
    """What the harness needs from a model."""

    name: str
    max_tokens: int | None  # context length in tokens (prompt + continuation); None = unknown, K is not capped

    def count_tokens(self, text: str) -> int: ...

    def loglikelihood(self, requests: Sequence[tuple[str, str]], bar=None) -> list[tuple[float, int]]:
        """(sum of log P(continuation tokens | context), number of continuation tokens) per (context, continuation)."""
        ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str], bar=None) -> list[str]:
        """Greedy completions, cut before the first stop string."""
        ...


class LocalBackend:
    """A GPT checkpoint in this process. Every prompt starts with <|endoftext|>, a document start as in pretraining."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_size: int = 32, name: str = "local"):
        self.model, self.tok, self.batch_size, self.name = model.eval(), tokenizer, batch_size, name
        self.max_tokens = model.config.block_size
        self.device = next(model.parameters()).device

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text))

    def _ids(self, text: str) -> list[int]:
        return [self.tok.eot_id, *self.tok.encode(text)]

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, str]], bar=None) -> list[tuple[float, int]]:
        """Requests whose continuation is one token share one forward pass per distinct context (the choices
        of an item); the others each get a row of prompt + continuation."""
        block = self.model.config.block_size
        out: list[tuple[float, int]] = [(0.0, 0)] * len(requests)
        rows: list[tuple[list[int], list[tuple[int, bool, int]]]] = []  # ids, [(request, one token?, token or n)]
        by_ctx: dict[str, int] = {}
        for i, (ctx, cont) in enumerate(requests):
            c = self.tok.encode(cont)
            if len(c) == 1:  # the context's last position scores every single-token continuation at once
                if ctx not in by_ctx:
                    by_ctx[ctx] = len(rows)
                    rows.append(((self._ids(ctx) + [0])[-(block + 1):], []))
                rows[by_ctx[ctx]][1].append((i, True, c[0]))
            else:
                ids = (self._ids(ctx) + c)[-(block + 1):]  # an over-long prompt loses its start
                rows.append((ids, [(i, False, min(len(c), len(ids) - 1))]))
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))  # similar lengths batch together
        for b in range(0, len(order), self.batch_size):
            idx = order[b: b + self.batch_size]
            width = max(len(rows[r][0]) for r in idx) - 1
            x = torch.full((len(idx), width), self.tok.eot_id, dtype=torch.long)
            for j, r in enumerate(idx):
                ids = rows[r][0]
                x[j, : len(ids) - 1] = torch.tensor(ids[:-1])
            logits = self.model(x.to(self.device))[0]
            for j, r in enumerate(idx):
                ids, reqs = rows[r]
                end = len(ids) - 1
                for i, one, t in reqs:
                    if one:  # the single token t after the context
                        out[i] = (F.log_softmax(logits[j, end - 1].float(), dim=-1)[t].item(), 1)
                    elif t:  # the row's last t tokens
                        lp = F.log_softmax(logits[j, end - t: end].float(), dim=-1)
                        tgt = torch.tensor(ids[end - t + 1:], device=self.device)
                        out[i] = (lp.gather(-1, tgt[:, None]).sum().item(), t)
                if bar is not None:
                    bar.update(len(reqs))
        return out

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str], bar=None) -> list[str]:
        block = self.model.config.block_size
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop))
        out: list[str] = []
        for b in range(0, len(prompts), self.batch_size):
            ids = [self._ids(p)[-(block - 1):] for p in prompts[b: b + self.batch_size]]  # room for one token
            out += [c.text for c in generate(self.model, self.tok, ids, cfg)]
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
                if item.choices is not None:
                    reserve = max(backend.count_tokens(c) for c in item.choices) + 1
                else:
                    reserve = max_new_tokens
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
        if item.choices is not None:
            scores = [next(ll) for _ in item.choices]
            ok = pick_choice(scores, item.choices, False) == item.answer
            rec["acc"].append(float(ok))
            rec["acc_norm"].append(float(pick_choice(scores, item.choices, True) == item.answer))
            rec["chance"].append(1 / len(item.choices))
        else:
            pred = generations[j]
            ok = exact_match(pred, item.output)
            rec["exact"].append(float(ok))
            rec["normalized"].append(float(normalized_match(pred, item.output)))
            rec["chance"].append(0.0)
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
