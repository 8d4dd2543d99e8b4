"""The main job: every stage built so far, on the embedded default corpus, ending in one run report.

    gptrecipe run   # tokenizer -> pretrain -> SFT -> rank -> RM -> PPO -> runs/speedrun/report.md
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .evaluate.run import icl_summary, icl_table, load_eval_config, run_eval
from .evaluate.synthetic import label_set_baseline
from .evaluate.tasks import load_tasks
from .pretrain import corpus_compression, get_tokenizer, load_pretrain_config, pretrain
from .report import environment, md_table, write_markdown
from .rlhf import RLHFConfig, run_rlhf
from .sft import load_sft_config, sft


def run_pipeline(preset: str = "tiny", overrides: list[str] = (), *, name: str = "speedrun", sft_preset: str = "tiny",
                 rank_prompts: int = 300, data_paths: list[str] | None = None, sft_overrides: list[str] = (),
                 rm_overrides: list[str] = (), ppo_overrides: list[str] = (), eval_overrides: list[str] = (),
                 out_dir: str = "runs", resume: bool = False, log=print) -> Path:
    """Run the stages in order under out_dir/name and return the path of report.md."""
    root = Path(out_dir) / name
    timings: list[dict] = []
    cfg = load_pretrain_config(preset, list(overrides), data_paths=data_paths)
    cfg = dataclasses.replace(cfg, name="pretrain", out_dir=str(root),
                              tokenizer=dataclasses.replace(cfg.tokenizer, path=str(root / "tokenizer.json")))

    log("== stage 1/5: tokenizer")
    t = time.perf_counter()
    tok = get_tokenizer(cfg.tokenizer, cfg.data, log=log)
    timings.append({"stage": "tokenizer", "seconds": round(time.perf_counter() - t, 1)})
    stats = corpus_compression(tok, cfg.data)

    log("== stage 2/5: pretraining")
    t = time.perf_counter()
    result = pretrain(cfg, resume=resume, log=log)
    timings.append({"stage": "pretrain", "seconds": round(time.perf_counter() - t, 1)})

    log("== stage 3/5: in-context learning (accuracy vs K on held-out synthetic tasks), bits per byte")
    t = time.perf_counter()
    icl = run_eval(load_eval_config("tiny", [f"model={cfg.run_dir}", "name=eval", f"out_dir={root}",
                                             f"progress={cfg.train.progress}", *eval_overrides]),
                   mixture=cfg.data, log=log)
    # the same tasks with the task's own other labels as distractors: right only by reading which input
    # takes which label, beyond which labels the task uses
    mapping_cfg = load_eval_config("tiny", [f"model={cfg.run_dir}", "name=eval-mapping", f"out_dir={root}",
                                            f"progress={cfg.train.progress}", *eval_overrides,
                                            "synthetic.distractors=rule"])
    mapping = run_eval(mapping_cfg, log=lambda *a: None)
    knows_labels = label_set_baseline(load_tasks("builtin:synthetic", synthetic=mapping_cfg.synthetic))
    timings.append({"stage": "in-context eval", "seconds": round(time.perf_counter() - t, 1)})

    log("== stage 4/5: supervised fine-tuning for chat")
    t = time.perf_counter()
    sft_cfg = load_sft_config(sft_preset, [f"init={cfg.run_dir}", "name=sft", f"out_dir={root}", *sft_overrides])
    sft_result = sft(sft_cfg, resume=resume, log=log)
    timings.append({"stage": "sft", "seconds": round(time.perf_counter() - t, 1)})

    log("== stage 5/5: RLHF: rank (simulated labeler) -> reward model -> PPO")
    t = time.perf_counter()
    rounds = run_rlhf(RLHFConfig(sft=str(sft_cfg.run_dir), out_dir=str(root / "rlhf"), rounds=1,
                                 labeler="builtin:positivity", rank_prompts=rank_prompts,
                                 rm_overrides=list(rm_overrides), ppo_overrides=list(ppo_overrides)),
                     resume=resume, log=log)
    timings.append({"stage": "rlhf (rank + rm + ppo)", "seconds": round(time.perf_counter() - t, 1)})
    rl = rounds[-1]
    ppo_dir = Path(rl["ppo_dir"]).relative_to(root)

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
            {"stage": "in-context learning", "result": "held-out synthetic tasks, accuracy "
             + icl_summary(icl.curve) + f"; with the task's own labels as distractors K={mapping.curve[-1]['k']} "
             f"{mapping.curve[-1]['score']:.3f} (knowing the labels only: {knows_labels:.3f})"},
            {"stage": "sft", "result": f"{sft_result.final_step} steps on chatterbot dialogues, val loss on "
             f"assistant tokens {s_first['val_loss']:.3f} (step {s_first['step']}) -> {s_last['val_loss']:.3f}"},
            {"stage": "reward model", "result": f"held-out pairwise accuracy {rl['rm_val_accuracy']:.3f} "
             f"(simulated labeler: builtin:positivity)"},
            {"stage": "ppo", "result": f"held-out RM score {rl['rm_score_before']:.3f} -> {rl['rm_score_after']:.3f}, "
             f"KL to SFT {rl['kl_after']:.2f} nats, entropy {rl['entropy_before']:.2f} -> {rl['entropy_after']:.2f} "
             f"nats/token, response length {rl['len_before']:.1f} -> {rl['len_after']:.1f}"},
            {"stage": "gold check", "result": f"held-out gold (positivity) score: SFT {rl['gold_before']:.3f} -> "
             f"PPO {rl['gold_after']:.3f} ({rl['gold_after'] / max(rl['gold_before'], 1e-9):.2f}x)"},
        ])),
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
        ("Samples from the final model", "\n".join(f"```\n{s['sample']}\n```\n" for s in samples)),
        ("Chat replies of the SFT model", "".join(f"```\n{r}\n```\n" for r in replies)
         + "\nSFT details: [sft/report.md](sft/report.md), ![sft loss](sft/loss.png)\n"),
        ("RLHF (PPO) curves", f"![ppo]({ppo_dir}/ppo.png)\n\nPPO policy replies (held-out prompts):\n\n"
         + "".join(f"```\n{x}\n```\n" for x in rl["samples"])),
        ("Tokenizer compression", md_table(stats, ["corpus", "bytes", "tokens", "bytes_per_token"])),
        ("Stage timings", md_table(timings)),
        ("Environment", md_table([{"key": k, "value": v} for k, v in environment().items()])),
    ]
    return write_markdown(root / "report.md", f"gptrecipe run `{name}`", sections)
