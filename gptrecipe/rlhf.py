"""RLHF rounds: rank -> reward model -> PPO, repeated on the current best policy.

    gptrecipe rlhf --sft runs/speedrun/sft --rounds 2 --labeler builtin:positivity

Round r samples K responses per prompt from the round r-1 policy (round 1: the SFT model), ranks them,
trains a reward model from the SFT model on all rankings so far, and runs PPO from the current policy
with the SFT model as the KL reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compare import CompareConfig, compare
from .ppo import PPOConfig, load_ppo_config, ppo
from .report import md_table, plot_losses, read_metrics, write_markdown
from .rm import load_rm_config, train_reward_model
from .sample import SamplingConfig


@dataclass
class RLHFConfig:
    sft: str = ""
    out_dir: str = "runs/rlhf"
    rounds: int = 1
    labeler: str = "builtin:positivity"  # or human, or package.module:function
    prompts: str = "builtin:chatterbot"
    k: int = 4
    rank_prompts: int = 400  # prompts ranked per round
    rm_preset: str = "tiny"
    ppo_preset: str = "tiny"
    rm_overrides: list[str] = field(default_factory=list)
    ppo_overrides: list[str] = field(default_factory=list)


def run_rlhf(cfg: RLHFConfig, *, resume: bool = False, log=print) -> list[dict[str, Any]]:
    """Run the rounds; returns one summary row per round (and writes out_dir/report.md)."""
    root = Path(cfg.out_dir)
    policy = cfg.sft
    rankings = root / "rankings.jsonl"  # accumulates over rounds
    rows: list[dict[str, Any]] = []
    for r in range(1, cfg.rounds + 1):
        rd = root / f"round{r}"
        log(f"== RLHF round {r}/{cfg.rounds}: rank ({cfg.labeler}) -> rm -> ppo")
        # rank: new prompts each round (offset), sampled from the current policy
        compare(CompareConfig(model=policy, prompts=cfg.prompts, out=str(rankings), k=cfg.k, labeler=cfg.labeler,
                        max_prompts=cfg.rank_prompts * r, sample=SamplingConfig(max_new_tokens=32, seed=r)),
             log=log)
        rm_cfg = load_rm_config(cfg.rm_preset, [f"init={cfg.sft}", f"data={rankings}", "name=rm",
                                                f"out_dir={rd}", *cfg.rm_overrides])
        rm_result = train_reward_model(rm_cfg, resume=resume, log=log)
        ppo_cfg: PPOConfig = load_ppo_config(cfg.ppo_preset, [f"sft={cfg.sft}", f"rm={rm_cfg.run_dir}", "name=ppo",
                                                              f"out_dir={rd}", f"prompts={cfg.prompts}",
                                                              *cfg.ppo_overrides])
        ppo_cfg = dataclasses.replace(ppo_cfg, policy_init=policy)
        ppo_result = ppo(ppo_cfg, resume=resume, log=log)
        plot_losses(ppo_cfg.run_dir / "metrics.jsonl", ppo_cfg.run_dir / "loss.png", title=f"round {r}: PPO loss")
        plot_ppo(ppo_cfg.run_dir / "metrics.jsonl", ppo_cfg.run_dir / "ppo.png")
        first, last = ppo_result.evals[0], ppo_result.evals[-1]
        rows.append({"round": r, "rm_val_accuracy": rm_result.evals[-1]["val_accuracy"],
                     "rm_score_before": first["val_rm_score"], "rm_score_after": last["val_rm_score"],
                     "gold_before": first.get("val_gold_score", float("nan")),
                     "gold_after": last.get("val_gold_score", float("nan")),
                     "kl_after": last["val_kl"], "entropy_before": first.get("val_entropy", float("nan")),
                     "entropy_after": last.get("val_entropy", float("nan")), "len_before": first["val_response_len"],
                     "len_after": last["val_response_len"], "ppo_dir": str(ppo_cfg.run_dir),
                     "samples": [s["sample"] for s in ppo_result.samples if s["step"] == ppo_result.final_step]})
        policy = str(ppo_cfg.run_dir)  # a PPO checkpoint loads as its policy
    write_markdown(root / "report.md", "RLHF rounds", [("Rounds", md_table(
        [{k: v for k, v in row.items() if k != "samples"} for row in rows]))])
    return rows


def plot_ppo(metrics_path: Path, png_path: Path) -> Path:
    """RM score, KL to the reference, entropy and response length per PPO step (+ held-out evals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "rm_score" in r]
    evals = [r for r in read_metrics(metrics_path) if "val_rm_score" in r]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), dpi=100)
    for ax, key, ev in zip(axes, ["rm_score", "kl", "entropy", "response_len"],
                           ["val_rm_score", "val_kl", "val_entropy", "val_response_len"], strict=True):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1, label="rollouts")
        if ev:
            ax.plot([r["step"] for r in evals], [r[ev] for r in evals], "o-", lw=1.5, label="held-out")
        if key == "rm_score" and evals and "val_gold_score" in evals[0]:
            ax.plot([r["step"] for r in evals], [r["val_gold_score"] for r in evals], "s--", label="gold (held-out)")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
