"""Tokenizer training time and encode throughput: gptrecipe vs Hugging Face `tokenizers`.

    .venv/bin/python bench/bench_tokenizer.py [--mb 8] [--vocab 4096] [--repeats 3]

Training: ours (`Tokenizer.train`: HF's BPE trainer with the GPT-4 split regex, then the merge ranks
rebuilt for tiktoken) vs the stock `tokenizers.ByteLevelBPETokenizer` on the same text and vocab size.
Encoding: the same trained tokenizer through ours (tiktoken) vs `tokenizers` (`encode` one document at
a time on one thread; `encode_batch` on all threads), on the same documents; MB/s of UTF-8 input.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from tokenizers import ByteLevelBPETokenizer

from gptrecipe.data import read_documents
from gptrecipe.data.shards import split_pieces
from gptrecipe.tokenizer import SPECIAL_TOKENS, Tokenizer


def corpus(mb: float) -> list[str]:
    """~mb MB of the default corpora, as ~10 kB documents (the unit the data pipeline encodes)."""
    docs: list[str] = []
    budget = int(mb * 1e6)
    for src in ("builtin:shakespeare", "builtin:kjv", "builtin:chatterbot"):
        share = budget // 3
        for doc in read_documents(src):
            for piece in split_pieces(doc, 10_000):
                docs.append(piece[:share])
                share -= len(docs[-1])
                if share <= 0:
                    break
            if share <= 0:
                break
    return docs


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=8.0, help="MB of text")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    docs = corpus(args.mb)
    n_bytes = sum(len(d.encode()) for d in docs)
    mb = n_bytes / 1e6
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"text: {mb:.1f} MB in {len(docs)} documents; vocab {args.vocab}; {os.cpu_count()} cores")

    t_ours = timed(lambda: Tokenizer.train(docs, args.vocab, show_progress=False), args.repeats)

    def hf_train():
        ByteLevelBPETokenizer().train_from_iterator(docs, vocab_size=args.vocab, min_frequency=2,
                                                    special_tokens=list(SPECIAL_TOKENS), show_progress=False)

    t_hf = timed(hf_train, args.repeats)
    print(f"train   ours {t_ours:6.2f} s   tokenizers ByteLevelBPE {t_hf:6.2f} s   ratio {t_hf / t_ours:.2f}x")

    tok = Tokenizer.train(docs, args.vocab, show_progress=False)
    assert all(tok.encode(d) == tok.encode_hf(d) for d in docs[:200]), "encoders disagree"
    hf = tok.hf
    rows = []
    t1 = timed(lambda: [tok.encode(d) for d in docs], args.repeats)
    t2 = timed(lambda: [hf.encode(d, add_special_tokens=False) for d in docs], args.repeats)
    rows.append(("1 thread, one document at a time", t1, t2))
    t1 = timed(lambda: tok.encode_batch(docs), args.repeats)
    t2 = timed(lambda: hf.encode_batch(docs, add_special_tokens=False), args.repeats)
    rows.append((f"batch, all {os.cpu_count()} threads", t1, t2))
    for name, a, b in rows:
        print(f"encode  {name:<34} ours {mb / a:7.1f} MB/s   tokenizers {mb / b:7.1f} MB/s   ratio {b / a:.2f}x")
    print(f"compression: {n_bytes / sum(len(x) for x in tok.encode_batch(docs)):.2f} bytes/token")


if __name__ == "__main__":
    main()
