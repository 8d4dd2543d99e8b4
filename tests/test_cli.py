"""End to end through the command line: tokenizer -> pretrain -> sample -> resume, and bad inputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gptrecipe.cli import main

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "plays.txt").write_text(TEXT * 120)
    with open(d / "more.jsonl", "w") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"Line {i}: the king is dead, long live the king.\n"}) + "\n")
    return d


def pretrain_args(tmp: Path, corpus: Path, steps: int, *extra: str) -> list[str]:
    return ["pretrain", "--config", "tiny", "--data", str(corpus / "plays.txt"), str(corpus / "more.jsonl"),
            f"out_dir={tmp}", "name=cli", f"tokenizer.path={tmp}/tok/tokenizer.json", "tokenizer.vocab_size=320",
            "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64",
            f"train.max_steps={steps}", "train.micro_batch_size=8", "train.eval_every=10", "train.eval_batches=2",
            "train.checkpoint_every=10", "train.warmup_steps=5", "train.lr=3e-3", "train.progress=false",
            f"data.cache_dir={tmp}/cache", "sample.max_new_tokens=16", *extra]


def test_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for stage in ("tokenizer", "pretrain", "sample", "run"):
        assert stage in out


def test_pretrain_sample_resume(tmp_path, corpus, capsys):
    assert main(pretrain_args(tmp_path, corpus, 20)) == 0
    run = tmp_path / "cli"
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < 6.0
    assert {"val/plays", "val/more"} <= set(evals[-1])
    assert (run / "loss.png").stat().st_size > 1000 and "Pretraining run" in (run / "report.md").read_text()
    ckpt = run / "checkpoints" / "step_0000020"
    assert (ckpt / "tokenizer.json").exists() and (ckpt / "model.safetensors").exists()

    capsys.readouterr()
    assert main(["sample", str(run), "-p", "First Citizen:", "-n", "12", "--seed", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("First Citizen:") and len(out) > len("First Citizen:")

    assert main(pretrain_args(tmp_path, corpus, 30, "--resume")) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == list(range(1, 31))


def test_malformed_jsonl_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    code = main(["pretrain", "--data", str(bad), f"out_dir={tmp_path}", f"tokenizer.path={tmp_path}/t.json",
                 "tokenizer.vocab_size=300"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl" in err and "line 2" in err


def test_unknown_override_is_a_clear_error(capsys):
    assert main(["pretrain", "train.learning_rate=1"]) == 2
    assert "unknown config key 'train.learning_rate'" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "gptrecipe", "pretrain", "--model", "gpt3-175b", "--print-config"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "n_embd = 12288" in out.stdout


def test_pretrain_under_torchrun_two_processes(tmp_path, corpus):
    """`torchrun -m gptrecipe pretrain`: rank 0 tokenizes first, both train with DDP (gloo), rank 0 reports."""
    args = pretrain_args(tmp_path, corpus, 4, "train.eval_every=4", "train.checkpoint_every=4")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "gptrecipe", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["world_size"] == 2 and [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert (tmp_path / "cli" / "report.md").exists()


def test_invalid_model_config_is_a_one_line_error():
    """GPTConfig's own checks (the attention schedule) fail when the config loads: one line naming the key."""
    out = subprocess.run([sys.executable, "-m", "gptrecipe", "pretrain", "model.attention=dense,bogus(3)",
                          "--print-config"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("gptrecipe pretrain: error: model.attention: unknown kind 'bogus(3)'")


def test_run_passes_each_stage_its_overrides(monkeypatch, tmp_path, capsys):
    import gptrecipe.pipeline

    jobs = []

    def fake_run(job):
        jobs.append(job)
        (tmp_path / "report.md").write_text("# report\n")
        return tmp_path / "report.md"

    monkeypatch.setattr(gptrecipe.pipeline, "run_pipeline", fake_run)
    assert main(["run", "--name", "x", "train.max_steps=5", "sft.train.max_steps=3", "--out-dir", str(tmp_path),
                 "rm.loss=listwise", "ppo.beta=0.1", "eval.max_items=4", "--rank-prompts", "7"]) == 0
    (job,) = jobs
    assert (job.name, job.out_dir, job.rank_prompts, job.overrides) == ("x", str(tmp_path), 7, ["train.max_steps=5"])
    assert (job.sft_overrides, job.rm_overrides, job.ppo_overrides, job.eval_overrides) == (
        ["train.max_steps=3"], ["loss=listwise"], ["beta=0.1"], ["max_items=4"])
    assert "# report" in capsys.readouterr().out


def test_run_help_names_every_stage(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("tokenizer", "pretrain", "in-context learning", "SFT", "rank", "reward model", "PPO",
                  "report.md", "STAGE.KEY=VALUE", "sft.train.max_steps"):
        assert words in out, words
