"""The main job, on the embedded default corpus: every stage of the recipe, ending in one run report.

    gptrecipe run   # tokenizer -> scaling sweep + prediction -> pretrain -> in-context eval -> APE -> SFT (dialogues
                    # + tool use) -> rank -> RM -> PPO -> tool use scored on held-out questions, with and without tools
    gptrecipe run train.max_steps=200 sft.train.max_steps=50 ppo.beta=0.02   # STAGE.KEY=VALUE: that stage's config
    run_pipeline(PipelineConfig(name="mini", overrides=["train.max_steps=200"], sft_overrides=[...]))
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ape import ape, ape_table, load_ape_config
from .checkpoint import load_checkpoint
from .config import ConfigError, apply_overrides
from .evaluate.run import icl_summary, icl_table, load_eval_config, load_tasks, run_eval
from .evaluate.synthetic import label_set_baseline
from .ppo import load_ppo_config
from .pretrain import corpus_compression, get_tokenizer, load_pretrain_config, pretrain
from .report import environment, md_table, write_markdown
from .rlhf import RLHFConfig, run_rlhf
from .rm import load_rm_config
from .sft import load_sft_config, sft
from .sweep import (
    HELDOUT_WINDOWS,
    SweepConfig,
    compare,
    comparison_md,
    measure,
    member,
    register_prediction,
    run_sweep,
    tokens_per_param,
)
from .tool_use import chat_toolset, score_tools, tool_questions, tools_md

# `STAGE.KEY=VALUE` goes to that stage's config
STAGE_PREFIXES = ("pretrain", "scale", "eval", "ape", "sft", "rm", "ppo")


@dataclass
class ScalingSettings:
    """The main job's scaling stage (`scale.KEY=VALUE`): small runs of the pretraining recipe at [lo, hi] of the
    pretraining run's compute, then the pretraining run's held-out loss predicted before it starts."""

    runs: int = 4  # 0: no scaling stage
    lo: float = 1 / 300
    hi: float = 1 / 10  # the pretraining run is then >= 10x the largest small run
    heldout_windows: int = HELDOUT_WINDOWS
    capability: bool = False
    batch_exponent: float = SweepConfig.batch_exponent  # the small runs' rows per step ~ compute^E
    seeds: int = 1  # seeds of every small run below the largest (the fit takes the median loss per compute)

    def validate(self) -> None:
        if not 0 < self.lo < self.hi <= 1:
            raise ValueError(f"scale.lo, scale.hi: need 0 < lo < hi <= 1 (fractions of the pretraining compute), "
                             f"got lo={self.lo:g} hi={self.hi:g}")


@dataclass
class PipelineConfig:
    """What the main job runs under out_dir/name; `overrides` are pretraining's, `STAGE_overrides` the others'."""

    preset: str = "tiny"  # pretraining preset
    overrides: list[str] = field(default_factory=list)
    name: str = "speedrun"
    out_dir: str = "runs"
    sft_preset: str = "tiny"
    rank_prompts: int = 300  # prompts ranked by the simulated labeler
    data_paths: list[str] | None = None  # corpora instead of the default mixture
    sft_overrides: list[str] = field(default_factory=list)
    rm_overrides: list[str] = field(default_factory=list)
    ppo_overrides: list[str] = field(default_factory=list)
    eval_overrides: list[str] = field(default_factory=list)
    ape_overrides: list[str] = field(default_factory=list)  # configs/ape/tiny.toml's keys; `ape.seeds=[]`: no APE
    scale_overrides: list[str] = field(default_factory=list)
    resume: bool = False
    tool_questions: int = 150  # held-out tool-use questions scored (when the SFT mixes in tool conversations)


def split_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """PipelineConfig's override fields from one list: `sft.train.max_steps=10` -> sft_overrides
    ["train.max_steps=10"]; a key without a stage prefix (or with `pretrain.`) is pretraining's."""
    out: dict[str, list[str]] = {"overrides" if s == "pretrain" else f"{s}_overrides": [] for s in STAGE_PREFIXES}
    for ov in overrides:
        stage, dot, rest = ov.removeprefix("--").partition(".")
        key = "overrides" if stage == "pretrain" else f"{stage}_overrides"
        if dot and key in out:
            out[key].append(rest)
        else:
            out["overrides"].append(ov)
    return out


def check_overrides(job: PipelineConfig) -> None:
    """A ConfigError now, not after pretraining, for a bad override of a later stage."""
    try:
        apply_overrides(ScalingSettings(), job.scale_overrides)
    except ConfigError as e:
        raise ConfigError(f"scale: {e}") from None
    rlhf = RLHFConfig()
    for stage, load, preset, overrides in [("eval", load_eval_config, "tiny", job.eval_overrides),
                                           *([("ape", load_ape_config, "tiny", ape_settings(job, Path("."), "x"))]
                                             if ape_wanted(job) else []),
                                           ("sft", load_sft_config, job.sft_preset, job.sft_overrides),
                                           ("rm", load_rm_config, rlhf.rm_preset, job.rm_overrides),
                                           ("ppo", load_ppo_config, rlhf.ppo_preset, job.ppo_overrides)]:
        try:
            load(preset, overrides)
        except ConfigError as e:
            raise ConfigError(f"{stage}: {e}") from None


def run_pipeline(job: PipelineConfig | None = None, *, log=print) -> Path:
    """Run the stages in order under out_dir/name and return the path of report.md."""
    job = job or PipelineConfig()
    check_overrides(job)
    root = Path(job.out_dir) / job.name
    timings: list[dict] = []
    cfg = load_pretrain_config(job.preset, job.overrides, data_paths=job.data_paths)
    cfg = dataclasses.replace(cfg, name="pretrain", out_dir=str(root),
                              tokenizer=dataclasses.replace(cfg.tokenizer, path=str(root / "tokenizer.json")))

    log("== stage 1/7: tokenizer")
    t = time.perf_counter()
    tok = get_tokenizer(cfg.tokenizer, cfg.data, log=log)
    timings.append({"stage": "tokenizer", "seconds": round(time.perf_counter() - t, 1)})
    stats = corpus_compression(tok, cfg.data)

    log("== stage 2/7: predictable scaling: small runs of the pretraining recipe, then the pretraining run's "
        "held-out loss predicted before it starts")
    t = time.perf_counter()
    scaling = apply_overrides(ScalingSettings(), job.scale_overrides)
    sweep = scaling_sweep(job, cfg, tok.vocab_size, scaling, log) if scaling.runs else None
    timings.append({"stage": "scaling sweep + prediction", "seconds": round(time.perf_counter() - t, 1)})

    log("== stage 3/7: pretraining")
    t = time.perf_counter()
    result = pretrain(cfg, resume=job.resume, log=log)
    timings.append({"stage": "pretrain", "seconds": round(time.perf_counter() - t, 1)})
    if sweep is not None:
        t = time.perf_counter()
        actual = measure(result.checkpoint, cfg, scaling.heldout_windows,
                         sweep["cfg"].capability_samples if scaling.capability else 0)
        sweep["comparison"] = compare(sweep["prediction"], actual, sweep["dir"], sweep["dir"])
        timings.append({"stage": "held-out loss of the pretraining run", "seconds": round(time.perf_counter() - t, 1)})
        c = sweep["comparison"]
        log(f"scaling: predicted {c['predicted_loss']:.4f}, actual {c['actual_loss']:.4f} "
            f"({100 * c['relative_error']:+.2f}% at {c['extrapolation']:.1f}x)")

    log("== stage 4/7: in-context learning (accuracy vs K on held-out synthetic tasks), bits per byte")
    t = time.perf_counter()
    evals = [f"model={cfg.run_dir}", f"out_dir={root}", f"progress={cfg.train.progress}"]
    icl = run_eval(load_eval_config("tiny", [*evals, "name=eval", *job.eval_overrides]), mixture=cfg.data, log=log)
    # the same tasks with the task's own other labels as distractors: right only by reading which input
    # takes which label, beyond which labels the task uses
    mapping_cfg = load_eval_config("tiny", [*evals, "name=eval-mapping", *job.eval_overrides,
                                            "synthetic.distractors=rule"])
    mapping = run_eval(mapping_cfg, log=lambda *a: None)
    knows_labels = label_set_baseline(load_tasks("builtin:synthetic", synthetic=mapping_cfg.synthetic))
    timings.append({"stage": "in-context eval", "seconds": round(time.perf_counter() - t, 1)})

    ape_result = None
    if ape_wanted(job):
        log("== stage 4b/7: automatic prompt engineering: the pretrained model writes and picks instructions for "
            "held-out tasks")
        t = time.perf_counter()
        ape_result = ape(load_ape_config("tiny", [f"progress={cfg.train.progress}",
                                                  *ape_settings(job, root, cfg.run_dir)]), log=log)
        timings.append({"stage": "automatic prompt engineering", "seconds": round(time.perf_counter() - t, 1)})

    t = time.perf_counter()
    sft_cfg = load_sft_config(job.sft_preset, [f"init={cfg.run_dir}", "name=sft", f"out_dir={root}",
                                               *job.sft_overrides])
    log("== stage 5/7: supervised fine-tuning for chat (dialogues"
        + (f" and {sft_cfg.tool_conversations} tool-use conversations)" if sft_cfg.tool_conversations else ")"))
    sft_result = sft(sft_cfg, resume=job.resume, log=log)
    timings.append({"stage": "sft", "seconds": round(time.perf_counter() - t, 1)})

    log("== stage 6/7: RLHF: rank (simulated labeler) -> reward model -> PPO")
    t = time.perf_counter()
    rounds = run_rlhf(RLHFConfig(sft=str(sft_cfg.run_dir), out_dir=str(root / "rlhf"), rounds=1,
                                 labeler="builtin:positivity", rank_prompts=job.rank_prompts,
                                 rm_overrides=list(job.rm_overrides), ppo_overrides=list(job.ppo_overrides)),
                     resume=job.resume, log=log)
    timings.append({"stage": "rlhf (rank + rm + ppo)", "seconds": round(time.perf_counter() - t, 1)})
    rl = rounds[-1]
    ppo_dir = Path(rl["ppo_dir"]).relative_to(root)

    tools = None
    if sft_cfg.tool_conversations and job.tool_questions:
        log(f"== stage 7/7: tool use (LaMDA): {job.tool_questions} held-out questions, with and without the toolset")
        t = time.perf_counter()
        tools = score_tool_use(sft_cfg.run_dir, job.tool_questions, sft_cfg.train.seed)
        timings.append({"stage": "tool-use eval", "seconds": round(time.perf_counter() - t, 1)})

    first, last = result.evals[0], result.evals[-1]
    s_first, s_last = sft_result.evals[0], sft_result.evals[-1]
    replies = [s["sample"] for s in sft_result.samples if s["step"] == sft_result.final_step]
    pre = cfg.run_dir
    samples = [s for s in result.samples if s["step"] == result.final_step]
    sections = [
        ("Summary", md_table([
            {"stage": "tokenizer", "result": f"{tok.vocab_size} tokens; "
             + ", ".join(f"{s['corpus']} {s['bytes_per_token']:.2f} bytes/token" for s in stats)},
            {"stage": "pretrain", "result": f"{result.final_step} steps, val loss {first['val_loss']:.3f} "
             f"(step {first['step']}) -> {last['val_loss']:.3f} (step {last['step']}), "
             f"{result.tokens_per_s:,.0f} tokens/s, MFU {100 * result.mfu:.1f}%"},
            *([{"stage": "scaling", "result": scaling_summary(sweep["comparison"])}] if sweep else []),
            {"stage": "in-context learning", "result": "held-out synthetic tasks, accuracy "
             + icl_summary(icl.curve) + f"; with the task's own labels as distractors K={mapping.curve[-1]['k']} "
             f"{mapping.curve[-1]['score']:.3f} (knowing the labels only: {knows_labels:.3f})"},
            *([{"stage": "automatic prompt engineering", "result": ape_summary(ape_result.summary)}]
              if ape_result else []),
            {"stage": "sft", "result": f"{sft_result.final_step} steps on chatterbot dialogues"
             + (f" + {sft_cfg.tool_conversations} tool-use conversations" if sft_cfg.tool_conversations else "")
             + ", val loss on dialogue "
             f"assistant tokens {s_first['val_loss']:.3f} (step {s_first['step']}) -> {s_last['val_loss']:.3f}"},
            *([{"stage": "tool use", "result": "held-out exact match with / without the toolset: " + ", ".join(
                f"{r['tool']} {r['with the toolset']:.2f} / {r['without']:.2f}" for r in tools["rows"])}]
              if tools else []),
            {"stage": "reward model", "result": f"held-out pairwise accuracy {rl['rm_val_accuracy']:.3f} "
             f"(simulated labeler: builtin:positivity)"},
            {"stage": "ppo", "result": f"held-out RM score {rl['rm_score_before']:.3f} -> {rl['rm_score_after']:.3f}, "
             f"KL to SFT {rl['kl_after']:.2f} nats, entropy {rl['entropy_before']:.2f} -> {rl['entropy_after']:.2f} "
             f"nats/token, response length {rl['len_before']:.1f} -> {rl['len_after']:.1f}"},
            {"stage": "gold check", "result": f"held-out gold (positivity) score: SFT {rl['gold_before']:.3f} -> "
             f"PPO {rl['gold_after']:.3f} ({rl['gold_after'] / max(rl['gold_before'], 1e-9):.2f}x)"},
        ])),
        *([("Predictable scaling", scaling_md(sweep, root))] if sweep else []),
        ("Loss curve", f"![loss]({(pre / 'loss.png').relative_to(root)})\n\nDetails: "
                       f"[{(pre / 'report.md').relative_to(root)}]({(pre / 'report.md').relative_to(root)})\n"),
        ("In-context learning", "Accuracy of the pretrained model on held-out synthetic tasks against the number "
         "of solved examples in the prompt, K (GPT-3's zero-, one- and few-shot; no gradient step). The tasks are "
         "random labellings from a seed space the `builtin:icl` pretraining documents never use; each query has "
         "the right label and distractor labels the task never uses, so accuracy above chance means the model "
         "read from the examples which labels this task uses (see eval/report.md for the settings):\n\n"
         + icl_table(icl.curve)
         + f"\n![accuracy vs K]({icl.png.relative_to(root) if icl.png else ''})\n\n"
         "The same queries with the task's own other labels as distractors "
         "([eval-mapping/report.md](eval-mapping/report.md)): right beyond "
         f"{knows_labels:.3f} (a reader who knows the task's labels but not which input takes which) only by "
         "reading the input -> label mapping from the examples:\n\n"
         + md_table([{"K": r["k"], "accuracy": r["score"], "knows the labels only": round(knows_labels, 3),
                      "items": r["items"]} for r in mapping.curve])
         + "\nHeld-out loss, perplexity and "
         "bits per byte of the pretrained model:\n\n" + md_table(icl.corpora, ["corpus", "tokens", "loss",
                                                                                "perplexity", "bits_per_byte"])
         + f"\nDetails: [{icl.report.relative_to(root)}]({icl.report.relative_to(root)})\n"),
        *([("Automatic prompt engineering", ape_md(ape_result, root))] if ape_result else []),
        ("Samples from the final model", "\n".join(f"```\n{s['sample']}\n```\n" for s in samples)),
        ("Chat replies of the SFT model", "".join(f"```\n{r}\n```\n" for r in replies)
         + "\nSFT details: [sft/report.md](sft/report.md), ![sft loss](sft/loss.png)\n"),
        *([("Tool use (LaMDA)", tools_md(tools))] if tools else []),
        ("RLHF (PPO) curves", f"![ppo]({ppo_dir}/ppo.png)\n\nPPO policy replies (held-out prompts):\n\n"
         + "".join(f"```\n{x}\n```\n" for x in rl["samples"])),
        ("Tokenizer compression", md_table(stats, ["corpus", "bytes", "tokens", "bytes_per_token"])),
        ("Stage timings", md_table(timings)),
        ("Environment", md_table([{"key": k, "value": v} for k, v in environment().items()])),
    ]
    return write_markdown(root / "report.md", f"gptrecipe run `{job.name}`", sections)


def score_tool_use(sft_dir: Path, n: int, seed: int) -> dict:
    """The SFT model's exact-match accuracy on `n` held-out tool-use questions, with and without the toolset."""
    loaded = load_checkpoint(sft_dir)
    toolset = chat_toolset()
    questions = tool_questions(n, seed=seed + 1, split="heldout", toolset=toolset)
    return score_tools(loaded.model.eval(), loaded.tokenizer, questions, toolset)


def ape_wanted(job: PipelineConfig) -> bool:
    """False when the job says `ape.seeds=[]` (or `ape.tasks=[]`): no APE stage."""
    return not any(o.replace(" ", "") in ("seeds=[]", "tasks=[]") for o in job.ape_overrides)


def ape_settings(job: PipelineConfig, root: Path, model) -> list[str]:
    """The APE stage's overrides: its place in the job, the pretrained model as proposer (and scorer), the job's."""
    return ["name=ape", f"out_dir={root}", f"proposer.model={model}", *job.ape_overrides]


def ape_summary(summary: list[dict]) -> str:
    by = {r["condition"]: r for r in summary}
    best = by.get("ape best") or by.get("opro best")
    return (f"held-out tasks ({best['runs']} task x seed runs), zero-shot test accuracy: the selected instruction "
            f"{best['test accuracy (mean)']:.3f} +- {best['std']:.3f}, no instruction "
            f"{by['no instruction']['test accuracy (mean)']:.3f}, the task's description "
            f"{by['task description']['test accuracy (mean)']:.3f}; {best['evaluations (mean)']:.0f} evaluations "
            "per run")


def ape_md(res, root: Path) -> str:
    rel = res.report.parent.relative_to(root)
    return ("The Automatic Prompt Engineer with the pretrained model as both proposer and scorer: on held-out "
            "classify tasks (random labellings of the evaluation seed space) it reads a few solved train examples "
            "and continues \"... The instruction was to\" (its pretraining documents state some rules in words, "
            "before or after their examples); the candidates are scored zero-shot on other train items with "
            "adaptive filtering, and the winner is tested on the test split, never used for selection, against no "
            "instruction and the task's own description (\"Classify:\"):\n\n"
            + ape_table(res.summary) + f"\n![score vs evaluations]({rel}/ape.png)\n\nPer task and seed, and the "
            f"candidates: [{rel}/report.md]({rel}/report.md)\n")


def scaling_sweep(job: PipelineConfig, cfg, vocab_size: int, s: ScalingSettings, log) -> dict:
    """The sweep under root/scaling at [s.lo, s.hi] of the pretraining run's compute, and the prediction of the
    pretraining run (a member of the sweep's family: the recipe's own width and tokens per parameter)."""
    base = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    target = dataclasses.replace(member(base, base.model.n_embd, tokens_per_param(base),
                                        batch_exponent=s.batch_exponent), name=cfg.name)
    if (target.steps, target.warmup_steps) != (cfg.train.max_steps, cfg.train.warmup_steps):
        raise ConfigError(f"scale: the pretraining run ({cfg.train.max_steps} steps, warmup {cfg.train.warmup_steps})"
                          f" is not a member of its family ({target.steps}, {target.warmup_steps})")
    root = Path(job.out_dir) / job.name
    sweep_dir = root / "scaling"
    if not job.resume and sweep_dir.exists():
        log(f"a new job: removing the previous {sweep_dir} (its prediction belonged to that job)")
        shutil.rmtree(sweep_dir)
    sweep_cfg = SweepConfig(name="scaling", out_dir=str(root), preset=job.preset, data_paths=job.data_paths,
                            overrides=[*job.overrides, f"tokenizer.path={cfg.tokenizer.path}"],
                            compute=[target.compute * s.lo, target.compute * s.hi], runs=s.runs,
                            heldout_windows=s.heldout_windows, capability=s.capability,
                            batch_exponent=s.batch_exponent, seeds=s.seeds)
    rows = run_sweep(sweep_cfg, log=log)
    pred = register_prediction(sweep_dir, target, sweep_dir / "prediction.json", log=log)
    return {"cfg": sweep_cfg, "dir": sweep_dir, "rows": rows, "prediction": pred}


def scaling_summary(c: dict) -> str:
    lo, hi = c["interval"]
    return (f"pretraining held-out loss predicted {c['predicted_loss']:.4f} [{lo:.4f}, {hi:.4f}] from small runs, "
            f"actual {c['actual_loss']:.4f}: error {100 * c['relative_error']:+.2f}% at {c['extrapolation']:.1f}x the "
            "largest small run's compute"
            + (f" ({', '.join(c['runs_above_unigram'])} not below the unigram loss {c['unigram_loss']:.3f})"
               if c.get("runs_above_unigram") else ""))


def scaling_md(sweep: dict, root: Path) -> str:
    rel = sweep["dir"].relative_to(root)
    runs = md_table([{"run": r["name"], "params": r["params"], "steps": r["steps"],
                      "rows/step": r.get("batch_rows", ""), "tokens": r["tokens"],
                      "compute (FLOPs)": f"{r['compute']:.3g}", "6ND": f"{r['compute_6nd']:.3g}",
                      "held-out loss": round(r["loss"], 4), "bits/byte": round(r["bits_per_byte"], 4),
                      "seconds": r.get("seconds", "")} for r in sweep["rows"]])
    return ("GPT-4's predictable scaling: before the pretraining run started, small runs of its recipe (same data, "
            "tokenizer, optimizer, context, warmup + cosine shape; the same model at other widths, each "
            "trained for the pretraining run's tokens per parameter, rows per step ~ its compute^"
            f"{sweep['cfg'].batch_exponent:g}"
            + (f"; {sweep['cfg'].seeds} seeds of each run below the largest, their median loss per compute"
               if sweep["cfg"].seeds > 1 else "")
            + ") were fitted with L(C) = a C^b + c and the "
            "prediction registered "
            f"([{rel}/prediction.json]({rel}/prediction.json)). Held-out loss: the same fixed windows of every "
            "corpus' validation split for every run.\n\n"
            + comparison_md(sweep["comparison"], f"{rel}/scaling.png") + "\nThe small runs:\n\n" + runs)
