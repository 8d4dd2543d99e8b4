"""Pretraining throughput and MFU: gptrecipe's GPT vs Hugging Face GPT2LMHeadModel, same shape.

    .venv/bin/python bench/bench_pretrain.py                     # 6L/6H/d384/T256/B16/V4096, this machine
    .venv/bin/python bench/bench_pretrain.py --device cuda --batch 64 --trajectory-steps 200

Both models train with AdamW on the same batches in the same process, alternating, and the median
step time of several repeats is compared: the reference in plain fp32 (what a user of it gets by default)
and, when ours runs in bf16/fp16, also under the same autocast (the same-precision ratio). The loss-trajectory
check trains ours in its chosen precision (`--dtype`, default auto) and in fp32 from the same init on the same
text and reports the largest relative gap over the first N steps. Needs `pip install transformers` (bench only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from gptrecipe.model import GPT, GPTConfig
from gptrecipe.runtime import autocast, measure_peak_flops, pick_device, pick_dtype
from gptrecipe.train import TrainConfig, lr_at


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hf_model(cfg: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    return GPT2LMHeadModel(hc)


def text_stream(n_tokens: int) -> np.ndarray:
    """UTF-8 bytes of the default corpus (real text for the loss trajectory; no tokenizer needed)."""
    try:
        from gptrecipe.data import read_documents

        text = "".join(d for _, d in zip(range(40), read_documents("builtin:shakespeare"), strict=False))
    except Exception:  # data layer unavailable: a deterministic pseudo-text
        rng = np.random.default_rng(0)
        text = " ".join("".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(1, 9))) for _ in range(10**6))
    return np.frombuffer(text.encode()[:n_tokens], dtype=np.uint8).astype(np.int64)


def batches(stream: np.ndarray, b: int, t: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(stream) - t - 1, b)
        rows = torch.from_numpy(np.stack([stream[s: s + t + 1] for s in starts]))
        yield rows[:, :-1], rows[:, 1:]


def step_time(model, opt, x, y, device, dtype, hf: bool) -> float:
    sync(device)
    t = time.perf_counter()
    with autocast(device, dtype):
        loss = model(x, labels=x).loss if hf else model(x, y)[1]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="ours: auto (bf16 where fast), fp32, bf16")
    ap.add_argument("--compile", action="store_true", help="torch.compile our model")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trajectory-steps", type=int, default=0, help="also compare loss curves over N steps")
    ap.add_argument("--trajectory-warmup", type=int, default=0,
                    help="the curves' lr schedule: 0 = constant 6e-4; W = the trainer's own (gptrecipe.train.lr_at): "
                         "linear warmup over W steps, then cosine to 10%% at the last step")
    args = ap.parse_args()

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.seq, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.d, dropout=0.0)
    torch.manual_seed(0)
    ours = GPT(cfg).to(device)
    ref = hf_model(cfg).to(device)
    ours_fwd = torch.compile(ours) if args.compile else ours
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=device.type == "cuda")
    opt_r = torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    y = torch.roll(x, -1, 1)
    # (name, model, optimizer, dtype, is_hf): ours, the reference in fp32, and the reference in our precision
    runs = [("ours", ours_fwd, opt_o, dtype, False), ("ref", ref, opt_r, torch.float32, True)]
    if dtype != torch.float32:
        runs.append(("ref_same", ref, opt_r, dtype, True))
    for _ in range(3):  # warm-up (and compilation)
        for _, m, opt, dt, hf in runs:
            step_time(m, opt, x, y, device, dt, hf)
    times: dict[str, list[float]] = {name: [] for name, *_ in runs}
    for _ in range(args.repeats):  # alternate so drift on a shared machine hits all alike
        for name, m, opt, dt, hf in runs:
            times[name].append(statistics.median(step_time(m, opt, x, y, device, dt, hf) for _ in range(args.steps)))
    tokens = args.batch * args.seq
    tok = {name: tokens / statistics.median(t) for name, t in times.items()}
    tok_o, tok_r = tok["ours"], tok["ref"]
    fpt = ours.flops_per_token(args.seq)
    peak_ours, peak_fp32 = measure_peak_flops(device, dtype), measure_peak_flops(device, torch.float32)
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"command: {' '.join([sys.executable.split('/')[-1]] + sys.argv)}")
    print(f"device: {dev_name}; shape {args.layers}L/{args.heads}H/d{args.d}/T{args.seq}/B{args.batch}/V{args.vocab}; "
          f"ours dtype {dtype}{' compiled' if args.compile else ''}; reference HF GPT2LMHeadModel")
    print(f"peak matmul: fp32 {peak_fp32 / 1e9:,.0f} GFLOP/s, {dtype} {peak_ours / 1e9:,.0f} GFLOP/s")
    print(f"ours      {tok_o:10,.0f} tokens/s  MFU {100 * fpt * tok_o / peak_ours:5.1f}% (of {dtype} peak)")
    print(f"reference {tok_r:10,.0f} tokens/s  MFU {100 * fpt * tok_r / peak_fp32:5.1f}% (of fp32 peak)")
    if "ref_same" in tok:
        print(f"reference {tok['ref_same']:10,.0f} tokens/s  MFU {100 * fpt * tok['ref_same'] / peak_ours:5.1f}% "
              f"(under the same {dtype} autocast)")
        print(f"ratio ours/reference, same precision ({dtype}): {tok_o / tok['ref_same']:.2f}x")
    print(f"ratio ours/reference fp32: {tok_o / tok_r:.2f}x  (medians of {args.repeats} repeats x {args.steps} steps)")

    if args.trajectory_steps:
        stream = text_stream(2_000_000)
        curves = {}
        for name, dt in (("chosen", dtype), ("fp32", torch.float32)):
            torch.manual_seed(1)
            m = GPT(cfg).to(device)
            opt = torch.optim.AdamW(m.parameters(), lr=6e-4, fused=device.type == "cuda")
            losses = []
            sched = TrainConfig(lr=6e-4, warmup_steps=args.trajectory_warmup, max_steps=args.trajectory_steps)
            for i, (xb, yb) in enumerate(batches(stream, args.batch, args.seq, args.trajectory_steps)):
                if args.trajectory_warmup:
                    for group in opt.param_groups:
                        group["lr"] = lr_at(i, sched)
                with autocast(device, dt):
                    loss = m(xb.to(device), yb.to(device))[1]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
            curves[name] = np.array(losses)
        rel = np.abs(curves["chosen"] - curves["fp32"]) / curves["fp32"]
        print(f"loss trajectory over {args.trajectory_steps} steps (warmup {args.trajectory_warmup}), {dtype} vs fp32: "
              f"start {curves['fp32'][0]:.3f}, end {curves['fp32'][-1]:.3f} (fp32) / {curves['chosen'][-1]:.3f}; "
              f"max relative gap {100 * rel.max():.2f}% (step {int(rel.argmax())}), mean {100 * rel.mean():.2f}%")
        # one step's loss is one batch's: once the two runs' weights differ, each batch's loss gaps apart by chance;
        # the gap of 20-step means shows whether the curves drift apart
        k = 20
        means = {n: c[: len(c) // k * k].reshape(-1, k).mean(1) for n, c in curves.items()}
        rel_k = np.abs(means["chosen"] - means["fp32"]) / means["fp32"]
        print(f"  over {k}-step means: max relative gap {100 * rel_k.max():.2f}% (steps {k * int(rel_k.argmax())}.."
              f"{k * int(rel_k.argmax()) + k - 1}), the last {100 * rel_k[-1]:.2f}%")


if __name__ == "__main__":
    main()
