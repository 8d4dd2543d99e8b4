"""The main job's code path end to end, shrunk to seconds: every stage runs and the report says so."""

import pytest

from gptrecipe import pipeline
from gptrecipe.config import ConfigError
from gptrecipe.pipeline import PipelineConfig, run_pipeline, split_overrides
from gptrecipe.rm import load_rm_config

QUIET = ["train.progress=false"]


def test_main_job_runs_every_stage_and_writes_the_report(tmp_path):
    corpus = tmp_path / "dialogues.txt"
    corpus.write_text("A: Hello, how are you?\nB: I am fine, thank you. It is good to see you.\n\n" * 300)
    report = run_pipeline(PipelineConfig(
        overrides=["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=64",
                   "tokenizer.vocab_size=320", "train.max_steps=6", "train.eval_every=3", "train.eval_batches=1",
                   "train.checkpoint_every=6", "train.sample_every=6", "sample.max_new_tokens=8",
                   f"data.cache_dir={tmp_path}/cache", *QUIET],
        name="mini", out_dir=str(tmp_path), rank_prompts=12, data_paths=[str(corpus)],
        sft_overrides=["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4", "train.sample_every=4",
                       "sample.max_new_tokens=8", "tool_conversations=24", *QUIET], tool_questions=6,
        rm_overrides=["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4", *QUIET],
        ppo_overrides=["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4", "train.sample_every=4",
                       "rollout_batch=8", "minibatches=2", "ppo_epochs=1", "val_prompts=4", "max_new_tokens=6",
                       *QUIET],
        eval_overrides=["synthetic.tasks_per_family=8", "corpus_max_tokens=2048", "progress=false"],
        ape_overrides=["synthetic.tasks_per_family=1", "seeds=[0]", "subsets=2", "per_subset=2", "max_new_tokens=6"],
        scale_overrides=["lo=0.01", "hi=0.25", "heldout_windows=4"]),
        log=lambda *a: None)
    text = report.read_text()
    for needle in ("| tokenizer |", "| pretrain |", "| in-context learning |", "| sft |", "| reward model |", "| ppo |",
                   "| gold check |", "| scaling |", "Predictable scaling", "| automatic prompt engineering |",
                   "## Automatic prompt engineering",
                   "In-context learning", "Chat replies of the SFT model", "RLHF (PPO) curves",
                   "| tool use | held-out exact match with / without the toolset: calculator", "## Tool use (LaMDA)"):
        assert needle in text, needle
    root = tmp_path / "mini"
    for f in ("scaling/prediction.json", "scaling/comparison.json", "scaling/scaling.png", "scaling/runs.jsonl",
              "pretrain/loss.png", "eval/icl.png", "ape/ape.png", "ape/report.md",
              "eval/report.md", "eval-mapping/report.md", "sft/loss.png",
              "rlhf/round1/ppo/ppo.png",
              "rlhf/round1/rm/report.md", "rlhf/rankings.jsonl", "rlhf/round1/ppo/checkpoints/latest"):
        assert (root / f).exists(), f


class Stop(Exception):
    pass


def test_stage_prefixed_overrides_reach_each_stage(monkeypatch, tmp_path):
    """`STAGE.KEY=VALUE` reaches that stage's config through run_pipeline (stages replaced by recorders)."""
    seen: dict[str, list] = {}

    def record(stage: str, stop: bool = False):
        def fake(cfg, *args, **kw):
            seen.setdefault(stage, []).append(cfg)
            if stop:
                raise Stop
        return fake

    for name in ("get_tokenizer", "corpus_compression", "load_tasks", "label_set_baseline"):
        monkeypatch.setattr(pipeline, name, lambda *a, **kw: None)
    for name in ("pretrain", "run_eval", "sft", "ape"):
        monkeypatch.setattr(pipeline, name, record(name))
    monkeypatch.setattr(pipeline, "run_rlhf", record("rlhf", stop=True))
    routed = split_overrides(["train.max_steps=5", "pretrain.model.n_layer=1", "eval.max_items=4",
                              "sft.train.max_steps=3", "rm.loss=listwise", "--ppo.beta=0.1", "name=a.b",
                              "scale.runs=0", "ape.seeds=[3]"])
    assert routed == {"overrides": ["train.max_steps=5", "model.n_layer=1", "name=a.b"], "eval_overrides":
                      ["max_items=4"], "sft_overrides": ["train.max_steps=3"], "rm_overrides": ["loss=listwise"],
                      "ppo_overrides": ["beta=0.1"], "scale_overrides": ["runs=0"], "ape_overrides": ["seeds=[3]"]}
    with pytest.raises(Stop):
        run_pipeline(PipelineConfig(out_dir=str(tmp_path), **routed), log=lambda *a: None)
    (pre,), (sft,), (rlhf,) = seen["pretrain"], seen["sft"], seen["rlhf"]
    assert (pre.train.max_steps, pre.model.n_layer, sft.train.max_steps) == (5, 1, 3)
    assert [c.max_items for c in seen["run_eval"]] == [4, 4]  # both in-context evaluations
    (ape_cfg,) = seen["ape"]
    assert ape_cfg.seeds == [3] and ape_cfg.proposer.model == str(pre.run_dir)
    assert ape_cfg.run_dir == tmp_path / "speedrun" / "ape"
    assert load_rm_config(rlhf.rm_preset, rlhf.rm_overrides).loss == "listwise" and rlhf.ppo_overrides == ["beta=0.1"]


def test_a_bad_later_stage_override_fails_before_pretraining(monkeypatch):
    monkeypatch.setattr(pipeline, "get_tokenizer", lambda *a, **kw: pytest.fail("the job started"))
    with pytest.raises(ConfigError, match="ppo: unknown config key 'bogus'"):
        run_pipeline(PipelineConfig(ppo_overrides=["bogus=1"]))


def test_a_bad_scaling_range_fails_before_anything_runs(monkeypatch):
    monkeypatch.setattr(pipeline, "get_tokenizer", lambda *a, **kw: pytest.fail("the job started"))
    with pytest.raises(ConfigError, match="^scale: scale.lo, scale.hi: need 0 < lo < hi"):
        run_pipeline(PipelineConfig(scale_overrides=["lo=0.5", "hi=0.1"]))
