"""The sampler: batched autoregressive generation with a KV cache.

Each step feeds only the newest token per row (the cache holds the keys and values of all earlier
positions), turns the last logits into a distribution (temperature, top-k, top-p) and draws the
next token. Prompts of different lengths are left-padded. A `RowDecoder` per row ends it at a stop
token, a stop string or the token budget, and holds back streamed text that may still become a stop
string. Sampling, evaluation and PPO rollouts generate through `generate` / `generate_rows`; the
serving engine (`gptrecipe.serve.engine`, also behind the chat terminal) runs its own continuous-batching
loop but draws with `sample_next` and decodes every row with `RowDecoder`.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .data.loader import pad_rows
from .model import GPT, StaticKVCache


class PromptTooLongError(ValueError):
    """The prompt does not fit in the model's context."""


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    num_samples: int = 1
    ban_ids: list[int] = field(default_factory=list)  # tokens never drawn (the tool call token past the call cap)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (stop token or string) or "length" (budget or context exhausted)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Scale by temperature and mask everything outside top-k / the top-p nucleus to -inf."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids.

    Inverse-CDF sampling: one uniform number per row located in the running sum of the probabilities.
    It draws from exactly the same distribution as `torch.multinomial`, ~30x faster on CPU (multinomial
    draws an exponential variate per vocabulary entry). `right=True` never lands on a zero-mass token.
    `generator`: one for every row, or a list of one per row (each row's number from its own generator: the
    token that row would get sampled alone, with the rows' distributions still computed together).
    """
    if cfg.ban_ids:
        logits = logits.index_fill(-1, torch.tensor(cfg.ban_ids, device=logits.device), float("-inf"))
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = F.softmax(filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p), dim=-1)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    if isinstance(generator, Sequence):
        u = torch.cat([torch.rand((1, 1), generator=g, device=total.device) for g in generator]) * total
    else:
        u = torch.rand(total.shape, generator=generator, device=total.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # keep u < total after rounding
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.size(-1) - 1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts into (B, T) with left padding; returns ids and per-row pad counts."""
    ids = pad_rows(prompts, pad_id, left=True)
    pads = torch.tensor([ids.size(1) - len(p) for p in prompts], dtype=torch.long)
    return ids.to(device), pads.to(device)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_decode_step(model: GPT, autotune: bool = True,
                         dynamic: bool = False) -> Callable[[torch.Tensor, StaticKVCache], torch.Tensor]:
    """`step(tokens (B, 1), cache) -> (B, V)` logits of one decode step, compiled with torch.compile (once per
    model and mode). On CPU the weights are frozen into the graph (and its GEMMs autotuned): the model must not
    change afterwards, so training loops (PPO rollouts) decode eagerly.

    `dynamic=False` (the sampler): one graph per batch size and cache length, each fitted to its exact shape
    (inductor caches them on disk for later processes). `dynamic=True` (the serving engine): one graph for every
    row count >= 2 and every cache length, so rows joining and leaving and the cache growing never compile again
    and the engine can compile its one graph before it accepts requests; a step is as fast as the exact-shape
    graph's (bench/RESULTS.md). The cache must then have at least 2 rows and 2 columns (a dimension of size 1
    would get a graph of its own). `autotune=False` skips the GEMM autotuning (CPU): a faster first compile."""
    step = _COMPILED.get(model, {}).get((autotune, dynamic))
    if step is None:
        def decode(tokens: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
            return model.lm_head(model.hidden_states(tokens, cache))[:, -1]

        # dynamic=None: the dimensions marked below are symbolic, every other one is specialized
        compiled = torch.compile(decode, dynamic=None if dynamic else False)
        cpu = next(model.parameters()).device.type == "cpu"
        # On CPU: weights frozen into the graph, and the matmuls autotuned between ATen (MKL / oneDNN) and
        # inductor's own C++ GEMM template, whose kernels are built for these shapes. A decode step is a
        # few-row GEMM over every weight, i.e. a read of all the weights: MKL's row-dot-product GEMV read them at
        # ~11 GB/s on a 2-core Zen 3 (one thread's worth), the template at ~2x that (bench/RESULTS.md). The cost
        # is compile time (tens of seconds per graph the first time; inductor caches the choices on disk).
        inductor: dict = {"freezing": True} if cpu else {}
        if cpu and autotune:
            inductor |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}

        def step(tokens: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
            if dynamic:  # rows (dim 0 of everything per row) and columns (keys and values, the mask)
                for t in (tokens, *cache.k, *cache.v, cache.pad, cache.col, cache.pos, cache.mask, cache._rows):
                    torch._dynamo.mark_dynamic(t, 0)
                for t in (*cache.k, *cache.v):
                    torch._dynamo.mark_dynamic(t, 2)
                torch._dynamo.mark_dynamic(cache.mask, 3)
            # inductor reads its config when it compiles (the first call of each shape); inference mode lets it
            # freeze the weights. Graphs past dynamo's default limit of 8 would silently run eagerly: raised.
            with (torch.inference_mode(), torch._inductor.config.patch(**inductor),
                  torch._dynamo.config.patch(recompile_limit=64)):
                return compiled(tokens, cache)

        _COMPILED.setdefault(model, {})[(autotune, dynamic)] = step
    return step


def can_compile(model: GPT) -> bool:
    """Whether the compiled decode step serves this model (sparse attention layers decode eagerly)."""
    return all(kind == "dense" for kind in model.config.attention_kinds())


def bucket(n: int, limit: int, least: int = 64) -> int:
    """A size for n (cache columns, engine rows): the next power of two, at least `least` and at most `limit`,
    so few shapes get compiled."""
    return min(limit, max(least, 1 << (n - 1).bit_length()))


@torch.no_grad()
def generate_ids(model: GPT, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                 pad_id: int = 0, compile: bool = False) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) each step, up to the token budget; the caller decides when a row
    has ended (a `RowDecoder`) and stops iterating when all have. `compile`: decode through
    `compiled_decode_step` (a static-shape cache; the same tokens as eager, up to float rounding order): it pays
    for long or repeated generation with fixed weights, not for one short command."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    block = model.config.block_size
    longest = max(len(p) for p in prompts)
    if longest > block:
        raise PromptTooLongError(f"prompt of {longest} tokens is longer than the model's context ({block} tokens)")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    ids, pads = left_pad(prompts, pad_id, device)
    budget = min(cfg.max_new_tokens, block - longest)
    cache = model.new_cache(len(prompts), max_len=longest + budget, pad=pads)
    logits = model.lm_head(model.hidden_states(ids, cache)[:, -1])  # the prompt's last position only
    # the static cache grows through power-of-two column buckets (a graph each): a step attends over the
    # columns of its bucket, not of the longest row's final length
    limit = bucket(longest + budget, block)
    static = (StaticKVCache.of(cache, bucket(longest + 1, limit), model.config)
              if compile and can_compile(model) else None)
    step = compiled_decode_step(model) if static is not None else None
    rows = list(range(len(prompts)))
    for i in range(budget):
        nxt = sample_next(logits, cfg, generator)
        yield nxt
        if i + 1 < budget:
            if static is not None:
                if longest + i >= static.max_len:
                    static = static.resized(model.config, rows, len(rows), bucket(longest + i + 1, limit))
                static.step_to(longest + i)
                logits = step(nxt[:, None], static)
            else:
                logits = model(nxt[:, None], cache=cache)[0][:, -1]


class RowDecoder:
    """One row's decoding: stop tokens, stop strings, the token budget, and the text that is safe to stream.
    Without a tokenizer it tracks tokens only (no text, no stop strings)."""

    def __init__(self, tokenizer, budget: int, stop_ids: Collection[int] = (), stop: Sequence[str] = ()):
        self.tok, self.budget, self.stop_ids = tokenizer, budget, frozenset(stop_ids)
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []  # text tokens (stop tokens left out)
        self.text = ""  # decoded text, cut before a stop string
        self.streamed = 0  # characters of `text` already handed out
        self.finish: str | None = None  # "stop" (stop token or string) or "length" (budget spent)
        self.stop_token = False  # ended on a stop token
        self.stopped_on: int | None = None  # which stop token
        self.cut = False  # ended on a stop string: `text` is shorter than the decoded tokens

    def accept(self, token: int) -> str:
        """Take the drawn token; return the new text that can be streamed now (maybe "")."""
        if token in self.stop_ids:
            self.finish, self.stop_token, self.stopped_on = "stop", True, token
        else:
            self.tokens.append(token)
            if self.tok is not None:
                self.text = self.tok.decode(self.tokens)
                hits = [self.text.find(s) for s in self.stop if s in self.text]
                if hits:
                    self.text, self.finish, self.cut = self.text[: min(hits)], "stop", True
        if self.finish is None and len(self.tokens) >= self.budget:
            self.finish = "length"
        safe = _safe_prefix(self.text, self.stop, final=self.finish is not None)
        delta, self.streamed = self.text[self.streamed: safe], max(safe, self.streamed)
        return delta


def generate_rows(model: GPT, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *, stop_ids: Collection[int] = (),
                  pad_id: int = 0, tokenizer=None, on_text: Callable[[int, str], None] | None = None,
                  compile: bool = False) -> list[RowDecoder]:
    """Generate from id prompts; each row's finished `RowDecoder`. With a `tokenizer` rows also decode text (cut at
    `cfg.stop`) and `on_text(row, piece)` receives each row's text as soon as it is safe to show."""
    budget = min(cfg.max_new_tokens, model.config.block_size - max(map(len, prompts), default=0))
    rows = [RowDecoder(tokenizer, budget, stop_ids, cfg.stop) for _ in prompts]
    return _decode_rows(model, prompts, cfg, rows, pad_id=pad_id, on_text=on_text, compile=compile)


def _decode_rows(model: GPT, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, rows: list[RowDecoder], *,
                 pad_id: int, on_text: Callable[[int, str], None] | None, compile: bool = False) -> list[RowDecoder]:
    """Decode until every row's `RowDecoder` has ended it."""
    for nxt in generate_ids(model, prompts, cfg, pad_id=pad_id, compile=compile):
        for i, (row, tok) in enumerate(zip(rows, nxt.tolist(), strict=True)):
            piece = row.accept(tok) if row.finish is None else ""
            if piece and on_text is not None:
                on_text(i, piece)
        if all(r.finish is not None for r in rows):
            break
    return rows


def generate(model: GPT, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]], cfg: SamplingConfig, *,
             stop_ids: Sequence[int] | None = None, on_text: Callable[[int, str], None] | None = None,
             compile: bool = False) -> list[Completion]:
    """Generate a completion per prompt (strings are encoded; id lists are used as given).

    `on_text(row, piece)` receives newly decoded text as it is produced (streaming); text is held
    back while it ends in an incomplete UTF-8 sequence or could be the start of a stop string.
    """
    ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    rows = generate_rows(model, ids, cfg, stop_ids=[tokenizer.eot_id] if stop_ids is None else stop_ids,
                         pad_id=tokenizer.eot_id, tokenizer=tokenizer, on_text=on_text, compile=compile)
    # text cut at a stop string: re-encode what is kept
    return [Completion(r.text, tokenizer.encode(r.text) if r.cut else r.tokens, r.finish or "length") for r in rows]


@dataclass
class CallTurn:
    """A turn generated with tool calls: its calls as (query, result) in order, then the final text."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" or "length"
    calls: list[tuple[str, str]]
    capped: bool  # the call cap was reached: the last round could not call and had to answer


def generate_with_calls(model: GPT, tokenizer, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                        stop_ids: Sequence[int], call_id: int, run_call: Callable[[str], tuple[str, list[int]]],
                        max_calls: int = 3, pad_id: int = 0, on_text: Callable[[int, str], None] | None = None,
                        on_call: Callable[[int, str, str], None] | None = None) -> list[CallTurn]:
    """The tool loop (LaMDA): decode every row; a row whose output starts with `call_id` and ends at a stop token
    is a call: `run_call(query)` returns (result, ids to force in after the call) and the row decodes on from the
    call and the forced ids. After `max_calls` calls a row may not call again (`call_id` is banned), so it answers.
    Each decoding round has the token budget `cfg.max_new_tokens`; `on_text(row, piece)` streams only the final
    answers, `on_call(row, query, result)` reports each call."""
    block = model.config.block_size
    ctx = [list(p) for p in prompts]
    calls: list[list[tuple[str, str]]] = [[] for _ in prompts]
    out: list[CallTurn | None] = [None] * len(prompts)
    active = list(range(len(prompts)))
    for round_ in range(max_calls + 1):
        last = round_ == max_calls
        budget = min(cfg.max_new_tokens, block - max(len(ctx[i]) for i in active))
        rows = [RowDecoder(tokenizer, budget, stop_ids, cfg.stop) for _ in active]

        def show(j: int, piece: str, rows=rows, active=active) -> None:
            if on_text is not None and rows[j].tokens[:1] != [call_id]:
                on_text(active[j], piece)

        _decode_rows(model, [ctx[i] for i in active], replace(cfg, ban_ids=[*cfg.ban_ids, call_id]) if last else cfg,
                     rows, pad_id=pad_id, on_text=show)
        again = []
        for i, r in zip(active, rows, strict=True):
            if r.tokens[:1] == [call_id] and r.stop_token:
                query = tokenizer.decode(r.tokens[1:])
                result, forced = run_call(query)
                calls[i].append((query, result))
                if on_call is not None:
                    on_call(i, query, result)
                ctx[i] += [*r.tokens, r.stopped_on, *forced]
                if len(ctx[i]) < block:
                    again.append(i)
                    continue
                out[i] = CallTurn("", [], "length", calls[i], False)  # no room left to answer
                continue
            text = r.text if r.tokens[:1] != [call_id] else ""  # a call cut by the budget is no answer
            out[i] = CallTurn(text, r.tokens, r.finish or "length", calls[i], last and max_calls > 0)
        active = again
        if not active:
            break
    return [t for t in out if t is not None]


def _safe_prefix(text: str, stops: Sequence[str], final: bool) -> int:
    """How much of `text` can be shown now without risking a later change."""
    if final:
        return len(text)
    end = len(text)
    while end and text[end - 1] == "\ufffd":  # an incomplete multi-byte character at the end
        end -= 1
    for s in stops:  # a suffix that may grow into a stop string must wait
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end


def stream_to_terminal(model: GPT, tokenizer, prompt: str, cfg: SamplingConfig, file=None,
                       compile: bool = False) -> list[Completion]:
    """Print the prompt's completions as they are generated (row 0 live; others after)."""
    file = file or sys.stdout

    def show(row: int, piece: str) -> None:
        if row == 0:
            file.write(piece)
            file.flush()

    completions = generate(model, tokenizer, [prompt] * cfg.num_samples, cfg, on_text=show, compile=compile)
    file.write("\n")
    for i, c in enumerate(completions[1:], start=2):
        file.write(f"\n--- sample {i} ---\n{prompt}{c.text}\n")
    return completions
