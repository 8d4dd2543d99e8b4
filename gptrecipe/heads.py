"""Heads on the GPT body for the stages that read its hidden states instead of its next-token logits.

    RewardModel     a scalar on the readout token's final hidden state (InstructGPT's reward model)
    TaskHeadModel   a linear head on the extract token (GPT-1 fine-tuning), with the auxiliary LM loss

Both live below the checkpoint layer so that one loader can rebuild any stage's model from its metadata.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT, IGNORE_INDEX, GPTConfig


class RewardModel(nn.Module):
    """A GPT body and a scalar head on the hidden state of the reward readout token.

    `shift` (a saved buffer, not trained) is subtracted from every reward: InstructGPT normalises the reward so
    the SFT responses average 0, and keeping it in the weights makes a checkpoint self-contained.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gpt = GPT(config)
        self.config = config
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (config.n_embd + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("shift", torch.zeros(()))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of right-padded rows; each is read at its last real token (the readout token)."""
        h = self.gpt.hidden_states(ids)
        last = h[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return self.head(last.float()).squeeze(-1) - self.shift

    def token_values(self, ids: torch.Tensor) -> torch.Tensor:
        """The head on every position (B, T): PPO's value model is a reward model read at each token."""
        return self.head(self.gpt.hidden_states(ids).float()).squeeze(-1) - self.shift


class TaskHeadModel(nn.Module):
    """The transformer and a linear head on the extract token's final hidden state (GPT-1).

    forward(ids, lengths, sizes) -> (task logits (B, C), LM loss summed over targets): `ids` holds the right-padded
    sequences of B examples, `sizes[b]` of them for example b (1; 2 for similarity; K for multiple choice).
    `ignore` lists token ids that are not LM targets (the delimiter and extract tokens).
    """

    def __init__(self, config: GPTConfig, task: str, n_labels: int, head_dropout: float = 0.1,
                 ignore: tuple[int, ...] = ()):
        super().__init__()
        self.gpt, self.config, self.task = GPT(config), config, task
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(config.n_embd, 1 if task == "multiple_choice" else n_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.ignore = list(ignore)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor,
                sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.gpt.hidden_states(ids)
        feats = self.dropout(h[torch.arange(ids.size(0), device=ids.device), lengths - 1].float())
        # L1: next-token loss on the example tokens (not padding, not the delimiter / extract tokens)
        tgt = ids[:, 1:].clone()
        tgt[torch.arange(ids.size(1) - 1, device=ids.device)[None, :] >= (lengths - 1)[:, None]] = IGNORE_INDEX
        for t in self.ignore:
            tgt[tgt == t] = IGNORE_INDEX
        logits = self.gpt.lm_head(h[:, :-1])
        lm_sum = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        if self.task == "multiple_choice":
            scores = self.head(feats).squeeze(-1).split(sizes.tolist())
            out = torch.full((len(scores), int(sizes.max())), float("-inf"), device=ids.device)
            for i, s in enumerate(scores):
                out[i, : len(s)] = s
            return out, lm_sum
        groups = feats.split(sizes.tolist())
        return self.head(torch.stack([g.sum(0) for g in groups])), lm_sum  # similarity: both orders added
