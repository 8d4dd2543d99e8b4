"""Sparse attention (GPT-3 / Sparse Transformer) against dense causal SDPA: one layer, then a tiny model.

    .venv/bin/python bench/bench_sparse_attention.py --part layer    # one attention layer, T = 1k .. 16k
    .venv/bin/python bench/bench_sparse_attention.py --part model    # tiny GPT: dense vs dense,strided(k)

Layer: B=1, H=8, D=64 (GPT-3's d_head), fp32, pattern strided(k) with k = sqrt(T) rounded to a multiple of 16
(T = 8192: k = 96, the sequence padded to 86 blocks). Sparse: both implementations of
gptrecipe/sparse_attention.py (fused, the CPU default, and blocked). Dense: F.scaled_dot_product_attention
(is_causal=True), PyTorch's flash kernel (it never forms the (T, T) matrix either: its memory is O(T)).
Time = forward + backward (torch.autograd.grad of a random output gradient), the median of --repeats runs,
the implementations interleaved so that load on the shared machine hits them alike. Growth exponents: least
squares slope of log time on log T. --threads (default 1): on a shared 2-core machine whose other core is
busy, a second intra-op thread makes every parallel op wait for a descheduled thread; dense SDPA gains
nothing from it there and the sparse code (more, smaller ops) loses up to 2x (run --threads 2 to see it).

Memory, two measures, each (implementation, T) in a fresh subprocess:
- peak: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs just before) during one
  forward + backward, minus its RSS just before (inputs allocated, libraries warmed up on a small T):
  everything the step allocates at its high-water mark;
- saved: the bytes of the tensors autograd keeps between forward and backward (saved_tensors_hooks),
  what a model holds per layer while it trains.

Model: the tiny preset (configs/models/tiny.toml, 4 layers, d=256) on the default corpus, all-dense vs
"dense,strided(k)" (GPT-3's alternation) for the same steps at T=128; then, with the same tokens per step,
all-dense at T=1024 and 2048 against the alternating model at T=2048, to show the context the same time buys.
Plots go to runs/bench_sparse_attention/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptrecipe.sparse_attention import sparse_attention

OUT = Path("runs/bench_sparse_attention")
B, H, D = 1, 8, 64


def stride_for(T: int) -> int:
    """k ~ sqrt(T), rounded to a multiple of 16 (a power of two would double k where T doubles)."""
    return max(16, 16 * round(math.sqrt(T) / 16))


IMPLS = ("fused", "blocked", "dense")  # the sparse implementations (gptrecipe/sparse_attention.py), then SDPA
LABELS = {"fused": "sparse, fused (default on CPU)", "blocked": "sparse, blocked (dropout / GPU path)",
          "dense": "dense causal SDPA"}


def layer_fn(impl: str, T: int):
    k = stride_for(T)
    if impl == "dense":
        return lambda q, k_, v: F.scaled_dot_product_attention(q, k_, v, is_causal=True)
    return lambda q, k_, v: sparse_attention(q, k_, v, f"strided({k})", impl=impl)


def inputs(T: int):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(B, H, T, D, generator=g)


def fwd_bwd(fn, q, k, v, grad) -> None:
    torch.autograd.grad(fn(q, k, v), (q, k, v), grad)


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: resident high-water mark)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_memory(impl: str, T: int) -> dict[str, float]:
    """Run in a fresh process: peak RSS growth over one forward + backward, and bytes saved for backward."""
    fwd_bwd(layer_fn(impl, 256), *inputs(256))  # load kernels and thread pools outside the measurement
    q, k, v, grad = inputs(T)
    fn = layer_fn(impl, T)
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    fwd_bwd(fn, q, k, v, grad)
    peak = status_kib("VmHWM")
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        fn(q, k, v)
    return {"peak_mib": (peak - before) / 1024, "saved_mib": sum(saved) / 2**20}


def memory_in_subprocess(impl: str, T: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", impl, str(T), "--threads",
                          str(torch.get_num_threads())], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_exponent(ts: list[int], ys: list[float]) -> float:
    """Slope of log y on log T: y ~ T^slope."""
    return float(np.polyfit(np.log(ts), np.log(ys), 1)[0])


def bench_layer(seqs: list[int], repeats: int) -> dict:
    rows = []
    for T in seqs:
        q, k, v, grad = inputs(T)
        fns = {impl: layer_fn(impl, T) for impl in IMPLS}
        times: dict[str, list[float]] = {impl: [] for impl in fns}
        for fn in fns.values():  # warm-up
            fwd_bwd(fn, q, k, v, grad)
        for _ in range(repeats):
            for impl, fn in fns.items():  # interleaved
                t0 = time.perf_counter()
                fwd_bwd(fn, q, k, v, grad)
                times[impl].append(time.perf_counter() - t0)
        mem = {impl: memory_in_subprocess(impl, T) for impl in fns}
        row = {"T": T, "k": stride_for(T), **{f"{i}_s": statistics.median(times[i]) for i in fns},
               **{f"{i}_runs": times[i] for i in fns}, **{f"{i}_{m}": mem[i][m] for i in fns for m in mem[i]}}
        rows.append(row)
        print(f"T={T} k={row['k']}: " + ", ".join(f"{i} {row[i + '_s']:.3f}s peak {row[i + '_peak_mib']:.0f} MiB"
                                                   for i in IMPLS), flush=True)
    Ts = [r["T"] for r in rows]
    fits = {f"{i}_{m}": fit_exponent(Ts, [max(r[f"{i}_{m}"], 1e-3) for r in rows])
            for i in IMPLS for m in ("s", "peak_mib", "saved_mib")}
    # the slope between the two largest T, where fixed per-call costs no longer flatten the curve
    fits.update({f"{i}_s_last": fit_exponent(Ts[-2:], [r[f"{i}_s"] for r in rows[-2:]]) for i in IMPLS})
    return {"rows": rows, "fits": fits, "threads": torch.get_num_threads()}


def print_layer_table(res: dict, cmd: str) -> None:
    rows, fits = res["rows"], res["fits"]
    print("\nTime, forward + backward, median seconds:\n")
    print("| T | k | sparse fused | sparse blocked | dense SDPA | speed-up fused | speed-up blocked |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['T']:,} | {r['k']} | {r['fused_s']:.3f} | {r['blocked_s']:.3f} | {r['dense_s']:.3f} | "
              f"**{r['dense_s'] / r['fused_s']:.1f}x** | {r['dense_s'] / r['blocked_s']:.1f}x |")
    print("| exponent, fit over all T | | **{:.2f}** | {:.2f} | {:.2f} | | |".format(
        *(fits[f"{i}_s"] for i in IMPLS)))
    print("| exponent, last two T | | {:.2f} | {:.2f} | {:.2f} | | |".format(*(fits[f"{i}_s_last"] for i in IMPLS)))
    print("\nMemory, MiB: peak RSS growth during forward + backward / kept for backward:\n")
    print("| T | sparse fused | sparse blocked | dense SDPA | dense (T, T) fp32 scores, for scale |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r[i + '_peak_mib']:.0f} / {r[i + '_saved_mib']:.0f}" for i in IMPLS)
        print(f"| {r['T']:,} | {cells} | {B * H * r['T'] ** 2 * 4 / 2**20:,.0f} |")
    print("| exponent | " + " | ".join(f"{fits[i + '_peak_mib']:.2f} / {fits[i + '_saved_mib']:.2f}" for i in IMPLS)
          + " | 2 |")
    print(f"\nCommand: `{cmd}`")


def plot_layer(res: dict, path: Path) -> None:
    """Time and memory against T, log-log (regenerate from runs/bench_sparse_attention/layer.json: --replot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, fits = res["rows"], res["fits"]
    Ts = np.array([r["T"] for r in rows])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for impl, marker, color in zip(IMPLS, "o^s", ("C0", "C1", "C2"), strict=True):
        label = LABELS[impl]
        a.loglog(Ts, [r[f"{impl}_s"] for r in rows], marker + "-", color=color, base=2,
                 label=f"{label}: T^{fits[impl + '_s']:.2f}")
        b.loglog(Ts, [r[f"{impl}_peak_mib"] for r in rows], marker + "-", color=color, base=2, label=f"{label}: peak")
        b.loglog(Ts, [max(r[f"{impl}_saved_mib"], 1e-3) for r in rows], marker + "--", color=color, base=2,
                 label="  kept for backward")
    b.loglog(Ts, B * H * Ts.astype(float) ** 2 * 4 / 2**20, "k:", base=2, label="one dense (T, T) fp32 score matrix")
    a.set(xlabel="T (tokens)", ylabel="forward + backward seconds",
          title=f"one attention layer, B={B} H={H} D={D}, {res.get('threads', '?')} thread(s)")
    b.set(xlabel="T (tokens)", ylabel="MiB", title="memory")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


# ----------------------------------------------------------------------------------------------


def train_run(name: str, attention: str, block: int, micro_batch: int, steps: int) -> dict:
    from gptrecipe.pretrain import load_pretrain_config, pretrain

    overrides = [f"name={name}", f"out_dir={OUT}", f"model.attention={attention}", f"model.block_size={block}",
                 f"train.max_steps={steps}", f"train.micro_batch_size={micro_batch}", "train.eval_every=0",
                 "train.checkpoint_every=0", "train.sample_every=0", "train.progress=false",
                 f"train.warmup_steps={max(1, steps // 10)}"]
    cfg = load_pretrain_config("tiny", overrides)
    t0 = time.perf_counter()
    result = pretrain(cfg, log=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    ev = result.evals[-1]
    tokens = steps * micro_batch * block
    row = {"name": name, "attention": attention, "T": block, "batch": micro_batch, "steps": steps,
           "val_loss": ev["val_loss"], "tok_s": result.tokens_per_s, "train_s": tokens / result.tokens_per_s,
           "wall_s": wall}
    print(f"{name}: {attention} T={block} B={micro_batch} x {steps} steps: val {row['val_loss']:.4f}, "
          f"{row['tok_s']:,.0f} tok/s, train {row['train_s']:.0f}s (wall {wall:.0f}s)", flush=True)
    return row


def step_times(specs: list[tuple[str, str, int, int]], repeats: int) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, AdamW) of the tiny model per spec, the specs
    interleaved step by step so that the shared machine's load drifts over all of them alike."""
    from gptrecipe.model import GPT, GPTConfig

    models = {}
    for name, attention, block, batch in specs:
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=4096, block_size=block, n_layer=4, n_embd=256, n_head=4, attention=attention))
        models[name] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3), torch.randint(0, 4096, (batch, block + 1)))
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(repeats + 1):
        for name, (m, opt, x) in models.items():
            t0 = time.perf_counter()
            m(x[:, :-1], x[:, 1:])[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def model_specs(k_short: int, k_long: int) -> list[tuple[str, str, int, int]]:
    """(name, attention, T, rows): 2048 tokens per step each."""
    return [("dense-128", "dense", 128, 16), ("sparse-128", f"dense,strided({k_short})", 128, 16),
            ("dense-1024", "dense", 1024, 2), ("dense-2048", "dense", 2048, 1),
            ("sparse-2048", f"dense,strided({k_long})", 2048, 1)]


def bench_model(steps: int, long_steps: int, k_short: int, k_long: int, repeats: int, cmd: str) -> list[dict]:
    specs = model_specs(k_short, k_long)
    st = step_times(specs, repeats)
    print("step times: " + ", ".join(f"{n} {t:.3f}s" for n, t in st.items()), flush=True)
    runs = [train_run(name, att, block, batch, steps if block == 128 else long_steps)
            for name, att, block, batch in specs]
    print("\n| run | attention | T | rows x steps | val loss | vs dense | step time (interleaved) | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        ref = runs[0] if r["T"] == 128 else runs[2]
        r["step_s"] = st[r["name"]]
        print(f"| {r['name']} | `{r['attention']}` | {r['T']} | {r['batch']} x {r['steps']} | {r['val_loss']:.4f} | "
              f"{100 * (r['val_loss'] / ref['val_loss'] - 1):+.2f}% | {r['step_s']:.3f} s | "
              f"{r['batch'] * r['T'] / r['step_s']:,.0f} |")
    print(f"\nCommand: `{cmd}`")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["layer", "model", "steps", "all"], default="all",
                    help="steps: only the interleaved step times of the model part")
    ap.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (module docstring)")
    ap.add_argument("--steps", type=int, default=200, help="model comparison at T=128")
    ap.add_argument("--long-steps", type=int, default=40, help="model comparison at long context")
    ap.add_argument("--k-short", type=int, default=16)
    ap.add_argument("--k-long", type=int, default=32)
    ap.add_argument("--replot", action="store_true", help="redraw the plot from the last layer.json and exit")
    ap.add_argument("--memory-child", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        torch.set_num_threads(args.threads)
        print(json.dumps(measure_memory(args.memory_child[0], int(args.memory_child[1]))))
        return
    if args.replot:
        res = json.loads((OUT / "layer.json").read_text())
        print_layer_table(res, f"(replot of {OUT / 'layer.json'})")
        plot_layer(res, OUT / "sparse_attention.png")
        return
    cmd = ".venv/bin/python bench/bench_sparse_attention.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    OUT.mkdir(parents=True, exist_ok=True)
    if args.part in ("layer", "all"):
        res = bench_layer([int(t) for t in args.seqs.split(",")], args.repeats)
        (OUT / "layer.json").write_text(json.dumps(res, indent=1))
        print_layer_table(res, cmd)
        plot_layer(res, OUT / "sparse_attention.png")
    if args.part == "steps":
        specs = model_specs(args.k_short, args.k_long)
        st = step_times(specs, args.repeats)
        print("\n| run | attention | T x rows | step time (median, interleaved) | tokens/s |\n|---|---|---|---|---|")
        for name, att, block, batch in specs:
            print(f"| {name} | `{att}` | {block} x {batch} | {st[name]:.3f} s | {block * batch / st[name]:,.0f} |")
        print(f"\nCommand: `{cmd}`")
    if args.part in ("model", "all"):
        runs = bench_model(args.steps, args.long_steps, args.k_short, args.k_long, args.repeats, cmd)
        (OUT / "model.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
