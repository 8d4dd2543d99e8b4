"""The GPT model: a decoder-only Transformer as in GPT-2 / GPT-3, in one file.

token + learned position embeddings -> N x [LayerNorm -> causal self-attention -> residual,
LayerNorm -> GELU MLP -> residual] -> final LayerNorm -> linear head tied to the token embedding.

Attention goes through `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
kernels where available), except short CPU bf16 contexts, where the written-out form is faster. Which
attention each layer uses is data (`GPTConfig.attention`): a kind registered in `ATTENTION_KINDS`, or a sparse
pattern with parameters such as `strided(64)` (GPT-3 alternates "dense,strided(k)"; see
`gptrecipe/sparse_attention.py`). A `KVCache` makes generation cost
one token's work per step; it supports left-padded batches of prompts of different lengths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptrecipe.sparse_attention import SparseAttention, parse_pattern

IGNORE_INDEX = -1  # targets with this value contribute no loss (masked prompt tokens, padding)


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # context length T
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768  # d_model
    head_dim: int = 0  # d_head; 0 means n_embd // n_head (GPT-3 13B has 40 x 128 heads in d_model 5140)
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2/3
    # Per-layer attention schedule, cycled over the layers: "dense", or e.g. "dense,sparse" (GPT-3: sparse =
    # strided(round(sqrt(block_size)))) or "dense,strided(64)"; sparse entries: local(k), strided(k), fixed(k,c)
    attention: str = "dense"

    @property
    def d_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def attention_kinds(self) -> list[str]:
        # split on the commas between entries, not those inside "fixed(64,8)"
        kinds = [k.strip() for k in re.split(r",(?![^()]*\))", self.attention) if k.strip()]
        # "sparse" alone means GPT-3's choice: the strided pattern with k ~ sqrt(context), cost ~ n sqrt(n)
        kinds = [f"strided({max(1, round(math.sqrt(self.block_size)))})" if k == "sparse" else k for k in kinds]
        if not kinds:
            raise ValueError("model.attention must name at least one attention kind")
        for k in kinds:
            attention_fn(k)  # raises ValueError naming model.attention and the bad entry
        return [kinds[i % len(kinds)] for i in range(self.n_layer)]

    def validate(self) -> None:
        if not self.head_dim and self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}")
        self.attention_kinds()


# ----------------------------------------------------------------------------------------------
# Attention kinds. Each takes q, k, v of shape (B, H, Tq, D) / (B, H, Tk, D) plus an optional
# boolean mask (True = may attend) broadcastable to (B, H, Tq, Tk); mask None means plain causal
# attention with Tq == Tk, or a single query that may see every cached key.

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]


def dense_attention(q, k, v, mask, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head) + causal mask) v: PyTorch's fused kernel, or written out where that is faster."""
    if q.size(-2) == 1 and mask is not None and dropout_p == 0.0:
        # one query per row (a decode step): two thin matmuls that the compiled decode step fuses with their
        # neighbours (1.9x the tokens/s of SDPA with a mask at batch 16 compiled on a Zen 5 CPU, 2026-12-02)
        return written_out_attention(q, k, v, ~mask)
    if q.size(-2) == k.size(-2) > 1 and _written_out_pays(q, k):  # causal, a masked prefill, packed rows
        return explicit_causal_attention(q, k, v, dropout_p) if mask is None else written_out_attention(
            q, k, v, ~mask, dropout_p)
    is_causal = mask is None and q.size(-2) == k.size(-2) and q.size(-2) > 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


# CPU bf16: PyTorch's fused SDPA kernel has a slow backward at short sequences, so up to this length the written-out
# form (fwd + bwd) is faster: 1.2-4x at T = 48..256 (B 8-32, 4-12 heads of 64) on a Zen 4, 2026-12-07
# (bench/bench_attention.py, bench/RESULTS.md); at T = 512 SDPA is ~1.6x faster; in fp32 SDPA wins or ties. The choice
# must not depend on grad mode: PPO scores its old log-probs without gradients and must get the update's numbers
# (RLHF_NOTES pitfall 9).
EXPLICIT_MAX_LEN = 256


def _written_out_pays(q: torch.Tensor, k: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.size(-2) <= EXPLICIT_MAX_LEN


def written_out_attention(q, k, v, blocked: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head), -inf where `blocked`) v, as eager attention runs under autocast: the two matmuls
    in the inputs' precision, the softmax in fp32 (fp32 scores would cost most of the speed: CPU matmuls cannot
    write a bf16 product in fp32)."""
    scores = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5)
    probs = scores.masked_fill(blocked, float("-inf")).float().softmax(-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return probs.to(v.dtype) @ v


def explicit_causal_attention(q, k, v, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention (Tq == Tk) written out: each position sees itself and the positions before it."""
    T = q.size(-2)
    return written_out_attention(q, k, v, torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), dropout_p)


ATTENTION_KINDS: dict[str, AttentionFn] = {"dense": dense_attention}


def attention_fn(kind: str) -> AttentionFn:
    """The function of one schedule entry: a registered kind, or a parsed sparse pattern like strided(64)."""
    if kind in ATTENTION_KINDS:
        return ATTENTION_KINDS[kind]
    return SparseAttention(parse_pattern(kind, known=tuple(ATTENTION_KINDS)))


# ----------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of past positions for every layer, preallocated to `max_len`.

    `pad` holds, per row, how many left-padding tokens the prompt has: those keys are never
    attended to and positions are counted from the first real token, so a batch of prompts of
    different lengths gives each row exactly what it would get alone.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype, pad=None):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.d_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device) if pad is None else pad.to(device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0, t1 = self.length, self.length + k.size(2)
        if t1 > self.max_len:
            raise ValueError(f"KV cache full: {t1} positions > max_len {self.max_len}")
        self.k[layer, :, :, t0:t1] = k
        self.v[layer, :, :, t0:t1] = v
        return self.k[layer, :, :, :t1], self.v[layer, :, :, :t1]

    @staticmethod
    def _of(k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor, length: int) -> KVCache:
        new = object.__new__(KVCache)
        new.k, new.v, new.pad, new.length, new.max_len = k, v, pad, length, k.size(3)
        return new

    @property
    def room(self) -> int:
        """Positions that can still be added."""
        return self.max_len - self.length

    def select(self, rows: torch.Tensor, trim: bool = False) -> KVCache:
        """A new cache holding these rows of this one (a row may repeat): several continuations of one prompt
        each go on from a copy of the prompt's keys and values. `trim`: without the leftmost columns that are
        padding in every one of these rows."""
        pad = self.pad[rows]
        cut = int(pad.min()) if trim else 0
        return KVCache._of(self.k[:, rows, :, cut:], self.v[:, rows, :, cut:], pad - cut, self.length - cut)

    @staticmethod
    def merge(caches: list[KVCache], room: int = 0) -> KVCache:
        """One cache of all these caches' rows, in order, right-aligned (shorter ones get more left padding, so
        every row still computes what it would alone), with `room` free positions after the longest."""
        length = max(c.length for c in caches)
        n_layer, _, n_head, _, d_head = caches[0].k.shape
        k = caches[0].k.new_zeros(n_layer, sum(c.k.size(1) for c in caches), n_head, length + room, d_head)
        v, row = torch.zeros_like(k), 0
        for c in caches:
            b = c.k.size(1)
            k[:, row: row + b, :, length - c.length: length] = c.k[:, :, :, : c.length]
            v[:, row: row + b, :, length - c.length: length] = c.v[:, :, :, : c.length]
            row += b
        return KVCache._of(k, v, torch.cat([c.pad + (length - c.length) for c in caches]), length)

    def grow(self, max_len: int) -> KVCache:
        """A copy with room for `max_len` positions."""
        return KVCache.merge([self], room=max_len - self.length)

    def attention_mask(self, tq: int) -> torch.Tensor | None:
        """Boolean (B, 1, Tq, Tk) mask for the next Tq queries, or None when plain causal suffices."""
        tk = self.length + tq
        if not bool(self.pad.any()) and (self.length == 0 or tq == 1):
            return None
        q_pos = torch.arange(self.length, tk, device=self.pad.device)[:, None]
        k_pos = torch.arange(tk, device=self.pad.device)[None, :]
        causal = k_pos <= q_pos  # (Tq, Tk)
        not_pad = k_pos >= self.pad[:, None]  # (B, Tk)
        # A padding query sees only itself: never a fully masked row, whose softmax would be NaN.
        return ((causal[None] & not_pad[:, None, :]) | (k_pos == q_pos)[None])[:, None]

    def positions(self, tq: int, block_size: int) -> torch.Tensor:
        """(B, Tq) position ids counted from each row's first real token."""
        if self.length + tq > block_size:
            raise ValueError(f"sequence of {self.length + tq} tokens is longer than the model's context ({block_size})")
        pos = torch.arange(self.length, self.length + tq, device=self.pad.device)[None, :] - self.pad[:, None]
        return pos.clamp(min=0)

    def advance(self, tq: int) -> None:
        self.length += tq


class StaticKVCache:
    """A KV cache of fixed shape for a compiled decode step: B rows ("slots"), S columns, one new token per row
    per step, each row at its own column.

    A compiled graph must not depend on Python numbers that change every step (each new value would compile
    again), so everything a step needs is a tensor updated in place *outside* the graph by `step_to`: the
    column each row's new key and value go to, each row's position, and the (B, 1, 1, S) mask of the keys it
    may see (its real tokens so far). Attention then runs over all S columns, masked: the same arithmetic as
    `KVCache` up to the order of additions. The sampler builds one from its prefilled, left-padded prompts
    (`of`: every row at the same column); the serving engine keeps one for its whole running batch, writes each
    admitted prompt into a free slot from column 0 (`put`) and moves rows between sizes (`resized`).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, config.n_head, max_len, config.d_head)
        # one buffer per layer (not views of one tensor): the compiled graph writes into them in place
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)  # each row's first real column
        self.col = torch.zeros(batch_size, dtype=torch.long, device=device)  # where each row's next token goes
        self.pos = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.mask = torch.zeros(batch_size, 1, 1, max_len, dtype=torch.bool, device=device)
        self._keys = torch.arange(max_len, device=device)
        self._rows = torch.arange(batch_size, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.pad.size(0)

    @staticmethod
    def of(cache: KVCache, max_len: int, config: GPTConfig) -> StaticKVCache:
        """The sampler's: the rows of a prefilled (left-padded) cache with room up to `max_len` columns."""
        new = StaticKVCache(config, cache.k.size(1), max_len, cache.k.device, cache.k.dtype)
        for layer in range(config.n_layer):
            new.k[layer][:, :, : cache.length] = cache.k[layer, :, :, : cache.length]
            new.v[layer][:, :, : cache.length] = cache.v[layer, :, :, : cache.length]
        new.pad.copy_(cache.pad)
        new.length = cache.length
        return new

    def put(self, slot: int, cache: KVCache, row: int) -> int:
        """Copy one row of a prefilled cache (its real columns only) into `slot` from column 0; returns its
        length (the column its next token goes to)."""
        start, n = int(cache.pad[row]), cache.length - int(cache.pad[row])
        if n >= self.max_len:
            raise ValueError(f"KV cache full: {n + 1} positions > max_len {self.max_len}")
        for layer in range(len(self.k)):
            self.k[layer][slot, :, :n] = cache.k[layer, row, :, start: cache.length]
            self.v[layer][slot, :, :n] = cache.v[layer, row, :, start: cache.length]
        self.pad[slot] = 0
        return n

    def resized(self, config: GPTConfig, slots: list[int], batch_size: int, max_len: int) -> StaticKVCache:
        """A cache of another shape holding these slots' rows as its slots 0, 1, ... (their first `max_len`
        columns: the caller makes sure no row is longer)."""
        new = StaticKVCache(config, batch_size, max_len, self.pad.device, self.k[0].dtype)
        src = torch.tensor(slots, dtype=torch.long, device=self.pad.device)
        n, cols = len(slots), min(max_len, self.max_len)
        for layer in range(len(self.k)):
            new.k[layer][:n, :, :cols] = self.k[layer][src, :, :cols]
            new.v[layer][:n, :, :cols] = self.v[layer][src, :, :cols]
        new.pad[:n] = self.pad[src]
        return new

    def step_to(self, col: int | torch.Tensor) -> None:
        """Point the next step of every row at column `col` (one for all, or (B,) per row), outside the compiled
        graph."""
        top = int(col) if isinstance(col, int) else int(col.max())
        if top >= self.max_len:
            raise ValueError(f"KV cache full: {top + 1} positions > max_len {self.max_len}")
        self.col.copy_(torch.as_tensor(col, device=self.col.device))
        torch.sub(self.col, self.pad, out=self.pos[:, 0]).clamp_(min=0)
        seen = (self._keys[None, :] <= self.col[:, None]) & (self._keys[None, :] >= self.pad[:, None])
        self.mask.copy_(seen[:, None, None])
        self.length = top

    def attention_mask(self, tq: int) -> torch.Tensor:
        return self.mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_put_ of one (H, D) column per row: compiles to an in-place write
        self.k[layer][self._rows, :, self.col] = k[:, :, 0]
        self.v[layer][self._rows, :, self.col] = v[:, :, 0]
        return self.k[layer], self.v[layer]

    def positions(self, tq: int, block_size: int) -> torch.Tensor:
        return self.pos

    def advance(self, tq: int) -> None:
        pass  # `step_to` moves it, outside the graph


class PackedRows:
    """Several documents packed into each row of a batch (SFT packing) computed as if each were alone: a token
    attends only to earlier tokens of its own document, and its position counts from that document's start.

    Without this, packed documents see each other and sit at arbitrary positions, and a small model learns less
    from each (tool-use SFT of the main job's model, 1,500 steps: 85% of held-out sums answered with it, 70%
    without, 2026-12-07). It stands where a cache would (`model(x, cache=PackedRows(starts))`), caching nothing."""

    def __init__(self, starts: torch.Tensor):
        """`starts`: (B, T) bool, True at the first token of each document (a row's first token starts one)."""
        starts = starts.clone()
        starts[:, 0] = True
        T = starts.size(1)
        t = torch.arange(T, device=starts.device)
        doc = starts.long().cumsum(-1)  # (B, T): which document of its row each token is in
        self.pos = t - torch.where(starts, t, 0).cummax(-1).values  # distance to its document's first token
        same = doc[:, :, None] == doc[:, None, :]
        self.mask = (same & (t[None, :] <= t[:, None]))[:, None]  # (B, 1, T, T): causal within the document

    def attention_mask(self, tq: int) -> torch.Tensor:
        return self.mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v

    def positions(self, tq: int, block_size: int) -> torch.Tensor:
        return self.pos

    def advance(self, tq: int) -> None:
        pass


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, kind: str):
        super().__init__()
        self.layer, self.kind = layer, kind
        self.n_head, self.d_head = config.n_head, config.d_head
        inner = config.n_head * config.d_head
        self.c_attn = nn.Linear(config.n_embd, 3 * inner, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.attend = attention_fn(kind)
        self.sparse = isinstance(self.attend, SparseAttention)  # reads the cache's padding to place its pattern

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | PackedRows | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_head * self.d_head, dim=2)
        # (B, T, H*D) -> (B, H, T, D): every head attends independently
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))
        mask, extra = None, {}
        if cache is not None:
            mask = cache.attention_mask(T)
            k, v = cache.update(self.layer, k, v)
            if self.sparse:
                extra = {"pad": cache.pad}
        y = self.attend(q, k, v, mask, self.dropout if self.training else 0.0, **extra)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.d_head)  # re-assemble heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm residual block (GPT-2/3): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer: int, kind: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer, kind)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | PackedRows | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned position embedding
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i, kind) for i, kind in enumerate(config.attention_kinds()))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (GPT-2): input and output embeddings shared
        self.apply(self._init_weights)
        # GPT-2: scale the init of layers that write into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied head counted once); non_embedding drops the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus the attention score matmuls."""
        c = self.config
        t = seq_len or c.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_head * c.d_head * t

    def hidden_states(self, idx: torch.Tensor,
                      cache: KVCache | StaticKVCache | PackedRows | None = None) -> torch.Tensor:
        """Final (layer-normed) hidden state of every position: (B, T, n_embd).

        Later stages put their own heads on this (reward model, value head, GPT-1 task heads).
        """
        B, T = idx.shape
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than the model's context "
                                 f"({self.config.block_size})")
            pos = torch.arange(T, device=idx.device)[None, :]
        else:
            pos = cache.positions(T, self.config.block_size)
        if isinstance(cache, PackedRows) and any(b.attn.sparse for b in self.blocks):
            raise ValueError("packed rows need dense attention in every layer "
                             f"(model.attention={self.config.attention!r})")
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | StaticKVCache | PackedRows | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, given targets, the mean next-token cross entropy.

        Targets equal to IGNORE_INDEX are left out of the mean (prompt tokens in SFT, padding).
        """
        h = self.hidden_states(idx, cache)
        logits = self.lm_head(h)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def new_cache(self, batch_size: int, max_len: int | None = None, pad: torch.Tensor | None = None) -> KVCache:
        p = self.wte.weight
        dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return KVCache(self.config, batch_size, max_len or self.config.block_size, p.device, dtype, pad)


def optimizer_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices (Linear weights, embeddings); not biases or LayerNorm gains."""
    params = {id(p): p for p in module.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
