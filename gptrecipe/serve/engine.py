"""The generation engine: one thread owns the model and decodes every running request in one batch.

Continuous batching over the model's left-padded KV cache. Requests wait in a queue; before every decoding
step the engine thread admits what is queued: the new prompts go through the model together (one prefill
pass), and their keys and values are merged into the running batch's cache, right-aligned with the
rows already there (left padding, positions counted from each row's first real token, so a row computes
exactly what it would alone). Each step then draws one token for every row with that row's own sampling
parameters (temperature, top-k, top-p, seed), streams text deltas (held back while they could still
become a stop string) to the request's sink, and drops finished rows; columns that only padding uses
are cut off the left of the cache. A request that arrives mid-generation joins at the next step instead
of waiting for the batch to finish.

Sampling and each row's stop / hold-back / budget logic are the ones of `gptrecipe.sample` (`sample_next`,
`RowDecoder`), the cache surgery is `KVCache.merge` / `select` / `grow`; the engine adds per-row parameters,
per-token log-probabilities, and the prompt's log-probabilities (echo) from the prefill pass.

`compile=True` decodes through the sampler's compiled step (`compiled_decode_step`) instead: the running rows
live in the slots of a `StaticKVCache` whose shape moves between a few sizes (rows: powers of two from 2 up to
max_rows; columns: powers of two from 64 up to the context), so joining and leaving rows rarely copy the cache;
each admitted prompt is prefilled eagerly and copied into a free slot from column 0, each row writes its next
token at its own column. The step is one graph with symbolic rows and columns, compiled (GEMMs autotuned) by
`start` before the engine takes requests: about a minute on a small CPU the first time, less once inductor has
it on disk; it pays for a server, not for one short reply.

    engine = Engine(model, tok, stop_ids=ChatTemplate(tok).stop_ids).start()
    for ev in engine.stream([ids], GenParams(max_tokens=50, temperature=0.7)):
        print(ev.text, end="")
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..model import GPT, KVCache, StaticKVCache
from ..sample import (
    PromptTooLongError,
    RowDecoder,
    SamplingConfig,
    bucket,
    can_compile,
    compiled_decode_step,
    left_pad,
    sample_next,
)

log = logging.getLogger(__name__)


@dataclass
class GenParams:
    """Per-request sampling parameters (OpenAI's names)."""

    max_tokens: int = 256  # also capped by the room left in the context
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    stop: list[str] = field(default_factory=list)  # stop strings, not included in the text
    seed: int | None = None  # a request with a seed draws from its own generator: reproducible
    logprobs: int | None = None  # None: none; k: each generated token's log-probability and the top k
    prompt_logprobs: bool = False  # echo: each prompt token's log-probability (the first has none)
    stop_ids: Sequence[int] | None = None  # None: the engine's stop tokens
    ban_ids: Sequence[int] = ()  # tokens never drawn (the tool call token once a turn's call cap is reached)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=self.seed, stop=list(self.stop), ban_ids=list(self.ban_ids))


@dataclass
class TokenLogprob:
    token: int
    logprob: float | None  # the model's log-probability (before temperature / top-k / top-p)
    top: list[tuple[int, float]] = field(default_factory=list)  # the most likely tokens there, best first


@dataclass
class Event:
    """What the engine tells a request: new text of one choice, and its end."""

    choice: int  # prompt_index * n + sample_index
    text: str = ""
    tokens: list[int] = field(default_factory=list)  # tokens drawn since the last event (stop token included)
    logprobs: list[TokenLogprob] | None = None  # for `tokens`, when asked for
    finish_reason: str | None = None  # "stop", "length", or "error" on the choice's last event
    prompt_logprobs: list[TokenLogprob] | None = None  # once, before any text, when asked for
    error: str | None = None


@dataclass
class Choice:
    """A choice's events gathered: the whole completion."""

    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    error: str | None = None

    def add(self, ev: Event) -> None:
        self.text += ev.text
        self.tokens += ev.tokens
        if ev.logprobs is not None:
            self.logprobs = (self.logprobs or []) + ev.logprobs
        if ev.prompt_logprobs is not None:
            self.prompt_logprobs = ev.prompt_logprobs
        if ev.finish_reason is not None:
            self.finish_reason, self.error = ev.finish_reason, ev.error


@dataclass
class EngineStats:
    requests: int = 0
    rows: int = 0  # sequences generated (prompts x n)
    prefills: int = 0  # forward passes over newly admitted prompts (each admits every queued prompt that fits)
    steps: int = 0  # decoding forward passes, one token for every running row
    tokens: int = 0  # tokens generated
    max_rows: int = 0  # the most rows decoded together in one step


class EngineClosed(RuntimeError):
    """The engine was closed."""


@dataclass
class _Request:
    id: int
    n: int
    params: GenParams
    sink: Callable[[Event], None]
    stop_ids: frozenset[int]
    cancelled: bool = False


@dataclass
class _Job:  # one prompt of a request: n rows
    req: _Request
    index: int
    prompt: list[int]


class _Row:
    """One sequence being generated: its request, sampler, decoder, and the tokens not streamed yet."""

    def __init__(self, job: _Job, sample: int, budget: int, tokenizer):
        self.req = job.req
        self.choice = job.index * job.req.n + sample
        self.params = job.req.params
        self.cfg = self.params.sampling()
        self.generator: torch.Generator | None = None
        if self.params.seed is not None:  # sample 0 uses the seed itself, the others seeds derived from it
            seed = self.params.seed if sample == 0 else hash((self.params.seed, sample)) & 0x7FFF_FFFF_FFFF_FFFF
            self.generator = torch.Generator().manual_seed(seed)
        self.dec = RowDecoder(tokenizer, budget, job.req.stop_ids, self.params.stop)
        self.pending: list[int] = []
        self.pending_lp: list[TokenLogprob] = []
        self.slot = -1  # compiled decoding: the row's slot in the static cache
        self.length = len(job.prompt)  # compiled decoding: the column its next token goes to

    def accept(self, token: int, lp: TokenLogprob | None) -> Event | None:
        """Take the drawn token; the event to stream, if there is something to say."""
        self.pending.append(token)
        if lp is not None:
            self.pending_lp.append(lp)
        text = self.dec.accept(token)
        if not text and self.dec.finish is None:
            return None
        ev = Event(self.choice, text, self.pending, self.pending_lp if self.params.logprobs is not None else None,
                   self.dec.finish)
        self.pending, self.pending_lp = [], []
        return ev


def _token_logprobs(lp: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprob]:
    """(T, V) log-probabilities and the (T,) tokens taken -> one TokenLogprob per row."""
    chosen = lp.gather(-1, tokens[:, None]).squeeze(-1).tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
    if k > 0:  # topk(0) would still cost a pass over the vocabulary
        top_v, top_i = lp.topk(min(k, lp.size(-1)), dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(top_i.tolist(), top_v.tolist(), strict=True)]
    return [TokenLogprob(t, c, top) for t, c, top in zip(tokens.tolist(), chosen, tops, strict=True)]


def leave_threads_to_engine() -> int:
    """For a process whose main thread does I/O while an `Engine` computes (the server, the terminal chat): call
    it before loading the model. The main thread keeps one thread for its torch ops; returns the thread count
    to give the engine (`Engine(threads=...)`).

    Why: PyTorch's CPU thread pool is GNU OpenMP's, which gives each thread that runs a parallel region its own
    team of workers and, once a process has more such workers than CPUs, stops spinning between regions, so that
    every region pays a wake-up. Compiled kernels open a region each: the compiled decode step ran 3-6x slower
    in the engine thread after the main thread had used its team to load the model (bench/RESULTS.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this thread's; a thread started later gets its own setting (the engine: `threads`)
    return threads


class Engine:
    """A background thread that generates for every submitted request at once (continuous batching)."""

    def __init__(self, model: GPT, tokenizer, *, stop_ids: Sequence[int] | None = None, max_rows: int = 32,
                 compile: bool = False, threads: int | None = None):
        """`stop_ids`: tokens that end a reply by default (chat: <|end|>; base model: <|endoftext|>);
        `max_rows`: the most sequences decoded together (more wait in the queue); `compile`: decode through
        the compiled static-shape step (models with sparse attention layers decode eagerly); `threads`: torch
        threads of the engine thread (default: the creating thread's; see `leave_threads_to_engine`)."""
        self.model = model.eval()
        self.tok = tokenizer
        self.block = model.config.block_size
        self.vocab = model.config.vocab_size
        self.stop_ids = frozenset(stop_ids if stop_ids is not None else [tokenizer.eot_id])
        self.pad_id = tokenizer.eot_id
        self.max_rows = max_rows
        self.device = next(model.parameters()).device
        self.stats = EngineStats()
        self.threads = threads or torch.get_num_threads()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._requests: dict[int, _Request] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._rows: list[_Row] = []
        self._cache: KVCache | None = None
        self._logits: torch.Tensor | None = None  # (rows, V): the next token's logits of every running row
        self.compile = compile and can_compile(model)
        self._static: StaticKVCache | None = None  # compiled decoding: the running rows' slots
        self._decode = compiled_decode_step(model, dynamic=True) if self.compile else None

    def start(self) -> Engine:
        """Start the engine thread; with `compile`, first compile the decode step (a minute on a small CPU the
        first time, less once inductor has it on disk), so no request waits for it."""
        if self._thread is None:
            self._ready = threading.Event()
            self._thread = threading.Thread(target=self._loop, name="gptrecipe-engine", daemon=True)
            self._thread.start()
            self._ready.wait()
        return self

    def warmup(self) -> None:
        """Compile the decode step on a dummy batch. Its one graph serves every row count >= 2 and cache length
        (`compiled_decode_step(dynamic=True)`); the dummy shape is where the GEMMs are autotuned: the most rows,
        the shortest column bucket (two different sizes, or dynamo would assume rows == columns)."""
        rows = self._row_bucket(self.max_rows)
        cols = bucket(1, self.block)
        if cols == rows:
            cols = bucket(cols + 1, self.block)
        log.info("compiling the decode step (%d rows x %d columns; once per process)", rows, cols)
        with torch.inference_mode():  # as in the engine thread: inference tensors (another graph otherwise)
            st = StaticKVCache(self.model.config, rows, cols, self.device, self._dtype())
            st.step_to(0)
            self._decode(torch.zeros(rows, 1, dtype=torch.long, device=self.device), st)

    @staticmethod
    def _row_bucket(n: int) -> int:
        """The static cache's row count for n rows: a power of two, at least 2 (a compiled graph's dynamic
        dimension must not be 1)."""
        return max(2, 1 << (n - 1).bit_length())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> int:
        """Sequences being generated or waiting to start."""
        with self._cond:
            return len(self._rows) + sum(j.req.n for j in self._pending)

    def check_prompt(self, prompt: Sequence[int]) -> list[int]:
        """A prompt as a list of valid ids; PromptTooLongError if it does not fit in the context."""
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("a prompt needs at least one token")
        if len(ids) > self.block:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens but the model's context is {self.block} tokens")
        bad = [t for t in ids if not 0 <= t < self.vocab]
        if bad:
            raise ValueError(f"token ids must be in 0..{self.vocab - 1}, got {bad[:5]}")
        return ids

    def submit(self, prompts: Sequence[Sequence[int]], params: GenParams, sink: Callable[[Event], None], *,
               n: int = 1) -> int:
        """Queue `n` samples of each prompt; `sink(event)` is called from the engine thread. Returns an id
        for `cancel`. Raises PromptTooLongError / ValueError on a prompt that cannot be generated from."""
        if not prompts:
            raise ValueError("no prompts")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        checked = [self.check_prompt(p) for p in prompts]
        stop_ids = frozenset(params.stop_ids) if params.stop_ids is not None else self.stop_ids
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed")
            req = _Request(next(self._ids), n, params, sink, stop_ids)
            self._requests[req.id] = req
            self._pending.extend(_Job(req, i, p) for i, p in enumerate(checked))
            self.stats.requests += 1
            self._cond.notify_all()
        return req.id

    def cancel(self, request_id: int) -> None:
        """Stop generating for a request (its rows leave the batch at the next step; no more events)."""
        with self._cond:
            req = self._requests.get(request_id)
            if req is not None:
                req.cancelled = True
                self._cond.notify_all()

    def stream(self, prompts: Sequence[Sequence[int]], params: GenParams, *, n: int = 1) -> Iterator[Event]:
        """Events of a request, in the calling thread, until every choice has finished.
        Leaving the loop early (break, Ctrl-C) cancels the request."""
        q: queue.Queue[Event] = queue.Queue()
        rid = self.submit(prompts, params, q.put, n=n)
        left = len(prompts) * n
        try:
            while left:
                try:  # wait in short slices so Ctrl-C reaches the main thread promptly
                    ev = q.get(timeout=0.1)
                except queue.Empty:
                    if self._closed:
                        raise EngineClosed("the engine was closed") from None
                    continue
                left -= ev.finish_reason is not None
                yield ev
        finally:
            self.cancel(rid)

    def complete(self, prompts: Sequence[Sequence[int]], params: GenParams, *, n: int = 1) -> list[Choice]:
        """Every choice of a request, whole (blocking)."""
        choices = [Choice(i) for i in range(len(prompts) * n)]
        for ev in self.stream(prompts, params, n=n):
            choices[ev.choice].add(ev)
        return choices

    async def astream_batches(self, prompts: Sequence[Sequence[int]], params: GenParams, *,
                              n: int = 1) -> AsyncIterator[list[Event]]:
        """`stream` for asyncio, in batches: every event that arrived since the last batch (a decode step makes
        one per row, so a server that keeps up gets one at a time and one that falls behind writes fewer, larger
        chunks). The engine thread wakes the event loop only when it is waiting (one wake-up per batch, not per
        event). Closing the iterator cancels."""
        loop = asyncio.get_running_loop()
        arrived: deque[Event] = deque()  # appended by the engine thread, emptied here (deque ops are atomic)
        wake = asyncio.Event()
        waiting = False

        def sink(ev: Event) -> None:
            nonlocal waiting
            arrived.append(ev)
            if waiting:  # set after the append: the waiting side checks `arrived` again before it sleeps
                waiting = False
                loop.call_soon_threadsafe(wake.set)

        rid = self.submit(prompts, params, sink, n=n)
        left = len(prompts) * n
        try:
            while left:
                if not arrived:
                    wake.clear()
                    waiting = True
                    if not arrived:
                        await wake.wait()
                    waiting = False
                batch = []
                while arrived:
                    batch.append(arrived.popleft())
                left -= sum(ev.finish_reason is not None for ev in batch)
                yield batch
        finally:
            self.cancel(rid)

    async def astream(self, prompts: Sequence[Sequence[int]], params: GenParams, *,
                      n: int = 1) -> AsyncIterator[Event]:
        """`stream` for asyncio: events arrive through the running loop; closing the iterator cancels."""
        async for batch in self.astream_batches(prompts, params, n=n):
            for ev in batch:
                yield ev

    async def acomplete(self, prompts: Sequence[Sequence[int]], params: GenParams, *,
                        n: int = 1) -> list[Choice]:
        choices = [Choice(i) for i in range(len(prompts) * n)]
        async for ev in self.astream(prompts, params, n=n):
            choices[ev.choice].add(ev)
        return choices

    # ---- the engine thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        try:  # compiled where it runs: in this thread (inductor fixes each kernel's thread count when it compiles)
            if self.compile:
                self.warmup()
        except Exception:
            log.exception("compiling the decode step failed; decoding eagerly")
            self.compile, self._decode = False, None
        finally:
            self._ready.set()
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._pending and not self._rows:
                        self._cond.wait()
                    if self._closed:
                        break
                    jobs = self._admit()
                try:
                    if jobs:
                        self._prefill(jobs)
                    if self._rows:
                        self._step()
                except Exception as e:  # a bug or out of memory: fail what is running, keep serving
                    log.exception("generation failed")
                    self._fail([*self._rows], f"generation failed: {type(e).__name__}: {e}", jobs)
        self._fail([*self._rows], "the engine was closed", list(self._pending))

    def _admit(self) -> list[_Job]:
        """Queued prompts that fit in the batch (at least one when nothing runs); cancelled ones dropped."""
        jobs, rows = [], len(self._rows)
        while self._pending:
            job = self._pending[0]
            if job.req.cancelled:
                self._pending.popleft()
                self._requests.pop(job.req.id, None)
                continue
            if rows and rows + job.req.n > self.max_rows:
                break
            jobs.append(self._pending.popleft())
            rows += job.req.n
        return jobs

    def _emit(self, req: _Request, ev: Event) -> None:
        if req.cancelled:
            return
        try:
            req.sink(ev)
        except Exception as e:  # the listener is gone (closed event loop): stop generating for it
            log.warning("request %d: its event sink failed (%r); cancelling it", req.id, e)
            req.cancelled = True

    def _finish_request_if_done(self, req: _Request) -> None:
        if all(r.req is not req for r in self._rows) and all(j.req is not req for j in self._pending):
            with self._cond:
                self._requests.pop(req.id, None)

    def _fail(self, rows: list[_Row], message: str, jobs: list[_Job] | None = None) -> None:
        """End `rows`, and every choice of the `jobs` whose request has no row among them, with an error."""
        jobs = [j for j in jobs or [] if not any(r.req is j.req for r in rows)]
        failed = [(r.req, r.choice) for r in rows]
        failed += [(j.req, j.index * j.req.n + s) for j in jobs for s in range(j.req.n)]
        for req, choice in failed:
            self._emit(req, Event(choice, finish_reason="error", error=message))
        self._rows, self._cache, self._logits, self._static = [], None, None, None
        with self._cond:
            for req, _ in failed:
                self._requests.pop(req.id, None)

    def _prefill(self, jobs: list[_Job]) -> None:
        """Run the new prompts through the model together and merge them into the running batch."""
        model = self.model
        ids, pads = left_pad([j.prompt for j in jobs], self.pad_id, self.device)
        width = ids.size(1)
        tmp = model.new_cache(len(jobs), max_len=width, pad=pads)
        h = model.hidden_states(ids, tmp)
        last = model.lm_head(h[:, -1])
        self.stats.prefills += 1
        new_rows, src = [], []
        for j, job in enumerate(jobs):
            p = len(job.prompt)
            prompt_lp = None
            if job.req.params.prompt_logprobs:  # echo: the log-probability of each prompt token given the ones before
                lp = F.log_softmax(model.lm_head(h[j, width - p: width - 1]).float(), dim=-1)
                prompt_lp = [TokenLogprob(job.prompt[0], None)]
                prompt_lp += _token_logprobs(lp, ids[j, width - p + 1:], job.req.params.logprobs or 0)
            budget = min(job.req.params.max_tokens, self.block - p)
            for s in range(job.req.n):
                row = _Row(job, s, budget, self.tok)
                self.stats.rows += 1
                if prompt_lp is not None:
                    self._emit(job.req, Event(row.choice, prompt_logprobs=prompt_lp))
                if budget <= 0:  # nothing to generate (max_tokens 0, or the prompt fills the context)
                    self._emit(job.req, Event(row.choice, finish_reason="length"))
                    continue
                new_rows.append(row)
                src.append(j)
        for job in jobs:
            self._finish_request_if_done(job.req)
        if not new_rows:
            return
        src_t = torch.tensor(src, device=self.device)
        if self.compile:
            self._rows += new_rows
            self._fit_static()
            used = {r.slot for r in self._rows}
            free = iter(s for s in range(self._static.batch_size) if s not in used)
            for row, j in zip(new_rows, src, strict=True):
                row.slot = next(free)
                row.length = self._static.put(row.slot, tmp, j)
        else:
            # the admitted rows (without the columns only their padding uses) join the running ones; spare room
        # saves a copy (grow) on the next steps, and is never used past the context
            self._cache = KVCache.merge([c for c in (self._cache, tmp.select(src_t, trim=True)) if c is not None],
                                        room=64)
            self._rows += new_rows
        logits = last[src_t]
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row, each with its row's parameters; rows that share them are drawn together, a row with
        a seed from its own generator (the token it would get alone)."""
        out = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self._rows):
            cfg = row.cfg
            seeded = row.generator is not None and cfg.temperature > 0
            key = (seeded, (cfg.temperature, cfg.top_k, cfg.top_p) if cfg.temperature > 0 else (0,), tuple(cfg.ban_ids))
            groups.setdefault(key, []).append(i)
        for (seeded, *_), idx in groups.items():
            sel = torch.tensor(idx, device=logits.device)
            gens = [self._rows[i].generator for i in idx] if seeded else None
            out[sel] = sample_next(logits[sel], self._rows[idx[0]].cfg, gens)
        return out

    def _step(self) -> None:
        """Draw a token for every row, stream it, drop finished rows, and feed the rest one step."""
        rows, logits = self._rows, self._logits
        assert logits is not None and (self._cache is not None or self._static is not None)
        tokens = self._sample(logits)
        want_lp = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        lps: dict[int, TokenLogprob] = {}
        if want_lp:
            sel = torch.tensor(want_lp, device=logits.device)
            lp = F.log_softmax(logits[sel].float(), dim=-1)
            k = max(rows[i].params.logprobs or 0 for i in want_lp)
            for i, tl in zip(want_lp, _token_logprobs(lp, tokens[sel], k), strict=True):
                tl.top = tl.top[: rows[i].params.logprobs]
                lps[i] = tl
        self.stats.tokens += len(rows)
        for i, (row, tok) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if row.req.cancelled:
                continue
            ev = row.accept(tok, lps.get(i))
            if ev is not None:
                self._emit(row.req, ev)
        keep = [i for i, r in enumerate(rows) if r.dec.finish is None and not r.req.cancelled]
        done = {id(r.req): r.req for r in rows if r.dec.finish is not None or r.req.cancelled}
        self._rows = [rows[i] for i in keep]
        if not keep:
            self._cache, self._logits, self._static = None, None, None
        elif self.compile:
            pass
        elif len(keep) < len(rows):  # also drop the cache columns that only padding uses now
            self._cache = self._cache.select(torch.tensor(keep, device=self.device), trim=True)
        for req in done.values():
            self._finish_request_if_done(req)
        if not self._rows:
            return
        self.stats.max_rows = max(self.stats.max_rows, len(self._rows))
        self.stats.steps += 1
        fed = tokens[torch.tensor(keep, device=tokens.device)]
        if self.compile:
            self._logits = self._compiled_step(fed)
            return
        if self._cache.room < 1:  # doubling keeps the copies few
            self._cache = self._cache.grow(min(self.block, 2 * self._cache.max_len))
        out, _ = self.model(fed[:, None], cache=self._cache)
        self._logits = out[:, -1]

    def _fit_static(self) -> None:
        """Make the static cache fit the running rows: more slots or columns when they need them (the next
        bucket), fewer slots when at most a quarter are used; rows keep their place unless it moves."""
        n, longest = len(self._rows), max(r.length for r in self._rows) + 1  # + the column the next token takes
        rows, cols = self._row_bucket(n), bucket(longest, self.block)
        st = self._static
        if st is not None and st.batch_size >= rows and st.max_len >= cols and n > st.batch_size // 4:
            return
        cols = max(cols, st.max_len if st is not None else 0)  # columns only grow (rows may be long again)
        if st is None:
            self._static = StaticKVCache(self.model.config, rows, cols, self.device, self._dtype())
        else:
            old = [r.slot for r in self._rows if r.slot >= 0]
            self._static = st.resized(self.model.config, old, rows, cols)
            moved = iter(range(len(old)))
            for r in self._rows:
                if r.slot >= 0:
                    r.slot = next(moved)

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _compiled_step(self, fed: torch.Tensor) -> torch.Tensor:
        """Feed each running row's token at its own column of its slot; the rows' next logits."""
        self._fit_static()
        st = self._static
        slots = torch.tensor([r.slot for r in self._rows], device=self.device)
        tokens = torch.zeros(st.batch_size, 1, dtype=torch.long, device=self.device)  # free slots: a dummy token
        tokens[slots, 0] = fed
        cols = torch.zeros(st.batch_size, dtype=torch.long, device=self.device)  # ... at column 0 of their own
        cols[slots] = torch.tensor([r.length for r in self._rows], device=self.device)
        st.step_to(cols)
        for r in self._rows:
            r.length += 1
        return self._decode(tokens, st)[slots]
