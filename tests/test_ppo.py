import dataclasses
import json
import math

import pytest
import torch

from gptrecipe.checkpoint import load_checkpoint
from gptrecipe.model import GPT
from gptrecipe.ppo import AdaptiveKL, PPOConfig, gae, kl_rewards, policy_loss, ppo, value_loss, whiten
from gptrecipe.rm import RMConfig, train_reward_model
from gptrecipe.train import TrainConfig, train
from tests.conftest import save_stage_checkpoint, tiny_config, write_rankings


def test_per_token_kl_reward_with_score_on_the_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = kl_rewards(logp, ref, torch.tensor([2.0, 3.0]), mask, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, 0.0, 2.1], [-0.05, 3.0, 0.0]]))
    # responses after a prompt (mask starts later, as PPOTask.sequences lays it out): the score goes on the last
    # response column, never into the prompt where GAE would zero it
    late = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0]])
    r = kl_rewards(torch.zeros(2, 5), torch.zeros(2, 5), torch.tensor([2.0, 3.0]), late, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0]]))


def test_gae_hand_computed_and_zero_past_the_end():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), discount=1.0, lam=0.9)
    torch.testing.assert_close(adv, torch.tensor([[2.149, 1.61, 1.9]]))
    torch.testing.assert_close(ret, torch.tensor([[2.649, 1.81, 2.0]]))
    # a 2-token response padded to 3: nothing past its end, as many non-zero advantages as tokens
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.5, 0.2, 0.0]]), mask, 1.0, 0.9)
    torch.testing.assert_close(adv, torch.tensor([[1.0 + 0.2 - 0.5 + 0.9 * 1.8, 1.8, 0.0]]))
    assert int((adv != 0).sum()) == int(mask.sum())
    w = whiten(torch.tensor([[1.0, 3.0, 99.0]]), mask)
    torch.testing.assert_close(w, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4, rtol=0)


def test_clipped_policy_and_value_losses():
    logp_old = torch.zeros(1, 2)
    logp = torch.full((1, 2), math.log(1.5))  # ratio 1.5, outside 1 +- 0.2
    mask = torch.ones(1, 2)
    loss, clipped = policy_loss(logp, logp_old, torch.tensor([[1.0, -1.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(-1.2 + 1.5) and clipped.item() == 2.0  # pessimistic side each time (sums)
    loss, clipped = policy_loss(logp_old, logp_old, torch.tensor([[1.0, -1.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(0.0) and clipped.item() == 0.0  # ratio 1 at the first update
    v = value_loss(torch.tensor([[1.0, 9.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 0.0]]),
                   torch.tensor([[1.0, 0.0]]), 0.2)
    assert v.item() == pytest.approx(0.5 * max(1.0, 0.7**2))  # the masked token adds nothing


def test_adaptive_kl_controller():
    c = AdaptiveKL(0.1, target=6.0, horizon=100)
    c.update(12.0, 10)  # KL twice the target: error clipped to +0.2
    assert c.beta == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    c2 = AdaptiveKL(0.1, target=0.0, horizon=100)
    c2.update(50.0, 10)
    assert c2.beta == 0.1  # fixed


def short_is_better(n: int):
    """A preference a policy can act on at once: shorter replies are better, and the best is always "fine" (best
    first: "fine", then 3, 6, 10 random words), so the policy the reward model favours is a sharp one."""
    import numpy as np

    from gptrecipe.rm import Ranking

    rng = np.random.default_rng(0)
    words = ["you", "are", "thank", "hello", "fine", "what", "is", "the", "machine", "think"]
    return [Ranking(f"hello {i} what is the machine",
                    ["fine"] + [" ".join(rng.choice(words, k)) for k in (3, 6, 10)]) for i in range(n)]


@pytest.fixture(scope="module")
def sft_and_rm(small_tok, tmp_path_factory):
    """A tiny SFT checkpoint and a reward model trained on a separable toy preference (short > long)."""
    tmp_path = tmp_path_factory.mktemp("ppo")
    torch.manual_seed(0)
    sft = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    # a real (if tiny) SFT model: replies of 1 to 10 words that end with <|end|>, so PPO has behaviour to shift
    from gptrecipe.chat import ChatTemplate, Message
    from gptrecipe.sft import MaskedLMTask, render_all

    chats = [[Message("user", r.prompt), Message("assistant", resp)]
             for r in short_is_better(60) for resp in r.responses]
    rows, _ = render_all(ChatTemplate(small_tok), chats, 64)
    train(sft, MaskedLMTask(rows, rows[:8], small_tok.id_of("<|pad|>"), 0, 64), TrainConfig(
        max_steps=60, micro_batch_size=16, lr=1e-2, warmup_steps=5, eval_every=0, checkpoint_every=0, **QUIET),
        tmp_path / "sft_run")
    save_stage_checkpoint(tmp_path / "sft", sft, small_tok)
    ranks = tmp_path / "rankings.jsonl"
    write_rankings(ranks, short_is_better(120))
    train_reward_model(RMConfig(out_dir=str(tmp_path), init=str(tmp_path / "sft"), data=str(ranks),
                                train=TrainConfig(max_steps=40, micro_batch_size=8, lr=3e-3, warmup_steps=5,
                                                  eval_every=40, checkpoint_every=40, **QUIET)),
                       log=lambda *a: None)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"hello {i} what is the machine" for i in range(40)))
    return tmp_path


QUIET = dict(device="cpu", progress=False, dtype="fp32")


def ppo_cfg(base, out, target_kl: float = 0.0, **train) -> PPOConfig:
    t = dict(max_steps=80, micro_batch_size=8, lr=1e-2, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0,
             eval_every=80, checkpoint_every=40, **QUIET)
    t.update(train)
    return PPOConfig(out_dir=str(out), sft=str(base / "sft"), rm=str(base / "rm"), prompts=str(base / "prompts.txt"),
                     val_prompts=8, rollout_batch=16, minibatches=2, ppo_epochs=2, max_new_tokens=8, beta=0.02,
                     target_kl=target_kl, kl_horizon=100, gold_labeler="builtin:positivity", train=TrainConfig(**t))


def test_ppo_raises_reward_with_bounded_kl(sft_and_rm, tmp_path):
    """Three seeds (each one stands for another CPU's rounding): the RM score rises in each, the KL to the SFT model
    stays bounded, and the replies move to what the RM favours (short ones). Seeds 0-5 on an AMD Zen 3
    (2026-12-03): rise 3.5-4.2, KL 2.9-10.6 (mean of any 3 in a row <= 5.9), reply length 4.8-5.2 -> 0.2-2.6
    tokens (ratio <= 0.51; mean of any 3 in a row <= 0.33). The reply entropy, asserted before, fell on a Zen 5
    (ratio 0.17-0.57) but not on this Zen 3 (0.12-1.41): the policy can also spread over several short replies."""
    kls, shrink = [], []
    for seed in (0, 1, 2):
        cfg = dataclasses.replace(ppo_cfg(sft_and_rm, tmp_path / str(seed), max_steps=80, seed=seed), beta=0.05,
                                  truncation_penalty=-10.0, val_prompts=32, rollout_batch=32)
        res = ppo(cfg, log=lambda *a: None)
        first, last = res.evals[0], res.evals[-1]
        assert last["val_rm_score"] > first["val_rm_score"] + 0.5, (seed, first, last)
        assert last["val_kl"] < 20.0, (seed, last)
        kls.append(last["val_kl"])
        shrink.append(last["val_response_len"] / first["val_response_len"])
    assert sum(kls) / 3 < 10.0, kls
    assert sum(shrink) / 3 < 0.6, shrink
    rows = [json.loads(x) for x in (tmp_path / "0" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if r.get("step") == 1 and "loss" in r)
    assert step1["clip_frac"] == 0.0 and abs(step1["approx_kl_old"]) < 1e-5  # no dropout: ratio exactly 1
    assert {"rm_score", "kl", "entropy", "policy_loss", "value_loss", "response_len"} <= set(step1)
    policy = load_checkpoint(tmp_path / "0" / "ppo")  # the run's checkpoint loads as the policy
    assert isinstance(policy.model, GPT) and policy.meta.stage == "ppo"
    assert not (tmp_path / "0" / "ppo" / "policy").exists()


def test_ppo_resume_is_exact_and_keeps_the_kl_coefficient(sft_and_rm, tmp_path):
    kw = dict(target_kl=1.0, checkpoint_every=4, eval_every=0)  # adaptive KL: beta must survive the resume
    straight = ppo(ppo_cfg(sft_and_rm, tmp_path / "a", max_steps=12, **kw), log=lambda *a: None)
    ppo(ppo_cfg(sft_and_rm, tmp_path / "b", max_steps=8, **kw), log=lambda *a: None)
    resumed = ppo(ppo_cfg(sft_and_rm, tmp_path / "b", max_steps=12, **kw), resume=True, log=lambda *a: None)
    assert sorted(resumed.losses) == list(range(1, 13))  # 1-8 taken back from metrics.jsonl, 9-12 trained again
    for s in range(1, 13):
        assert resumed.losses[s] == pytest.approx(straight.losses[s], abs=1e-5), s
    with pytest.raises(Exception, match="multiple of the updates per rollout"):
        ppo(ppo_cfg(sft_and_rm, tmp_path / "c", checkpoint_every=3), log=lambda *a: None)


def test_ppo_ptx_mixes_in_the_pretraining_loss(sft_and_rm, tmp_path):
    text = tmp_path / "pretrain.txt"
    text.write_text("hello what is the machine, thank you. " * 400)
    cfg = dataclasses.replace(ppo_cfg(sft_and_rm, tmp_path, max_steps=4, checkpoint_every=4, eval_every=0),
                              gamma_ptx=0.5, ptx_source=str(text), ptx_batch=2)
    ppo(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    ptx = [r["ptx_loss"] for r in rows if "ptx_loss" in r]
    assert len(ptx) == 4 and all(0 < v < 20 for v in ptx)


def test_token_logprobs_on_response_columns_equal_the_full_computation():
    """The output layer only from the first response column on: same log-probs and entropy there."""
    import torch.nn.functional as F

    from gptrecipe.ppo import token_logprobs

    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    ids = torch.randint(0, 257, (3, 12))
    mask = torch.zeros(3, 11)
    mask[0, 5:9], mask[1, 7:11], mask[2, 6:8] = 1, 1, 1
    logp, ent = token_logprobs(model, ids, 0.7, mask, entropy=True)
    full = F.log_softmax(model(ids[:, :-1])[0] / 0.7, -1)
    ref = full.gather(-1, ids[:, 1:, None]).squeeze(-1)
    ref_ent = -(full.exp() * full).sum(-1)
    assert torch.allclose(logp[:, 5:], ref[:, 5:], atol=1e-5) and bool((logp[:, :5] == 0).all())
    assert torch.allclose(ent[:, 5:], ref_ent[:, 5:], atol=1e-5)


def test_minibatch_split_over_micro_steps_or_refused():
    """A minibatch goes in pieces of at most micro_batch_size rows per process; a config that would leave a piece
    empty (or that sets batch_tokens) is refused with the numbers to change."""
    from types import SimpleNamespace

    from gptrecipe.config import ConfigError
    from gptrecipe.ppo import PPOTask

    task = SimpleNamespace(minibatch_rows=lambda: 9)
    accum = PPOTask.grad_accum
    assert accum(task, TrainConfig(micro_batch_size=8), 1) == 2  # 9 rows: 5 + 4, none dropped
    assert accum(task, TrainConfig(micro_batch_size=4), 2) == 2  # 3 + 2 + 2 + 2 over 2 micro steps x 2 ranks
    with pytest.raises(ConfigError, match="cannot feed"):
        accum(SimpleNamespace(minibatch_rows=lambda: 3), TrainConfig(micro_batch_size=1), 2)
    with pytest.raises(ConfigError, match="batch_tokens does not apply"):
        accum(task, TrainConfig(micro_batch_size=8, batch_tokens=512), 1)


def test_the_score_reaches_the_update(sft_and_rm, tmp_path):
    """The RM score (here: its truncation penalty) changes the first update: it lands on a response token, not in
    the prompt where GAE's mask would drop it."""
    losses = [ppo(dataclasses.replace(ppo_cfg(sft_and_rm, tmp_path / str(p), max_steps=4, eval_every=0,
                                              checkpoint_every=4), max_new_tokens=2, truncation_penalty=p),
                  log=lambda *a: None).losses[1] for p in (0.0, -5.0)]
    assert abs(losses[0] - losses[1]) > 1e-3, losses


def test_rollouts_score_old_logprobs_in_the_training_precision(sft_and_rm, tmp_path):
    """In bf16, the rollout's old log-probs come through the update's autocast path (RLHF_NOTES pitfall 9): the
    first minibatch's ratio is 1 up to the rounding of another batch shape, not off by bf16-vs-fp32 noise."""
    import json

    cfg = ppo_cfg(sft_and_rm, tmp_path / "bf16", max_steps=4, eval_every=0, checkpoint_every=4, dtype="bf16")
    ppo(cfg, log=lambda *a: None)
    rows = [json.loads(ln) for ln in (tmp_path / "bf16" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    kl = [r["approx_kl_old"] for r in rows if "approx_kl_old" in r]
    assert kl and abs(kl[0]) < 5e-5, kl  # 2.6e-4 when rollouts scored in fp32 (Zen 5, 2026-12-02)
