"""Generation and serving throughput: gptrecipe's engine vs Hugging Face `transformers` `generate`.

    .venv/bin/python bench/bench_serve.py                      # `small` shape (6L/6H/d384/T256/V4096), this machine
    .venv/bin/python bench/bench_serve.py --skip-server --new-tokens 64
    python bench/bench_serve.py --skip-server --device cuda    # the generation part on a GPU (no engine rows)

1. Generation tokens/s on the same weights (ours mapped into GPT2LMHeadModel: same architecture, tied head,
   learned positions, pre-LN, tanh GELU), greedy, a fixed number of new tokens (no early stop), batch 1 and
   batch 16 of 16-token prompts: the plain sampler (`gptrecipe.sample.generate_ids`, eager and with the
   compiled static-cache step), the serving engine (`gptrecipe.serve.engine.Engine`, continuous batching, eager
   and compiled) and
   HF `generate` (KV cache). Ours decode in `--dtype` (auto: bf16 where the CPU has native bf16, as the CLI
   loads a model); HF runs in fp32 (its default) and in the same precision. Within one precision the greedy
   tokens of every implementation are checked to be identical first. Medians of --repeats, alternating.
   Each row also gets its decoding's memory-bandwidth limit: a decode step reads every weight once (the tied
   head's too) plus the KV cache so far, so tokens/s <= rows x (read bandwidth) / (bytes read per step), with the
   read bandwidth measured here (a sum over a 512 MB tensor, the same threads); the table says what fraction of
   that limit each implementation reaches.
2. The server (`gptrecipe serve` in a subprocess, eager and `--compile`) under 1, 8 and 32 concurrent streaming
   clients (aiohttp, closed loop, a fixed number of requests each): completion tokens/s, tokens per CPU-second of
   the server process (less disturbed by other load on a shared machine) and p50 / p95 time to first token.
Needs `transformers` (bench extra) and `aiohttp` (dev extra).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from gptrecipe.checkpoint import CheckpointMeta, save_checkpoint
from gptrecipe.model import GPT, GPTConfig
from gptrecipe.runtime import pick_device, pick_dtype
from gptrecipe.sample import SamplingConfig, generate_ids
from gptrecipe.serve.engine import Engine, GenParams, leave_threads_to_engine


def hf_copy(model: GPT):
    """GPT2LMHeadModel with our weights (Conv1D stores Linear weights transposed)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hc = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                    n_head=c.n_head, n_inner=c.mlp_ratio * c.n_embd, activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                    bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    hf = GPT2LMHeadModel(hc).eval()
    ours = model.state_dict()
    state = {"transformer.wte.weight": ours["wte.weight"], "transformer.wpe.weight": ours["wpe.weight"],
             "transformer.ln_f.weight": ours["ln_f.weight"], "transformer.ln_f.bias": ours["ln_f.bias"],
             "lm_head.weight": ours["wte.weight"]}
    for i in range(c.n_layer):
        for ours_name, hf_name in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.c_attn", "attn.c_attn"),
                                   ("attn.c_proj", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"),
                                   ("mlp.c_proj", "mlp.c_proj")):
            w = ours[f"blocks.{i}.{ours_name}.weight"]
            state[f"transformer.h.{i}.{hf_name}.weight"] = w if ours_name.startswith("ln") else w.t().contiguous()
            state[f"transformer.h.{i}.{hf_name}.bias"] = ours[f"blocks.{i}.{ours_name}.bias"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("attn.bias" in m or "masked_bias" in m for m in missing), (missing, unexpected)
    return hf


def run_sampler(model: GPT, prompts: torch.Tensor, new: int, compile: bool = False) -> list[list[int]]:
    rows = [[] for _ in range(len(prompts))]
    for nxt in generate_ids(model, prompts.tolist(), SamplingConfig(max_new_tokens=new, temperature=0),
                            compile=compile):
        for r, t in zip(rows, nxt.tolist(), strict=True):
            r.append(t)
    return rows


def run_engine(engine: Engine, prompts: torch.Tensor, new: int) -> list[list[int]]:
    params = GenParams(max_tokens=new, temperature=0, stop_ids=[])
    return [c.tokens for c in engine.complete(prompts.tolist(), params)]


def run_hf(hf, prompts: torch.Tensor, new: int) -> list[list[int]]:
    out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
                      do_sample=False, pad_token_id=0, use_cache=True)
    return out[:, prompts.size(1):].tolist()


HF_FP32 = "HF `generate` fp32 (GPT2LMHeadModel)"
THREADS = 0  # torch threads of each measurement (the main thread keeps one: see `leave_threads_to_engine`)
DEVICE = torch.device("cpu")  # --device: where the generation part runs (the server part always runs on CPU)


def timed_in_thread(fn, *args) -> tuple[float, object]:
    """(seconds, result) of fn(*args) in a thread of its own with all the torch threads, which exits afterwards.
    Every implementation runs this way (the engine in its own thread): with GNU OpenMP, a second thread that has
    used its own team of workers (here: the main thread) makes every parallel region of the measured thread pay
    a wake-up once there are more workers than CPUs (3-6x slower compiled decoding on 2 cores; measured)."""
    out: list = []

    def run() -> None:
        torch.set_num_threads(THREADS)
        with torch.no_grad():
            t = time.perf_counter()
            result = fn(*args)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize(DEVICE)
            out.extend([time.perf_counter() - t, result])

    th = threading.Thread(target=run)
    th.start()
    th.join()
    if not out:
        raise RuntimeError("the measured function failed (traceback above)")
    return out[0], out[1]


def read_bandwidth(gib: float = 0.5, repeats: int = 5) -> float:
    """Bytes/s of reading a tensor much larger than the caches (the median of `repeats` sums)."""
    x = torch.ones(int(gib * 2**30) // 4, device=DEVICE)
    timed_in_thread(x.sum)  # warm-up: page the tensor in
    seconds = statistics.median(timed_in_thread(x.sum)[0] for _ in range(repeats))
    return x.numel() * 4 / seconds


def bytes_per_step(model: GPT, dtype: torch.dtype, rows: int, prompt_len: int, new: int) -> float:
    """Bytes one decode step reads on average: every weight once (not the position table: one row of it) and
    the KV cache of every row at its mean length (prompt + half the new tokens)."""
    size = torch.tensor([], dtype=dtype).element_size()
    weights = model.num_params() - model.wpe.weight.numel()
    cfg = model.config
    kv = 2 * cfg.n_layer * cfg.n_embd * (prompt_len + new / 2) * rows
    return (weights + kv) * size


def bench_generation(model: GPT, tok, args) -> list[dict]:
    dtype = pick_dtype(args.dtype, DEVICE)
    bandwidth = read_bandwidth(gib=0.5 if DEVICE.type == "cpu" else 4.0)
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s (sum over a tensor far larger than the caches, on {DEVICE})",
          flush=True)
    fast = copy.deepcopy(model).to(DEVICE, dtype)  # ours as `--dtype auto` loads it
    hf = hf_copy(model).to(DEVICE)
    model = model.to(DEVICE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.randint(16, model.config.vocab_size, (2, 24), generator=g).to(DEVICE)
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    print(f"max |logits ours - HF| = {diff:.2e} (fp32); ours decodes in {dtype}", flush=True)
    name = str(dtype).removeprefix("torch.")
    # (name, runner, group): the greedy tokens of one group must be identical (same weights, same precision)
    runners = [(f"gptrecipe sampler {name}, eager", lambda p: run_sampler(fast, p, args.new_tokens), name),
               (f"gptrecipe sampler {name}, compiled", lambda p: run_sampler(fast, p, args.new_tokens, True), name),
               ("gptrecipe sampler fp32, eager", lambda p: run_sampler(model, p, args.new_tokens), "fp32"),
               (HF_FP32, lambda p: run_hf(hf, p, args.new_tokens), "fp32")]
    if dtype != torch.float32:
        hf_same = hf_copy(model).to(DEVICE, dtype)  # HF's bf16 rounds in another order: its own group
        runners.append((f"HF `generate` {name}", lambda p: run_hf(hf_same, p, args.new_tokens), "hf " + name))
    if args.only:
        runners = [r for r in runners if re.search(args.only, r[0])] + [r for r in runners if r[0] == HF_FP32]
    engine_names = {f"gptrecipe engine {name} (continuous batching)": False,
                    f"gptrecipe engine {name}, compiled (continuous batching)": True}
    rows = []
    for batch in args.batches:
        prompts = torch.randint(16, model.config.vocab_size, (batch, args.prompt_len), generator=g).to(DEVICE)
        # warm-up (and compilation), the correctness check
        outs = {n: timed_in_thread(fn, prompts)[1] for n, fn, _ in runners}
        times = {n: [] for n, *_ in runners}
        for _ in range(args.repeats):  # alternating
            for n, fn, _ in runners:
                times[n].append(timed_in_thread(fn, prompts)[0])
        # the engines are measured apart: while an engine's thread lives, torch work in another thread is slowed
        # (two OpenMP teams on 2 cores, see timed_in_thread), which would bias the alternation
        for engine_name, compiled in engine_names.items():
            if (args.only and not re.search(args.only, engine_name)) or DEVICE.type != "cpu":
                continue  # the engine's bench runs on CPU (its thread layout is the CPU's concern)
            with Engine(fast, tok, stop_ids=[], max_rows=64, compile=compiled, threads=THREADS) as engine:
                outs[engine_name] = run_engine(engine, prompts, args.new_tokens)  # warm-up (and compilation)
                times[engine_name] = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    run_engine(engine, prompts, args.new_tokens)
                    times[engine_name].append(time.perf_counter() - t)
        groups = {n: grp for n, _, grp in runners} | dict.fromkeys(engine_names, name)
        same = {grp: len({json.dumps(outs[n]) for n in outs if groups[n] == grp}) == 1 for grp in groups.values()}
        tps = {n: batch * args.new_tokens / statistics.median(t) for n, t in times.items()}
        # HF in our precision (HF fp32 when that is ours); None when `--only` left it out
        same_hf = tps[HF_FP32] if dtype == torch.float32 else tps.get(f"HF `generate` {name}")
        for n in tps:
            grp = groups[n]
            step_dtype = dtype if grp in (name, "hf " + name) else torch.float32
            limit = batch * bandwidth / bytes_per_step(model, step_dtype, batch, args.prompt_len, args.new_tokens)
            rows.append({"batch": batch, "impl": n, "tokens_per_s": tps[n], "vs_hf": tps[n] / tps[HF_FP32],
                         "vs_hf_same_dtype": tps[n] / same_hf if grp == name and same_hf else None,
                         "same_tokens": same[grp],
                         "bandwidth_limit": limit})
            vs_same = f"  {tps[n] / same_hf:.2f}x HF {name}" if grp == name and same_hf else ""
            print(f"batch {batch:>2}  {n:<44} {tps[n]:>9.0f} tokens/s  {tps[n] / tps[HF_FP32]:.2f}x HF fp32"
                  f"{vs_same}  {tps[n] / limit:.0%} of the bandwidth limit {limit:,.0f}"
                  f"{'' if same[grp] else '  (tokens differ within the group!)'}", flush=True)
    return rows


# ---- the server under concurrent streaming clients ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(session, url: str, body: dict) -> tuple[float, int, float]:
    """(time to first token, completion tokens, total time) of one streamed completion."""
    t0 = time.perf_counter()
    ttft, n = None, 0
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                n = obj["usage"]["completion_tokens"]
            elif obj["choices"] and obj["choices"][0]["text"] and ttft is None:
                ttft = time.perf_counter() - t0
    return ttft if ttft is not None else float("nan"), n, time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): the server's CPU cost per token is a measure that
    other load on a shared machine disturbs far less than its wall-clock rate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load_level(url: str, clients: int, requests_each: int, body: dict) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                     connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client(i: int) -> list[tuple[float, int, float]]:
            return [await one_request(session, url, {**body, "seed": 1000 * i + r}) for r in range(requests_each)]

        t0 = time.perf_counter()
        results = [x for xs in await asyncio.gather(*(client(i) for i in range(clients))) for x in xs]
        wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_ms": 1000 * statistics.median(ttfts), "ttft_p95_ms": 1000 * p95}


def bench_server(ckpt: Path, args, compiled: bool = False) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, "-m", "gptrecipe", "serve", str(ckpt), "--port", str(port), "--feedback", "none",
           "--base", "--device", "cpu", "--max-batch", "32", "--dtype", args.dtype]
    cmd += ["--compile"] if compiled else []
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
                            if args.threads else {})}
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + (900 if compiled else 120)  # --compile compiles before it listens
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start: " + server.stderr.read()) from None
                time.sleep(0.2)
        body = {"model": ckpt.name, "prompt": "ROMEO: What light through yonder window breaks? It is the",
                "max_tokens": args.server_tokens, "temperature": 1.0, "stream": True,
                "stream_options": {"include_usage": True}, "stop": ["<never>"]}
        asyncio.run(load_level(url + "/v1/completions", 2, 1, body))  # warm-up
        rows = []
        mode = "compiled" if compiled else "eager"
        for clients in args.clients:
            each = max(1, args.server_requests // clients)
            cpu0 = cpu_seconds(server.pid)
            row = asyncio.run(load_level(url + "/v1/completions", clients, each, body))
            row["mode"] = mode
            row["tokens_per_cpu_s"] = row["tokens"] / max(cpu_seconds(server.pid) - cpu0, 1e-9)
            rows.append(row)
            print(f"server {mode:>8}, {clients:>2} clients: {row['requests']} requests, {row['tokens_per_s']:.0f} "
                  f"tokens/s ({row['tokens_per_cpu_s']:.0f} per CPU-second of the server), TTFT p50 "
                  f"{row['ttft_p50_ms']:.0f} ms, p95 {row['ttft_p95_ms']:.0f} ms", flush=True)
        return rows
    finally:
        server.terminate()
        server.wait(timeout=30)


def trained_tokenizer(vocab_size: int):
    """The default corpora's BPE tokenizer, trained in a child process: training in this one leaves it ~30%
    slower at decoding afterwards (measured; the tokenizer library's worker threads), which would bias the bench."""
    from gptrecipe.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as d:
        code = ("import sys; from gptrecipe.tokenizer import DEFAULT_INPUTS, Tokenizer, read_texts; "
                "Tokenizer.train(read_texts(DEFAULT_INPUTS, 1_000_000), int(sys.argv[1]), "
                "show_progress=False).save(sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, str(vocab_size), f"{d}/tokenizer.json"], check=True)
        return Tokenizer.from_file(f"{d}/tokenizer.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="configs/models preset (default %(default)s)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads here and in the server (0: torch's default)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--server-requests", type=int, default=64, help="requests per concurrency level (about)")
    ap.add_argument("--server-tokens", type=int, default=64, help="max_tokens of each server request")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--server-modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"],
                    help="the server's decoding: eager and/or `gptrecipe serve --compile` (default: both)")
    ap.add_argument("--only", help="regex: run only these generation implementations (and HF fp32, the baseline)")
    ap.add_argument("--dtype", default="auto", help="ours (and the server's) weights: auto (bf16 where native), fp32")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--device", default="cpu", help="where the generation part runs: cpu (default), cuda, auto")
    args = ap.parse_args()
    global THREADS, DEVICE
    THREADS = args.threads or torch.get_num_threads()
    DEVICE = pick_device(args.device)
    leave_threads_to_engine()  # this thread: one; every measurement: THREADS (see timed_in_thread)
    from gptrecipe.config import load_config

    cfg = load_config(GPTConfig, "models", args.model)
    print(f"model {args.model}: {cfg.n_layer}L/{cfg.n_head}H/d{cfg.n_embd}/T{cfg.block_size}/V{cfg.vocab_size}, "
          f"torch {torch.__version__}, {THREADS} threads, {os.cpu_count()} CPUs", flush=True)
    tok = trained_tokenizer(cfg.vocab_size)
    cfg.vocab_size = max(cfg.vocab_size, tok.vocab_size)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    gen_rows = bench_generation(model, tok, args)
    model = model.cpu()  # the server part runs on CPU
    server_rows = []
    if not args.skip_server:
        with tempfile.TemporaryDirectory() as d:
            tok.save(Path(d) / "tokenizer.json")
            ckpt = save_checkpoint(Path(d) / "bench", model, CheckpointMeta.of("pretrain", cfg, tok),
                                   tokenizer_path=Path(d) / "tokenizer.json")
            for mode in args.server_modes:
                server_rows += bench_server(ckpt, args, compiled=mode == "compiled")
    print("\n| batch | implementation | tokens/s | vs HF fp32 | vs HF same precision | of the bandwidth limit |"
          "\n|---|---|---|---|---|---|")
    for r in gen_rows:
        same = f"{r['vs_hf_same_dtype']:.2f}x" if r["vs_hf_same_dtype"] is not None else ""
        print(f"| {r['batch']} | {r['impl']} | {r['tokens_per_s']:,.0f} | {r['vs_hf']:.2f}x | {same} | "
              f"{r['tokens_per_s'] / r['bandwidth_limit']:.0%} of {r['bandwidth_limit']:,.0f} |")
    if server_rows:
        print("\n| server | concurrent clients | requests | completion tokens/s | per server CPU-second | TTFT p50 "
              "| TTFT p95 |\n|---|---|---|---|---|---|---|")
        for r in server_rows:
            print(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:,.0f} | "
                  f"{r['tokens_per_cpu_s']:,.0f} | {r['ttft_p50_ms']:,.0f} ms | {r['ttft_p95_ms']:,.0f} ms |")
    print("\nCommand: .venv/bin/python bench/bench_serve.py " + " ".join(sys.argv[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps({"generation": gen_rows, "server": server_rows}, indent=2))


if __name__ == "__main__":
    main()
