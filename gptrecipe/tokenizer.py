"""Byte-level BPE tokenizer: trained by Hugging Face `tokenizers`, encoded fast by `tiktoken`.

Text is split by the GPT-4 pre-tokenization regex, each piece is taken as UTF-8 bytes, and the most
frequent adjacent pairs are merged until the vocabulary is full. Every byte is in the base alphabet,
so any string (Chinese, emoji, invalid surrogates aside) round-trips: decode(encode(s)) == s.

The trained merges are saved as a standard `tokenizer.json` (loadable by `tokenizers.Tokenizer.from_file`
and by `transformers`). For speed the same merge ranks drive a `tiktoken.Encoding`; the HF model is
rebuilt from those ranks with `ignore_merges=True` so both encoders give identical ids by construction.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # document separator / beginning of sequence
    "<|pad|>",
    "<|system|>",  # chat turns (SFT): system / user / assistant, each closed by <|end|>
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|reward|>",  # reward-model readout token, appended after a completion
    *(f"<|reserved_{i}|>" for i in range(9)),
)


class TokenizerError(ValueError):
    """A tokenizer file or request that cannot be used; the message names the file or value."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters (the byte-level 'alphabet')."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """For each multi-byte token (by rank), the pair tiktoken's BPE would merge to produce it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:  # run BPE on the token's bytes with only the ranks below its own
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def _hf_from_ranks(ranks: dict[bytes, int], specials: dict[str, int]) -> HFTokenizer:
    vocab = {"".join(BYTE_TO_CHAR[b] for b in tok): i for tok, i in ranks.items()}
    vocab.update(specials)  # in the model's vocab too, so add_special_tokens keeps these ids
    merges = [("".join(BYTE_TO_CHAR[b] for b in a), "".join(BYTE_TO_CHAR[b] for b in b_)) for a, b_ in
              _recover_merges(ranks)]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False)
                           for s, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    return hf


class Tokenizer:
    """The project's tokenizer: HF `tokenizers` object for files/training, tiktoken for speed."""

    def __init__(self, hf: HFTokenizer, source: str = "<memory>"):
        self.hf = hf
        self.source = source
        vocab = hf.get_vocab(with_added_tokens=True)
        self.specials = {s: vocab[s] for s in SPECIAL_TOKENS if s in vocab}
        missing = [s for s in SPECIAL_TOKENS if s not in vocab]
        if missing:
            raise TokenizerError(f"{source}: tokenizer lacks special tokens {missing}")
        ranks: dict[bytes, int] = {}
        for text, i in vocab.items():
            if text in self.specials:
                continue
            try:
                ranks[bytes(CHAR_TO_BYTE[c] for c in text)] = i
            except KeyError:
                raise TokenizerError(f"{source}: token {text!r} is not byte-level BPE") from None
        self.tt = tiktoken.Encoding(name=f"gptrecipe-{len(vocab)}", pat_str=GPT4_SPLIT_PATTERN,
                                    mergeable_ranks=ranks, special_tokens=self.specials)
        self._ranks = ranks

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, show_progress: bool = True) -> Tokenizer:
        """Learn byte-level BPE merges from `texts` until the vocabulary has `vocab_size` tokens."""
        minimum = 256 + len(SPECIAL_TOKENS) + 1
        if vocab_size < minimum:
            raise TokenizerError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {minimum} "
                                 f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens + 1 merge)")
        seen = {"chars": 0}

        def counted():
            for t in texts:
                seen["chars"] += len(t)
                yield t

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=2,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
        hf.train_from_iterator(counted(), trainer)
        if seen["chars"] == 0:
            raise TokenizerError("cannot train a tokenizer on an empty corpus")
        vocab = hf.get_vocab()
        specials = {s: vocab[s] for s in SPECIAL_TOKENS}
        ranks = {bytes(CHAR_TO_BYTE[c] for c in t): i for t, i in vocab.items() if t not in specials}
        return cls(_hf_from_ranks(ranks, specials))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
        return cls(hf, source=str(path))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(self.hf.to_str(pretty=False))
        os.replace(tmp, path)
        self.source = str(path)

    # ---- use ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tt.n_vocab

    @property
    def eot_id(self) -> int:
        return self.specials["<|endoftext|>"]

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.hf.to_str(pretty=False).encode()).hexdigest()

    def id_of(self, special: str) -> int:
        if special not in self.specials:
            raise TokenizerError(f"unknown special token {special!r}; known: {', '.join(self.specials)}")
        return self.specials[special]

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids. Special-token strings in `text` are plain text unless allow_special."""
        if allow_special:
            return self.tt.encode(text, allowed_special="all")
        return self.tt.encode_ordinary(text)

    def encode_batch(self, texts: list[str], *, num_threads: int = 0) -> list[list[int]]:
        """Many texts at once on `num_threads` threads (0 = all cores); specials are plain text."""
        return self.tt.encode_ordinary_batch(texts, num_threads=num_threads or os.cpu_count() or 1)

    def encode_hf(self, text: str) -> list[int]:
        """The same ids through the HF tokenizer (reference path; parses special-token strings)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.tt.decode_bytes(list(ids))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; a cut multi-byte character (mid-stream) shows as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def compression_stats(tok: Tokenizer, texts: Iterable[str]) -> dict[str, float | int]:
    texts = list(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    return {"bytes": n_bytes, "chars": n_chars, "tokens": n_tokens,
            "bytes_per_token": n_bytes / max(1, n_tokens), "chars_per_token": n_chars / max(1, n_tokens)}


# ---- command line -------------------------------------------------------------------------------

DEFAULT_INPUTS = ["builtin:shakespeare", "builtin:kjv", "builtin:chatterbot"]


def _texts(sources: list[str], max_chars: int) -> Iterable[str]:
    """Documents from the sources, sharing `max_chars` evenly among them."""
    from .data import read_documents

    per_source = max_chars // max(1, len(sources))
    for src in sources:
        budget = per_source
        for doc in read_documents(src):
            yield doc[:budget]
            budget -= len(doc)
            if budget <= 0:
                break


def _cmd_train(args) -> int:
    sources = args.input or DEFAULT_INPUTS
    tok = Tokenizer.train(_texts(sources, args.max_chars), args.vocab_size, show_progress=sys.stderr.isatty())
    tok.save(args.out)
    print(f"saved {tok.vocab_size}-token tokenizer to {args.out} (trained on {', '.join(sources)})")
    return 0


def _read_arg_or_stdin(values: list[str] | None) -> str:
    return " ".join(values) if values else sys.stdin.read()


def _cmd_encode(args) -> int:
    tok = Tokenizer.from_file(args.tokenizer)
    print(" ".join(map(str, tok.encode(_read_arg_or_stdin(args.text), allow_special=args.allow_special))))
    return 0


def _cmd_decode(args) -> int:
    tok = Tokenizer.from_file(args.tokenizer)
    raw = _read_arg_or_stdin(args.ids).split()
    try:
        ids = [int(x) for x in raw]
    except ValueError:
        raise TokenizerError(f"decode expects integer ids, got {raw[:5]}") from None
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise TokenizerError(f"ids out of range 0..{tok.vocab_size - 1}: {bad[:5]}")
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def _cmd_stats(args) -> int:
    tok = Tokenizer.from_file(args.tokenizer)
    sources = args.input or DEFAULT_INPUTS
    print(f"{'corpus':<28} {'bytes':>12} {'tokens':>10} {'bytes/token':>12} {'chars/token':>12}")
    for src in sources:
        s = compression_stats(tok, _texts([src], args.max_chars))
        print(f"{src:<28} {s['bytes']:>12,} {s['tokens']:>10,} {s['bytes_per_token']:>12.2f} "
              f"{s['chars_per_token']:>12.2f}")
    return 0


def add_cli(subparsers) -> None:
    """Register `gptrecipe tokenizer train|encode|decode|stats`."""
    p = subparsers.add_parser("tokenizer", help="train and use the byte-level BPE tokenizer",
                              description="Byte-level BPE (GPT-4 split regex) trained with HF tokenizers.")
    sub = p.add_subparsers(dest="tokenizer_cmd", metavar="COMMAND", required=True)
    t = sub.add_parser("train", help="learn merges from corpora and save tokenizer.json")
    t.add_argument("--out", default="runs/tokenizer/tokenizer.json", help="where to write tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=4096, help="tokens in the vocabulary, specials included")
    t.add_argument("--input", nargs="+", metavar="SOURCE",
                   help="files, directories or builtin:NAME corpora (default: the embedded corpora)")
    t.add_argument("--max-chars", type=int, default=20_000_000, help="cap on training text, shared by inputs")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("encode", help="print the ids of TEXT (or stdin)")
    e.add_argument("--tokenizer", required=True, help="path to tokenizer.json")
    e.add_argument("--allow-special", action="store_true", help="parse <|...|> special tokens in the text")
    e.add_argument("text", nargs="*")
    e.set_defaults(func=_cmd_encode)
    d = sub.add_parser("decode", help="print the text of IDS (or stdin)")
    d.add_argument("--tokenizer", required=True, help="path to tokenizer.json")
    d.add_argument("ids", nargs="*")
    d.set_defaults(func=_cmd_decode)
    s = sub.add_parser("stats", help="compression (bytes/token) per corpus")
    s.add_argument("--tokenizer", required=True, help="path to tokenizer.json")
    s.add_argument("--input", nargs="+", metavar="SOURCE", help="corpora (default: the embedded corpora)")
    s.add_argument("--max-chars", type=int, default=2_000_000, help="text to measure per corpus")
    s.set_defaults(func=_cmd_stats)


def main(argv: list[str] | None = None) -> int:  # `python -m gptrecipe.tokenizer ...`
    ap = argparse.ArgumentParser(prog="gptrecipe")
    add_cli(ap.add_subparsers(dest="stage"))
    args = ap.parse_args(argv)
    return args.func(args)
