"""Run under torchrun: trains the tiny model on the synthetic stream, rank 0 writes the losses."""

import json
import sys

import torch

from gptrecipe.model import GPT
from gptrecipe.train import TrainConfig, train
from tests.conftest import tiny_config
from tests.synthetic import StreamTask, pattern_stream

out, run_dir, accum = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = GPT(tiny_config())
cfg = TrainConfig(max_steps=6, micro_batch_size=4, batch_tokens=4 * 32 * 2, lr=3e-3, warmup_steps=2,
                  eval_every=0, checkpoint_every=0, device="cpu", progress=False, dtype="fp32")
res = train(model, StreamTask(pattern_stream(), 32), cfg, run_dir)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
weight_sum = sum(p.sum().item() for p in model.parameters())
json.dump({"losses": res.losses, "accum": res.grad_accum, "weight_sum": weight_sum},
          open(out, "w"))
