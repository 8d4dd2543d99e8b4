"""B x T next-token batches sampled from the mixture by weight, as a pure function of the step.

Because a batch depends only on (seed, step), resuming is resuming the step counter, and data
parallelism is exact: the global batch of a step is drawn once and rank r, micro step m takes rows
[(m * world + r) * B, ... + B). One process with 2 accumulation steps sees the same rows as two.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .readers import DataError
from .shards import PreparedData


class BatchLoader:
    def __init__(self, data: PreparedData, block_size: int, seed: int = 1337):
        self.data, self.block_size, self.seed = data, block_size, seed
        self.weights = np.array([c.weight for c in data.corpora], dtype=np.float64)
        self.weights /= self.weights.sum()
        for c in data.corpora:
            for split, toks in (("train", c.train), ("val", c.val)):
                if len(toks) < block_size + 1:
                    raise DataError(f"corpus {c.name!r}: its {split} split has {len(toks)} tokens, fewer than "
                                    f"model.block_size + 1 = {block_size + 1}; use more text or a shorter context")

    def rows(self, step: int, n_rows: int) -> list[tuple[int, int]]:
        """(corpus index, window start) of every row of the global batch of `step`."""
        rng = np.random.default_rng([self.seed, step])
        which = rng.choice(len(self.weights), size=n_rows, p=self.weights)
        u = rng.random(n_rows)
        spans = np.array([len(self.data.corpora[i].train) - self.block_size for i in which])
        return list(zip(which.tolist(), (u * spans).astype(np.int64).tolist(), strict=True))

    def get_batch(self, step: int, micro_step: int, micro_batch_size: int, grad_accum_steps: int,
                  rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows(step, micro_batch_size * grad_accum_steps * world_size)
        lo = (micro_step * world_size + rank) * micro_batch_size
        mine = rows[lo: lo + micro_batch_size]
        t = torch.from_numpy(np.stack([self.data.corpora[i].train.window(s, self.block_size + 1) for i, s in mine]))
        return t[:, :-1], t[:, 1:]

    def val_batches(self, corpus_name: str, batch_size: int, max_batches: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Fixed non-overlapping windows of the corpus' held-out split, evenly spread over it."""
        val = self.data.corpus(corpus_name).val
        n_windows = (len(val) - 1) // self.block_size
        take = min(n_windows, batch_size * max_batches)
        idx = np.linspace(0, n_windows - 1, take).round().astype(np.int64)
        for i in range(0, take, batch_size):
            t = torch.from_numpy(np.stack([val.window(int(w) * self.block_size, self.block_size + 1)
                                           for w in idx[i: i + batch_size]]))
            yield t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "block_size": self.block_size}
