"""One decode step of the `small` shape: the serving engine's compiled graph (symbolic rows and columns) vs the
sampler's per-shape compiled graph vs eager, in one thread, at the shapes a server sees.

    .venv/bin/python bench/bench_decode_step.py            # rows x columns: 32x128 16x128 2x64

Prints the median milliseconds of --steps steps per shape and the ratios to eager. The first run compiles (a
minute or two on a 2-core CPU; inductor caches it on disk).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from gptrecipe.config import load_config
from gptrecipe.model import GPT, GPTConfig, StaticKVCache
from gptrecipe.sample import compiled_decode_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="configs/models preset (default %(default)s)")
    ap.add_argument("--shapes", nargs="+", default=["32x128", "16x128", "2x64"], help="ROWSxCOLUMNS of the cache")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(load_config(GPTConfig, "models", args.model)).eval()

    def eager(tokens: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        return model.lm_head(model.hidden_states(tokens, cache))[:, -1]

    impls = {"engine: one compiled graph, dynamic shapes": compiled_decode_step(model, dynamic=True),
             "sampler: a compiled graph per shape": compiled_decode_step(model),
             "eager": eager}
    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results: dict[str, dict[str, float]] = {name: {} for name in impls}
    with torch.inference_mode():
        for name, step in impls.items():
            for shape in args.shapes:
                rows, cols = (int(v) for v in shape.split("x"))
                cache = StaticKVCache(model.config, rows, cols, torch.device("cpu"), torch.float32)
                tokens = torch.zeros(rows, 1, dtype=torch.long)
                cache.step_to(0)
                step(tokens, cache)  # compiles
                times = []
                for i in range(args.steps):
                    cache.step_to(1 + i % (cols - 1))
                    t = time.perf_counter()
                    step(tokens, cache)
                    times.append(time.perf_counter() - t)
                results[name][shape] = 1000 * statistics.median(times)
                print(f"{name:<44} {shape:>7}: {results[name][shape]:.2f} ms", flush=True)
    print("\n| implementation | " + " | ".join(args.shapes) + " |\n|---|" + "---|" * len(args.shapes))
    for name, row in results.items():
        cells = [f"{row[s]:.2f} ms ({results['eager'][s] / row[s]:.2f}x eager)" for s in args.shapes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nCommand: .venv/bin/python bench/bench_decode_step.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
