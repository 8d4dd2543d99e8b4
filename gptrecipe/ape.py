"""`gptrecipe ape`: the Automatic Prompt Engineer (Zhou et al. 2022), with OPRO's search beside it.

1. Propose: a proposer model reads a fresh random subset of a task's solved train examples per query (the
   forward template, "... The instruction was to") and writes instructions, sampled (temperature 0.9, top-p
   0.9); they are cleaned into one-line sentences, empty and duplicate ones dropped.
2. Score: the scorer model runs each instruction zero-shot on held-out train items (the task's prompt with the
   instruction as its description): execution accuracy or the mean log-probability per token of the right
   output. Evaluations go where they matter: adaptive filtering (the paper) or a UCB bandit (the reference
   code); every (instruction, item) scored is counted.
3. Optionally: variants of the best (iterative Monte Carlo search), or OPRO (a meta-prompt of earlier
   instructions with their scores asks for a better one) on the same evaluation budget.
4. Report: the best instruction's accuracy on the task's test split (never used for selection) next to no
   instruction and the task's own description, per task and seed; results.json, report.md, ape.png.

    gptrecipe ape --task builtin:synthetic/classify --proposer runs/speedrun/pretrain
    gptrecipe ape --task my_task.jsonl --proposer-base-url http://localhost:8000/v1 --proposer-model gpt-x
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig, dump_toml, load_config, to_dict
from .data.icl import as_instruction
from .evaluate.harness import Backend, item_scores
from .evaluate.prompts import render_example
from .evaluate.run import EvalConfig, load_tasks, make_backend
from .evaluate.synthetic import SyntheticConfig
from .evaluate.tasks import Task
from .io import DataError
from .report import md_table, save_figure, write_markdown

FORWARD_TEMPLATE = ("I gave a friend an instruction. Based on the instruction they produced the following "
                    "input-output pairs:\n\n[DEMOS]\n\nThe instruction was to")
VARIATION_TEMPLATE = ("Generate a variation of the following instruction while keeping the semantic meaning.\n\n"
                      "Input: [INSTRUCTION]\n\nOutput:")
OPRO_TEMPLATE = ("Below are earlier instructions for a task, each with its score (0 to 100, higher is better), "
                 "worst first.\n\n[HISTORY]\n\nExamples of the task:\n\n[DEMOS]\n\nWrite a new instruction, "
                 "different from all those above, with a higher score. The instruction was to")
OPRO_ENTRY = "text: [INSTRUCTION]\nscore: [SCORE]"

ScoreFn = Callable[[Sequence[tuple[int, int]]], list[float]]  # (candidate, item) pairs -> scores


# ---- the pure parts --------------------------------------------------------------------------------------------

def clean_proposals(texts: Sequence[str], seen: Sequence[str] = ()) -> tuple[list[str], int, int]:
    """Proposals as instructions (as_instruction: first line, capitalised, one full stop); drops the empty ones
    and duplicates (case and spacing ignored), also of `seen`. Returns (kept, empty dropped, duplicates dropped)."""
    keys = {" ".join(s.lower().split()) for s in seen}
    kept, empty, dup = [], 0, 0
    for t in texts:
        ins = as_instruction(t)
        key = " ".join(ins.lower().split())
        if not ins:
            empty += 1
        elif key in keys:
            dup += 1
        else:
            keys.add(key)
            kept.append(ins)
    return kept, empty, dup


@dataclass
class SearchResult:
    """Per candidate: summed score and items scored; `order`: the ranking; `curve`: (evaluations, best mean)."""

    sums: list[float]
    counts: list[int]
    order: list[int]
    evaluations: int
    curve: list[tuple[int, float]] = field(default_factory=list)

    def mean(self, i: int) -> float:
        return self.sums[i] / self.counts[i] if self.counts[i] else float("-inf")


def _tracker(n: int, score_fn: ScoreFn):
    sums, counts, spent = [0.0] * n, [0] * n, [0]

    def run(pairs: list[tuple[int, int]]) -> None:
        for (c, _), s in zip(pairs, score_fn(pairs) if pairs else [], strict=True):
            sums[c] += s
            counts[c] += 1
        spent[0] += len(pairs)
    return sums, counts, spent, run


def adaptive_filter(n_cands: int, n_items: int, score_fn: ScoreFn, *, subset: int = 4, keep: float = 0.5,
                    final: int = 5, rng: np.random.Generator | None = None) -> SearchResult:
    """The paper's adaptive filtering: score every candidate on a small subset of items, keep the best `keep`
    share (at least `final`), score the survivors on a new subset not overlapping the earlier ones, repeat
    until `final` are left, then score those on every item. Ranked by how far each got, then by its mean."""
    if subset < 1 or not 0 < keep < 1 or final < 1:
        raise ValueError(f"adaptive filtering needs subset >= 1, 0 < keep < 1, final >= 1 "
                         f"(got {subset}, {keep}, {final})")
    order = (rng or np.random.default_rng(0)).permutation(n_items).tolist()
    sums, counts, spent, run = _tracker(n_cands, score_fn)
    alive, reached, curve, used = list(range(n_cands)), [0] * n_cands, [], 0
    while len(alive) > final and used + subset < n_items:
        items = order[used: used + subset]
        used += subset
        run([(c, i) for c in alive for i in items])
        ranked = sorted(alive, key=lambda c: (-sums[c] / counts[c], c))
        alive = ranked[: max(final, math.ceil(keep * len(alive)))]
        for c in alive:
            reached[c] += 1
        curve.append((spent[0], sums[alive[0]] / counts[alive[0]]))
    run([(c, i) for c in alive for i in order[used:]])  # survivors scored every earlier subset: now the rest
    res = SearchResult(sums, counts, [], spent[0])
    for c in alive:
        reached[c] += 1
    res.order = sorted(range(n_cands), key=lambda c: (-reached[c], -res.mean(c), c))
    res.curve = [*curve, (spent[0], res.mean(res.order[0]))]
    return res


def ucb_search(n_cands: int, n_items: int, score_fn: ScoreFn, *, rounds: int = 5, arms: int = 10, samples: int = 5,
               c: float = 1.0, rng: np.random.Generator | None = None) -> SearchResult:
    """The reference code's UCB bandit: each round pulls the `arms` candidates with the highest
    mean + c * sqrt(ln(total pulls) / pulls) (unpulled ones first), each on `samples` random items. A pull
    counts its items. Ranked by mean (unpulled candidates last)."""
    rng = rng or np.random.default_rng(0)
    sums, counts, spent, run = _tracker(n_cands, score_fn)
    res, curve = SearchResult(sums, counts, [], 0), []
    for _ in range(rounds):
        log_total = math.log(max(sum(counts), 1))
        bound = [math.inf if not counts[i] else sums[i] / counts[i] + c * math.sqrt(log_total / counts[i])
                 for i in range(n_cands)]
        chosen = sorted(range(n_cands), key=lambda i: (-bound[i], i))[:arms]
        run([(i, int(j)) for i in chosen for j in rng.choice(n_items, min(samples, n_items), replace=False)])
        curve.append((spent[0], max(res.mean(i) for i in range(n_cands))))
    res.evaluations, res.curve = spent[0], curve
    res.order = sorted(range(n_cands), key=lambda i: (-res.mean(i), i))
    return res


def score_all(n_cands: int, n_items: int, score_fn: ScoreFn) -> SearchResult:
    """Every candidate on every item (the baseline the other searches save evaluations against)."""
    sums, counts, spent, run = _tracker(n_cands, score_fn)
    run([(c, i) for c in range(n_cands) for i in range(n_items)])
    res = SearchResult(sums, counts, [], spent[0])
    res.order = sorted(range(n_cands), key=lambda i: (-res.mean(i), i))
    res.curve = [(spent[0], res.mean(res.order[0]))] if n_cands else []
    return res


def fill(template: str, **slots: str) -> str:
    """Replace [NAME] by slots["name"] (e.g. [DEMOS], [INSTRUCTION], [HISTORY])."""
    for k, v in slots.items():
        template = template.replace(f"[{k.upper()}]", v)
    return template


def opro_meta_prompt(history: Sequence[tuple[str, float]], demos: str, *, template: str = OPRO_TEMPLATE,
                     entry: str = OPRO_ENTRY, shown: int = 20, scale: float = 100.0) -> str:
    """OPRO's meta-prompt: the `shown` best earlier instructions in ascending order of score (score x scale,
    rounded), then the demonstrations, then the request for a better instruction."""
    best = sorted(history, key=lambda h: h[1])[-shown:] if shown else []
    lines = [fill(entry, instruction=ins, score=f"{round(s * scale):d}") for ins, s in best]
    return fill(template, history="\n\n".join(lines), demos=demos)


# ---- the config ---------------------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    """A local checkpoint (`model` = checkpoint or run dir) or, with `base_url`, a model at an endpoint."""

    model: str = ""
    base_url: str = ""  # an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the endpoint's API key
    prompt_prefix: str = ""  # before every prompt sent; "<|endoftext|>" makes `gptrecipe serve` score as local
    batch_size: int = 32


@dataclass
class ApeConfig(RunConfig):
    name: str = "ape"
    tasks: list[str] = field(default_factory=lambda: ["builtin:synthetic/classify"])
    proposer: ModelSpec = field(default_factory=ModelSpec)
    scorer: ModelSpec = field(default_factory=ModelSpec)  # model "" = the proposer
    strategy: str = "ape"  # ape | opro | both (OPRO on the evaluations APE spent)
    seeds: list[int] = field(default_factory=lambda: [0])  # each task runs once per seed
    # propose (APE.md's defaults: 5 demonstrations per query, temperature 0.9, top-p 0.9, 50 tokens)
    template: str = FORWARD_TEMPLATE  # [DEMOS]: the demonstrations in the task's format
    demos: int = 5
    demo_share: float = 0.4  # of the train items: the demonstrations' pool; the rest score the instructions
    subsets: int = 5  # proposer queries, each with a fresh random subset of demonstrations
    per_subset: int = 10  # samples per query
    temperature: float = 0.9
    top_p: float = 0.9
    max_new_tokens: int = 50
    stop: list[str] = field(default_factory=lambda: ["\n"])
    # score
    metric: str = "accuracy"  # accuracy (execution accuracy: normalised exact match / the right choice) | logprob
    search: str = "filter"  # filter (adaptive filtering) | ucb | all
    filter_subset: int = 3  # items per round
    filter_keep: float = 0.5  # share kept per round
    filter_final: int = 3  # candidates scored on every item at the end
    ucb_rounds: int = 5
    ucb_arms: int = 10
    ucb_samples: int = 5
    ucb_c: float = 1.0
    max_answer_tokens: int = 16  # greedy answer budget (execution accuracy of free-form targets)
    # solved examples after the instruction, when scoring (from the demonstrations' pool) and testing (from the
    # train split): 0 = zero-shot (the paper's main setting); K > 0 = its instruction + few-shot setting
    shots: int = 0
    # iterative Monte Carlo search: variants of the best, rescored with them on every scoring item
    mc_rounds: int = 0
    mc_top: int = 3
    mc_variants: int = 4
    mc_template: str = VARIATION_TEMPLATE  # [INSTRUCTION]
    # OPRO
    opro_steps: int = 5  # at most; with strategy=both, as many as APE's evaluations pay for
    opro_proposals: int = 8
    opro_shown: int = 20
    opro_template: str = OPRO_TEMPLATE  # [HISTORY], [DEMOS]
    opro_entry: str = OPRO_ENTRY  # [INSTRUCTION], [SCORE]
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True


def load_ape_config(preset: str | None = None, overrides: Sequence[str] = ()) -> ApeConfig:
    cfg = load_config(ApeConfig, "ape", preset, list(overrides))
    checks = [(cfg.strategy in ("ape", "opro", "both"), "strategy: ape, opro or both"),
              (cfg.metric in ("accuracy", "logprob"), "metric: accuracy or logprob"),
              (cfg.search in ("filter", "ucb", "all"), "search: filter, ucb or all"),
              (cfg.demos >= 1 and cfg.subsets >= 1 and cfg.per_subset >= 1, "demos, subsets, per_subset: >= 1"),
              (0 < cfg.demo_share < 1, "demo_share: between 0 and 1"),
              (bool(cfg.seeds) and bool(cfg.tasks), "seeds, tasks: at least one"),
              ("[DEMOS]" in cfg.template, "template: must contain [DEMOS]"),
              ("[INSTRUCTION]" in cfg.mc_template, "mc_template: must contain [INSTRUCTION]"),
              ("[HISTORY]" in cfg.opro_template, "opro_template: must contain [HISTORY]")]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"ape: {msg}")
    return cfg


# ---- running it ------------------------------------------------------------------------------------------------

class Counted:
    """A backend that counts what it is asked: sequences scored (log-likelihood) and completions generated."""

    def __init__(self, backend: Backend):
        self.backend, self.name, self.max_tokens = backend, backend.name, backend.max_tokens
        self.scored = self.generated = 0

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def loglikelihood(self, requests, bar=None):
        self.scored += len(requests)
        return self.backend.loglikelihood(requests, bar=bar)

    def generate(self, prompts, max_new_tokens, stop, bar=None, **sampling):
        self.generated += len(prompts)
        return self.backend.generate(prompts, max_new_tokens, stop, bar=bar, **sampling)


def make_model(spec: ModelSpec, cfg: ApeConfig, role: str):
    if not spec.model:
        raise ConfigError(f"ape: give the {role}: a checkpoint (--{role} PATH) or an endpoint "
                          f"(--{role}-base-url URL --{role}-model NAME)")
    backend, _, _ = make_backend(EvalConfig(model=spec.model, base_url=spec.base_url, batch_size=spec.batch_size,
                                            api_prompt_prefix=spec.prompt_prefix, device=cfg.device, dtype=cfg.dtype),
                                 api_key=os.environ.get(spec.api_key_env, "") if spec.api_key_env else None)
    return Counted(backend)


class Scorer:
    """Scores (instruction, scoring item) pairs through the harness, each pair once (cached), counting them."""

    def __init__(self, backend: Counted, task: Task, items: list[int], cfg: ApeConfig, pool: list[int], seed: int):
        self.backend, self.task, self.items, self.cfg, self.seed = backend, task, items, cfg, seed
        self.pool = [task.train[i] for i in pool]  # the demonstrations' pool: solved examples when shots > 0
        self.cache: dict[tuple[str, int], float] = {}
        self.evaluations = 0

    def __call__(self, texts: Sequence[str], pairs: Sequence[tuple[int, int]]) -> list[float]:
        todo = list(dict.fromkeys((texts[c], self.items[i]) for c, i in pairs if (texts[c], self.items[i])
                                  not in self.cache))
        if todo:
            got = item_scores(self.backend, self.task, todo, metric=self.cfg.metric,
                              max_new_tokens=self.cfg.max_answer_tokens, shots=self.cfg.shots, pool=self.pool,
                              seed=self.seed)
            self.cache.update(zip(todo, got, strict=True))
            self.evaluations += len(todo)
        return [self.cache[texts[c], self.items[i]] for c, i in pairs]

    def estimate(self, text: str) -> tuple[float | None, int]:
        """The mean score of `text` over the items it was scored on so far, and how many."""
        got = [self.cache[text, i] for i in self.items if (text, i) in self.cache]
        return (float(np.mean(got)) if got else None), len(got)


def split_train(task: Task, cfg: ApeConfig, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Indices of the train items: the demonstrations' pool and the scoring items (disjoint)."""
    n = len(task.train)
    n_demo = max(cfg.demos, round(cfg.demo_share * n))
    if n < n_demo + 1:
        raise DataError(f"{task.source or task.name}: {n} train items: APE needs at least {cfg.demos + 1} "
                        f"(demos={cfg.demos} demonstrations per query and items to score instructions on; "
                        f"add items with \"split\": \"train\")")
    order = rng.permutation(n).tolist()
    return order[:n_demo], order[n_demo:]


def render_demos(task: Task, idx: Sequence[int]) -> str:
    return task.separator.join(render_example(task, task.train[i]) for i in idx)


def propose(backend: Counted, prompts: list[str], cfg: ApeConfig, seed: int) -> list[str]:
    return backend.generate(prompts, cfg.max_new_tokens, cfg.stop, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=seed)


def run_ape(task: Task, proposer: Counted, scorer_backend: Counted, cfg: ApeConfig, seed: int) -> dict[str, Any]:
    """APE (and/or OPRO) on one task with one seed: the ranked candidates, the evaluations spent, test accuracy."""
    rng = np.random.default_rng([seed, 0xA9E])
    demo_pool, score_items = split_train(task, cfg, rng)
    scorer = Scorer(scorer_backend, task, score_items, cfg, demo_pool, seed)
    g0, s0 = proposer.generated, scorer_backend.scored + scorer_backend.generated
    out: dict[str, Any] = {"task": task.name, "seed": seed, "shots": cfg.shots, "scoring_items": len(score_items),
                           "demo_pool": len(demo_pool)}
    strategies: dict[str, dict[str, Any]] = {}
    if cfg.strategy in ("ape", "both"):
        strategies["ape"] = _ape(task, proposer, scorer, demo_pool, cfg, seed, rng)
    if cfg.strategy in ("opro", "both"):
        budget = strategies["ape"]["evaluations"] if "ape" in strategies else 0
        fresh = Scorer(scorer_backend, task, score_items, cfg, demo_pool, seed)  # its own count
        strategies["opro"] = _opro(task, proposer, fresh, demo_pool, cfg, seed, rng, budget)
    # the test split, never used for selection: the winners against no instruction and the task's description
    conditions = {"no instruction": "", "task description": task.description,
                  **{f"{k} best": s["best"] for k, s in strategies.items()}}
    texts = list(dict.fromkeys(conditions.values()))
    pairs = [(t, i) for t in texts for i in range(len(task.test))]
    scores = item_scores(scorer_backend, task, pairs, split="test", metric="accuracy",
                         max_new_tokens=cfg.max_answer_tokens, shots=cfg.shots, pool=task.train, seed=seed)
    acc = {t: float(np.mean(scores[k * len(task.test): (k + 1) * len(task.test)])) for k, t in enumerate(texts)}
    out["test"] = {name: {"instruction": t, "accuracy": acc[t]} for name, t in conditions.items()}
    out["strategies"] = strategies
    out["proposer_requests"] = proposer.generated - g0
    out["scorer_requests"] = scorer_backend.scored + scorer_backend.generated - s0
    return out


def _search(scorer: Scorer, texts: list[str], cfg: ApeConfig, rng: np.random.Generator) -> SearchResult:
    def fn(pairs):
        return scorer(texts, pairs)
    n_items = len(scorer.items)
    if cfg.search == "filter":
        return adaptive_filter(len(texts), n_items, fn, subset=cfg.filter_subset, keep=cfg.filter_keep,
                               final=cfg.filter_final, rng=rng)
    if cfg.search == "ucb":
        return ucb_search(len(texts), n_items, fn, rounds=cfg.ucb_rounds, arms=cfg.ucb_arms, samples=cfg.ucb_samples,
                          c=cfg.ucb_c, rng=rng)
    return score_all(len(texts), n_items, fn)


def _ape(task: Task, proposer: Counted, scorer: Scorer, demo_pool: list[int], cfg: ApeConfig, seed: int,
         rng: np.random.Generator) -> dict[str, Any]:
    subsets = [[demo_pool[j] for j in rng.permutation(len(demo_pool))[: cfg.demos]] for _ in range(cfg.subsets)]
    prompts = [fill(cfg.template, demos=render_demos(task, s)) for s in subsets for _ in range(cfg.per_subset)]
    raw = propose(proposer, prompts, cfg, seed)
    texts, empty, dup = clean_proposals(raw)
    if not texts:
        raise DataError(f"{task.name}: the proposer wrote no usable instruction in {len(raw)} samples "
                        f"(all empty after cleaning); check the template and the stop strings")
    sources = ["proposal"] * len(texts)
    res = _search(scorer, texts, cfg, rng)
    curve, order = list(res.curve), res.order
    for r in range(cfg.mc_rounds):  # iterative Monte Carlo search: variants of the best, rescored on every item
        top = [texts[i] for i in order[: cfg.mc_top]]
        raw_v = propose(proposer, [fill(cfg.mc_template, instruction=t) for t in top for _ in range(cfg.mc_variants)],
                        cfg, seed * 7919 + r + 1)
        new, e2, d2 = clean_proposals(raw_v, seen=texts)
        empty, dup = empty + e2, dup + d2
        texts, sources = [*texts, *new], [*sources, *[f"variant (round {r + 1})"] * len(new)]
        pool = [texts.index(t) for t in top] + list(range(len(texts) - len(new), len(texts)))
        scorer(texts, [(c, i) for c in pool for i in range(len(scorer.items))])
        order = sorted(pool, key=lambda i: (-scorer.estimate(texts[i])[0], i)) + [i for i in order if i not in pool]
        curve.append((scorer.evaluations, scorer.estimate(texts[order[0]])[0]))
    cands = [{"instruction": texts[i], "score": scorer.estimate(texts[i])[0], "items": scorer.estimate(texts[i])[1],
              "source": sources[i]} for i in order]
    return {"best": texts[order[0]], "candidates": cands, "proposals": len(raw), "empty": empty, "duplicates": dup,
            "evaluations": scorer.evaluations, "evaluations_if_all": len(texts) * len(scorer.items),
            "curve": [list(p) for p in curve]}


def _opro(task: Task, proposer: Counted, scorer: Scorer, demo_pool: list[int], cfg: ApeConfig, seed: int,
          rng: np.random.Generator, budget: int) -> dict[str, Any]:
    """OPRO: start from no instruction; each step the meta-prompt (earlier instructions with their scores, fresh
    demonstrations) samples `opro_proposals`; new ones are scored on every scoring item."""
    n = len(scorer.items)
    texts: list[str] = [""]
    sources = ["start"]
    empty = dup = proposals = 0
    scorer([""], [(0, i) for i in range(n)])
    mean = {"": float(np.mean([scorer.cache["", it] for it in scorer.items]))}
    curve = [(scorer.evaluations, mean[""])]
    for step in range(cfg.opro_steps):
        if budget and scorer.evaluations + n > budget:
            break
        history = [(t, mean[t]) for t in texts if t]
        prompts = []
        for _ in range(cfg.opro_proposals):
            demos = render_demos(task, [demo_pool[j] for j in rng.permutation(len(demo_pool))[: cfg.demos]])
            prompts.append(opro_meta_prompt(history, demos, template=cfg.opro_template, entry=cfg.opro_entry,
                                            shown=cfg.opro_shown, scale=100.0 if cfg.metric == "accuracy" else 1.0))
        raw = propose(proposer, prompts, cfg, seed * 104729 + step)
        proposals += len(raw)
        new, e, d = clean_proposals(raw, seen=texts)
        empty, dup = empty + e, dup + d
        if budget:
            new = new[: max(0, (budget - scorer.evaluations) // n)]
        for t in new:
            texts.append(t)
            sources.append(f"step {step + 1}")
            mean[t] = float(np.mean(scorer([t], [(0, i) for i in range(n)])))
        curve.append((scorer.evaluations, max(mean.values())))
    order = sorted(range(len(texts)), key=lambda i: (-mean[texts[i]], i))
    cands = [{"instruction": texts[i], "score": mean[texts[i]], "items": n, "source": sources[i]} for i in order]
    return {"best": texts[order[0]], "candidates": cands, "proposals": proposals, "empty": empty, "duplicates": dup,
            "evaluations": scorer.evaluations, "evaluations_if_all": scorer.evaluations,
            "curve": [list(p) for p in curve]}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation (over tasks x seeds) of each condition's test accuracy, and evaluations."""
    rows = []
    for name in dict.fromkeys(k for r in runs for k in r["test"]):
        accs = [r["test"][name]["accuracy"] for r in runs if name in r["test"]]
        strat = name.removesuffix(" best")
        evals = [r["strategies"][strat]["evaluations"] for r in runs if strat in r.get("strategies", {})]
        rows.append({"condition": name, "test accuracy (mean)": float(np.mean(accs)),
                     "std": float(np.std(accs)), "min": float(np.min(accs)), "max": float(np.max(accs)),
                     "runs": len(accs), "evaluations (mean)": float(np.mean(evals)) if evals else 0.0})
    return rows


@dataclass
class ApeResult:
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    report: Path
    png: Path
    seconds: float


def ape(cfg: ApeConfig, *, log=print, proposer: Counted | None = None, scorer: Counted | None = None) -> ApeResult:
    """Run APE (and/or OPRO) on every task x seed; write results.json, report.md and ape.png under run_dir."""
    t0 = time.perf_counter()
    tasks = [t for spec in cfg.tasks for t in load_tasks(spec, synthetic=cfg.synthetic)]
    proposer = proposer or make_model(cfg.proposer, cfg, "proposer")
    if scorer is None:
        same = not cfg.scorer.model or (cfg.scorer.model, cfg.scorer.base_url) == (cfg.proposer.model,
                                                                                   cfg.proposer.base_url)
        scorer = Counted(proposer.backend) if same else make_model(cfg.scorer, cfg, "scorer")  # its own counts
    runs = []
    for task in tqdm(tasks, desc="ape", unit="task", disable=not cfg.progress or len(tasks) * len(cfg.seeds) < 2):
        for seed in cfg.seeds:
            r = run_ape(task, proposer, scorer, cfg, seed)
            runs.append(r)
            line = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in r["test"].items())
            log(f"{task.name} seed {seed}: test accuracy {line}; evaluations "
                + ", ".join(f"{k} {s['evaluations']}" for k, s in r["strategies"].items()))
    summary = summarize(runs)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.toml").write_text(dump_toml(cfg))
    seconds = time.perf_counter() - t0
    (cfg.run_dir / "results.json").write_text(json.dumps(
        {"proposer": proposer.name, "scorer": scorer.name, "config": to_dict(cfg), "summary": summary, "runs": runs,
         "seconds": round(seconds, 1)}, indent=1))
    png = plot_ape(runs, cfg.run_dir / "ape.png", cfg.metric)
    report = write_ape_report(cfg, proposer.name, scorer.name, runs, summary, png, seconds)
    return ApeResult(runs, summary, report, png, seconds)


def plot_ape(runs: list[dict[str, Any]], png: Path, metric: str) -> Path:
    """The best candidate's score (on the scoring items) against the evaluations spent, per run and strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colors = {"ape": "C0", "opro": "C1"}
    for r in runs:
        for k, s in r["strategies"].items():
            xs, ys = zip(*s["curve"], strict=True) if s["curve"] else ((), ())
            ax.plot(xs, ys, marker=".", lw=1.0, alpha=0.7, color=colors.get(k, "C2"),
                    label=k.upper() if r is runs[0] else None)
    ax.set_xlabel("evaluations spent ((instruction, item) pairs scored)")
    ax.set_ylabel("best candidate's " + ("accuracy" if metric == "accuracy" else "mean log-prob") + " (scoring items)")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    return save_figure(fig, png)


def ape_table(summary: list[dict]) -> str:
    return md_table(summary)


def write_ape_report(cfg: ApeConfig, proposer: str, scorer: str, runs: list[dict], summary: list[dict], png: Path,
                     seconds: float) -> Path:
    per = [{"task": r["task"], "seed": r["seed"], **{k: v["accuracy"] for k, v in r["test"].items()},
            **{f"{k} evaluations": s["evaluations"] for k, s in r["strategies"].items()},
            "proposer requests": r["proposer_requests"], "scorer requests": r["scorer_requests"],
            **{f"{k} instruction": s["best"] for k, s in r["strategies"].items()}} for r in runs]
    sections = [
        ("Setup", f"Proposer `{proposer}`, scorer `{scorer}`; tasks {', '.join(f'`{t}`' for t in cfg.tasks)}, seeds "
                  f"{cfg.seeds}; strategy `{cfg.strategy}`, search `{cfg.search}`, metric `{cfg.metric}`; "
                  f"{cfg.subsets} x {cfg.per_subset} proposals of {cfg.demos} demonstrations (temperature "
                  f"{cfg.temperature}, top-p {cfg.top_p}); {seconds:.1f} s. Selection uses the train split only "
                  "(demonstrations and scoring items disjoint); test prompts: the instruction, "
                  f"{cfg.shots} solved examples, the query. Evaluations: (instruction, item) pairs scored during "
                  "selection; requests: sequences sent to each model (proposals; scoring, the test split included).\n"),
        ("Test accuracy (mean over tasks x seeds)", ape_table(summary)),
        ("Per task and seed", md_table(per)),
        ("Score against evaluations spent", f"![score vs evaluations]({png.name})\n"),
    ]
    for r in runs[:3]:
        for k, s in r["strategies"].items():
            sections.append((f"{k.upper()} candidates: {r['task']}, seed {r['seed']} (top 10 of "
                             f"{len(s['candidates'])})", md_table(s["candidates"][:10])))
    return write_markdown(cfg.run_dir / "report.md", f"Automatic prompt engineering `{cfg.name}`", sections)
