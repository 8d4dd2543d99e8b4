"""One PPO iteration (rollout + updates): gptrecipe's PPOTask vs Hugging Face TRL's PPOTrainer, same tiny models.

    .venv/bin/python bench/bench_ppo.py [--trl-python /tmp/venv-trl/bin/python] [--iters 3]

Ours runs in this process: a random-init GPT policy, its reference copy, a RewardModel and a value model of the
same shape, a PPOTask; one iteration = `task.rollout` (KV-cache sampling, policy/ref/value/RM passes, GAE) plus
`ppo_epochs * minibatches` optimizer steps exactly as the shared loop in gptrecipe/train.py does them
(get_batch, loss, backward, grad clip, AdamW step). TRL runs `trl.experimental.ppo.PPOTrainer` (trl 1.0.0) in a
subprocess of its own venv (bench/trl_ppo_worker.py) on randomly initialised GPT-2s of the same shape, the same
tokenizer and the same prompt token ids; an iteration there is one pass of its `train()` loop. Both in fp32 with
the same thread count; the first iteration of each is warm-up and left out. samples/s = rollout_batch / median
steady iteration time. By default only prompts of one length (--prompt-len 16) are used, so both sides process the
same sequence width every iteration (--prompt-len 0: all prompts, mixed widths). Run it on an idle machine: with
another process on the 2 cores, both sides slow down several-fold and unevenly (the script warns). Create the TRL
venv outside the repo (the script prints how if it is missing):

    python3 -m venv /tmp/venv-trl
    /tmp/venv-trl/bin/pip install torch==2.13.0
    /tmp/venv-trl/bin/pip install trl==1.0.0 transformers
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptrecipe.chat import ChatTemplate, Message  # noqa: E402
from gptrecipe.model import GPT, GPTConfig  # noqa: E402
from gptrecipe.ppo import ActorCritic, PPOConfig, PPOTask  # noqa: E402
from gptrecipe.rm import RewardModel  # noqa: E402
from gptrecipe.runtime import autocast, pick_dtype  # noqa: E402
from gptrecipe.tokenizer import Tokenizer  # noqa: E402
from gptrecipe.train import TrainConfig, make_optimizer  # noqa: E402

DEFAULT_TRL_PYTHON = "/tmp/venv-trl/bin/python"
TRL_SETUP = ("python3 -m venv /tmp/venv-trl\n"
             "/tmp/venv-trl/bin/pip install torch==2.13.0        # CPU wheel first, so trl's deps keep it\n"
             "/tmp/venv-trl/bin/pip install trl==1.0.0 transformers")


def load_tokenizer(vocab: int) -> tuple[Tokenizer, str]:
    """runs/speedrun/tokenizer.json when there is one, else a BPE trained on the builtin corpora (seconds)."""
    path = ROOT / "runs" / "speedrun" / "tokenizer.json"
    if path.exists():
        return Tokenizer.from_file(path), str(path)
    from gptrecipe.data import read_documents

    text = [d for _, d in zip(range(200), read_documents("builtin:shakespeare"), strict=False)]
    return Tokenizer.train(text, vocab, show_progress=False), "trained on builtin:shakespeare"


def load_prompt_texts() -> list[str]:
    try:
        from gptrecipe.compare import load_prompts

        return load_prompts("builtin:chatterbot")
    except Exception:  # data layer unavailable: deterministic stand-ins
        return [f"Tell me about topic number {i} and why it matters." for i in range(256)]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over `seconds` (from /proc/stat; 0 where that is unavailable)."""
    def sample() -> tuple[int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def fmt(xs, digits: int = 3) -> str:
    return " ".join(f"{x:.{digits}f}" for x in xs)


def run_ours(a, tok: Tokenizer, prompts: list[str]) -> dict:
    """Time `a.iters + 1` PPO iterations of gptrecipe in-process; the first is warm-up."""
    torch.manual_seed(a.seed)
    mcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=a.block, n_layer=a.layers, n_head=a.heads, n_embd=a.d,
                     dropout=0.0)
    policy = GPT(mcfg)
    ref = copy.deepcopy(policy)
    rm = RewardModel(copy.deepcopy(mcfg))
    value = copy.deepcopy(rm)
    for m in (ref, rm):
        m.eval().requires_grad_(False)
    tcfg = TrainConfig(max_steps=(a.iters + 1) * a.ppo_epochs * a.minibatches, micro_batch_size=a.rollout_batch //
                       a.minibatches, lr=a.lr, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, device="cpu",
                       dtype=a.dtype, progress=False, seed=a.seed)
    cfg = PPOConfig(rollout_batch=a.rollout_batch, minibatches=a.minibatches, ppo_epochs=a.ppo_epochs,
                    max_new_tokens=a.new_tokens, temperature=a.temperature, beta=a.beta, train=tcfg)
    ac = ActorCritic(policy, value)
    task = PPOTask(cfg, ac, ref, rm, tok, prompts, prompts[:8])
    opt = make_optimizer(ac, tcfg, torch.device("cpu"))  # the loop's own optimizer (fused AdamW)

    rollout_s: list[float] = []
    gen_s: list[float] = []
    widths: list[int] = []
    resp_len: list[float] = []
    orig_rollout, orig_sample = task.rollout, task.sample_responses

    def timed_rollout(step):
        t0 = time.perf_counter()
        out = orig_rollout(step)
        rollout_s.append(time.perf_counter() - t0)
        widths.append(int(out["ids"].shape[1]))
        resp_len.append(task.last_rollout["response_len"])
        return out

    def timed_sample(*args, **kw):
        t0 = time.perf_counter()
        out = orig_sample(*args, **kw)
        gen_s.append(time.perf_counter() - t0)
        return out

    task.rollout, task.sample_responses = timed_rollout, timed_sample
    upd = cfg.updates_per_rollout
    iter_s: list[float] = []
    ac.train()
    fwd = torch.compile(ac) if a.compile else ac  # as train.compile=true does in the loop
    device = torch.device("cpu")
    dtype = pick_dtype(a.dtype, device)
    for it in range(a.iters + 1):
        t0 = time.perf_counter()
        for k in range(upd):  # the body of gptrecipe.train.train's step loop (grad_accum 1, one process)
            step = it * upd + k
            with autocast(device, dtype):  # the loop computes batches (the rollouts) and losses in its precision
                batch = task.get_batch(step, 0, tcfg.micro_batch_size, 1, 0, 1)
                terms = task.loss(fwd, batch.tensors)
            loss = sum(terms[k] / batch.counts[k] for k in terms)  # the loop's normalisation
            loss.backward()
            loss.detach().item()
            torch.nn.utils.clip_grad_norm_(ac.parameters(), tcfg.grad_clip).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
        iter_s.append(time.perf_counter() - t0)
    return {"iter_s": iter_s, "rollout_s": rollout_s, "gen_s": gen_s, "seq_width": widths, "response_len": resp_len,
            "params_policy": policy.num_params(), "optimizer_steps_per_iter": upd,
            "n_ac_params": sum(p.numel() for p in ac.parameters())}


def run_trl(a, tok: Tokenizer, prompts: list[str], workdir: Path) -> dict | None:
    """Run bench/trl_ppo_worker.py under the TRL venv's python; None (with a message) when it cannot."""
    if not Path(a.trl_python).exists():
        print(f"\nTRL venv not found at {a.trl_python}; create it (outside the repo) with:\n{TRL_SETUP}\n"
              f"then rerun with --trl-python {DEFAULT_TRL_PYTHON}")
        return None
    template = ChatTemplate(tok)
    pool = list(prompts)
    while len(pool) < a.rollout_batch:  # TRL draws whole batches without replacement (drop_last)
        pool += prompts
    tok_file = workdir / "tokenizer.json"
    tok.save(tok_file)
    spec = {"vocab_size": tok.vocab_size, "block_size": a.block, "n_layer": a.layers, "n_head": a.heads,
            "n_embd": a.d, "pad_id": tok.id_of("<|pad|>"), "end_id": template.end, "bos_id": tok.eot_id,
            "prompts": [template.prompt_ids([Message("user", p)]) for p in pool],
            "rollout_batch": a.rollout_batch, "minibatches": a.minibatches, "ppo_epochs": a.ppo_epochs,
            "response_length": a.new_tokens, "temperature": a.temperature, "beta": a.beta, "lr": a.lr,
            "iters": a.iters, "seed": a.seed, "threads": a.threads, "tokenizer_file": str(tok_file),
            "bf16": a.trl_bf16}
    spec_file = workdir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [a.trl_python, str(ROOT / "bench" / "trl_ppo_worker.py"), str(spec_file)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "WANDB_DISABLED": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"\nTRL worker failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stdout[-3000:]}\n"
              f"{proc.stderr[-3000:]}")
        return None
    out = json.loads(lines[-1][len("RESULT "):])
    out["command"] = shlex.join(cmd)
    return out


def pick_prompts(template: ChatTemplate, texts: list[str], a) -> tuple[list[str], str]:
    """All prompts that fit (--prompt-len 0), or only those of exactly --prompt-len tokens (nearest length there is)."""
    fit, _ = template.prompts_that_fit(texts, a.new_tokens, a.block)
    lens = {q: len(template.prompt_ids([Message("user", q)])) for q in fit}
    if a.prompt_len <= 0:
        vals = list(lens.values())
        return fit, f"{len(fit)} chat prompts of mixed length ({np.mean(vals):.1f} tokens mean, max {max(vals)})"
    best = min(set(lens.values()), key=lambda n: (abs(n - a.prompt_len), n))
    pool = [q for q in fit if lens[q] == best]
    return pool, f"{len(pool)} chat prompts of exactly {best} tokens (same width every rollout on both sides)"


def summarize(a, ours: dict, trl: dict | None) -> dict:
    o_iter = median(ours["iter_s"][1:])
    out = {"ours_iter": o_iter, "ours_sps": a.rollout_batch / o_iter,
           "ours_tok": statistics.mean(ours["response_len"][1:])}
    if trl is not None:
        t_iter = median(trl["iter_s"][1:])
        out.update(trl_iter=t_iter, trl_sps=a.rollout_batch / t_iter,
                   trl_tok=statistics.mean(trl["response_tokens"][1:]))
    return out


def report_round(a, ours: dict, trl: dict | None) -> None:
    o_iter = median(ours["iter_s"][1:])
    o_roll, o_gen = median(ours["rollout_s"][1:]), median(ours["gen_s"][1:])
    o_tok = statistics.mean(ours["response_len"][1:])  # response tokens per sample incl. a final <|end|>
    o_sps = a.rollout_batch / o_iter
    print(f"ours (gptrecipe PPOTask + train-loop step): iterations [{fmt(ours['iter_s'])}] s")
    print(f"  steady iteration {o_iter:.3f} s = rollout {o_roll:.3f} s (generate {o_gen:.3f} s) + updates "
          f"{o_iter - o_roll:.3f} s; {o_tok:.1f} response tokens/sample; sequence widths {ours['seq_width'][1:]}")
    print(f"  {o_sps:.2f} samples/s, {o_sps * o_tok:.1f} response tokens/s; {ours['optimizer_steps_per_iter']} "
          f"optimizer steps/iteration; policy {ours['params_policy']:,} params (tied head)")
    if trl is None:
        return
    t_iter = median(trl["iter_s"][1:])
    t_gen = median(trl["gen_s"][1:])
    t_tok = statistics.mean(trl["response_tokens"][1:])
    t_sps = a.rollout_batch / t_iter
    v = trl["versions"]
    widths = [q + r for q, r in zip(trl["query_width"], trl["response_tokens"], strict=True)][1:]
    print(f"TRL {v['trl']} experimental PPOTrainer (transformers {v['transformers']}, torch {v['torch']}): "
          f"iterations [{fmt(trl['iter_s'])}] s")
    t_roll = median(trl["rollout_s"][1:])
    print(f"  steady iteration {t_iter:.3f} s = rollout {t_roll:.3f} s (generate {t_gen:.3f} s) + updates and "
          f"logging {t_iter - t_roll:.3f} s; {t_tok:.1f} response tokens/sample; sequence widths {widths}")
    print(f"  {t_sps:.2f} samples/s, {t_sps * t_tok:.1f} response tokens/s; {trl['optimizer_steps']} optimizer "
          f"steps in {len(trl['iter_s'])} iterations (mini_batch_size {trl['mini_batch_size']}); policy "
          f"{trl['params_policy']:,} params (tied head)")
    print(f"  round ratio ours/TRL: {o_sps / t_sps:.2f}x samples/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON, help="python of a venv with trl==1.0.0")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per side and round (after one warm-up)")
    p.add_argument("--rounds", type=int, default=1, help="alternate ours / TRL this many times; medians over rounds")
    p.add_argument("--prompt-len", type=int, default=16,
                   help="use only prompts of this many tokens (0: all, mixed lengths)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096, help="only when a tokenizer has to be trained")
    p.add_argument("--rollout-batch", type=int, default=32)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--compile", action="store_true", help="ours with train.compile=true (torch.compile the updates)")
    p.add_argument("--dtype", default="fp32", help="ours: train.dtype (auto = bf16 where native, as the main job)")
    p.add_argument("--trl-bf16", action="store_true", help="TRL with bf16=True (its mixed precision)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=1337)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    command = shlex.join([".venv/bin/python", "bench/bench_ppo.py", *sys.argv[1:]])

    tok, tok_src = load_tokenizer(a.vocab)
    template = ChatTemplate(tok)
    prompts, prompt_desc = pick_prompts(template, load_prompt_texts(), a)
    print(f"PPO iteration benchmark: {a.layers}L/{a.heads}H/d{a.d}/block{a.block}/vocab{tok.vocab_size} "
          f"(tokenizer: {tok_src}), fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"rollout_batch {a.rollout_batch} prompts x 1 response of {a.new_tokens} new tokens at most; ppo_epochs "
          f"{a.ppo_epochs} x minibatches {a.minibatches} = {a.ppo_epochs * a.minibatches} optimizer steps of "
          f"{a.rollout_batch // a.minibatches} rows per iteration; temperature {a.temperature}, no top-k/top-p; "
          f"{prompt_desc}; {a.iters} timed iterations after 1 warm-up, per side and round; {a.rounds} round(s)")
    busy = cpu_busy()
    print(f"load average at start: {fmt(os.getloadavg(), 2)}; CPU busy over the last second: {100 * busy:.0f}%")
    if busy > 0.2:
        print("WARNING: the machine is busy (other processes on the CPU); 2 OpenMP threads competing for 2 cores "
              "slow both sides several-fold and unevenly, so the ratio is unreliable: rerun when idle")

    rows = []
    trl_cmd = None
    for r in range(a.rounds):
        print(f"\n--- round {r + 1}/{a.rounds} ---")
        ours = run_ours(a, tok, prompts)
        trl = None
        if not a.skip_trl:
            with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
                trl = run_trl(a, tok, prompts, Path(tmp))
            trl_cmd = trl["command"] if trl else trl_cmd
        report_round(a, ours, trl)
        rows.append(summarize(a, ours, trl))

    print(f"\n=== result (median over {a.rounds} round(s) of each round's median steady iteration) ===")
    o_sps = median([x["ours_sps"] for x in rows])
    o_tok = median([x["ours_tok"] for x in rows])
    print(f"ours: {o_sps:.2f} samples/s ({o_sps * o_tok:.1f} response tokens/s, {o_tok:.1f} tokens/sample)")
    if all("trl_sps" in x for x in rows):
        t_sps = median([x["trl_sps"] for x in rows])
        t_tok = median([x["trl_tok"] for x in rows])
        print(f"TRL:  {t_sps:.2f} samples/s ({t_sps * t_tok:.1f} response tokens/s, {t_tok:.1f} tokens/sample)")
        print(f"ratio ours/TRL: {o_sps / t_sps:.2f}x samples/s, {(o_sps * o_tok) / (t_sps * t_tok):.2f}x response "
              f"tokens/s (goal >= 2x)")
        print(f"TRL worker: {trl_cmd}")
    else:
        print("TRL: no number (see above)")
    print(f"load average at end: {fmt(os.getloadavg(), 2)}")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
