"""TRL side of bench_ppo.py: time PPO iterations of trl 1.0.0's `trl.experimental.ppo.PPOTrainer` on tiny GPT-2s.

    /tmp/venv-trl/bin/python bench/trl_ppo_worker.py SPEC.json

Runs in its own venv (torch 2.13.0 CPU, trl==1.0.0, transformers); imports nothing from gptrecipe. SPEC.json
(written by bench_ppo.py) gives the model shape, the prompts as token ids, the PPO settings and the tokenizer file.
Policy, reference, reward and value models are randomly initialised GPT-2s of the given shape (fp32, no dropout).
Prints per-iteration wall times and a breakdown as one line `RESULT {json}` on stdout.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(spec["threads"])
    import transformers
    import trl
    from datasets import Dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, TrainerCallback
    from transformers import PreTrainedTokenizerFast as HFTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_mod

    tok = HFTokenizer(tokenizer_file=spec["tokenizer_file"], pad_token="<|pad|>", eos_token="<|end|>",
                      bos_token="<|endoftext|>")
    tok.padding_side = "left"  # TRL's PPO appends responses after left-padded queries
    assert tok.pad_token_id == spec["pad_id"] and tok.eos_token_id == spec["end_id"], "tokenizer ids differ"

    torch.manual_seed(spec["seed"])
    cfg = GPT2Config(vocab_size=spec["vocab_size"], n_positions=spec["block_size"], n_embd=spec["n_embd"],
                     n_layer=spec["n_layer"], n_head=spec["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=spec["bos_id"], eos_token_id=spec["end_id"], pad_token_id=spec["pad_id"],
                     num_labels=1)
    policy = GPT2LMHeadModel(cfg)
    ref = copy.deepcopy(policy)
    reward = GPT2ForSequenceClassification(cfg)
    value = copy.deepcopy(reward)
    n_params = sum(p.numel() for p in policy.parameters())

    ds = Dataset.from_dict({"input_ids": spec["prompts"]})
    rollout_batch, iters = spec["rollout_batch"], spec["iters"]
    out_dir = os.path.join(os.path.dirname(os.path.abspath(spec_path)), "trl_out")  # nothing is saved there
    args = PPOConfig(
        output_dir=out_dir, per_device_train_batch_size=rollout_batch, gradient_accumulation_steps=1,
        num_mini_batches=spec["minibatches"], num_ppo_epochs=spec["ppo_epochs"],
        response_length=spec["response_length"],
        total_episodes=rollout_batch * (iters + 1), local_rollout_forward_batch_size=rollout_batch,
        temperature=spec["temperature"], stop_token_id=spec["end_id"], missing_eos_penalty=1.0,
        kl_coef=spec["beta"], learning_rate=spec["lr"], bf16=spec.get("bf16", False), fp16=False,
        gradient_checkpointing=False,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
        num_sample_generations=0, seed=spec["seed"], dataloader_num_workers=0)

    # time the generate() part of each rollout (module-level function the trainer calls)
    gen_times: list[float] = []
    resp_tokens: list[int] = []
    query_width: list[int] = []
    orig_batch_generation = ppo_mod.batch_generation

    gen_start: list[float] = []
    first_update: list[float] = []

    def timed_batch_generation(model, queries, *a, **kw):
        t0 = time.perf_counter()
        gen_start.append(t0)
        qr, logits = orig_batch_generation(model, queries, *a, **kw)
        gen_times.append(time.perf_counter() - t0)
        resp_tokens.append(int(qr.shape[1] - queries.shape[1]))
        query_width.append(int(queries.shape[1]))
        return qr, logits

    ppo_mod.batch_generation = timed_batch_generation
    orig_forward = ppo_mod.forward

    def marked_forward(model, *a, **kw):  # the first training forward after a rollout ends the rollout phase
        if model is trainer.model and len(first_update) < len(gen_start):
            first_update.append(time.perf_counter())
        return orig_forward(model, *a, **kw)

    ppo_mod.forward = marked_forward

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=ds, value_model=value, eval_dataset=ds, callbacks=[Clock()])
    inner = trainer.optimizer.optimizer  # the torch AdamW under accelerate's wrapper: count real steps
    steps = [0]
    inner_step = inner.step

    def counted_step(*a, **kw):
        steps[0] += 1
        return inner_step(*a, **kw)

    inner.step = counted_step
    trainer.train()
    iter_s = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    rollout_s = [u - g for g, u in zip(gen_start, first_update, strict=True)]
    result = {"iter_s": iter_s, "gen_s": gen_times, "rollout_s": rollout_s, "response_tokens": resp_tokens,
              "query_width": query_width,
              "params_policy": n_params, "optimizer_steps": steps[0], "versions": versions,
              "mini_batch_size": args.mini_batch_size, "batch_size": args.batch_size,
              "num_total_batches": args.num_total_batches, "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
