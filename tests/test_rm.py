import json
import math

import numpy as np
import pytest
import torch

from gptrecipe.checkpoint import CheckpointError, load_checkpoint
from gptrecipe.data.readers import DataError
from gptrecipe.model import GPT
from gptrecipe.rm import (
    RankingTask,
    RewardEncoder,
    RewardModel,
    RMConfig,
    listwise_loss,
    pairwise_loss,
    read_rankings,
    score,
    train_reward_model,
)
from gptrecipe.train import TrainConfig, train
from tests.conftest import assert_resume_is_exact, save_stage_checkpoint, tiny_config, write_rankings


def lsig(x: float) -> float:
    return math.log(1 / (1 + math.exp(-x)))


def test_pairwise_loss_hand_computed():
    r = torch.tensor([2.0, 1.0, 0.0])  # best first: pairs (2,1) (2,0) (1,0)
    assert pairwise_loss(r).item() == pytest.approx(-(lsig(1) + lsig(2) + lsig(1)) / 3, abs=1e-6)
    two = torch.tensor([0.5, -0.5])
    assert pairwise_loss(two).item() == pytest.approx(-lsig(1.0), abs=1e-6)


def test_listwise_loss_is_plackett_luce():
    a, b, c = 1.0, 0.2, -0.5
    p = (math.exp(a) / (math.exp(a) + math.exp(b) + math.exp(c))) * (math.exp(b) / (math.exp(b) + math.exp(c)))
    assert listwise_loss(torch.tensor([a, b, c])).item() == pytest.approx(-math.log(p), abs=1e-6)


def test_read_rankings_formats_and_errors(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"prompt": "q", "responses": ["a", "b", "c"]}) + "\n"
                 + json.dumps({"prompt": "q2", "chosen": "x", "rejected": "y"}) + "\n")
    rs = read_rankings(p)
    assert rs[0].responses == ["a", "b", "c"] and rs[1].responses == ["x", "y"]
    p.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"]}) + "\n" + '{"prompt": "q", "chosen": 3}\n')
    with pytest.raises(DataError, match="r.jsonl: line 2: expected 'responses'"):
        read_rankings(p)
    p.write_text('{"prompt": "q", "responses": ["only one"]}\n')
    with pytest.raises(DataError, match="line 1: 'responses' must be a list of at least 2"):
        read_rankings(p)


def test_reward_is_read_at_the_readout_token_whatever_the_padding(small_tok):
    torch.manual_seed(0)
    model = RewardModel(tiny_config(vocab_size=small_tok.vocab_size)).eval()
    enc = RewardEncoder(small_tok, 64)
    short, long = enc.ids("Hello!", "Hi."), enc.ids("What is AI?", "Artificial intelligence is the study.")
    assert short[-1] == small_tok.id_of("<|reward|>") and short[-2] == small_tok.id_of("<|end|>")
    together = model(*enc.batch([short, long]))
    alone = model(*enc.batch([short]))
    torch.testing.assert_close(together[0], alone[0], rtol=0, atol=1e-5)
    assert score(model, enc, ["Hello!"], ["Hi."])[0] == pytest.approx(alone[0].item(), abs=1e-5)
    assert len(enc.ids("x " * 500, "y " * 500)) == 64  # cut to the context, readout kept


def toy_rankings(n: int, seed: int = 0):
    """Separable preference: a response with 'good' beats one with 'bad' (K = 4 with 2 of each)."""
    from gptrecipe.rm import Ranking

    rng = np.random.default_rng(seed)
    words = ["you", "are", "thank", "hello", "fine", "what", "is", "the", "machine", "think"]
    out = []
    for _ in range(n):
        filler = lambda: " ".join(rng.choice(words, 4))  # noqa: E731
        out.append(Ranking(filler(), [f"{filler()} good", f"good {filler()}", f"{filler()} bad", f"bad {filler()}"]))
    return out


def test_rm_learns_a_separable_preference(small_tok, tmp_path):
    torch.manual_seed(0)
    model = RewardModel(tiny_config(vocab_size=small_tok.vocab_size))
    task = RankingTask(toy_rankings(200), toy_rankings(100, seed=1), RewardEncoder(small_tok, 64), "pairwise", 0)
    cfg = TrainConfig(max_steps=60, micro_batch_size=8, lr=3e-3, warmup_steps=5, eval_every=30, checkpoint_every=0,
                      device="cpu", progress=False, dtype="fp32")
    res = train(model, task, cfg, tmp_path)
    assert res.evals[0]["val_accuracy"] < 0.8 and res.evals[-1]["val_accuracy"] > 0.9


def test_train_reward_model_end_to_end_and_mean_zero(small_tok, tmp_path):
    torch.manual_seed(0)
    sft = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    save_stage_checkpoint(tmp_path / "sft", sft, small_tok)
    data = tmp_path / "rankings.jsonl"
    write_rankings(data, toy_rankings(60))
    cfg = RMConfig(out_dir=str(tmp_path), init=str(tmp_path / "sft"), data=str(data),
                   train=TrainConfig(max_steps=40, micro_batch_size=8, lr=3e-3, warmup_steps=5, eval_every=20,
                                     checkpoint_every=20, device="cpu", progress=False, dtype="fp32"))
    res = train_reward_model(cfg, log=lambda *a: None)
    assert res.evals[-1]["val_accuracy"] > 0.9
    rm = load_checkpoint(tmp_path / "rm", expect=RewardModel)
    model, enc = rm.model.eval(), RewardEncoder(rm.tokenizer, 64)
    with pytest.raises(CheckpointError, match="not a language model"):
        load_checkpoint(tmp_path / "rm")  # a reward model is not a GPT to sample from
    rs = toy_rankings(60)
    order = np.random.default_rng(1337).permutation(60)
    train_set = [rs[i] for i in order[6:]]
    rewards = score(model, enc, [r.prompt for r in train_set for _ in r.responses],
                    [x for r in train_set for x in r.responses])
    assert abs(np.mean(rewards)) < 1e-3  # normalised: SFT responses average 0
    assert (tmp_path / "rm" / "report.md").exists()


def test_rm_resume_is_exact(small_tok, tmp_path):
    """A reward-model run killed at a checkpoint and resumed gives the losses of the uninterrupted run."""
    torch.manual_seed(0)
    sft = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    save_stage_checkpoint(tmp_path / "sft", sft, small_tok)
    data = tmp_path / "rankings.jsonl"
    write_rankings(data, toy_rankings(40))

    def cfg(name: str, steps: int) -> RMConfig:
        return RMConfig(name=name, out_dir=str(tmp_path), init=str(tmp_path / "sft"), data=str(data),
                        train=TrainConfig(max_steps=steps, micro_batch_size=4, lr=3e-3, warmup_steps=2, eval_every=0,
                                          checkpoint_every=4, device="cpu", progress=False, dtype="fp32"))

    assert_resume_is_exact(lambda name, resume: train_reward_model(cfg(name, 8), resume=resume, log=lambda *a: None),
                           tmp_path)
