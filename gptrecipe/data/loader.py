"""B x T next-token batches sampled from the mixture by weight, as a pure function of the step.

The global batch of optimizer step `step` is micro_batch_size * grad_accum_steps * world_size rows drawn
with np.random.default_rng([seed, step]): each row picks a corpus by mixture weight, then a uniform window
start in its train split. Rank r at micro step m takes rows [(m * world_size + r) * B, ... + B). So:
- resuming is resuming the step counter (nothing else to save but the seed),
- data parallelism is exact: 1 process x 2 accumulation steps sees the same rows as 2 processes x 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .readers import DataError
from .shards import PreparedData


def global_batch(seed: int, step: int, n_rows: int, size: int) -> np.ndarray:
    """Indices of one optimizer step's global batch: `size` draws from `n_rows`, seeded by (seed, step), so
    every rank draws the same batch and a resumed run draws what the uninterrupted one did."""
    return np.random.default_rng([seed, step]).integers(0, n_rows, size)


def pad_rows(rows: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    """Token rows of different lengths as one (N, max length) int64 tensor, filled with `value` on the right
    (or on the left, for prompts that generation continues)."""
    width = max(map(len, rows))
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            (out[i, width - len(r):] if left else out[i, : len(r)]).copy_(torch.as_tensor(list(r), dtype=torch.long))
    return out


def rank_slice(rows, micro_step: int, per_rank: int, rank: int, world_size: int):
    """This rank's part of a global batch at this micro step (laid out micro step first, then rank), so that
    N ranks x A accumulation steps see exactly the rows of 1 rank x N*A steps."""
    lo = (micro_step * world_size + rank) * per_rank
    return rows[lo: lo + per_rank]

class BatchLoader:
    def __init__(self, data: PreparedData, block_size: int, seed: int = 1337):
        if block_size < 1:
            raise DataError(f"block_size must be >= 1, got {block_size}")
        self.data = data.fit_block_size(block_size)  # DataError naming a corpus too short for one window
        self.block_size, self.seed = block_size, seed
        self.weights = np.array([c.weight for c in self.data.corpora], dtype=np.float64)
        self.weights /= self.weights.sum()
        self._spans = np.array([len(c.train) - block_size for c in self.data.corpora], dtype=np.int64)

    def rows(self, step: int, n_rows: int) -> list[tuple[int, int]]:
        """(corpus index, window start) of every row of the global batch of `step`."""
        rng = np.random.default_rng([self.seed, step])
        which = rng.choice(len(self.weights), size=n_rows, p=self.weights)
        starts = rng.integers(0, self._spans[which])  # uniform in [0, len(train) - block_size)
        return list(zip(which.tolist(), starts.tolist(), strict=True))

    def get_batch(self, step: int, micro_step: int, micro_batch_size: int, grad_accum_steps: int,
                  rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (micro_batch_size, block_size); y is x shifted left by one."""
        if not (0 <= micro_step < grad_accum_steps and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= micro_step < grad_accum_steps and 0 <= rank < world_size, got "
                             f"micro_step={micro_step}, grad_accum_steps={grad_accum_steps}, rank={rank}, "
                             f"world_size={world_size}")
        rows = self.rows(step, micro_batch_size * grad_accum_steps * world_size)
        mine = rank_slice(rows, micro_step, micro_batch_size, rank, world_size)
        return self._stack([(self.data.corpora[i].train, s) for i, s in mine])

    def _stack(self, windows) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(np.stack([tokens.window(s, self.block_size + 1) for tokens, s in windows]))
        return t[:, :-1], t[:, 1:]

    def val_batches(self, corpus_name: str, batch_size: int,
                    max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed, non-overlapping windows of the corpus' val split, evenly spread over it when there are
        more than batch_size * max_batches; the same windows on every call."""
        val = self.data.corpus(corpus_name).val
        n_windows = (len(val) - 1) // self.block_size
        take = min(n_windows, batch_size * max_batches)
        if take <= 0:
            return
        idx = np.linspace(0, n_windows - 1, take).round().astype(np.int64)
        for i in range(0, take, batch_size):
            yield self._stack([(val, int(w) * self.block_size) for w in idx[i: i + batch_size]])
