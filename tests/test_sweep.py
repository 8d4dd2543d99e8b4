"""The scaling stage: the family and its plan, bad input, the held-out set, the registered prediction, the capability
law, and a sweep killed with kill -9 that continues the run it was in."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptrecipe.cli import main
from gptrecipe.config import ConfigError, apply_overrides
from gptrecipe.data import BatchLoader, prepare_data
from gptrecipe.model import GPT
from gptrecipe.pretrain import NextTokenTask, load_pretrain_config
from gptrecipe.scaling import PowerLaw
from gptrecipe.sweep import (
    SweepConfig,
    capability_fit,
    comparison_md,
    heldout,
    member,
    member_config,
    plan,
    predict,
    register_prediction,
    run_sweep,
    solves,
    tokens_per_param,
    unigram_loss,
)
from gptrecipe.train import grad_accum_steps
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def tiny_recipe(**over) -> list[str]:
    """A recipe whose family trains in milliseconds per step."""
    base = {"model.n_layer": 2, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32,
            "model.vocab_size": 300, "tokenizer.vocab_size": 300, "train.micro_batch_size": 4,
            "train.max_steps": 400, "train.warmup_steps": 40, "train.device": "cpu", "train.dtype": "fp32",
            "train.progress": "false", **over}
    return [f"{k}={v}" for k, v in base.items()]


def test_the_family_keeps_the_recipe_and_the_base_run_is_a_member():
    base = load_pretrain_config("tiny", ["model.vocab_size=4096"])
    own = member(base, base.model.n_embd, tokens_per_param(base))
    assert (own.steps, own.warmup_steps, own.params) == (700, base.train.warmup_steps, 4_240_896)
    lo, hi = own.compute / 300, own.compute / 10
    runs = plan(base, lo, hi, 5)
    assert [m.n_embd for m in runs] == sorted({m.n_embd for m in runs})  # distinct widths, growing
    assert all(m.n_embd % base.model.n_head == 0 and m.n_layer == base.model.n_layer for m in runs)
    assert lo / 1.2 <= runs[0].compute and runs[-1].compute <= hi  # nothing beyond hi: >= 10x to the base run
    per_step = base.train.micro_batch_size * base.model.block_size
    for m in runs:  # the base run's tokens per parameter and warmup fraction, up to rounding to whole steps
        assert m.tokens == m.steps * per_step
        assert abs(m.tokens / m.params - own.tokens / own.params) <= per_step / m.params
        assert abs(m.warmup_steps / m.steps - base.train.warmup_steps / 700) <= 1 / m.steps
        assert m.params_non_embedding < m.params and m.compute > m.compute_6nd  # attention FLOPs on top
    gaps = np.diff(np.log([m.compute for m in runs]))
    assert gaps.min() > 0.5 * gaps.mean()  # roughly log-spaced


@pytest.mark.parametrize("world_size", [1, 2])
def test_the_batch_rule_gives_small_runs_smaller_batches_and_keeps_the_recipe_run(world_size, tmp_path):
    base = load_pretrain_config("tiny", ["model.vocab_size=4096"])
    ratio, rows = tokens_per_param(base, world_size), base.train.micro_batch_size * world_size
    own = member(base, base.model.n_embd, ratio, world_size, batch_exponent=0.33)
    assert (own.batch_rows, own.steps) == (rows, 700)  # the recipe's own run is untouched
    assert all(m.batch_rows == rows for m in plan(base, own.compute / 300, own.compute / 10, 4, world_size))
    runs = plan(base, own.compute / 300, own.compute / 10, 4, world_size, batch_exponent=0.33)
    big = member(base, 2 * base.model.n_embd, ratio, world_size, batch_exponent=0.33)
    for m in [*runs, big]:
        want = rows * (m.compute / own.compute) ** 0.33  # DeepSeek's B ~ C^0.33, in whole rows per process
        unit = rows if want >= rows else world_size
        assert m.batch_rows % unit == 0 and abs(m.batch_rows - want) <= unit / 2 + 0.01 * want
        assert m.tokens == m.steps * m.batch_rows * base.model.block_size
        assert abs(m.tokens / m.params - ratio) <= m.batch_rows * base.model.block_size / m.params
        train = member_config(base, m, tmp_path, world_size).train  # what pretrain() runs: the same rows per step
        accum = grad_accum_steps(train, base.model.block_size, world_size)
        assert accum * train.micro_batch_size * world_size == m.batch_rows
    assert [m.batch_rows for m in runs] == sorted(m.batch_rows for m in runs) and runs[0].batch_rows < rows
    assert runs[0].steps > 4 * member(base, runs[0].n_embd, ratio, world_size).steps  # past the early plateau
    assert big.batch_rows > rows
    with pytest.raises(ConfigError, match="^batch_exponent:"):
        apply_overrides(SweepConfig(compute=[1e11, 1e12], batch_exponent=-0.5), [])


@pytest.mark.parametrize("compute, runs, field", [([2e12, 1e12], 5, "compute"), ([1e12, 1e12], 5, "compute"),
                                                  ([1e11, 1e12], 3, "runs"), ([-1.0, 1e12], 5, "compute"),
                                                  ([1e12], 5, "compute")])
def test_bad_sweep_settings_name_the_field(compute, runs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        apply_overrides(SweepConfig(compute=compute, runs=runs), [])
    with pytest.raises(ConfigError, match="^seeds:"):
        apply_overrides(SweepConfig(compute=[1e11, 1e12], seeds=0), [])


def test_a_range_too_narrow_for_the_runs_is_refused():
    base = load_pretrain_config("tiny", ["model.vocab_size=4096"])
    with pytest.raises(ConfigError, match="compute: .* fewer than runs=5"):
        plan(base, 1e12, 1.2e12, 5)


def test_cli_bad_range_is_one_line_naming_the_field(capsys):
    assert main(["scale", "sweep", "--compute", "1e12", "1e11", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compute" in err[0] and "lo < hi" in err[0]
    assert main(["scale", "sweep", "--compute", "1e11", "1e12", "--runs", "2", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptrecipe scale: error: runs:")
    assert main(["scale", "predict", "/nonexistent/sweep"]) == 2
    assert "no sweep.json" in capsys.readouterr().err


def test_heldout_is_the_pretraining_val_loss_on_more_windows(tmp_path, small_tok):
    (tmp_path / "a.txt").write_text("Hello! How are you? I am fine, thank you. What is AI? " * 4000)
    cfg = load_pretrain_config("tiny", [f"data.cache_dir={tmp_path}/cache", "model.block_size=32",
                                        "train.micro_batch_size=16"], data_paths=[str(tmp_path / "a.txt")])
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=small_tok.vocab_size, block_size=32)).eval()
    got = heldout(model, small_tok, cfg, windows=32)
    data = prepare_data(cfg.data, small_tok, block_size=32, show_progress=False)
    task = NextTokenTask(BatchLoader(data, block_size=32), data, small_tok, cfg)
    with torch.no_grad():
        want = task.evaluate(model, max_batches=2)["val_loss"]  # 2 batches of 16: the same 32 windows
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    assert 0 < got["loss_se"] < 0.05 * got["loss"]
    windows = min(32, (len(data.corpora[0].val) - 1) // 32)
    assert windows >= 16 and got["heldout_tokens"] == windows * 32
    assert 0 < got["bits_per_byte"] < got["loss"] / math.log(2)  # more than one byte per token


def test_unigram_loss_is_what_a_model_of_token_frequencies_measures(tmp_path, small_tok):
    """The baseline is `heldout`'s own measurement of a model whose logits are log p, p the mixture's token
    frequencies: every weight zero, ln_f's bias a unit vector, the tied embedding's first column log p."""
    (tmp_path / "a.txt").write_text("Hello! How are you? I am fine, thank you. " * 3000)
    (tmp_path / "b.txt").write_text("Why did the chicken cross the road? Tell me a joke. " * 1500)
    cfg = load_pretrain_config("tiny", [f"data.cache_dir={tmp_path}/cache", "model.block_size=32"],
                               data_paths=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")])
    data = prepare_data(cfg.data, small_tok, block_size=32, show_progress=False)
    assert len(data.corpora) == 2
    p = np.zeros(small_tok.vocab_size)
    for c in data.corpora:
        n = np.bincount(np.asarray(c.train[0: len(c.train)]), minlength=small_tok.vocab_size) + 0.5
        p += c.weight / sum(d.weight for d in data.corpora) * n / n.sum()
    model = GPT(tiny_config(vocab_size=small_tok.vocab_size, block_size=32)).eval()
    with torch.no_grad():
        for w in model.parameters():
            w.zero_()
        model.ln_f.bias[0] = 1.0
        model.wte.weight[:, 0] = torch.from_numpy(np.log(p))
    want = heldout(model, small_tok, cfg, windows=16)
    got = unigram_loss(small_tok, cfg, windows=16)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["per_corpus"] == pytest.approx(want["per_corpus"], rel=1e-5)
    assert 0 < got["loss"] < math.log(small_tok.vocab_size)


def test_runs_not_below_the_unigram_loss_are_named_in_the_prediction(tmp_path):
    law = PowerLaw(a=40.0, b=-0.1, c=1.5)
    write_runs(tmp_path / "runs.jsonl", law, list(np.geomspace(1e10, 1e12, 5)))
    first_two = float(law(np.geomspace(1e10, 1e12, 5)[1]))
    (tmp_path / "unigram.json").write_text(json.dumps({"loss": first_two - 1e-9, "per_corpus": {}}))
    base = load_pretrain_config("tiny", ["model.vocab_size=4096"])
    lines: list[str] = []
    pred = register_prediction(tmp_path, member(base, 256, tokens_per_param(base)), tmp_path / "t" / "p.json",
                               log=lines.append)
    assert pred["runs_above_unigram"] == ["r0", "r1"] and pred["unigram_loss"] == pytest.approx(first_two)
    assert any(ln.startswith("warning: r0, r1 not below the unigram loss") for ln in lines)
    c = {"interval": [1.0, 2.0], "predicted_loss": 1.5, "actual_loss": 1.6, "actual_loss_se": 0.01,
         "relative_error": -0.06, "extrapolation": 10.0, "registered": "now", "code_version": "abc",
         "unigram_loss": pred["unigram_loss"], "runs_above_unigram": pred["runs_above_unigram"]}
    assert "small runs not below it: r0, r1" in comparison_md(c, "s.png")


def write_runs(path: Path, law: PowerLaw, compute: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"name": f"r{i}", "compute": c, "loss": float(law(c))}) + "\n"
                            for i, c in enumerate(compute)))


def test_a_registered_prediction_is_never_replaced_by_a_later_fit(tmp_path):
    law = PowerLaw(a=40.0, b=-0.1, c=1.5)
    write_runs(tmp_path / "runs.jsonl", law, list(np.geomspace(1e10, 1e12, 5)))
    base = load_pretrain_config("tiny", ["model.vocab_size=4096"])
    target = member(base, 256, tokens_per_param(base))
    first = register_prediction(tmp_path, target, tmp_path / "t" / "prediction.json", log=lambda *a: None)
    assert first["predicted_loss"] == pytest.approx(float(law(target.compute)), rel=1e-3)
    lo, hi = first["interval"]
    assert lo <= first["predicted_loss"] <= hi
    assert first["target"]["compute"] == target.compute and first["code_version"] and first["time"]
    saved = (tmp_path / "t" / "prediction.json").read_bytes()
    write_runs(tmp_path / "runs.jsonl", PowerLaw(a=80.0, b=-0.2, c=1.0), list(np.geomspace(1e10, 1e12, 5)))
    again = register_prediction(tmp_path, target, tmp_path / "t" / "prediction.json", log=lambda *a: None)
    assert again == first and (tmp_path / "t" / "prediction.json").read_bytes() == saved


def test_capability_law_keeps_problems_every_run_solves_and_recovers_the_law():
    alpha, k, n = 50.0, 0.15, 10**6
    compute = list(np.geomspace(1e10, 1e12, 5))
    scale = np.array([0.5, 1.0, 1.5, 1.0])  # per-problem difficulty, mean 1: -mean log pass = alpha C^-k
    rows = []
    for c in compute:
        solved = [int(round(n * math.exp(-alpha * c ** -k * s))) for s in scale] + [0 if c < 1e11 else 5]
        rows.append({"compute": c, "samples": n, "solved": solved})
    fit = capability_fit(rows, 1e14)
    assert fit["kept"] == [0, 1, 2, 3]  # the last problem: some runs never solve it
    assert fit["k"] == pytest.approx(k, rel=1e-3) and fit["alpha"] == pytest.approx(alpha, rel=1e-2)
    assert fit["predicted_pass_rate"] == pytest.approx(math.exp(-alpha * 1e14 ** -k), rel=1e-3)


# ---- kill -9 -------------------------------------------------------------------------------------------------------


def sweep_cmd(tmp_path: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "gptrecipe", "scale", "sweep", "--data", str(tmp_path / "corpus.txt"),
            "--name", name, "--out-dir", str(tmp_path), "--compute", "9e7", "1e9", "--runs", "4",
            *tiny_recipe(**{"tokenizer.path": tmp_path / "tok.json", "data.cache_dir": tmp_path / "cache"})]


def latest(run_dir: Path) -> int:
    f = run_dir / "checkpoints" / "latest"
    return int(f.read_text().strip().removeprefix("step_")) if f.exists() else 0


def test_kill_9_sweep_continues_the_run_it_was_in(tmp_path):
    (tmp_path / "corpus.txt").write_text("Hello! How are you? I am fine, thank you. What is AI? " * 300)
    done = subprocess.run(sweep_cmd(tmp_path, "straight"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("] d0") == 4  # a progress line per run
    straight = [json.loads(x) for x in (tmp_path / "straight" / "runs.jsonl").read_text().splitlines()]
    plan_ = json.loads((tmp_path / "straight" / "sweep.json").read_text())["plan"]
    last = tmp_path / "killed" / plan_[-1]["name"]  # killed inside the last (longest) run, after a checkpoint
    proc = subprocess.Popen(sweep_cmd(tmp_path, "killed"), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not 0 < latest(last) < plan_[-1]["steps"]:
            assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = latest(last)
    rows_before = (tmp_path / "killed" / "runs.jsonl").read_text().splitlines()
    assert len(rows_before) == 3
    again = subprocess.run(sweep_cmd(tmp_path, "killed"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before") == 3  # the finished runs are not trained again
    events = [json.loads(x) for x in (last / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "start"] == [0, killed_at]  # resumed, not restarted
    assert [e["step"] for e in events if "loss" in e] == list(range(1, plan_[-1]["steps"] + 1))
    resumed = [json.loads(x) for x in (tmp_path / "killed" / "runs.jsonl").read_text().splitlines()]
    assert len(resumed) == len(straight) == 4
    for a, b in zip(resumed, straight, strict=True):
        assert {k: v for k, v in a.items() if k not in ("seconds", "loss", "loss_se", "bits_per_byte")} == \
               {k: v for k, v in b.items() if k not in ("seconds", "loss", "loss_se", "bits_per_byte")}
        for key in ("loss", "loss_se", "bits_per_byte"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


@pytest.mark.parametrize("completion, target, ok", [(" green", "green", True), (" Green, iron ->", "green", True),
                                                    (" greenish", "green", False), ("", "green", False),
                                                    (" a b c", "a b c", True), (" a b", "a b c", False)])
def test_a_completion_solves_when_its_first_words_are_the_target(completion, target, ok):
    assert solves(completion, target) is ok


def test_predict_registers_first_then_trains_the_recipes_own_run_and_compares(tmp_path):
    (tmp_path / "corpus.txt").write_text("Hello! How are you? I am fine, thank you. What is AI? " * 300)
    recipe = tiny_recipe(**{"tokenizer.path": tmp_path / "tok.json", "data.cache_dir": tmp_path / "cache",
                            "train.max_steps": 60, "train.warmup_steps": 6})
    cfg = SweepConfig(name="sw", out_dir=str(tmp_path), overrides=recipe, data_paths=[str(tmp_path / "corpus.txt")],
                      compute=[1.5e7, 1.6e8], runs=4, heldout_windows=8, capability=True, capability_samples=2,
                      seeds=2)
    rows = run_sweep(cfg, log=lambda *a: None)
    assert len(rows) == 7 and all(len(r["solved"]) == 32 and r["samples"] == 2 for r in rows)
    widths = [r for r in rows if r["seed"] == 1337]  # each run below the largest twice (seeds 1337, 1338)
    assert [r["name"] for r in rows] == [n for w in widths[:-1] for n in (w["name"], w["name"] + "-s1")] + \
        [widths[-1]["name"]]
    for w, twin in zip(widths, [r for r in rows if r["seed"] == 1338], strict=False):
        same = ("n_embd", "steps", "warmup_steps", "batch_rows", "params", "tokens", "compute")
        assert [twin[k] for k in same] == [w[k] for k in same]
        assert twin["loss"] != w["loss"]  # another initialization and data order: another loss
    c = predict(tmp_path / "sw", log=lambda *a: None)
    target = tmp_path / "sw" / "target"
    pred = json.loads((target / "prediction.json").read_text())
    assert pred["target"]["steps"] == 60 and pred["target"]["n_embd"] == 32  # the recipe's own run
    assert (target / "prediction.json").stat().st_mtime <= (target / "metrics.jsonl").stat().st_mtime
    assert c["extrapolation"] >= 10 and c["predicted_loss"] == pred["predicted_loss"]
    assert c["relative_error"] == pytest.approx(c["predicted_loss"] / c["actual_loss"] - 1)
    assert "capability" in c and (target / "scaling.png").stat().st_size > 0
    saved = json.loads((target / "comparison.json").read_text())
    assert saved["actual_loss"] == c["actual_loss"] and 0 < saved["actual_loss"] < math.log(300) + 1
