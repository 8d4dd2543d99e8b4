"""Every training stage as a real `python -m gptrecipe <stage>` process: kill -9 + `--resume`, and torchrun.

kill -9: the process is SIGKILLed once it has written a checkpoint (mid-step, mid-write of a metrics line,
wherever it happens to be); the same command with `--resume` must then finish with every step logged once.
torchrun: 2 DDP processes (gloo) must give the losses and weights of 1 process accumulating 2 micro-batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptrecipe.io import drop_torn_line
from gptrecipe.model import GPT
from gptrecipe.rm import RMConfig, train_reward_model
from gptrecipe.train import MetricsLog, TrainConfig
from tests.conftest import save_stage_checkpoint, tiny_config, write_rankings
from tests.test_ppo import short_is_better

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TRAIN = ["train.device=cpu", "train.dtype=fp32", "train.progress=false", "train.eval_every=0",
         "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def inputs(small_tok, tmp_path_factory) -> Path:
    """A tiny "SFT" checkpoint (also used as the pretrained init and the RM init), chats, rankings, prompts."""
    d = tmp_path_factory.mktemp("kill")
    torch.manual_seed(0)
    save_stage_checkpoint(d / "base", GPT(tiny_config(vocab_size=small_tok.vocab_size)), small_tok)
    (d / "chats.jsonl").write_text("".join(json.dumps({"prompt": f"Hello {i}!", "response": "Hi, how are you?"})
                                           + "\n" for i in range(40)))
    write_rankings(d / "rankings.jsonl", short_is_better(40))
    (d / "prompts.txt").write_text("\n".join(f"hello {i} what is the machine" for i in range(400)))
    (d / "corpus.txt").write_text("Hello! How are you? I am fine, thank you. What is AI? " * 300)
    train_reward_model(RMConfig(out_dir=str(d), init=str(d / "base"), data=str(d / "rankings.jsonl"),
                                train=TrainConfig(max_steps=2, micro_batch_size=4, eval_every=0, checkpoint_every=2,
                                                  device="cpu", progress=False)), log=lambda *a: None)
    return d


def distinct_scores(prompt: str, responses: list[str]) -> list[float]:
    """A labeler that never ties (the longest response first), for the rank test."""
    return [len(r) + 1e-3 * i for i, r in enumerate(responses)]


def run_and_kill(cmd: list[str], ready, timeout: float = 120.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` is true; fail if it ends by itself first."""
    proc = subprocess.Popen([sys.executable, "-m", "gptrecipe", *cmd], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} ended (exit {proc.returncode}) before it could be killed: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd[0]}: nothing to kill after {timeout} s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def run(cmd: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "gptrecipe", *cmd], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def latest_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().strip().removeprefix("step_")) if latest.exists() else 0


def stage_command(stage: str, d: Path, out: Path) -> list[str]:
    common = [f"out_dir={out}", "name=run", *TRAIN]
    if stage == "pretrain":
        return ["pretrain", "--data", str(d / "corpus.txt"), f"tokenizer.path={out}/tok.json",
                "tokenizer.vocab_size=300", "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
                "model.block_size=32", "train.micro_batch_size=4", "train.checkpoint_every=2",
                f"data.cache_dir={out}/cache", "sample.max_new_tokens=4", "train.sample_every=0", *common]
    if stage == "sft":
        return ["sft", "--init", str(d / "base"), "--data", str(d / "chats.jsonl"), "train.micro_batch_size=4",
                "train.checkpoint_every=2", "sample.max_new_tokens=4", *common]
    if stage == "rm":
        return ["rm", "--init", str(d / "base"), "--data", str(d / "rankings.jsonl"), "train.micro_batch_size=4",
                "train.checkpoint_every=2", *common]
    # ppo: checkpoints at rollout boundaries (2 epochs x 2 minibatches per rollout)
    return ["ppo", "--sft", str(d / "base"), "--rm", str(d / "rm"), f"prompts={d / 'prompts.txt'}",
            "val_prompts=4", "rollout_batch=8", "minibatches=2", "ppo_epochs=2", "max_new_tokens=6",
            "train.micro_batch_size=4", "train.checkpoint_every=4", *common]


@pytest.mark.parametrize("stage", ["pretrain", "sft", "rm", "ppo"])
def test_kill_9_then_resume_continues(stage, inputs, tmp_path):
    cmd = stage_command(stage, inputs, tmp_path)
    run_dir = tmp_path / "run"
    run_and_kill([*cmd, "train.max_steps=100000"], lambda: latest_step(run_dir) >= 4)
    killed_at = latest_step(run_dir)
    assert killed_at >= 4
    final = killed_at + 4
    run([*cmd, f"train.max_steps={final}", "--resume"])
    assert latest_step(run_dir) == final
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, final + 1))  # each step once: the killed run's extra lines were dropped


def test_kill_9_during_rank_then_rerun_ranks_each_prompt_once(inputs, tmp_path):
    out = tmp_path / "rankings.jsonl"
    cmd = ["rank", str(inputs / "base"), "--prompts", str(inputs / "prompts.txt"), "--out", str(out),
           "--labeler", "tests.test_stage_runs:distinct_scores", "-k", "4", "--max-new-tokens", "6"]

    def some_lines() -> bool:
        return out.exists() and out.read_bytes().count(b"\n") >= 20

    run_and_kill(cmd, some_lines)
    done = out.read_bytes().count(b"\n")  # complete lines when the kill landed (20 or more, however fast it ran)
    with open(out, "ab") as f:  # as if the kill had landed in the middle of a write
        f.write(b'{"prompt": "hello 399 what is the mach')
    run([*cmd, "--max-prompts", str(done + 20)])
    prompts = [json.loads(x)["prompt"] for x in out.read_text().splitlines()]
    assert len(prompts) == len(set(prompts)) == done + 20
    assert set(prompts) <= {f"hello {i} what is the machine" for i in range(400)}


def test_torn_lines_are_dropped(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    MetricsLog(p, True, resume_step=2)
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2]
    r = tmp_path / "r.jsonl"
    r.write_text('{"prompt": "a", "responses": ["x", "y"]}\n{"prompt": "b", "resp')
    assert drop_torn_line(r) and r.read_text() == '{"prompt": "a", "responses": ["x", "y"]}\n'
    assert not drop_torn_line(r)


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_torchrun_two_processes_match_one_process(stage, inputs, tmp_path):
    """Same global batch: 2 processes x 1 micro-batch (DDP all-reduce) == 1 process x 2 (accumulation); and only
    rank 0 writes: every file of the run is written by it, each once where it is written once in one process."""
    from safetensors.torch import load_file

    split = "train.micro_batch_size=2" if stage == "ppo" else "train.batch_tokens=512"  # a PPO minibatch is 4 rows
    extra = ["train.max_steps=4", split, "train.checkpoint_every=4"]
    audit = {n: tmp_path / f"audit_{n}" for n in ("one", "two")}
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for name, launch in [("one", []), ("two", torchrun)]:
        audit[name].mkdir()
        proc = subprocess.run([sys.executable, *launch, "-m", "tests.audit_writes",
                               *stage_command(stage, inputs, tmp_path / name), *extra],
                              cwd=ROOT, env={**ENV, "AUDIT_DIR": str(audit[name])}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for name in ("one", "two"):
        metrics = [json.loads(x) for x in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        rows[name] = {r["step"]: r["loss"] for r in metrics if "loss" in r}
        assert metrics[0]["world_size"] == (1 if name == "one" else 2)
    assert sorted(rows["one"]) == [1, 2, 3, 4]
    for s in rows["one"]:
        assert rows["two"][s] == pytest.approx(rows["one"][s], abs=1e-5), s
    w1, w2 = (load_file(tmp_path / n / "run" / "checkpoints" / "step_0000004" / "model.safetensors")
              for n in ("one", "two"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k

    def writes(name: str, rank: int) -> list[str]:
        log = audit[name] / f"rank{rank}.log"
        run_dir = str(tmp_path / name / "run")
        lines = log.read_text().splitlines() if log.exists() else []
        return [x.removeprefix(run_dir) for x in lines if x.startswith(run_dir) and "/." not in x]  # no temp files

    assert writes("two", 1) == []  # rank 1 writes nothing of the run
    assert sorted(writes("two", 0)) == sorted(writes("one", 0))  # rank 0 writes what one process writes
    assert writes("two", 0).count("/config.toml") == 1
