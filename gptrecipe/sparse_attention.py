"""Sparse attention as GPT-3 uses it (after the Sparse Transformer): patterns as data, computed exactly in
O(n sqrt n) time instead of O(n^2), never through an (n, n) matrix.

A pattern says which keys j a query i may read; d = i - j is the relative distance, every pattern is causal:

    local(k)     0 <= d < k                          a band: the token itself and the k-1 tokens before it
    strided(k)   0 <= d < k  or  d in {k, 2k, 3k, ...}   the band plus every k-th token back (GPT-3 sec. 2.1)
    fixed(k,c)   d >= 0 and (i // k == j // k  or  j mod k >= k - c)
                                                     the query's own aligned block of k tokens, plus the last c
                                                     tokens ("summary" cells) of every earlier block

Every other score is masked: softmax over the allowed keys only. `pattern_mask(kind, T)` builds the (T, T)
boolean matrix; `masked_dense_attention` applies it to dense SDPA and is the reference everything is tested
against.

No implementation below forms a (T, T) matrix. Cut the zero-padded sequence into nb blocks of
w = k tokens, position i = b*w + r (block b, offset r). Each pattern is a union of disjoint pieces, each of
which is plain dense attention in some layout of the same q, k, v:

    piece     keys of query (b, r)                                 scores per head     used by
    own       block b, offsets r' <= r (causal)                    n k / 2             local, strided, fixed
    prev      block b-1, offsets r' > r (with own: 0 <= d < k)     n k / 2             local, strided
    strided   offset r, blocks b' < b: d = (b - b') k              w nb^2 / 2 = n^2/2k strided
    summary   the last c cells of every block b' < b               n c nb / 2          fixed

With k ~ sqrt(n) every piece costs O(n^1.5): about 2 n^1.5 scores for strided(sqrt n) against n^2 / 2 for
dense causal attention. (Tile-level block sparsity would waste most of its work here: the strided cells are
one diagonal per (w x w) tile; the offset-major layout computes only them.) The softmax runs jointly over
all pieces of a query, so the result is exactly the dense softmax restricted to the pattern:

- fused (default on CPU): one call per piece of PyTorch's fused flash-attention kernel, which returns each
  piece's output y_i and log-sum-exp l_i; merged as in flash-decoding, l = log sum_i exp(l_i),
  y = sum_i exp(l_i - l) y_i. Its backward kernel, handed the merged y and l, gives each piece's exact share
  of the gradients. Memory O(n D), like dense flash attention.
- blocked (any device, dropout): the pieces' scores as batched matmuls (band = own + prev as one (w x 2w)
  matmul), concatenated per query, one softmax, a hand-written backward; keeps P, O(n^1.5) memory.
- flex (opt-in, CUDA): torch's flex attention with a BlockMask built from the same predicate (on CPU torch
  2.13 has its forward only).

Generation with a KV cache: a single new query reads only the keys its pattern names (gathered from the
cache: k + n/k keys for strided, not n); several queries at once on top of a cache, or left-padded prompts,
use the dense fallback with the pattern mask built from each row's own positions, so a padded row gets
exactly what it would get alone.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SPARSE_FORMS = ("local(k)", "strided(k)", "fixed(k,c)")
IMPLS = ("auto", "fused", "blocked", "dense", "flex")


@dataclass(frozen=True)
class Pattern:
    """One sparse attention pattern: kind in {local, strided, fixed}, stride / window k, summary width c."""

    kind: str
    k: int
    c: int = 0

    def __str__(self) -> str:
        return f"fixed({self.k},{self.c})" if self.kind == "fixed" else f"{self.kind}({self.k})"

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Elementwise: may query position i read key position j? (broadcasting int tensors)"""
        k, d = self.k, i - j
        if self.kind == "local":
            return (d >= 0) & (d < k)
        if self.kind == "strided":
            return ((d >= 0) & (d < k)) | ((d > 0) & (d % k == 0))
        return (d >= 0) & ((i // k == j // k) | (j % k >= k - self.c))  # fixed


_ENTRY = re.compile(r"^([A-Za-z_][\w-]*)\s*(?:\(\s*([^()]*)\))?$")


def parse_pattern(entry: str, known: tuple[str, ...] = ("dense",)) -> Pattern:
    """Parse one schedule entry such as 'strided(64)' or 'fixed(64, 8)'; errors name model.attention.

    `known` are the other (registered, parameterless) kinds, listed in the error for an unknown name.
    """
    m = _ENTRY.match(entry.strip())
    name = m.group(1) if m else None
    if name not in ("local", "strided", "fixed"):
        known_all = ", ".join((*known, *SPARSE_FORMS))
        raise ValueError(f"model.attention: unknown kind {entry.strip()!r}; known: {known_all}")
    want = 2 if name == "fixed" else 1
    form = "fixed(k,c), e.g. fixed(64,8)" if name == "fixed" else f"{name}(k), e.g. {name}(64)"
    args = [a.strip() for a in (m.group(2) or "").split(",")] if m.group(2) is not None else []
    if len(args) != want or not all(a.isdigit() for a in args):
        raise ValueError(f"model.attention: bad entry {entry.strip()!r}: write {form}")
    k, c = int(args[0]), int(args[1]) if want == 2 else 0
    if k < 1:
        raise ValueError(f"model.attention: bad entry {entry.strip()!r}: k must be >= 1")
    if name == "fixed" and not 1 <= c <= k:
        raise ValueError(f"model.attention: bad entry {entry.strip()!r}: c must be in 1..k")
    return Pattern(name, k, c)


def as_pattern(kind: Pattern | str) -> Pattern:
    return kind if isinstance(kind, Pattern) else parse_pattern(kind)


def pattern_mask(kind: Pattern | str, T: int, device=None) -> torch.Tensor:
    """(T, T) boolean matrix, True where query i (row) may attend to key j (column): the reference."""
    pos = torch.arange(T, device=device)
    return as_pattern(kind).allows(pos[:, None], pos[None, :])


def masked_dense_attention(q, k, v, kind: Pattern | str, dropout_p: float = 0.0) -> torch.Tensor:
    """The dense fallback: SDPA over the full (T, T) scores with the pattern as a boolean mask. O(n^2)."""
    mask = pattern_mask(kind, q.size(-2), q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


# ----------------------------------------------------------------------------------------------
# Blocked implementation
#
# Tensors in "query-major" block layout are (B, H, nb, w, ...): block b, offset r, position i = b*w + r.
# Each piece has its own layout (B, H, G, M, ...) of queries (M per group G) and (B, H, G, N, D) of keys;
# its scores are one batched matmul Q @ K^T of shape (B, H, G, M, N).


@dataclass(frozen=True)
class _Piece:
    """One disjoint part of a pattern and the layout in which it is a dense batched matmul."""

    name: str  # band | strided | own | summary
    w: int  # block length (= pattern k)
    nb: int  # number of blocks
    c: int = 0  # summary cells per block

    @property
    def width(self) -> int:
        """Keys per query row in this piece's scores."""
        return {"band": 2 * self.w, "strided": self.nb, "own": self.w, "summary": self.nb * self.c}[self.name]

    def queries(self, x: torch.Tensor, copy: bool = True) -> torch.Tensor:
        """Query-major (B, H, nb, w, ...) -> this piece's query layout (B, H, G, M, ...)."""
        if self.name == "strided":  # offset-major: one group per offset r, blocks b as rows
            return x.transpose(2, 3).contiguous() if copy else x.transpose(2, 3)
        if self.name == "summary":  # every query reads the same summary keys: one group of nb*w rows
            return x.reshape(x.size(0), x.size(1), 1, self.nb * self.w, *x.shape[4:])
        return x

    def to_query_major(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `queries` (a view), for row statistics (..., 1) and query gradients (..., D)."""
        if self.name == "strided":
            return x.transpose(2, 3)
        if self.name == "summary":
            return x.view(x.size(0), x.size(1), self.nb, self.w, *x.shape[4:])
        return x

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Query-major keys or values (B, H, nb, w, D) -> the keys this piece offers, (B, H, G, N, D)."""
        B, H, nb, w, D = x.shape
        if self.name == "band":  # blocks b-1 and b side by side; block -1 is zeros (masked anyway)
            out = x.new_empty(B, H, nb, 2 * w, D)
            out[:, :, 0, :w] = 0
            out[:, :, 1:, :w] = x[:, :, :-1]
            out[:, :, :, w:] = x
            return out
        if self.name == "strided":
            return x.transpose(2, 3).contiguous()
        if self.name == "summary":  # the last c tokens of every block
            return x[:, :, :, w - self.c:].reshape(B, H, 1, nb * self.c, D)
        return x

    def key_grad(self, g: torch.Tensor, acc: torch.Tensor | None) -> torch.Tensor:
        """acc + the gradient w.r.t. x (query-major) of `keys(x)`, given g = the gradient w.r.t. keys(x).

        acc None starts a new accumulator (no zero fill: on CPU every pass over n D numbers shows).
        """
        B, H, G, N, D = g.shape
        if self.name == "band":
            out = g[:, :, :, self.w:].clone() if acc is None else acc.add_(g[:, :, :, self.w:])
            out[:, :, :-1] += g[:, :, 1:, :self.w]  # block b also served as the "previous" block of b+1
            return out
        if self.name == "summary":
            out = g.new_zeros(B, H, self.nb, self.w, D) if acc is None else acc
            out[:, :, :, self.w - self.c:] += g.view(B, H, self.nb, self.c, D)
            return out
        g = g.transpose(2, 3) if self.name == "strided" else g
        return g if acc is None else acc.add_(g)


@functools.lru_cache(maxsize=64)
def _pieces(p: Pattern, T: int, device: torch.device) -> tuple[tuple[_Piece, ...], torch.Tensor]:
    """The pieces of a pattern, and the mask (nb, w, keys of all pieces) of scores to hide (True = -inf).

    The mask is in query-major layout: the pieces' scores are concatenated per query for one softmax.

    Each piece offers only keys of its own kind (band: 0 <= d < k; strided: d a positive multiple of k;
    own: same block, j <= i; summary: the last c cells of earlier blocks), so the pieces are disjoint
    and their union is exactly `p.allows` (tests check this against `pattern_mask`). Padding keys
    (position >= T) lie in the future of every real query, so causality masks them already.
    """
    w, nb = p.k, -(-T // p.k)
    ar = functools.partial(torch.arange, device=device)
    b, r = ar(nb)[:, None, None], ar(w)[None, :, None]  # query block and offset, (nb, 1, 1) and (1, w, 1)
    if p.kind == "fixed":
        own = r < ar(w)[None, None, :]  # (1, w, w): key offset after the query's
        summary = ar(nb).repeat_interleave(p.c)[None, None, :] >= b  # (nb, 1, nb*c): key block >= query's
        pieces, masks = (_Piece("own", w, nb), _Piece("summary", w, nb, p.c)), (own, summary)
    else:
        i, j = b * w + r, (b - 1) * w + ar(2 * w)[None, None, :]  # (nb, w, 1) queries, (nb, 1, 2w) keys
        band = ~((i - j >= 0) & (i - j < w) & (j >= 0))
        later = ar(nb)[None, None, :] >= b  # strided: (nb, 1, nb), key block b' >= query block b
        pieces, masks = (_Piece("band", w, nb), _Piece("strided", w, nb)), (band, later)
        if p.kind == "local":
            pieces, masks = pieces[:1], masks[:1]
    return pieces, torch.cat([m.expand(nb, w, m.size(-1)) for m in masks], dim=-1)


def _blocks(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, T, D) -> contiguous (B, H, nb, w, D), zero positions appended up to a multiple of w."""
    B, H, T, D = x.shape
    n = -T % w
    return (F.pad(x, (0, 0, 0, n)) if n else x.contiguous()).view(B, H, (T + n) // w, w, D)


class _BlockedAttention(torch.autograd.Function):
    """softmax over the pattern's pieces jointly, forward and a hand-written backward.

    Hand-written rather than autograd through the ops: every matmul then gets contiguous operands
    (PyTorch's CPU bmm falls back to one small gemm per batch item for sliced or expanded operands,
    which is slow and, on a busy machine, pathologically so), and no copy of the scores is kept but P.
    Backward, per piece i, with the row sums D = sum_j P_ij dP_ij = dO . O (as in flash attention: O(n D)
    work instead of another pass over the scores; it holds with dropout too, whose mask is in both O and dP):
        dP_i = dO V_i^T,  dS_i = P_i * (dP_i - D),  dQ = sum_i dS_i K_i,  dK_i = dS_i^T Q_i,  dV_i = P_i^T dO.
    """

    @staticmethod
    def forward(ctx, q, k, v, p: Pattern, dropout_p: float):
        B, H, T, D = q.shape
        pieces, hidden = _pieces(p, T, q.device)
        with torch.autocast(q.device.type, enabled=False):
            dtype = q.dtype
            # zero tokens at the end: in the future of every real query, cropped from the output
            q = _blocks(q.to(dtype) * (1.0 / math.sqrt(D)), p.k)  # scale q (n D numbers), not the scores
            k, v = _blocks(k.to(dtype), p.k), _blocks(v.to(dtype), p.k)
            layouts = [(pc.queries(q), pc.keys(k), pc.keys(v)) for pc in pieces]
            # every piece's scores side by side per query, then one fused softmax: the exact normaliser
            scores = [pc.to_query_major(qi @ ki.transpose(-1, -2))
                      for pc, (qi, ki, _) in zip(pieces, layouts, strict=True)]
            s = torch.cat(scores, dim=-1).masked_fill_(hidden, float("-inf"))
            del scores
            prob = s.softmax(-1, dtype=torch.promote_types(s.dtype, torch.float32))
            del s
            # each piece's probabilities in its own layout, made contiguous once (strided: offset-major)
            # because both the forward and the backward matmuls read them
            probs = [pi.contiguous() if pc.name == "strided" else pi
                     for pc, pi in zip(pieces, _split(prob, pieces), strict=True)]
            keep = torch.rand_like(prob) >= dropout_p if dropout_p > 0.0 else None
            y = None
            for pc, pi, (_, _, vi) in zip(pieces, _dropped(probs, keep, pieces, dropout_p), layouts, strict=True):
                yi = pc.to_query_major(pi.to(dtype) @ vi)
                y = yi if y is None else y + yi
        ctx.save_for_backward(y, *probs, *(() if keep is None else (keep,)), *(t for lay in layouts for t in lay))
        ctx.meta = (p, T, dropout_p)
        return y.to(dtype).reshape(B, H, -1, D)[:, :, :T]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        p, T, dropout_p = ctx.meta
        y, *rest = ctx.saved_tensors
        B, H, nb, w, D = y.shape
        pieces, _ = _pieces(p, T, dy.device)
        n = len(pieces)
        probs, rest = rest[:n], rest[n:]
        keep = rest.pop(0) if dropout_p > 0.0 else None
        layouts = [rest[3 * i: 3 * i + 3] for i in range(n)]
        dtype = rest[0].dtype
        dy = _blocks(dy.to(dtype), w)  # contiguous: it may arrive expanded or transposed
        drow = (dy.to(y.dtype) * y).sum(-1, keepdim=True)  # D = rowsum(P * dP) = dO . O
        kept = _split(keep, pieces) if keep is not None else [None] * n
        dq = dk = dv = None
        for pc, s, pd, keep_i, (qi, ki, vi) in zip(pieces, probs, _dropped(probs, keep, pieces, dropout_p), kept,
                                                   layouts, strict=True):
            dyi = pc.queries(dy)
            dp = (dyi @ vi.transpose(-1, -2)).to(torch.promote_types(dtype, torch.float32))  # fp32 statistics
            if keep_i is not None:
                dp.mul_(keep_i).div_(1.0 - dropout_p)
            dv = pc.key_grad(pd.to(dtype).transpose(-1, -2) @ dyi, dv)
            ds = dp.sub_(pc.queries(drow, copy=False)).mul_(s).to(dtype)  # softmax backward, in place on dP
            dqi = pc.to_query_major(ds @ ki)
            dq = dqi if dq is None else dq.add_(dqi)
            dk = pc.key_grad(ds.transpose(-1, -2) @ qi, dk)
        dq *= 1.0 / math.sqrt(D)  # the scores used q * scale
        return *(t.reshape(B, H, nb * w, D)[:, :, :T] for t in (dq, dk, dv)), None, None


def _dropped(probs: list[torch.Tensor], keep: torch.Tensor | None, pieces: tuple[_Piece, ...],
             dropout_p: float) -> list[torch.Tensor]:
    """Attention dropout on each piece's probabilities: P * keep / (1 - p), or P itself when off."""
    if keep is None:
        return list(probs)
    return [pi * ki / (1.0 - dropout_p) for pi, ki in zip(probs, _split(keep, pieces), strict=True)]


def _split(x: torch.Tensor, pieces: tuple[_Piece, ...]) -> list[torch.Tensor]:
    """Query-major (B, H, nb, w, keys of all pieces) -> each piece's part, as views in its own layout."""
    widths = [pc.width for pc in pieces]
    return [pc.queries(t, copy=False) for pc, t in zip(pieces, x.split(widths, dim=-1), strict=True)]


def blocked_sparse_attention(q, k, v, kind: Pattern | str, dropout_p: float = 0.0) -> torch.Tensor:
    """Exact causal attention under the pattern in O(n^1.5) time and memory (module docstring: the layout).

    q, k, v: (B, H, T, D) with the same T (no cache). Differentiable (hand-written backward).
    """
    return _BlockedAttention.apply(q, k, v, as_pattern(kind), dropout_p)


# ----------------------------------------------------------------------------------------------
# Fused implementation (CPU): the same pieces, each through PyTorch's fused flash-attention kernel, merged as
# in flash-decoding (module docstring). Its backward, given the merged y and l, computes P_i = exp(S_i - l) (the
# joint probabilities restricted to piece i) and D = rowsum(dO * y): exactly that piece's share of dQ, dK, dV.

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@functools.lru_cache(maxsize=64)
def _fused_masks(p: Pattern, T: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Additive masks (0 / -inf, in the kernel's dtype) of the pieces that need one."""
    w, nb = p.k, -(-T // p.k)
    ar = functools.partial(torch.arange, device=device)
    if p.kind == "fixed":  # summary cells of earlier blocks, for the queries of blocks 1..nb-1
        allowed = ar(nb - 1).repeat_interleave(p.c)[None, :] < ar(1, nb).repeat_interleave(w)[:, None]
    else:  # previous block: d = w + r - r' < w  <=>  key offset r' > query offset r
        allowed = ar(w)[None, :] > ar(w)[:, None]
    return {"summary" if p.kind == "fixed" else "prev":
            torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, -math.inf)}


def _fused_pieces(p: Pattern, nb: int) -> list[str]:
    """own: the query's block, causal; prev: the block before (with `own`, the band d < k); strided: same
    offset in earlier blocks; summary: fixed's summary cells of earlier blocks."""
    pieces = {"local": ["own", "prev"], "strided": ["own", "prev", "strided"], "fixed": ["own", "summary"]}[p.kind]
    return pieces if nb > 1 else ["own"]  # one block: nothing earlier


def _rows(x: torch.Tensor, name: str, w: int) -> torch.Tensor:
    """Query-major (BH, nb, w, ...) -> a view of the piece's queries, (BH, G, M, ...).

    Every piece but `own` serves the query blocks 1..nb-1 only (block 0 has nothing earlier), which also
    turns "key block < query block" into plain causal attention after a shift by one block (strided).
    strided is offset-major (one group per offset r); summary puts all its queries in one group.
    """
    if name == "prev":
        return x[:, 1:]
    if name == "strided":
        return x.transpose(1, 2)[:, :, 1:]
    if name == "summary":
        return x.reshape(x.size(0), 1, -1, *x.shape[3:])[:, :, w:]
    return x


def _keys(x: torch.Tensor, name: str, w: int, c: int) -> torch.Tensor:
    """Query-major keys / values (BH, nb, w, D) -> the piece's keys (BH, G, N, D), rows contiguous."""
    if name == "prev":  # key blocks 0..nb-2 for query blocks 1..nb-1: a view, no copy
        return x[:, :-1]
    if name == "strided":  # key blocks 0..nb-2, offset-major
        return x.transpose(1, 2)[:, :, :-1].contiguous()
    if name == "summary":  # the last c tokens of every block but the last
        return x[:, :-1, w - c:].reshape(x.size(0), 1, -1, x.size(-1))
    return x


def _add_key_grad(acc: torch.Tensor, g: torch.Tensor, name: str, w: int, c: int) -> None:
    """acc (BH, nb, w, D) += the adjoint of `_keys` applied to g."""
    if name == "prev":
        acc[:, :-1] += g
    elif name == "strided":
        acc.transpose(1, 2)[:, :, :-1] += g
    elif name == "summary":
        acc[:, :-1, w - c:] += g.view(acc.size(0), -1, c, acc.size(-1))
    else:
        acc += g


class _FusedAttention(torch.autograd.Function):
    """Exact pattern attention from one fused flash-attention call per piece (CPU), forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, p: Pattern):
        B, H, T, D = q.shape
        w, c, nb = p.k, p.c, -(-T // p.k)
        masks = _fused_masks(p, T, q.device, q.dtype)
        scale = 1.0 / math.sqrt(D)
        qb, kb, vb = (_blocks(t, w).view(B * H, nb, w, D) for t in (q, k, v))
        saved, parts = [], []
        for name in _fused_pieces(p, nb):
            qi = _rows(qb, name, w).contiguous()
            ki, vi = _keys(kb, name, w, c), _keys(vb, name, w, c)
            yi, li = _flash(qi, ki, vi, 0.0, name in ("own", "strided"), attn_mask=masks.get(name), scale=scale)
            if name == "prev":  # offset w-1 reads nothing in the previous block: the kernel says l = 0, y = 0
                li[:, :, -1] = -math.inf
            saved += [qi, ki, vi]
            parts.append((name, yi, li))
        # the first piece (own) covers every query: it starts the merged normaliser and output, both
        # contiguous (the kernel's outputs may not be) because the later pieces write through views
        lse = parts[0][2].clone(memory_format=torch.contiguous_format)
        for name, _, li in parts[1:]:
            rows = _rows(lse, name, w)
            rows.copy_(torch.logaddexp(rows, li))
        y = (parts[0][1] * torch.exp(parts[0][2] - lse).unsqueeze(-1).to(q.dtype)).contiguous()  # sum exp(l_i-l) y_i
        for name, yi, li in parts[1:]:
            _rows(y, name, w).addcmul_(yi, torch.exp(li - _rows(lse, name, w)).unsqueeze(-1).to(q.dtype))
        ctx.save_for_backward(y, lse, *saved)
        ctx.meta = (p, T)
        return y.view(B, H, nb * w, D)[:, :, :T]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        p, T = ctx.meta
        y, lse, *saved = ctx.saved_tensors
        BH, nb, w, D = y.shape
        B = dy.size(0)
        masks = _fused_masks(p, T, dy.device, y.dtype)
        dyb = _blocks(dy.to(y.dtype), w).view(BH, nb, w, D)
        dq = dk = dv = None
        for n, name in enumerate(_fused_pieces(p, nb)):
            qi, ki, vi = saved[3 * n: 3 * n + 3]
            gq, gk, gv = _flash_backward(
                _rows(dyb, name, w).contiguous(), qi, ki, vi, _rows(y, name, w).contiguous(),
                _rows(lse, name, w).contiguous(), 0.0, name in ("own", "strided"), attn_mask=masks.get(name),
                scale=1.0 / math.sqrt(D))
            if dq is None:  # `own` is query-major and covers every query: its gradients start the sums,
                # contiguous because the later pieces add through views (summary's is a reshape)
                dq, dk, dv = (g.contiguous() for g in (gq, gk, gv))
                continue
            _rows(dq, name, w).add_(gq)
            _add_key_grad(dk, gk, name, w, p.c)
            _add_key_grad(dv, gv, name, w, p.c)
        return *(t.reshape(B, BH // B, nb * w, D)[:, :, :T] for t in (dq, dk, dv)), None


def fused_sparse_attention(q, k, v, kind: Pattern | str) -> torch.Tensor:
    """Exact pattern attention from PyTorch's fused CPU flash kernel, one call per piece; O(n^1.5) time,
    O(n D) memory. CPU only, no dropout (`blocked_sparse_attention` covers both)."""
    return _FusedAttention.apply(q, k, v, as_pattern(kind))


def flex_sparse_attention(q, k, v, kind: Pattern | str, dropout_p: float = 0.0) -> torch.Tensor:
    """The pattern through torch's flex attention with a BlockMask (fast where compiled, e.g. on CUDA)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if dropout_p > 0.0:
        raise NotImplementedError("flex sparse attention has no dropout; use impl='blocked' or dropout=0")
    p = as_pattern(kind)
    T = q.size(-2)
    block_mask = create_block_mask(lambda b, h, i, j: p.allows(i, j), None, None, T, T, device=q.device)
    return flex_attention(q, k, v, block_mask=block_mask)


# ----------------------------------------------------------------------------------------------
# KV-cache generation


def decode_key_positions(kind: Pattern | str, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The key positions one query at position pos[b] reads: (B, n) positions and a (B, n) validity mask.

    n is about k + pos/k (strided), k (local), k + c pos/k (fixed); never the whole history.
    """
    p = as_pattern(kind)
    k, dev = p.k, pos.device
    top = int(pos.max()) if pos.numel() else 0
    p_ = pos[:, None]
    if p.kind == "fixed":
        own = (p_ // k) * k + torch.arange(k, device=dev)  # own block, up to the query itself
        blocks = torch.arange(top // k, device=dev).repeat_interleave(p.c)
        summ = blocks * k + (k - p.c) + torch.arange(p.c, device=dev).repeat(top // k)
        keys = torch.cat([own, summ.expand(len(pos), -1)], dim=1)
        valid = torch.cat([own <= p_, blocks[None, :] < p_ // k], dim=1)
        return keys, valid & (keys >= 0)
    keys = p_ - torch.arange(k, device=dev)  # band: distances 0..k-1
    if p.kind == "strided":
        keys = torch.cat([keys, p_ - k * torch.arange(1, top // k + 1, device=dev)], dim=1)  # distances k, 2k..
    return keys, keys >= 0


def cached_sparse_attention(q, k, v, kind: Pattern | str, pad: torch.Tensor | None,
                            dropout_p: float = 0.0) -> torch.Tensor:
    """Attention of Tq new queries on Tk cached keys (the last Tq of which are theirs), for generation.

    pad[b] = left-padding tokens of row b: positions count from each row's first real token, keys of
    padding are never read, and a padding query reads only itself (never an all-masked row).
    """
    p = as_pattern(kind)
    B, H, Tq, D = q.shape
    Tk = k.size(-2)
    pad = torch.zeros(B, dtype=torch.long, device=q.device) if pad is None else pad.to(q.device)
    if Tq == 1:  # decode step: gather just the keys the pattern reads
        keys, valid = decode_key_positions(p, Tk - 1 - pad)
        idx = (keys + pad[:, None]).clamp(0, Tk - 1)[:, None, :, None].expand(B, H, -1, D)
        valid[:, 0] = True  # column 0 (distance 0, or fixed's block start) is always readable: no empty row
        return F.scaled_dot_product_attention(q, k.gather(2, idx), v.gather(2, idx),
                                              attn_mask=valid[:, None, None, :], dropout_p=dropout_p)
    absolute = torch.arange(Tk, device=q.device)
    k_pos = absolute[None, :] - pad[:, None]  # (B, Tk), negative on padding
    q_pos = k_pos[:, Tk - Tq:]
    mask = p.allows(q_pos[:, :, None], k_pos[:, None, :]) & (k_pos >= 0)[:, None, :]
    mask |= (absolute[Tk - Tq:, None] == absolute[None, :])[None]  # the diagonal: padding queries see themselves
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=dropout_p)


# ----------------------------------------------------------------------------------------------


def default_impl() -> str:
    """GPTRECIPE_SPARSE_IMPL picks the implementation models use (`sparse_attention`; dense = the reference)."""
    impl = os.environ.get("GPTRECIPE_SPARSE_IMPL", "auto")
    if impl not in IMPLS:
        raise ValueError(f"GPTRECIPE_SPARSE_IMPL={impl!r}: expected one of {', '.join(IMPLS)}")
    return impl


def sparse_attention(q, k, v, kind: Pattern | str, dropout_p: float = 0.0, impl: str = "auto") -> torch.Tensor:
    """Causal attention under a pattern, q/k/v (B, H, T, D) with the same T; impl: one of IMPLS.

    auto = fused where the fused kernel applies (CPU, fp32 / bf16, no dropout), blocked elsewhere.
    """
    if impl not in IMPLS:
        raise ValueError(f"sparse attention impl {impl!r}: expected one of {', '.join(IMPLS)}")
    if impl == "auto":
        fusable = q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and dropout_p == 0.0
        impl = "fused" if fusable else "blocked"
    if impl == "fused":
        if dropout_p > 0.0:
            raise NotImplementedError("fused sparse attention has no dropout; impl='blocked' (or auto) has")
        return fused_sparse_attention(q, k, v, kind)
    if impl == "dense":
        return masked_dense_attention(q, k, v, kind, dropout_p)
    if impl == "flex":
        return flex_sparse_attention(q, k, v, kind, dropout_p)
    return blocked_sparse_attention(q, k, v, kind, dropout_p)


class SparseAttention:
    """An attention kind for `gptrecipe.model`: fn(q, k, v, mask, dropout_p, pad=None).

    The model's `mask` is ignored (the pattern and `pad`, the cache's left padding per row, define it).
    """

    def __init__(self, pattern: Pattern | str, impl: str | None = None):
        self.pattern = as_pattern(pattern)
        self.impl = impl or default_impl()

    def __repr__(self) -> str:
        return f"SparseAttention({self.pattern}, impl={self.impl!r})"

    def __call__(self, q, k, v, mask=None, dropout_p: float = 0.0, pad: torch.Tensor | None = None):
        fresh = q.size(-2) == k.size(-2) and (pad is None or not bool(pad.any()))
        if fresh:  # training, or a prefill that starts the cache
            return sparse_attention(q, k, v, self.pattern, dropout_p, self.impl)
        return cached_sparse_attention(q, k, v, self.pattern, pad, dropout_p)
