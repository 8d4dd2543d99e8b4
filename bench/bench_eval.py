"""In-context evaluation throughput: our harness's LocalBackend vs lm-evaluation-harness's HFLM.

Both score the same log-likelihood requests (the prompts our harness builds for held-out synthetic tasks at
K shots: description, K solved examples, the query; one request per choice) on the same weights: ours in
gptrecipe's GPT, lm-eval's in a GPT2LMHeadModel holding a copy of them (same architecture). Two workloads:
`classify` (one-token label choices, 8 per query) and `letter_map,word_map` (multi-token choices). Prints
requests/s of each, the ratio, and how far apart the log-likelihoods are (they should agree to ~1e-4).

    pip install accelerate   # lm-eval's HF backend imports it (not needed by gptrecipe)
    .venv/bin/python bench/bench_eval.py --ckpt runs/speedrun/pretrain --repeats 3 --threads 2

Without --ckpt a random-weight `--model` preset with a freshly trained tokenizer is used (same speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import hf_copy  # noqa: E402

from gptrecipe.evaluate.harness import LocalBackend, evaluate_tasks  # noqa: E402
from gptrecipe.evaluate.synthetic import SyntheticConfig, synthetic_suite  # noqa: E402


class Recorder:
    """A backend that only records the log-likelihood requests the harness would send."""

    def __init__(self, tok, max_tokens: int):
        self.tok, self.max_tokens, self.requests = tok, max_tokens, []

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text))

    def loglikelihood(self, requests, bar=None):
        self.requests += list(requests)
        return [(0.0, 1)] * len(requests)


def load(args):
    from gptrecipe.checkpoint import load_checkpoint
    from gptrecipe.config import load_config
    from gptrecipe.model import GPT, GPTConfig
    from gptrecipe.tokenizer import DEFAULT_INPUTS, Tokenizer, read_texts

    if args.ckpt:
        loaded = load_checkpoint(args.ckpt, "cpu")
        return loaded.model.eval(), loaded.tokenizer, str(loaded.path)
    cfg = load_config(GPTConfig, "models", args.model)
    tok = Tokenizer.train(read_texts(DEFAULT_INPUTS, 1_000_000), cfg.vocab_size, show_progress=False)
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, tok.vocab_size))
    return GPT(cfg).eval(), tok, f"random-weight {args.model}"


def lm_eval_model(model, tok, batch_size: int):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from gptrecipe.serve.hf_tokenizer import export_hf_tokenizer

    d = tempfile.mkdtemp()
    export_hf_tokenizer(tok, d, model_max_length=model.config.block_size)
    return HFLM(pretrained=hf_copy(model), tokenizer=AutoTokenizer.from_pretrained(d), batch_size=batch_size,
                device="cpu", dtype=torch.float32, max_length=model.config.block_size)


def lm_eval_loglikelihood(lm, requests, eot: str) -> list[tuple[float, int]]:
    from lm_eval.api.instance import Instance

    # our backend starts every prompt with <|endoftext|> (a document start, as in pretraining): so does this one
    inst = [Instance(request_type="loglikelihood", doc={}, arguments=(eot + c, x), idx=i)
            for i, (c, x) in enumerate(requests)]
    return [(lp, 0) for lp, _ in lm.loglikelihood(inst, disable_tqdm=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="checkpoint or run dir (default: a random-weight --model)")
    ap.add_argument("--model", default="tiny", help="configs/models preset without --ckpt (default %(default)s)")
    ap.add_argument("--k", type=int, default=8, help="examples per prompt")
    ap.add_argument("--tasks-per-family", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each; medians reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, name = load(args)
    c = model.config
    print(f"model {name}: {c.n_layer}L/{c.n_head}H/d{c.n_embd}/T{c.block_size}/V{c.vocab_size}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    ours = LocalBackend(model, tok, batch_size=args.batch_size)
    theirs = lm_eval_model(model, tok, args.batch_size)
    eot = tok.decode([tok.eot_id])
    rows = []
    for families in (["classify"], ["letter_map", "word_map"]):
        syn = SyntheticConfig(families=families, tasks_per_family=args.tasks_per_family, test_items=8,
                              choices=8, distractors="rule")
        rec = Recorder(tok, c.block_size)
        evaluate_tasks(rec, synthetic_suite(syn), [args.k], progress=False)
        reqs = rec.requests
        times: dict[str, list[float]] = {"ours": [], "lm-eval": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            a = ours.loglikelihood(reqs)
            times["ours"].append(time.perf_counter() - t)
            t = time.perf_counter()
            b = lm_eval_loglikelihood(theirs, reqs, eot)
            times["lm-eval"].append(time.perf_counter() - t)
        gap = max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"workload": ",".join(families), "requests": len(reqs), "ours": len(reqs) / med["ours"],
                     "lm-eval": len(reqs) / med["lm-eval"], "gap": gap})
        print(f"{rows[-1]['workload']}: {len(reqs)} requests, ours {med['ours']:.2f} s, lm-eval {med['lm-eval']:.2f} s "
              f"(runs: {[round(x, 2) for x in times['ours']]} / {[round(x, 2) for x in times['lm-eval']]}), "
              f"max |log-likelihood gap| {gap:.2e}", flush=True)
    print(f"\n| workload (K={args.k}) | requests | ours req/s | lm-eval HFLM req/s | ours / lm-eval | max LL gap |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['requests']} | {r['ours']:,.0f} | {r['lm-eval']:,.0f} | "
              f"{r['ours'] / r['lm-eval']:.2f}x | {r['gap']:.1e} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
