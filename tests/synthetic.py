"""A TrainTask over an in-memory token stream, so the shared loop is tested without corpora."""

from __future__ import annotations

import numpy as np
import torch

from gptrecipe.train import Batch, TrainTask


class StreamTask(TrainTask):
    """Next-token windows over a fixed stream; the batch is a pure function of (seed, step, rank)."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int = 0):
        self.tokens, self.tokens_per_row, self.seed = tokens, block_size, seed

    def get_batch(self, step, micro_step, micro_batch_size, grad_accum, rank, world_size):
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.tokens_per_row - 1,
                              micro_batch_size * grad_accum * world_size)
        lo = (micro_step * world_size + rank) * micro_batch_size
        rows = np.stack([self.tokens[s: s + self.tokens_per_row + 1] for s in starts[lo: lo + micro_batch_size]])
        t = torch.from_numpy(rows.astype(np.int64))
        return Batch((t[:, :-1], t[:, 1:]), {"lm": t[:, 1:].numel()}, t[:, :-1].numel(), t.size(1) - 1)

    def loss(self, model, batch):
        return {"lm": model(*batch)[1] * batch[1].numel()}

    def evaluate(self, model, max_batches):
        x, y = self.get_batch(10**6, 0, 4, 1, 0, 1).tensors
        return {"val_loss": model(x, y)[1].item()}


def pattern_stream(n: int = 20_000, vocab: int = 257, seed: int = 0) -> np.ndarray:
    """A learnable stream: a random 'text' of 40 tokens repeated with noise."""
    rng = np.random.default_rng(seed)
    motif = rng.integers(0, vocab - 1, 40)
    stream = np.tile(motif, n // 40 + 1)[:n]
    noise = rng.random(n) < 0.05
    stream[noise] = rng.integers(0, vocab - 1, noise.sum())
    return stream
