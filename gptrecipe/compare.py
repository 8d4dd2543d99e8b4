"""Stage: comparison data. Sample K responses per prompt and rank them best to worst.

The ranking comes from a person at the terminal, or from a programmatic labeler (simulated
preferences). Each ranked prompt is appended to the output JSONL at once (and fsynced), so Ctrl-C loses
nothing and a second run skips the prompts already ranked.

    gptrecipe rank runs/speedrun/sft --prompts prompts.txt --out rankings.jsonl -k 4            # you rank
    gptrecipe rank runs/speedrun/sft --prompts builtin:chatterbot --labeler builtin:positivity
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .chat import ChatTemplate, Message
from .checkpoint import load_checkpoint
from .data.corpora import chatterbot_conversations
from .io import DataError, append_line, drop_torn_line, read_jsonl
from .labelers import Labeler, load_labeler
from .sample import SamplingConfig, generate


@dataclass
class CompareConfig:
    model: str = ""  # checkpoint to sample from (the SFT model, later the current policy)
    prompts: str = "builtin:chatterbot"  # .txt (one per line), .jsonl ({"prompt"}) or builtin:chatterbot
    out: str = "runs/rankings.jsonl"
    k: int = 4  # responses per prompt (InstructGPT: 4..9)
    labeler: str = "human"  # human | builtin:positivity | package.module:function
    max_prompts: int = 0  # 0 = all
    batch_prompts: int = 16  # prompts sampled together (programmatic labelers)
    keep_ties: bool = False  # keep prompts whose K responses a labeler scores all equal (arbitrary order)
    # the sampled model's weights (auto = bf16 where native). fp32: on 2026-12-02 (Zen 5) the main job's one
    # bf16-sampled ranking set gave PPO RM-score gains of 2.5-2.9 over 3 seeds, the fp32 set 4.0-4.8: one set
    # each, not conclusive, so comparisons stay fp32 until measured over more sets (PPO rollouts run in bf16)
    dtype: str = "fp32"
    # replies decode through the compiled static-cache step: pays for many prompts (compiling takes 10-20 s per
    # batch size / length bucket on CPU), not for the main job's few hundred short replies
    compile: bool = False
    sample: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=40, temperature=1.0,
                                                                           seed=0))


def load_prompts(source: str) -> list[str]:
    if source == "builtin:chatterbot":
        seen: dict[str, None] = {}
        for conv in chatterbot_conversations():
            seen.setdefault(conv[0], None)
        return list(seen)
    path = Path(source)
    if path.suffix == ".jsonl":
        out = []
        for n, obj in read_jsonl(path):
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise DataError(f"{path}: line {n}: expected {{'prompt': string}}")
            out.append(obj["prompt"])
        return out
    if not path.is_file():
        raise DataError(f"{path}: no such prompts file")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def order_from_scores(scores: list[float]) -> list[int]:
    """Indices best first; ties keep sampling order (stable)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def parse_order(text: str, k: int) -> list[int] | None:
    """'2 1 4 3' (or '2,1,4,3') -> 0-based indices; None unless it is a permutation of 1..k."""
    try:
        nums = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        return None
    return [n - 1 for n in nums] if sorted(nums) == list(range(1, k + 1)) else None


def ask_person(prompt: str, responses: list[str], inp: Callable[[str], str] = input, out=None) -> list[int] | None:
    """Show the prompt and the K responses; read an order. None = skip this prompt."""
    out = out or sys.stdout
    out.write(f"\n{'=' * 72}\nPROMPT: {prompt}\n")
    for i, r in enumerate(responses, 1):
        out.write(f"\n[{i}] {r}\n")
    while True:
        ans = inp(f"\nRank best to worst (e.g. {' '.join(map(str, range(1, len(responses) + 1)))}), "
                  "s = skip, q = quit: ").strip().lower()
        if ans == "s":
            return None
        if ans == "q":
            raise KeyboardInterrupt
        order = parse_order(ans, len(responses))
        if order is not None:
            return order
        out.write(f"  need each of 1..{len(responses)} exactly once\n")


def done_prompts(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {obj["prompt"] for _, obj in read_jsonl(path) if isinstance(obj, dict) and "prompt" in obj}


def compare(cfg: CompareConfig, *, labeler: Labeler | None = None, inp: Callable[[str], str] = input,
         log=print) -> Path:
    """Sample, rank and append to cfg.out; returns the output path."""
    if not 2 <= cfg.k <= 16:
        raise ValueError(f"k must be between 2 and 16 (InstructGPT uses 4..9), got {cfg.k}")
    loaded = load_checkpoint(cfg.model, dtype=cfg.dtype)
    model, tok = loaded.model.eval(), loaded.tokenizer
    template = ChatTemplate(tok)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(cfg.prompts)
    if cfg.max_prompts:
        prompts = prompts[: cfg.max_prompts]
    prompts, too_long = template.prompts_that_fit(prompts, cfg.sample.max_new_tokens, model.config.block_size)
    if too_long:
        log(f"rank: skipping {too_long} prompts too long for the context ({model.config.block_size} tokens)")
    if drop_torn_line(out):
        log(f"rank: dropped an incomplete last line of {out} (an interrupted write); that prompt is ranked again")
    done = done_prompts(out)
    todo = [p for p in prompts if p not in done]
    log(f"rank: {len(done)} prompts already ranked in {out}, {len(todo)} to go, K={cfg.k}")
    human = cfg.labeler == "human" and labeler is None
    labeler = labeler or (None if human else load_labeler(cfg.labeler))
    step = 1 if human else cfg.batch_prompts
    skipped = 0
    for b in range(0, len(todo), step):
        batch = todo[b: b + step]
        ids = [template.prompt_ids([Message("user", p)]) for p in batch for _ in range(cfg.k)]
        texts = [c.text.strip() for c in generate(model, tok, ids, cfg.sample, stop_ids=template.stop_ids,
                                                  compile=cfg.compile)]
        for i, prompt in enumerate(batch):
            responses = texts[i * cfg.k: (i + 1) * cfg.k]
            if human:
                order = ask_person(prompt, responses, inp)
            else:
                scores = labeler(prompt, responses)
                # all K equally good: no preference to learn, and an arbitrary order would only be noise
                order = None if len(set(scores)) == 1 and not cfg.keep_ties else order_from_scores(scores)
            if order is None:
                skipped += 1
                continue
            append_line(out, {"prompt": prompt, "responses": [responses[j] for j in order]})
    if skipped:
        log(f"rank: skipped {skipped} prompts ({'by you' if human else 'all K responses scored the same'})")
    return out
