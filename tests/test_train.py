import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptrecipe.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
)
from gptrecipe.model import GPT
from gptrecipe.train import TrainConfig, grad_accum_steps, lr_at, train
from tests.conftest import tiny_config
from tests.synthetic import StreamTask, pattern_stream

ROOT = Path(__file__).resolve().parent.parent


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=20, micro_batch_size=8, lr=3e-3, warmup_steps=5, eval_every=0, checkpoint_every=0,
                device="cpu", progress=False, dtype="fp32")
    base.update(kw)
    return TrainConfig(**base)


def fresh_model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(**kw))


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    c = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)  # half way: mean of peak and floor
    assert lr_at(110, c) == pytest.approx(0.1) and lr_at(500, c) == pytest.approx(0.1)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 120))


def test_grad_accum_from_batch_tokens():
    assert grad_accum_steps(TrainConfig(micro_batch_size=4, batch_tokens=4 * 64 * 3), 64, 1) == 3
    with pytest.raises(ValueError, match="not a multiple"):
        grad_accum_steps(TrainConfig(micro_batch_size=4, batch_tokens=1000), 64, 1)


def test_pretraining_loop_learns(tmp_path):
    model = fresh_model()
    res = train(model, StreamTask(pattern_stream(), 32), cfg(max_steps=60, eval_every=30, lr=1e-2), tmp_path)
    first, last = res.losses[1], res.losses[60]
    assert first > 5.0 and last < 2.0, (first, last)
    assert res.evals[-1]["val_loss"] < 2.0
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["step"] == 0 and rows[1]["val_loss"] > 5.0  # evaluated before the first step
    assert {"loss", "lr", "tok_per_s", "mfu", "grad_norm"} <= set(rows[2])
    assert (tmp_path / "checkpoints" / "step_0000060" / "model.safetensors").exists()


def test_resume_gives_identical_losses(tmp_path):
    """2N steps straight == N steps, stop, resume for N more (dropout on, so RNG state matters too)."""
    task = StreamTask(pattern_stream(), 32)
    straight = train(fresh_model(dropout=0.1), task, cfg(max_steps=10), tmp_path / "a")
    first = train(fresh_model(dropout=0.1), task, cfg(max_steps=10, checkpoint_every=5), tmp_path / "b")
    assert (tmp_path / "b" / "checkpoints" / "step_0000005").exists()
    # simulate a run killed after step 5: drop the final checkpoint, keep the step-5 one
    ck = tmp_path / "b" / "checkpoints"
    import shutil

    shutil.rmtree(ck / "step_0000010")
    (ck / "latest").write_text("step_0000005\n")
    resumed = train(fresh_model(dropout=0.1), task, cfg(max_steps=10, checkpoint_every=5), tmp_path / "b",
                    resume=True)
    assert sorted(resumed.losses) == list(range(1, 11))  # steps 1-5 taken back from metrics.jsonl
    for s in range(1, 11):
        assert resumed.losses[s] == pytest.approx(straight.losses[s], abs=1e-6), s
    assert first.losses[5] == pytest.approx(straight.losses[5], abs=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # metrics of the killed part after step 5 were dropped, not duplicated


def test_a_run_resumed_at_its_last_step_still_reports_its_curve(tmp_path):
    """`gptrecipe run --resume` after a stage had finished: nothing left to train, the result is the run's own."""
    task = StreamTask(pattern_stream(), 32)
    done = train(fresh_model(), task, cfg(max_steps=6, eval_every=3, checkpoint_every=3), tmp_path)
    again = train(fresh_model(), task, cfg(max_steps=6, eval_every=3, checkpoint_every=3), tmp_path, resume=True)
    assert [e["step"] for e in done.evals] == [0, 3, 6] and again.evals == done.evals
    assert again.losses == done.losses and again.final_step == 6


def test_grad_accumulation_equals_bigger_batch(tmp_path):
    task = StreamTask(pattern_stream(), 32)
    big = train(fresh_model(), task, cfg(max_steps=5, micro_batch_size=8), tmp_path / "a")
    acc = train(fresh_model(), task, cfg(max_steps=5, micro_batch_size=4, batch_tokens=8 * 32), tmp_path / "b")
    assert acc.grad_accum == 2
    for s in range(1, 6):
        assert acc.losses[s] == pytest.approx(big.losses[s], abs=1e-5)


def test_checkpoint_roundtrip_and_state(tmp_path, small_tok):
    byte_tok = small_tok
    model = fresh_model(vocab_size=small_tok.vocab_size)
    tok_file = tmp_path / "tok.json"
    byte_tok.save(tok_file)
    train(model, StreamTask(pattern_stream(), 32), cfg(max_steps=3), tmp_path,
          CheckpointMeta.of("pretrain", model.config, byte_tok), tokenizer_path=tok_file)
    ck = resolve_checkpoint(tmp_path)
    loaded = load_checkpoint(tmp_path)
    x = torch.randint(0, 257, (1, 16))
    torch.testing.assert_close(loaded.model(x)[0], model.cpu()(x)[0])
    assert loaded.meta.stage == "pretrain" and loaded.meta.model == dataclasses.asdict(model.config)
    state = load_trainer_state(ck)
    assert state["step"] == 3 and "exp_avg" in next(iter(state["optimizer"]["state"].values()))
    assert not list(ck.parent.glob(".*tmp*"))  # nothing half-written left behind


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    m = fresh_model()
    train(m, StreamTask(pattern_stream(), 32), cfg(max_steps=2), tmp_path, CheckpointMeta.of("t", m.config, None))
    other = fresh_model(n_embd=64)
    with pytest.raises(CheckpointError, match="n_embd: checkpoint 32 vs config 64"):
        train(other, StreamTask(pattern_stream(), 32), cfg(max_steps=4), tmp_path,
              CheckpointMeta.of("t", other.config, None), resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    m = fresh_model()
    train(m, StreamTask(pattern_stream(), 32), cfg(max_steps=1), tmp_path, CheckpointMeta.of("t", m.config, None))
    ck = resolve_checkpoint(tmp_path)
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_weights(m, ck)


def test_ddp_two_processes_match_one_process(tmp_path):
    """torchrun with 2 gloo processes (accum 1 each) == 1 process with accum 2, same global batch."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one.json"
    subprocess.run([sys.executable, "tests/ddp_worker.py", str(one), str(tmp_path / "r1"), "2"],
                   cwd=ROOT, env=env, check=True, timeout=240)
    two = tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "tests/ddp_worker.py", str(two), str(tmp_path / "r2"), "1"],
                   cwd=ROOT, env=env, check=True, timeout=240, capture_output=True)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["accum"] == 2 and b["accum"] == 1
    for s in a["losses"]:
        assert b["losses"][s] == pytest.approx(a["losses"][s], abs=1e-5)
    assert b["weight_sum"] == pytest.approx(a["weight_sum"], rel=1e-5)


def test_resume_refuses_a_checkpoint_of_another_tokenizer(tmp_path):
    task = StreamTask(pattern_stream(), 32)
    train(fresh_model(), task, cfg(max_steps=2), tmp_path, CheckpointMeta("t", tokenizer_fingerprint="aaaa"))
    with pytest.raises(CheckpointError, match="another tokenizer"):
        train(fresh_model(), task, cfg(max_steps=4), tmp_path, CheckpointMeta("t", tokenizer_fingerprint="bbbb"),
              resume=True)


def test_bf16_autocast_trains(tmp_path):
    """Mixed precision path (bf16 autocast on CPU): finite losses that fall like fp32's."""
    task = StreamTask(pattern_stream(), 32)
    res = train(fresh_model(), task, cfg(max_steps=30, lr=1e-2, dtype="bf16"), tmp_path)
    ref = train(fresh_model(), task, cfg(max_steps=30, lr=1e-2, dtype="fp32"), tmp_path / "ref")
    assert all(torch.isfinite(torch.tensor(v)) for v in res.losses.values())
    assert res.losses[30] < res.losses[1] - 2.0
    assert abs(res.losses[30] - ref.losses[30]) / ref.losses[30] < 0.05


def test_fp16_trains_with_loss_scaling_kept_in_the_checkpoint(tmp_path):
    """fp16 autocast goes with a GradScaler: finite losses that fall like fp32's, and the loss scale is part of
    the checkpoint."""
    task = StreamTask(pattern_stream(), 32)
    # 60 steps: a step the scaler skips (an overflow) lags the curve, which is flat by then; over model seeds 0-5
    # the final losses differ from fp32's by 0.00-0.024 (AMD Zen 5)
    res = train(fresh_model(), task, cfg(max_steps=60, lr=1e-2, dtype="fp16", checkpoint_every=15), tmp_path)
    ref = train(fresh_model(), task, cfg(max_steps=60, lr=1e-2, dtype="fp32"), tmp_path / "ref")
    assert all(torch.isfinite(torch.tensor(v)) for v in res.losses.values())
    assert res.losses[60] < res.losses[1] - 2.0
    assert abs(res.losses[60] - ref.losses[60]) / ref.losses[60] < 0.1
    state = load_trainer_state(tmp_path / "checkpoints" / "step_0000060")
    assert state["scaler"]["scale"] > 1.0  # loss scaling was on (GradScaler starts at 2**16 and adapts)


def test_cpu_bf16_override_picks_the_auto_dtype(monkeypatch):
    """GPTRECIPE_CPU_BF16 forces `dtype=auto` onto either CPU path; anything else is a config error naming it."""
    from gptrecipe.config import ConfigError
    from gptrecipe.runtime import pick_dtype

    cpu = torch.device("cpu")
    monkeypatch.setenv("GPTRECIPE_CPU_BF16", "0")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bf16", cpu) == torch.bfloat16  # an explicit dtype is not overridden
    monkeypatch.setenv("GPTRECIPE_CPU_BF16", "1")
    assert pick_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setenv("GPTRECIPE_CPU_BF16", "yes")
    with pytest.raises(ConfigError, match="GPTRECIPE_CPU_BF16='yes'"):
        pick_dtype("auto", cpu)
