"""Stage: predictable scaling (GPT-4; SCALING.md): a sweep of small runs of one recipe, a prediction registered
before the target run starts, and the target run against it.

    gptrecipe scale sweep --config tiny --compute 1e11 3.5e12 --runs 5     # -> runs/sweep/runs.jsonl
    gptrecipe scale predict runs/sweep                                       # -> runs/sweep/target/...

The family: the recipe of a pretraining config (its data mixture, tokenizer, optimizer and context, warmup +
cosine shape) at other widths. Depth and head count stay the base model's; only `n_embd` changes, and
each run trains for tokens = (the base run's tokens per parameter) x its own parameters, with its own full
schedule (warmup the same fraction of its steps, cosine to its own last step) and its own batch (DeepSeek LLM's
B ~ C^0.33: fewer rows per step for smaller runs, so they get past the early plateau). So the base run itself is
a member of the family (the main job's pretraining run is the target of its own sweep).

The final loss of every run is measured on one fixed held-out set: `heldout_windows` windows of block_size tokens
spread evenly over the validation split of each corpus, weighted by the mixture's weights (as `val_loss`); beside
it the unigram loss (token frequencies alone), which runs still on the early plateau do not get below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint
from .config import REPO_ROOT, ConfigError, to_dict, validate_config
from .data import BatchLoader, prepare_data
from .evaluate.harness import normalize_answer
from .evaluate.lm_metrics import token_byte_lengths
from .evaluate.prompts import fit_prompt
from .evaluate.synthetic import SyntheticConfig, synthetic_suite
from .io import DataError, append_line, atomic_write_text, complete_lines, drop_torn_line
from .model import GPT
from .pretrain import PretrainConfig, get_tokenizer, load_pretrain_config, pretrain
from .report import md_table, write_markdown
from .runtime import init_distributed, rank_zero_first
from .sample import SamplingConfig, generate
from .scaling import fit_capability, fit_runs, pass_at_k, plot_fit, read_runs
from .stage import quiet

# The held-out set: 128 windows per corpus (fewer where a validation split is shorter), ~50k tokens with the tiny
# preset (block 128; chatterbot's split holds 30 windows). Measured on the main job's family (runs of 0.75M and
# 1.3M parameters): the standard error of the loss over its windows is ~0.2% of the loss, and since every run is
# measured on the same windows, the error of the *difference* between two runs (paired over the windows; what
# bends the fit) is ~0.065% -- well under the 0.3% at which SCALING.md's simulation gives ~2% error at 10x.
HELDOUT_WINDOWS = 128


@dataclass
class SweepConfig:
    """A sweep under out_dir/name: `runs` family members log-spaced over `compute` = [lo, hi] FLOPs."""

    name: str = "sweep"
    out_dir: str = "runs"
    preset: str = "tiny"  # the recipe: a pretraining preset (configs/pretrain/) or TOML path
    overrides: list[str] = field(default_factory=list)  # pretraining overrides (the recipe's)
    data_paths: list[str] | None = None
    compute: list[float] = field(default_factory=list)  # [lo, hi] training FLOPs (6 N_matmul + 12 L d T per token)
    runs: int = 5
    heldout_windows: int = HELDOUT_WINDOWS  # per corpus
    capability: bool = False  # also sample the generative problems (pass rates) of every run
    capability_samples: int = 16  # samples per problem at temperature 1
    batch_exponent: float = 0.33  # rows per step ~ (compute / the recipe's run)^E (`batch_rows`); 0: one batch
    seeds: int = 1  # every run below the largest trains with this many seeds; the fit takes their median loss

    def validate(self) -> None:
        if len(self.compute) != 2:
            raise ConfigError(f"compute: give [lo, hi] in FLOPs, got {self.compute}")
        lo, hi = self.compute
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise ConfigError(f"compute: need 0 < lo < hi, got lo={lo:g} hi={hi:g}")
        if self.runs < 4:
            raise ConfigError(f"runs: a fit of L(C) = a C^b + c (3 parameters) needs at least 4 runs, got {self.runs}")
        if self.heldout_windows < 1:
            raise ConfigError(f"heldout_windows: need at least 1, got {self.heldout_windows}")
        if not 0.0 <= self.batch_exponent <= 1.0:
            raise ConfigError(f"batch_exponent: need 0 <= E <= 1 (rows per step ~ compute^E), "
                              f"got {self.batch_exponent}")
        if self.seeds < 1:
            raise ConfigError(f"seeds: need at least 1 training seed per run, got {self.seeds}")
        if self.capability_samples < 1:
            raise ConfigError(f"capability_samples: need at least 1, got {self.capability_samples}")


# ---- the family -------------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One model of the family and its training budget."""

    name: str
    n_layer: int
    n_embd: int
    steps: int
    warmup_steps: int
    batch_rows: int  # rows of block_size tokens per optimizer step (all processes)
    params: int  # all parameters (the tied head counted once)
    params_non_embedding: int  # without token and position embeddings (Kaplan's N)
    tokens: int  # training tokens D
    compute: float  # training FLOPs with attention: (6 N_matmul + 12 L d T) D
    compute_6nd: float  # 6 N D with N = params_non_embedding


def step_tokens(base: PretrainConfig, world_size: int = 1) -> int:
    """Tokens per optimizer step of the recipe."""
    return base.train.batch_tokens or base.train.micro_batch_size * base.model.block_size * world_size


def _shape(base: PretrainConfig, n_embd: int) -> GPT:
    with torch.device("meta"):  # parameter counts without allocating
        return GPT(dataclasses.replace(base.model, n_embd=n_embd))


def tokens_per_param(base: PretrainConfig, world_size: int = 1) -> float:
    """The base run's training tokens per parameter: every member trains for this many."""
    return base.train.max_steps * step_tokens(base, world_size) / _shape(base, base.model.n_embd).num_params()


def batch_rows(base: PretrainConfig, compute: float, exponent: float, world_size: int = 1) -> int:
    """Rows per optimizer step of a member that trains with `compute` FLOPs: the recipe's own batch scaled by
    (compute / the recipe's own run's compute)^exponent (DeepSeek LLM: B_opt ~ C^0.33), at least one row per process.
    Exponent 0 keeps the recipe's batch for every member."""
    rows = step_tokens(base, world_size) // base.model.block_size
    if exponent == 0.0:
        return rows
    own = _shape(base, base.model.n_embd)
    base_compute = own.flops_per_token(base.model.block_size) * base.train.max_steps * step_tokens(base, world_size)
    scaled = rows * (compute / base_compute) ** exponent
    unit = base.train.micro_batch_size * world_size if scaled >= base.train.micro_batch_size * world_size \
        else world_size  # whole micro batches on every process
    return max(world_size, round(scaled / unit) * unit)


def member(base: PretrainConfig, n_embd: int, ratio: float, world_size: int = 1,
           batch_exponent: float = 0.0) -> Member:
    """The family's model of width `n_embd`: steps for `ratio` tokens per parameter, warmup the base's fraction,
    rows per step by `batch_rows`."""
    m = _shape(base, n_embd)
    n = m.num_params()
    rows = batch_rows(base, m.flops_per_token(base.model.block_size) * ratio * n, batch_exponent, world_size)
    per_step = rows * base.model.block_size
    steps = max(1, round(ratio * n / per_step))
    warmup = max(1, round(base.train.warmup_steps * steps / base.train.max_steps))
    tokens = steps * per_step
    non_emb = n - m.wte.weight.numel() - m.wpe.weight.numel()
    return Member(name=f"d{n_embd:04d}", n_layer=base.model.n_layer, n_embd=n_embd, steps=steps,
                  warmup_steps=warmup, batch_rows=rows, params=n, params_non_embedding=non_emb, tokens=tokens,
                  compute=m.flops_per_token(base.model.block_size) * tokens, compute_6nd=6.0 * non_emb * tokens)


def plan(base: PretrainConfig, lo: float, hi: float, runs: int, world_size: int = 1,
         batch_exponent: float = 0.0) -> list[Member]:
    """`runs` members inside [lo, hi] whose compute is nearest (in log) to points log-spaced over it; distinct
    widths. None is above `hi`: a target at 10 hi extrapolates at least 10x."""
    every = family(base, hi, world_size, batch_exponent)
    inside = [m for m in every if lo / 1.2 <= m.compute <= hi]
    members: list[Member] = []
    for target in np.geomspace(lo, hi, runs):
        if not inside:
            break
        best = min(inside, key=lambda m: abs(math.log(m.compute / target)))
        if members and best.n_embd <= members[-1].n_embd:
            break
        members.append(best)
    if len(members) < runs:
        raise ConfigError(f"compute: [{lo:.3g}, {hi:.3g}] holds {len(inside)} width(s) of this family (n_embd in "
                          f"steps of n_head={base.model.n_head}; the narrowest trains with {every[0].compute:.3g} "
                          f"FLOPs), fewer than runs={runs}: widen the range or ask fewer runs")
    return members


def family(base: PretrainConfig, up_to: float, world_size: int = 1, batch_exponent: float = 0.0) -> list[Member]:
    """Every member (width a multiple of n_head) from the narrowest to the first past `up_to` FLOPs."""
    ratio, step = tokens_per_param(base, world_size), base.model.n_head
    out = [member(base, step, ratio, world_size, batch_exponent)]
    while out[-1].compute <= up_to and out[-1].n_embd < 65536:
        out.append(member(base, out[-1].n_embd + step, ratio, world_size, batch_exponent))
    return out


def _batch(base: PretrainConfig, rows: int, world_size: int) -> dict[str, int]:
    """The train settings for `rows` rows per step (the recipe's own when they are its batch)."""
    if rows * base.model.block_size == step_tokens(base, world_size):
        return {}
    micro = min(base.train.micro_batch_size, rows // world_size)
    return {"micro_batch_size": micro, "batch_tokens": rows * base.model.block_size if micro * world_size < rows else 0}


def run_name(m: Member, seed: int) -> str:
    """A run's name: the member's, with `-s<k>` for its k-th extra seed."""
    return m.name if seed == 0 else f"{m.name}-s{seed}"


def jobs(members: list[Member], seeds: int) -> list[tuple[Member, int]]:
    """(member, seed offset) of every run: `seeds` seeds for each member below the largest, one for the largest (it
    costs as much as all the others together, and its seeds agree best: 4.77-4.81 over three seeds, where the
    284-step run spread 5.42-5.81)."""
    return [(m, k) for m in members for k in range(seeds if m is not members[-1] else 1)]


def member_config(base: PretrainConfig, m: Member, out_dir: Path, world_size: int = 1, seed: int = 0) -> PretrainConfig:
    """The recipe at member `m` (its `seed`-th extra seed), quiet: evaluates and samples only at its end (the loss
    is measured after)."""
    return dataclasses.replace(
        base, name=run_name(m, seed), out_dir=str(out_dir), model=dataclasses.replace(base.model, n_embd=m.n_embd),
        sample=dataclasses.replace(base.sample, max_new_tokens=1, num_samples=1), sample_prompts=["\n"], report=False,
        train=dataclasses.replace(base.train, **_batch(base, m.batch_rows, world_size), max_steps=m.steps,
                                  seed=base.train.seed + seed, warmup_steps=m.warmup_steps, eval_every=0,
                                  eval_batches=1, sample_every=0, checkpoint_every=max(1, m.steps // 4),
                                  keep_checkpoints=1))


# ---- measurements -----------------------------------------------------------------------------------------------


def heldout_batches(loader: BatchLoader, corpus: str, windows: int):
    """The fixed held-out windows of one corpus, in batches of 16 (every run and the unigram baseline see these)."""
    return loader.val_batches(corpus, 16, math.ceil(windows / 16))


@torch.no_grad()
def heldout(model: GPT, tok, base: PretrainConfig, windows: int = HELDOUT_WINDOWS) -> dict[str, float]:
    """Loss (nats/token), its standard error over windows, and bits per byte on the fixed held-out set: `windows`
    windows per corpus evenly spread over its validation split, corpora weighted as the mixture weights them."""
    data = prepare_data(base.data, tok, block_size=model.config.block_size, show_progress=False)
    loader = BatchLoader(data, block_size=model.config.block_size)
    nbytes = token_byte_lengths(tok)
    device = next(model.parameters()).device
    model.eval()
    total_w = sum(c.weight for c in data.corpora)
    loss = var = bpb = 0.0
    tokens, per_corpus = 0, {}
    for c in data.corpora:
        rows, nats, nb = [], 0.0, 0
        for x, y in heldout_batches(loader, c.name, windows):
            ce = F.cross_entropy(model(x.to(device))[0].float().transpose(1, 2), y.to(device), reduction="none")
            rows += ce.mean(1).tolist()
            nats += ce.sum().item()
            nb += int(nbytes[y.numpy()].sum())
            tokens += y.numel()
        w = c.weight / total_w
        per_corpus[c.name] = float(np.mean(rows))
        loss += w * per_corpus[c.name]
        var += w * w * (float(np.var(rows, ddof=1)) / len(rows) if len(rows) > 1 else 0.0)
        bpb += w * nats / math.log(2) / max(nb, 1)
    return {"loss": loss, "loss_se": math.sqrt(var), "bits_per_byte": bpb, "heldout_tokens": tokens,
            "per_corpus": per_corpus}


def unigram_loss(tok, base: PretrainConfig, windows: int = HELDOUT_WINDOWS) -> dict[str, Any]:
    """The held-out loss of a model that knows only the token frequencies of its training mixture (each corpus'
    train split counted, corpora weighted by the mixture, add-1/2 smoothing), on `heldout`'s windows and weights.
    A run above it has not learned even those: the early plateau, where no power law of compute holds yet."""
    data = prepare_data(base.data, tok, block_size=base.model.block_size, show_progress=False)
    loader = BatchLoader(data, block_size=base.model.block_size)
    total_w = sum(c.weight for c in data.corpora)
    p = np.zeros(data.vocab_size)
    for c in data.corpora:
        counts = np.bincount(c.train[0: len(c.train)], minlength=data.vocab_size)[: data.vocab_size] + 0.5
        p += c.weight / total_w * counts / counts.sum()
    nll = -np.log(p)
    per_corpus = {c.name: float(np.mean(np.concatenate(
        [nll[y.numpy()].ravel() for _, y in heldout_batches(loader, c.name, windows)])))
        for c in data.corpora}
    return {"loss": sum(c.weight / total_w * per_corpus[c.name] for c in data.corpora), "per_corpus": per_corpus}


def below_unigram(runs: list[dict], unigram: float | None) -> list[str]:
    """The runs whose held-out loss is not below the unigram loss (see `unigram_loss`)."""
    return [] if unigram is None else [r.get("name", f"#{i}") for i, r in enumerate(runs) if r["loss"] >= unigram]


CAPABILITY_FAMILY = "classify"  # the pretraining mixture's builtin:icl rules: the one family tiny models learn


def capability_problems(tok, block_size: int, tasks: int = 8, items: int = 4, k: int = 8) -> list[tuple[str, str]]:
    """(prompt, target) generative problems: held-out synthetic tasks (rules pretraining never saw) with K solved
    examples; the model must write the query's output itself (see `solves`)."""
    cfg = SyntheticConfig(families=[CAPABILITY_FAMILY], tasks_per_family=tasks, test_items=items)
    out = []
    for task in synthetic_suite(cfg):
        for i in range(len(task.test)):
            p = fit_prompt(task, i, k, 0, lambda s: len(tok.encode(s)), block_size, reserve=8)
            out.append((p.text, task.test[i].output))
    return out


@torch.no_grad()
def solve_counts(model: GPT, tok, problems: list[tuple[str, str]], samples: int, seed: int = 0) -> list[int]:
    """How many of `samples` completions at temperature 1 solve each problem."""
    model.eval()
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, seed=seed, stop=[",", "\n"])
    prompts = [p for p, _ in problems for _ in range(samples)]
    texts: list[str] = []
    for i in range(0, len(prompts), 256):
        texts += [c.text for c in generate(model, tok, prompts[i: i + 256], cfg)]
    return [sum(solves(texts[j * samples + s], target) for s in range(samples))
            for j, (_, target) in enumerate(problems)]


def solves(completion: str, target: str) -> bool:
    """The completion's first words are the target's (normalized: case, punctuation, articles); a model that goes
    on writing after its answer still answered."""
    want = normalize_answer(target).split()
    return normalize_answer(completion).split()[: len(want)] == want


def measure(checkpoint: str | Path, base: PretrainConfig, windows: int, capability_samples: int = 0) -> dict[str, Any]:
    """The held-out loss of a run's final checkpoint (and, if asked, its solve counts on the problems)."""
    loaded = load_checkpoint(checkpoint)
    out: dict[str, Any] = heldout(loaded.model, loaded.tokenizer, base, windows)
    if capability_samples:
        problems = capability_problems(loaded.tokenizer, loaded.model.config.block_size)
        out.update(samples=capability_samples, solved=solve_counts(loaded.model, loaded.tokenizer, problems,
                                                                    capability_samples))
    return out


# ---- the sweep ----------------------------------------------------------------------------------------------------


def load_base(cfg: SweepConfig) -> PretrainConfig:
    """The recipe: the pretraining config the sweep's runs (and its target) follow."""
    return load_pretrain_config(cfg.preset, cfg.overrides, data_paths=cfg.data_paths)


def run_sweep(cfg: SweepConfig, *, log=print) -> list[dict[str, Any]]:
    """Train every planned run not yet in runs.jsonl (a killed run resumes from its checkpoint) and append its row.
    Returns the rows in plan order. Only rank 0 writes."""
    cfg = validate_config(cfg)
    base = load_base(cfg)
    info, _ = init_distributed(base.train.device)
    log = log if info.is_main else quiet
    root = Path(cfg.out_dir) / cfg.name
    with rank_zero_first(info):  # rank 0 trains the tokenizer if it is missing; the others then read it
        tok = get_tokenizer(base.tokenizer, base.data, log=log)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, vocab_size=tok.vocab_size))
    members = plan(base, *cfg.compute, cfg.runs, info.world_size, cfg.batch_exponent)
    spec = {"sweep": to_dict(cfg), "recipe": to_dict(base), "tokens_per_param": tokens_per_param(base, info.world_size),
            "plan": [asdict(m) for m in members]}
    spec_path, runs_path = root / "sweep.json", root / "runs.jsonl"
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if old["plan"] != spec["plan"] or old["recipe"] != spec["recipe"]:
            raise ConfigError(f"{spec_path}: this sweep was planned with another recipe or compute range; "
                              "give another --name (or delete the folder)")
    elif info.is_main:
        atomic_write_text(spec_path, json.dumps(spec, indent=1) + "\n")
    if info.is_main and runs_path.exists():
        drop_torn_line(runs_path)  # a row cut by kill -9: its run is measured again
    done = {json.loads(ln)["name"]: json.loads(ln) for ln in complete_lines(runs_path)} if runs_path.exists() else {}
    if info.is_main:  # the baseline of the plot and of the prediction's warning (cheap: token counts)
        atomic_write_text(root / "unigram.json", json.dumps(unigram_loss(tok, base, cfg.heldout_windows)) + "\n")
    rows = []
    todo = jobs(members, cfg.seeds)
    log(f"sweep {root}: {len(members)} widths, {members[0].compute:.3g} .. {members[-1].compute:.3g} FLOPs, "
        f"{spec['tokens_per_param']:.3g} tokens per parameter"
        + (f", {cfg.seeds} seeds below the largest ({len(todo)} runs)" if cfg.seeds > 1 else ""))
    for i, (m, seed) in enumerate(todo, 1):
        name = run_name(m, seed)
        if name in done:
            rows.append(done[name])
            log(f"[{i}/{len(todo)}] {name}: done before, loss {done[name]['loss']:.4f}")
            continue
        t = time.perf_counter()
        run_cfg = member_config(base, m, root, info.world_size, seed)
        result = pretrain(run_cfg, resume=True, log=quiet)  # pretrain's own resume continues a killed run
        row = {**asdict(m), "name": name, "seed": run_cfg.train.seed,
               **measure(result.checkpoint, base, cfg.heldout_windows,
                         cfg.capability_samples if cfg.capability else 0),
               "seconds": round(time.perf_counter() - t, 1)}
        if info.is_main:
            append_line(runs_path, row)
        rows.append(row)
        log(f"[{i}/{len(todo)}] {name}: n_embd {m.n_embd}, {m.params / 1e6:.3f}M params, {m.steps} steps "
            f"of {m.batch_rows} rows, "
            f"{m.tokens / 1e6:.3f}M tokens, C {m.compute:.3g} FLOPs: held-out loss {row['loss']:.4f} "
            f"(+-{row['loss_se']:.4f}), {row['bits_per_byte']:.4f} bits/byte ({row['seconds']:.0f} s)")
    return rows


# ---- prediction ---------------------------------------------------------------------------------------------------


def code_version() -> str:
    """The git commit of the code (with -dirty when tracked files differ from it), or the package version."""
    from . import __version__

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO_ROOT, timeout=10).returncode != 0
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"gptrecipe {__version__} (no git)"


def capability_fit(rows: list[dict], at: float) -> dict[str, Any] | None:
    """GPT-4's capability law on the sweep: problems every run solves at least once; per run -mean log pass@1
    (unbiased, c / n) over them; fit alpha C^-k; predict at `at`. None without solve counts or kept problems."""
    if not rows or not all("solved" in r for r in rows):
        return None
    keep = [j for j in range(len(rows[0]["solved"])) if all(r["solved"][j] > 0 for r in rows)]
    if not keep:
        return {"kept": [], "problems": len(rows[0]["solved"])}
    y = [-float(np.mean([math.log(pass_at_k(r["samples"], r["solved"][j], 1)) for j in keep])) for r in rows]
    law = fit_capability([r["compute"] for r in rows], y)
    return {"kept": keep, "problems": len(rows[0]["solved"]), "alpha": law.alpha, "k": law.k,
            "neg_mean_log_pass": y, "predicted_neg_mean_log_pass": float(law(at)),
            "predicted_pass_rate": math.exp(-float(law(at)))}


def register_prediction(sweep_dir: str | Path, target: Member, path: str | Path, *, level: float = 0.9,
                        log=print) -> dict[str, Any]:
    """Fit the sweep's runs and write the prediction for `target` to `path` (before the target trains). A
    prediction already there is kept, never overwritten by a later fit: it is returned as registered."""
    path, runs_path = Path(path), Path(sweep_dir) / "runs.jsonl"
    if path.exists():
        pred = json.loads(path.read_text())
        log(f"prediction registered at {pred['time']} kept ({path}): {pred['predicted_loss']:.4f}")
        return pred
    runs = read_runs(runs_path)
    fit = fit_runs(runs, target.compute, level=level)
    unigram_path = Path(sweep_dir) / "unigram.json"
    unigram = json.loads(unigram_path.read_text())["loss"] if unigram_path.is_file() else None
    plateau = below_unigram(runs, unigram)
    if plateau:
        log(f"warning: {', '.join(plateau)} not below the unigram loss {unigram:.4f} (token frequencies alone): "
            "still on the early plateau, where no power law of compute holds; the fit may miss the bend after it "
            "(more tokens per parameter, or a higher compute range, give runs past it)")
    pred = {"target": asdict(target), "predicted_loss": fit["prediction"], "interval": fit["interval"],
            "interval_level": level, "fit": fit, "capability": capability_fit(runs, target.compute),
            "unigram_loss": unigram, "runs_above_unigram": plateau,
            "runs_file": str(runs_path), "runs_sha256": hashlib.sha256(runs_path.read_bytes()).hexdigest(),
            "code_version": code_version(), "time": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(path, json.dumps(pred, indent=1) + "\n")
    lo, hi = fit["interval"]
    log(f"registered before training: {target.name} at C = {target.compute:.3g} ({fit['extrapolation']:.1f}x the "
        f"largest run): predicted held-out loss {fit['prediction']:.4f} [{lo:.4f}, {hi:.4f}] -> {path}")
    return pred


def compare(pred: dict[str, Any], actual: dict[str, Any], sweep_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Predicted vs actual (comparison.json) and the log-log plot (scaling.png) under `out`."""
    out = Path(out)
    runs = read_runs(Path(sweep_dir) / "runs.jsonl")
    result = {"target": pred["target"]["name"], "compute": pred["target"]["compute"],
              "extrapolation": pred["fit"]["extrapolation"], "predicted_loss": pred["predicted_loss"],
              "interval": pred["interval"], "actual_loss": actual["loss"], "actual_loss_se": actual["loss_se"],
              "actual_bits_per_byte": actual["bits_per_byte"],
              "relative_error": pred["predicted_loss"] / actual["loss"] - 1,
              "in_interval": pred["interval"][0] <= actual["loss"] <= pred["interval"][1],
              "registered": pred["time"], "code_version": pred["code_version"],
              "unigram_loss": pred.get("unigram_loss"), "runs_above_unigram": pred.get("runs_above_unigram", [])}
    cap = pred.get("capability")
    if cap and cap.get("kept") and "solved" in actual:
        rates = [max(pass_at_k(actual["samples"], actual["solved"][j], 1), 0.5 / actual["samples"])
                 for j in cap["kept"]]  # a problem the target never solves counts as half a sample (log 0)
        got = -float(np.mean(np.log(rates)))
        result["capability"] = {"problems_kept": len(cap["kept"]), "problems": cap["problems"],
                                "predicted_pass_rate": cap["predicted_pass_rate"], "actual_pass_rate": math.exp(-got),
                                "predicted_neg_mean_log_pass": cap["predicted_neg_mean_log_pass"],
                                "actual_neg_mean_log_pass": got,
                                "relative_error": cap["predicted_neg_mean_log_pass"] / got - 1}
    elif cap is not None:
        result["capability"] = {"problems_kept": len(cap.get("kept", [])), "problems": cap.get("problems", 0)}
    result["plot"] = str(plot_fit(runs, pred["fit"], out / "scaling.png", actual=actual["loss"],
                                  baseline=pred.get("unigram_loss")))
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=1) + "\n")
    return result


def comparison_md(c: dict[str, Any], plot: str) -> str:
    """The comparison as a markdown table and the plot (for reports)."""
    lo, hi = c["interval"]
    rows = [{"quantity": "held-out loss (nats/token)", "predicted": f"{c['predicted_loss']:.4f} [{lo:.4f}, {hi:.4f}]",
             "actual": f"{c['actual_loss']:.4f} +- {c['actual_loss_se']:.4f}",
             "relative error": f"{100 * c['relative_error']:+.2f}%"}]
    cap = c.get("capability") or {}
    if "actual_pass_rate" in cap:
        rows.append({"quantity": f"pass rate (geometric mean over {cap['problems_kept']}/{cap['problems']} problems)",
                     "predicted": f"{cap['predicted_pass_rate']:.3f}", "actual": f"{cap['actual_pass_rate']:.3f}",
                     "relative error": f"{100 * cap['relative_error']:+.1f}% (of -mean log pass)"})
    unigram = ""
    if c.get("unigram_loss") is not None:
        above = c.get("runs_above_unigram") or []
        unigram = (f" Unigram loss (the mixture's token frequencies alone) on the held-out set: "
                   f"{c['unigram_loss']:.4f}; " + (f"small runs not below it: {', '.join(above)} (still on the early "
                                                   "plateau, where no power law of compute holds)." if above else
                                                   "every small run is below it."))
    return (md_table(rows) + f"\nExtrapolation: {c['extrapolation']:.1f}x the compute of the largest small run; "
            f"prediction registered {c['registered']} (code {c['code_version'][:12]}), before the run started."
            f"{unigram}\n\n![scaling]({plot})\n")


def predict(sweep_dir: str | Path, *, compute: float | None = None, name: str = "target", log=print) -> dict[str, Any]:
    """`gptrecipe scale predict`: register a prediction for the target (the recipe's own run, or the family member
    nearest `compute`), train it (resumable), measure it on the held-out set, and compare."""
    sweep_dir = Path(sweep_dir)
    spec_path = sweep_dir / "sweep.json"
    if not spec_path.is_file():
        raise DataError(f"{sweep_dir}: no sweep.json (run `gptrecipe scale sweep` first)")
    spec = json.loads(spec_path.read_text())
    cfg = SweepConfig(**{"batch_exponent": 0.0, **spec["sweep"]})  # sweeps planned before the batch rule: one batch
    base = load_base(cfg)
    info, _ = init_distributed(base.train.device)
    tok = get_tokenizer(base.tokenizer, base.data, log=log)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, vocab_size=tok.vocab_size))
    if compute is None:
        target = member(base, base.model.n_embd, spec["tokens_per_param"], info.world_size, cfg.batch_exponent)
    else:
        if not (math.isfinite(compute) and compute > 0):
            raise ConfigError(f"--compute: must be a positive number of FLOPs, got {compute}")
        target = min(family(base, compute * 2, info.world_size, cfg.batch_exponent),
                     key=lambda m: abs(math.log(m.compute / compute)))
    target = dataclasses.replace(target, name=name)
    run_cfg = dataclasses.replace(member_config(base, target, sweep_dir, info.world_size), name=name)
    out = run_cfg.run_dir
    pred = register_prediction(sweep_dir, target, out / "prediction.json", log=log) if info.is_main else None
    result = pretrain(run_cfg, resume=True, log=log)
    if not info.is_main:
        return {}
    actual = measure(result.checkpoint, base, cfg.heldout_windows, cfg.capability_samples if cfg.capability else 0)
    c = compare(pred, actual, sweep_dir, out)
    write_markdown(out / "scaling.md", f"Predictable scaling: `{name}`", [("Predicted vs actual",
                                                                              comparison_md(c, "scaling.png"))])
    return c
