"""Tokenizer training time and encode throughput: gptrecipe vs Hugging Face `tokenizers`, in one process.

    .venv/bin/python bench/bench_tokenizer.py [--mb 5] [--vocab 4096] [--repeats 3] [--input PATH ...]

Training, same text and vocab size, min_frequency 2, the 16 special tokens:
  ours          `Tokenizer.train`: the HF BPE trainer with the GPT-4 split regex, then the canonical merges
                recovered from the ranks, the HF tokenizer rebuilt and the tiktoken encoding built
  hf-same       the same HF trainer and pre-tokenizer alone (ours minus our post-processing)
  hf-bytelevel  the stock `tokenizers.ByteLevelBPETokenizer` (GPT-2 regex)
Ours IS the HF trainer, so ours/hf-same measures only our overhead; it cannot be faster.

Encoding, the same trained tokenizer, ~10 kB documents, MB/s of UTF-8 input (ids checked identical):
  1 thread      ours `encode_batch(num_threads=1)` (tiktoken) vs `tokenizers` `encode` per document
  all threads   ours `encode_batch()` (tiktoken, a thread per core) vs `tokenizers` `encode_batch` (rayon)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tokenizers
from tokenizers import ByteLevelBPETokenizer, models, pre_tokenizers, trainers

from gptrecipe.tokenizer import SPECIAL_TOKENS, Tokenizer, _pre_tokenizer, read_texts

DEFAULT_SOURCES = ["builtin:shakespeare", "builtin:kjv", "builtin:chatterbot"]
PIECE_CHARS = 10_000


def pieces(doc: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut a document after newlines into pieces of about `size` chars."""
    out, start = [], 0
    while len(doc) - start > size:
        cut = doc.rfind("\n", start + size // 2, start + size)
        cut = cut + 1 if cut != -1 else start + size
        out.append(doc[start:cut])
        start = cut
    out.append(doc[start:])
    return out


def generated_text(n_chars: int, seed: int = 0) -> list[str]:
    """Fallback corpus: pseudo-English with some Chinese, when the readers are not available."""
    rng = random.Random(seed)
    words = ("the of and to in is was that for it with as his on be at by had not are but from or have an "
             "they which one you were her all she there would their we him been has when who will more no if "
             "out so said what up its about into than them can only other new some could time these two may "
             "then do first any my now such like our over man me even most made after also did many").split()
    zh = ["我们今天学习字节级的分词器。", "中文的词语之间没有空格。", "机器学习需要大量的数据。"]
    docs, total = [], 0
    while total < n_chars:
        lines = []
        for _ in range(100):
            line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + "."
            lines.append(rng.choice(zh) if rng.random() < 0.05 else line)
        docs.append("\n".join(lines) + "\n")
        total += len(docs[-1])
    return docs


def load_text(sources: list[str], n_chars: int) -> tuple[list[str], str]:
    """~n_chars of the sources (shared evenly) as ~10 kB documents, and where they came from."""
    try:
        docs = list(read_texts(sources, n_chars))
    except ImportError as e:  # the data readers are not there
        return generated_text(n_chars), f"generated text ({e})"
    return [piece for doc in docs for piece in pieces(doc)], ", ".join(sources)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=5.0, help="million characters of text (default: %(default)s)")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary size (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported (default: 3)")
    ap.add_argument("--input", nargs="+", action="extend", metavar="PATH",
                    help="files, directories or builtin:NAME corpora (default: the three builtin corpora)")
    args = ap.parse_args()

    docs, what = load_text(args.input or DEFAULT_SOURCES, int(args.mb * 1e6))
    n_bytes = sum(len(d.encode()) for d in docs)
    mb = n_bytes / 1e6
    threads = os.cpu_count() or 1
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"machine: {cpu_name()}, {threads} cores; Python {platform.python_version()}, tokenizers "
          f"{importlib.metadata.version('tokenizers')}, tiktoken {importlib.metadata.version('tiktoken')}")
    print(f"text: {sum(map(len, docs)) / 1e6:.2f} M chars = {mb:.2f} MB of UTF-8 in {len(docs):,} documents "
          f"from {what}; vocab {args.vocab}; medians of {args.repeats} repeats\n")

    def ours() -> None:
        Tokenizer.train(docs, args.vocab, show_progress=False)

    def hf_same() -> None:
        hf = tokenizers.Tokenizer(models.BPE())
        hf.pre_tokenizer = _pre_tokenizer()
        hf.train_from_iterator(docs, trainers.BpeTrainer(
            vocab_size=args.vocab, min_frequency=2, show_progress=False, special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))

    def hf_bytelevel() -> None:
        ByteLevelBPETokenizer().train_from_iterator(docs, vocab_size=args.vocab, min_frequency=2,
                                                    special_tokens=list(SPECIAL_TOKENS), show_progress=False)

    train = {name: [] for name in ("ours", "hf-same", "hf-bytelevel")}
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits all three alike
        for name, fn in (("ours", ours), ("hf-same", hf_same), ("hf-bytelevel", hf_bytelevel)):
            train[name].append(median_time(fn, 1))
    t = {name: statistics.median(v) for name, v in train.items()}
    print(f"{'training':<34} {'seconds':>9} {'ours speed-up':>14}")
    for name, label in (("ours", "ours (Tokenizer.train)"), ("hf-same", "tokenizers, same pipeline"),
                        ("hf-bytelevel", "tokenizers ByteLevelBPETokenizer")):
        print(f"{label:<34} {t[name]:>9.2f} {t[name] / t['ours']:>13.2f}x")

    tok = Tokenizer.train(docs, args.vocab, show_progress=False)
    hf = tok.hf
    ours_ids = tok.encode_batch(docs)
    assert ours_ids == [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)], "encoders disagree"
    n_tokens = sum(map(len, ours_ids))
    rows = [
        ("1 thread", median_time(lambda: tok.encode_batch(docs, num_threads=1), args.repeats),
         median_time(lambda: [hf.encode(d, add_special_tokens=False) for d in docs], args.repeats)),
        (f"all {threads} threads", median_time(lambda: tok.encode_batch(docs), args.repeats),
         median_time(lambda: hf.encode_batch(docs, add_special_tokens=False), args.repeats)),
    ]
    print(f"\n{'encoding (MB/s)':<34} {'ours':>9} {'tokenizers':>12} {'ours speed-up':>14}")
    for name, a, b in rows:
        print(f"{name:<34} {mb / a:>9.1f} {mb / b:>12.1f} {b / a:>13.2f}x")
    print(f"\nids identical on all {len(docs):,} documents; {n_tokens:,} tokens, "
          f"{n_bytes / n_tokens:.2f} bytes/token, vocab {tok.vocab_size}")


if __name__ == "__main__":
    main()
