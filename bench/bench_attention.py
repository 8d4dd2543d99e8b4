"""Causal attention forward + backward: PyTorch's fused SDPA kernel vs the written-out form (model.py's
`explicit_causal_attention`), per shape and precision, to check where `EXPLICIT_MAX_LEN` should sit on a CPU.

    .venv/bin/python bench/bench_attention.py      # shapes of the main job, the PPO bench, bench_pretrain
    .venv/bin/python bench/bench_attention.py --shapes 16x4x128 8x6x512 --dtype bf16 --repeats 31

Both sides get the same q, k, v (B, H, T, 64) and the same output gradient; the median over `--repeats` timed
fwd + bwd calls is reported, with the ratio SDPA / explicit (> 1: the explicit form is faster) and the largest
difference of each from an fp32 SDPA reference (the explicit form: bf16 scores, fp32 softmax).
Also the forward alone without gradients (scoring, evaluation): the model takes the explicit form for CPU bf16
causal attention at T <= EXPLICIT_MAX_LEN with and without gradients (PPO's old log-probs must equal the update's).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gptrecipe.model import EXPLICIT_MAX_LEN, explicit_causal_attention  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def timed(fn, q, k, v, g, repeats: int) -> float:
    """Median seconds of one forward + backward (g given) or of one forward without gradients (g None)."""
    def once():
        if g is None:
            with torch.no_grad():
                fn(q, k, v)
        else:
            fn(q, k, v).backward(g)

    for _ in range(3):
        once()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["8x4x48", "32x4x48", "16x4x128", "8x12x128", "16x6x256",
                                                    "8x6x512"], help="BxHxT (head dim 64)")
    p.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"command: {shlex.join(['.venv/bin/python', 'bench/bench_attention.py', *sys.argv[1:]])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; EXPLICIT_MAX_LEN = {EXPLICIT_MAX_LEN}")
    print(f"{'shape BxHxT':>12} {'dtype':>5} {'fwd+bwd SDPA ms':>15} {'explicit ms':>11} {'ratio':>6}  "
          f"{'fwd SDPA ms':>11} {'explicit ms':>11} {'ratio':>6}  {'SDPA err':>8} {'explicit err':>12}")
    torch.manual_seed(0)
    for shape in a.shapes:
        B, H, T = (int(x) for x in shape.lower().split("x"))
        base = [torch.randn(B, H, T, 64) for _ in range(3)]
        g32 = torch.randn(B, H, T, 64)
        ref = sdpa(*base)
        for name in a.dtype:
            dt = DTYPES[name]
            q, k, v = (t.to(dt).requires_grad_() for t in base)
            g = g32.to(dt)
            t_sdpa = timed(sdpa, q, k, v, g, a.repeats)
            t_expl = timed(explicit_causal_attention, q, k, v, g, a.repeats)
            f_sdpa = timed(sdpa, q, k, v, None, a.repeats)
            f_expl = timed(explicit_causal_attention, q, k, v, None, a.repeats)
            with torch.no_grad():
                e_sdpa = (sdpa(q, k, v).float() - ref).abs().max().item()
                e_expl = (explicit_causal_attention(q, k, v).float() - ref).abs().max().item()
            print(f"{shape:>12} {name:>5} {t_sdpa * 1e3:15.2f} {t_expl * 1e3:11.2f} {t_sdpa / t_expl:5.2f}x  "
                  f"{f_sdpa * 1e3:11.2f} {f_expl * 1e3:11.2f} {f_sdpa / f_expl:5.2f}x  {e_sdpa:8.1e} {e_expl:12.1e}")


if __name__ == "__main__":
    main()
