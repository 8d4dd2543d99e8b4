"""`gptrecipe eval`: in-context accuracy against K (zero / one / few-shot) and corpus metrics of a checkpoint
or of a model behind an OpenAI-compatible endpoint, written as results.json, icl.png and report.md.

    gptrecipe eval runs/speedrun/pretrain --tasks builtin:synthetic my_task.jsonl -k 0 1 2 4 8
    gptrecipe eval runs/speedrun/pretrain --corpus builtin:shakespeare notes.txt
    gptrecipe eval --base-url http://localhost:8000/v1 --api-model my-model --tasks builtin:translate-zh-en
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint
from ..config import ConfigError, RunConfig, dump_toml, load_config, to_dict
from ..data import DataConfig
from ..report import md_table, save_figure, write_markdown
from ..runtime import pick_device
from ..tokenizer import Tokenizer
from .harness import LocalBackend, TaskScore, curve, evaluate_tasks
from .lm_metrics import corpus_metrics, induction_score
from .openai_backend import OpenAIBackend
from .synthetic import SyntheticConfig, builtin_tasks
from .tasks import Task, load_task_files


@dataclass
class EvalConfig(RunConfig):
    name: str = "eval"
    model: str = ""  # checkpoint or run dir; or, with base_url, the model name at the endpoint
    base_url: str = ""  # an OpenAI-compatible endpoint (http://host:port/v1) instead of a local checkpoint
    api_tokenizer: str = ""  # tokenizer.json counting the endpoint's tokens, to cap K (with max_context)
    max_context: int = 0  # the endpoint model's context in tokens (0 = unknown: K is not capped)
    api_prompt_prefix: str = ""  # before every prompt sent; "<|endoftext|>" scores `gptrecipe serve` as a local run
    tasks: list[str] = field(default_factory=lambda: ["builtin:synthetic"])  # JSONL files, task dirs, builtin:NAME
    ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    seed: int = 1234  # picks each item's examples
    max_items: int = 0  # per task (0 = all)
    max_new_tokens: int = 16  # generation budget for free-form targets
    batch_size: int = 32
    corpora: list[str] = field(default_factory=list)  # loss / perplexity / bits per byte on these
    corpus_split: str = "val"  # val (the held-out tail, as in pretraining) | train | all
    corpus_max_tokens: int = 100_000
    cache_dir: str = "runs/cache/tokens"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    device: str = "auto"
    dtype: str = "auto"  # a local model's weights: auto = bf16 where the hardware is fast at it, else fp32
    # free-form answers decode through the compiled static-cache step: pays for many generation batches
    # (10-20 s to compile each batch size / length bucket on CPU), not for the few of a small task set
    compile: bool = False
    progress: bool = True


def load_eval_config(preset: str | None = None, overrides: list[str] = ()) -> EvalConfig:
    return load_config(EvalConfig, "eval", preset, overrides)


@dataclass
class EvalResult:
    scores: list[TaskScore]
    curve: list[dict[str, Any]]  # mean over tasks per K
    groups: list[dict[str, Any]]  # per task family per K
    corpora: list[dict[str, Any]]
    report: Path
    png: Path | None


def make_backend(cfg: EvalConfig, *, api_key: str | None = None):
    """A LocalBackend over the checkpoint, or an OpenAIBackend over the endpoint (`api_key`: default
    $OPENAI_API_KEY); and the local model (or None), and its tokenizer."""
    if cfg.base_url:
        if not cfg.model:
            raise ConfigError("eval: with base_url, set model=<the model name at the endpoint> (--api-model)")
        tok = Tokenizer.from_file(cfg.api_tokenizer) if cfg.api_tokenizer else None
        return OpenAIBackend(cfg.base_url, cfg.model, api_key=api_key, batch_size=cfg.batch_size, tokenizer=tok,
                             max_tokens=cfg.max_context or None, prefix=cfg.api_prompt_prefix), None, tok
    if not cfg.model:
        raise ConfigError("eval: give a checkpoint (model=<checkpoint or run dir>) or base_url=<endpoint>")
    loaded = load_checkpoint(cfg.model, pick_device(cfg.device), dtype=cfg.dtype)
    model, tok = loaded.model.eval(), loaded.tokenizer
    return LocalBackend(model, tok, batch_size=cfg.batch_size, name=str(loaded.path), compile=cfg.compile), model, tok


def load_tasks(spec: str, *, synthetic: SyntheticConfig | None = None) -> list[Task]:
    """The tasks of one spec: a .jsonl file, a task directory, a suite directory, or builtin:NAME.

    Builtins: `builtin:translate-zh-en` (the seeds' Chinese -> English words) and `builtin:synthetic`
    (held-out synthetic tasks; `builtin:synthetic/FAMILY` for one family), see synthetic.py.
    """
    if spec.startswith("builtin:"):
        return builtin_tasks(spec.removeprefix("builtin:"), synthetic)
    return load_task_files(spec)


def run_eval(cfg: EvalConfig, *, mixture: DataConfig | None = None, log=print) -> EvalResult:
    """Evaluate, then write run_dir/results.json, icl.png (accuracy vs K) and report.md.

    With `mixture` (a pretraining data config), corpus metrics also cover each of its corpora's validation
    split, exactly as pretraining splits them (same names, token cache and val_fraction).
    """
    backend, model, tok = make_backend(cfg)
    tasks = [t for spec in cfg.tasks for t in load_tasks(spec, synthetic=cfg.synthetic)]
    scores = evaluate_tasks(backend, tasks, cfg.ks, seed=cfg.seed, max_items=cfg.max_items,
                            max_new_tokens=cfg.max_new_tokens, progress=cfg.progress) if tasks else []
    corpora = []
    if cfg.corpora or mixture is not None:
        if model is None:
            raise ConfigError("eval: corpus metrics need a local checkpoint (an endpoint gives no full-text logits)")

        corpora = [corpus_metrics(model, tok, src, split=cfg.corpus_split, max_tokens=cfg.corpus_max_tokens,
                                  batch_size=cfg.batch_size, cache_dir=cfg.cache_dir, progress=cfg.progress)
                   for src in cfg.corpora]
        corpora += [corpus_metrics(model, tok, c.source, name=c.name, text_field=c.text_field,
                                   val_fraction=mixture.val_fraction, max_tokens=cfg.corpus_max_tokens,
                                   batch_size=cfg.batch_size, cache_dir=mixture.cache_dir, progress=cfg.progress)
                    for c in (mixture.corpora if mixture is not None else [])]
    induction = induction_score(model, tok) if model is not None else None
    rows, groups = curve(scores), curve(scores, by_group=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.toml").write_text(dump_toml(cfg))
    (cfg.run_dir / "results.json").write_text(json.dumps(
        {"model": backend.name, "config": to_dict(cfg), "curve": rows, "groups": groups,
         "tasks": [s.row() for s in scores], "corpora": corpora, "induction": induction}, indent=1))
    png = plot_icl(rows, groups, cfg.run_dir / "icl.png", title=f"in-context learning: {backend.name}") \
        if rows else None
    report = write_eval_report(cfg, backend.name, scores, rows, groups, corpora, png, induction)
    for r in rows:
        log(f"K={r['k']}: accuracy {r['score']:.3f} (chance {r['chance']:.3f}, mean examples shown {r['k_mean']:.2f})")
    for c in corpora:
        log(f"{c['corpus']} ({c['split']}): loss {c['loss']:.4f}, perplexity {c['perplexity']:.2f}, "
            f"bits/byte {c['bits_per_byte']:.4f}")
    if induction is not None:
        log(f"copying from the context (induction): {induction:.3f} of a repeated random sequence's tokens")
    return EvalResult(scores, rows, groups, corpora, report, png)


def plot_icl(rows: list[dict], groups: list[dict], png: Path, title: str = "") -> Path:
    """Accuracy against the number of examples in the context (GPT-3 figure 1.2 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    names = sorted({g["group"] for g in groups})
    if len(names) > 1:
        for i, name in enumerate(names):
            pts = [(g["k"], g["score"]) for g in groups if g["group"] == name]
            ax.plot(*zip(*pts, strict=True), ls="--", lw=1.0, marker=".", color=f"C{i + 1}", label=name)
    ax.plot([r["k"] for r in rows], [r["score"] for r in rows], lw=2.2, marker="o", color="C0", label="mean over tasks")
    ax.plot([r["k"] for r in rows], [r["chance"] for r in rows], lw=1.0, ls=":", color="gray", label="chance")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks([r["k"] for r in rows], [str(r["k"]) for r in rows])
    ax.set_xlabel("number of examples in context (K)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, png)


def icl_table(rows: list[dict]) -> str:
    return md_table([{"K": r["k"], "accuracy": r["score"], "chance": r["chance"], "examples shown (mean)": r["k_mean"],
                      "items capped by the context": r["capped"], "items": r["items"]} for r in rows])


def write_eval_report(cfg: EvalConfig, model_name: str, scores: list[TaskScore], rows: list[dict],
                      groups: list[dict], corpora: list[dict], png: Path | None,
                      induction: float | None = None) -> Path:
    syn = cfg.synthetic
    synthetic = (f"; synthetic tasks: {syn.tasks_per_family} per family of {', '.join(syn.families)}, "
                 f"{syn.test_items} queries each, {syn.choices} choices, distractors `{syn.distractors}`"
                 if any(t.startswith("builtin:synthetic") for t in cfg.tasks) else "")
    sections = [("Model", f"`{model_name}`; tasks {', '.join(f'`{t}`' for t in cfg.tasks)}; K in {cfg.ks}, "
                          f"example seed {cfg.seed}{synthetic}\n")]
    if rows:
        sections.append(("Accuracy vs K", icl_table(rows) + (f"\n![accuracy vs K]({png.name})\n" if png else "")))
        by_group = {}
        for g in groups:
            by_group.setdefault(g["group"], {"task": g["group"], "tasks": g["tasks"]})[f"K={g['k']}"] = g["score"]
        sections.append(("Per task family", md_table(list(by_group.values()))))
        sections.append(("Per task", md_table([s.row() for s in scores])))
    if corpora:
        sections.append(("Language modeling", md_table(corpora, ["corpus", "split", "tokens", "bytes", "loss",
                                                                 "perplexity", "bits_per_byte"])))
    if induction is not None:
        sections.append(("Copying from the context", f"Induction score {induction:.3f}: the share of a repeated random "
                         "token sequence's second copy (after its first token) the model predicts greedily, 64 "
                         "sequences of 15 tokens. Near 0 without induction heads: such a model cannot copy an "
                         "operand into a tool query or a tool's result into its answer.\n"))
    return write_markdown(cfg.run_dir / "report.md", f"Evaluation `{cfg.name}`", sections)


def icl_summary(rows: list[dict]) -> str:
    """One line: accuracy at K = 0, 1 and the largest K, the gain over zero-shot, and chance."""
    by_k = {r["k"]: r for r in rows}
    ks = [k for k in (0, 1, max(by_k)) if k in by_k]
    parts = [f"K={k} {by_k[k]['score']:.3f}" for k in dict.fromkeys(ks)]
    text = " -> ".join(parts)
    if 0 in by_k and by_k[0]["score"] > 0 and max(by_k) > 0:
        text += f" ({by_k[max(by_k)]['score'] / by_k[0]['score']:.1f}x zero-shot)"
    return text + f"; chance {by_k[ks[0]]['chance']:.3f}"
