"""The main job's code path end to end, shrunk to seconds: every stage runs and the report says so."""

from gptrecipe.pipeline import run_pipeline

QUIET = ["train.progress=false"]


def test_main_job_runs_every_stage_and_writes_the_report(tmp_path):
    corpus = tmp_path / "dialogues.txt"
    corpus.write_text("A: Hello, how are you?\nB: I am fine, thank you. It is good to see you.\n\n" * 300)
    report = run_pipeline(
        "tiny",
        ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=64", "tokenizer.vocab_size=320",
         "train.max_steps=6", "train.eval_every=3", "train.eval_batches=1", "train.checkpoint_every=6",
         "train.sample_every=6", "sample.max_new_tokens=8", f"data.cache_dir={tmp_path}/cache", *QUIET],
        name="mini", out_dir=str(tmp_path), rank_prompts=12, data_paths=[str(corpus)],
        sft_overrides=["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4", "train.sample_every=4",
                       "sample.max_new_tokens=8", *QUIET],
        rm_overrides=["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4", *QUIET],
        ppo_overrides=["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4", "train.sample_every=4",
                       "rollout_batch=8", "minibatches=2", "ppo_epochs=1", "val_prompts=4", "max_new_tokens=6",
                       *QUIET],
        eval_overrides=["synthetic.tasks_per_family=8", "corpus_max_tokens=2048", "progress=false"],
        log=lambda *a: None)
    text = report.read_text()
    for needle in ("| tokenizer |", "| pretrain |", "| in-context learning |", "| sft |", "| reward model |", "| ppo |",
                   "| gold check |", "In-context learning", "Chat replies of the SFT model", "RLHF (PPO) curves"):
        assert needle in text, needle
    root = tmp_path / "mini"
    for f in ("pretrain/loss.png", "eval/icl.png", "eval/report.md", "eval-mapping/report.md", "sft/loss.png",
              "rlhf/round1/ppo/ppo.png",
              "rlhf/round1/rm/report.md", "rlhf/rankings.jsonl", "rlhf/round1/ppo/policy/model.safetensors"):
        assert (root / f).exists(), f
