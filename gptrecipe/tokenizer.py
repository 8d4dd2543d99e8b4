"""Byte-level BPE tokenizer: trained by Hugging Face `tokenizers`, encoded fast by `tiktoken`.

Text is cut into pieces by the GPT-4 pre-tokenization regex with numbers in chunks of at most two digits
(nanochat's split; GPT-4's three-digit chunks are still read from older files), each piece is taken as UTF-8
bytes, and the most frequent adjacent pairs are merged until the vocabulary is full. All 256 bytes are in the
base alphabet, so every string round-trips: decode(encode(s)) == s (Chinese, emoji, anything).

Every two-digit string is one token (`with_digit_pairs`: the rarest learned merges make room): numbers are rare
in prose, so BPE alone leaves them as single digits, and a small model then copies a number like 786600 digit by
digit, where a repeated digit (6, 6, 0, 0) is ambiguous to its attention; as 78|66|00 it copies three distinct
tokens. Measured on the main job's tool use: held-out arithmetic answered exactly 65% -> 94% after the same SFT.

Ids: the 16 special tokens first (0..15), then the 256 single bytes, then one token per merge, in merge
order. The result is saved as a standard `tokenizer.json` (`tokenizers.Tokenizer.from_file` loads it).

Two encoders, identical ids:
- `tiktoken` (fast, multi-threaded batches) ranks a token by its id and, inside a piece, repeatedly merges
  the adjacent pair whose concatenation has the lowest id;
- HF `tokenizers` applies an explicit merge list in order.
These agree when each multi-byte token's merge is the pair that tiktoken's own BPE, run on the token's
bytes with lower-ranked tokens only, ends with ("canonical" merge) and every token has one. Training may
not give that (the HF trainer can reach one token by two different merges), so after training the HF
tokenizer is rebuilt from the ranks with the canonical merges, dropping any token that has none. Loading
checks the same property, so a file that would make the encoders disagree is refused.

A vocabulary imported from GPT-2 (`read_hf_tokenizer`, for `gptrecipe import`) keeps GPT-2's own split regex and
ids, with the special tokens it lacks appended after its last id; both encoders follow its split too.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .data.readers import read_documents
from .io import atomic_write_bytes

GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# ours: GPT-4's split with numbers in chunks of at most two digits (nanochat's), so every chunk is one token
SPLIT_PATTERN = GPT4_SPLIT_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}{1,2}")
# GPT-2's split (the regex of HF's ByteLevel pre-tokenizer with use_regex=true): what imported GPT-2 vocabularies use
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # document separator / beginning of sequence
    "<|pad|>",
    "<|system|>",  # chat turns (SFT): system / user / assistant, each closed by <|end|>
    "<|user|>",
    "<|assistant|>",
    "<|end|>",  # end of turn
    "<|reward|>",  # reward-model readout token, appended after a completion
    *(f"<|reserved_{i}|>" for i in range(9)),
)
N_BYTES = 256
MIN_VOCAB_SIZE = N_BYTES + len(SPECIAL_TOKENS) + 1  # at least one merge


class TokenizerError(ValueError):
    """A tokenizer file or request that cannot be used; the message names the file or the value."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters (how byte-level BPE spells bytes)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(N_BYTES) if b not in bs]  # spelled as the characters from 256 on
    return dict(zip(bs + extra, map(chr, bs + [N_BYTES + i for i in range(len(extra))]), strict=True))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _spell(token: bytes) -> str:
    """Bytes -> the HF byte-level vocabulary string."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def _pre_tokenizer(pattern: str = SPLIT_PATTERN) -> pre_tokenizers.PreTokenizer:
    """Split by `pattern`, then spell bytes; GPT-2's split is written as GPT-2's own ByteLevel pre-tokenizer."""
    if pattern == GPT2_SPLIT_PATTERN:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


# ---- merges <-> ranks -----------------------------------------------------------------------------------

def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE on the bytes of `token`, using only tokens ranked below `max_rank`."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], max_rank)
            if r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def canonical_merges(ranks: dict[bytes, int]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """The canonical merge of every multi-byte token, in rank order, and the tokens that have none."""
    merges, orphans = [], []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = _bpe(ranks, token, rank)
            if len(parts) == 2:
                merges.append((parts[0], parts[1]))
            else:
                orphans.append(token)
    return merges, orphans


def consistent_ranks(ranks: dict[bytes, int], first_id: int) -> dict[bytes, int]:
    """Drop tokens without a canonical merge (until none is left), then renumber from `first_id` in order."""
    ranks = dict(ranks)
    while orphans := canonical_merges(ranks)[1]:
        for token in orphans:
            del ranks[token]
    order = sorted(ranks, key=ranks.__getitem__)
    return {token: first_id + i for i, token in enumerate(order)}


DIGIT_PAIRS = [f"{a}{b}".encode() for a in "0123456789" for b in "0123456789"]


def with_digit_pairs(ranks: dict[bytes, int]) -> dict[bytes, int]:
    """Make every two-digit string a token: the missing ones take the ids of the last-learned (rarest) merges,
    whose tokens no kept token is built from. Left as is when those merges would be more than a quarter of all."""
    missing = [p for p in DIGIT_PAIRS if p not in ranks]
    merged = sorted((t for t in ranks if len(t) > 1), key=ranks.__getitem__)
    if not missing or 4 * len(missing) > len(merged):
        return ranks
    drop = [t for t in reversed(merged) if t not in DIGIT_PAIRS][:len(missing)]
    ids, dropped = sorted(ranks[t] for t in drop), set(drop)
    out = {t: i for t, i in ranks.items() if t not in dropped}
    out.update(zip(missing, ids, strict=True))
    return consistent_ranks(out, first_id=min(ranks.values()))


def _hf_from_ranks(ranks: dict[bytes, int], specials: dict[str, int],
                   pattern: str = SPLIT_PATTERN) -> HFTokenizer:
    """An HF tokenizer that encodes exactly like tiktoken does with these ranks (splitting text by `pattern`)."""
    merges, orphans = canonical_merges(ranks)
    if orphans:
        raise ValueError(f"{len(orphans)} tokens have no canonical merge: use consistent_ranks() first")
    vocab = {_spell(token): i for token, i in ranks.items()}
    vocab.update(specials)  # in the model's vocab too, so the specials keep their ids
    # ignore_merges: a piece that is itself a token is that token, as in tiktoken
    model = models.BPE(vocab=vocab, merges=[(_spell(a), _spell(b)) for a, b in merges], ignore_merges=True)
    hf = HFTokenizer(model)
    hf.pre_tokenizer = _pre_tokenizer(pattern)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False)
                           for s in sorted(specials, key=specials.__getitem__)])
    return hf


def split_pattern(pre) -> str | None:
    """The split regex of a tokenizer.json pre-tokenizer that tiktoken can reproduce: ours or the GPT-4 split
    followed by ByteLevel, or GPT-2's ByteLevel with its own regex; None for anything else."""
    try:
        if pre["type"] == "ByteLevel":
            return GPT2_SPLIT_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
        split, byte_level = pre["pretokenizers"]
        pattern = split["pattern"].get("Regex")
        ours = (pre["type"] == "Sequence" and split["type"] == "Split" and split["behavior"] == "Isolated"
                and pattern in (SPLIT_PATTERN, GPT4_SPLIT_PATTERN) and not split.get("invert")
                and byte_level["type"] == "ByteLevel" and not byte_level.get("add_prefix_space")
                and not byte_level.get("use_regex"))
        return pattern if ours else None
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


BPE_EXTRAS = ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")  # tiktoken has none


def _check_splitting(config: dict, where: str) -> str:
    """The file's split pattern; refuse a pre-tokenizer tiktoken cannot reproduce, or a normalizer."""
    pattern = split_pattern(config.get("pre_tokenizer"))
    if pattern is None:
        raise TokenizerError(f"{where}: pre-tokenizer is neither the GPT-4 split regex followed by ByteLevel nor "
                             "GPT-2's ByteLevel (use_regex=true, add_prefix_space=false)")
    if config.get("normalizer") is not None:
        raise TokenizerError(f"{where}: a normalizer is set; byte-level BPE must see the raw text")
    return pattern


def _check_file(config: dict, ranks: dict[bytes, int], specials: dict[str, int], where: str) -> None:
    """Refuse a tokenizer.json on which tiktoken and the HF tokenizer would give different ids."""
    added = {t.get("content"): (t.get("id"), t.get("special")) for t in config.get("added_tokens") or []}
    if added != {s: (i, True) for s, i in specials.items()}:
        raise TokenizerError(f"{where}: added tokens must be exactly the {len(specials)} special tokens")
    model = config["model"]
    if not model.get("ignore_merges") or any(model.get(k) for k in BPE_EXTRAS):
        raise TokenizerError(f"{where}: BPE options differ from tiktoken's BPE (need ignore_merges=true "
                             f"and none of {', '.join(BPE_EXTRAS)})")
    _check_splitting(config, where)
    merges, orphans = canonical_merges(ranks)
    if orphans:
        raise TokenizerError(f"{where}: {len(orphans)} tokens (e.g. {orphans[0]!r}) have no canonical merge")
    stored = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if stored != [(_spell(a), _spell(b)) for a, b in merges]:
        raise TokenizerError(f"{where}: merges are not the canonical merges of the vocabulary ranks "
                             "(not written by gptrecipe; re-train with `gptrecipe tokenizer train`)")


# ---- the tokenizer --------------------------------------------------------------------------------------

class Tokenizer:
    """The project's tokenizer: the HF object (file format, training, reference) plus tiktoken (speed).

    Attributes: `hf` (tokenizers.Tokenizer) and `tt` (tiktoken.Encoding) encode to the same ids.
    """

    def __init__(self, hf: HFTokenizer, *, source: str = "<memory>", fingerprint: str | None = None,
                 config: dict | None = None):
        """Wrap an HF byte-level BPE tokenizer; with `config` (its parsed JSON) check it first."""
        self.hf = hf
        self.source = source
        self._fingerprint = fingerprint
        vocab = hf.get_vocab(with_added_tokens=True)
        if missing := [s for s in SPECIAL_TOKENS if s not in vocab]:
            raise TokenizerError(f"{source}: tokenizer lacks the special tokens {', '.join(missing)}")
        self.specials = {s: vocab[s] for s in SPECIAL_TOKENS}
        ranks: dict[bytes, int] = {}
        for text, i in vocab.items():
            if text in self.specials:
                continue
            try:
                ranks[bytes(CHAR_TO_BYTE[c] for c in text)] = i
            except KeyError:
                raise TokenizerError(f"{source}: token {text!r} is not a byte-level BPE token") from None
        n_single = sum(len(t) == 1 for t in ranks)
        if n_single != N_BYTES:
            raise TokenizerError(f"{source}: vocabulary has {n_single} of the 256 single-byte tokens")
        if len(set(vocab.values())) != len(vocab):
            raise TokenizerError(f"{source}: two tokens share an id")
        if config is not None:
            _check_file(config, ranks, self.specials, source)
        self.pattern = split_pattern((config or json.loads(hf.to_str())).get("pre_tokenizer"))
        if self.pattern is None:
            raise TokenizerError(f"{source}: pre-tokenizer is neither ours nor GPT-2's byte-level split")
        self.tt = tiktoken.Encoding(name=f"gptrecipe-{len(vocab)}", pat_str=self.pattern,
                                    mergeable_ranks=ranks, special_tokens=self.specials)
        self._hf_text: HFTokenizer | None = None  # lazily: a copy that reads special-token strings as text

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, show_progress: bool = True) -> Tokenizer:
        """Learn byte-level BPE merges from `texts` until the vocabulary has `vocab_size` tokens.

        The vocabulary can come out smaller when the text has too few pairs seen twice or more.
        """
        if isinstance(texts, str | bytes):
            raise TokenizerError("train() takes an iterable of documents, not a single string: use [text]")
        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
            raise TokenizerError(f"vocab_size {vocab_size!r} is too small: byte-level BPE needs at least "
                                 f"{MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} specials + 1 merge)")
        n_chars = 0

        def counted() -> Iterator[str]:
            nonlocal n_chars
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TokenizerError(f"training text #{i} is a {type(text).__name__}, not a str")
                n_chars += len(text)
                yield text

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = _pre_tokenizer()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=show_progress,
                                      special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(counted(), trainer)
        if n_chars == 0:
            raise TokenizerError("cannot train a tokenizer on an empty corpus (no text)")
        vocab = hf.get_vocab()
        specials = {s: vocab[s] for s in SPECIAL_TOKENS}
        ranks = {bytes(CHAR_TO_BYTE[c] for c in t): i for t, i in vocab.items() if t not in specials}
        ranks = with_digit_pairs(consistent_ranks(ranks, first_id=len(SPECIAL_TOKENS)))
        return cls(_hf_from_ranks(ranks, specials))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json written by `save` (checked: both encoders must agree on it)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file not found: {path}") from None
        except OSError as e:
            raise TokenizerError(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
            config = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
        if not isinstance(config, dict) or (config.get("model") or {}).get("type") != "BPE":
            raise TokenizerError(f"{path}: not a BPE tokenizer.json")
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a plain Exception on a bad file
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
        return cls(hf, source=str(path), fingerprint=hashlib.sha256(raw).hexdigest(), config=config)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (temp file in the same folder, then rename)."""
        data = self.hf.to_str(pretty=False).encode("utf-8")
        atomic_write_bytes(path, data)
        self.source = str(path)
        self._fingerprint = hashlib.sha256(data).hexdigest()

    @property
    def vocab_size(self) -> int:
        """Number of ids (special tokens included); ids are 0..vocab_size-1."""
        return self.tt.n_vocab

    @property
    def eot_id(self) -> int:
        """Id of <|endoftext|>, the document separator."""
        return self.specials["<|endoftext|>"]

    @property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer.json content (a cache key for tokenized data)."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self.hf.to_str(pretty=False).encode("utf-8")).hexdigest()
        return self._fingerprint

    def id_of(self, special: str) -> int:
        """Id of a special token such as "<|end|>"."""
        if special not in self.specials:
            raise TokenizerError(f"unknown special token {special!r}; known: {', '.join(self.specials)}")
        return self.specials[special]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids. Special-token strings in `text` are plain text unless allow_special=True.

        Lone surrogates (not valid Unicode, e.g. from a JSON escape) are encoded as U+FFFD, as tiktoken does.
        """
        return self.tt.encode(text, allowed_special="all") if allow_special else self.tt.encode_ordinary(text)

    def encode_batch(self, texts: list[str], *, num_threads: int = 0) -> list[list[int]]:
        """Many texts on `num_threads` threads (0 = all cores); special-token strings are plain text."""
        return self.tt.encode_ordinary_batch(texts, num_threads=num_threads or os.cpu_count() or 1)

    def encode_hf(self, text: str, *, allow_special: bool = False) -> list[int]:
        """The same ids through the HF tokenizer (the slower reference path)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates -> U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if allow_special:
            return self.hf.encode(text, add_special_tokens=False).ids
        if self._hf_text is None:
            hf = HFTokenizer.from_str(self.hf.to_str())
            hf.encode_special_tokens = True  # "<|endoftext|>" in the text is text, as in `encode`
            self._hf_text = hf
        return self._hf_text.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Ids -> raw bytes (a streamed piece may end inside a multi-byte character)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy arrays, torch tensors
        try:
            return self.tt.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError) as e:
            bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size)][:5]
            raise TokenizerError(f"cannot decode ids {bad or ids[:5]}: valid ids are "
                                 f"0..{self.vocab_size - 1} ({e})") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; a cut multi-byte character (mid-stream) shows as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def read_hf_tokenizer(folder: str | Path) -> tuple[Tokenizer, list[str]]:
    """The byte-level BPE tokenizer of a Hugging Face model folder (tokenizer.json, or GPT-2's vocab.json and
    merges.txt) and the special tokens it lacked, appended after its last id (GPT-2 has only <|endoftext|>).

    Ids are kept; the HF side is rebuilt from the ranks (the ids) with canonical merges, which is how tiktoken
    encodes GPT-2 too. A vocabulary tiktoken's BPE cannot reproduce, or other added tokens, are refused."""
    folder = Path(folder)
    file = folder / "tokenizer.json"
    try:
        if file.is_file():
            config = json.loads(file.read_text(encoding="utf-8"))
            model = config.get("model") or {}
            if model.get("type") != "BPE":
                raise TokenizerError(f"{file}: not a BPE tokenizer (model type {model.get('type')!r})")
            if extra := [k for k in BPE_EXTRAS if model.get(k)]:
                raise TokenizerError(f"{file}: BPE option {extra[0]} is set; tiktoken's byte-level BPE has none")
            pattern = _check_splitting(config, str(file))
            vocab = dict(model.get("vocab") or {})
            added = {t["content"]: t["id"] for t in config.get("added_tokens") or []}
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            file, pattern, added = folder / "vocab.json", GPT2_SPLIT_PATTERN, {}
            vocab = json.loads(file.read_text(encoding="utf-8"))
        else:
            raise TokenizerError(f"{folder}: no tokenizer.json, nor GPT-2's vocab.json and merges.txt")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as e:
        raise TokenizerError(f"{file}: not a readable tokenizer ({e})") from None
    if other := [t for t in added if t not in SPECIAL_TOKENS]:
        raise TokenizerError(f"{file}: added token {other[0]!r} is not one of gptrecipe's special tokens")
    specials = {t: i for t, i in {**vocab, **added}.items() if t in SPECIAL_TOKENS}
    ranks: dict[bytes, int] = {}
    for text, i in vocab.items():
        if text not in specials:
            try:
                ranks[bytes(CHAR_TO_BYTE[c] for c in text)] = i
            except KeyError:
                raise TokenizerError(f"{file}: token {text!r} is not a byte-level BPE token") from None
    next_id = max([*ranks.values(), *specials.values()]) + 1
    appended = [name for name in SPECIAL_TOKENS if name not in specials]
    specials.update({name: next_id + i for i, name in enumerate(appended)})
    try:
        hf = _hf_from_ranks(ranks, specials, pattern)
    except ValueError as e:
        raise TokenizerError(f"{file}: tiktoken's BPE cannot reproduce this vocabulary ({e})") from None
    return Tokenizer(hf, source=str(file)), appended


def compression_stats(tok: Tokenizer, texts: Iterable[str]) -> dict:
    """Bytes, chars and tokens of `texts`, and bytes/token and chars/token."""
    n_bytes = n_chars = n_tokens = 0
    it = iter(texts)
    while batch := list(itertools.islice(it, 256)):
        n_bytes += sum(len(text.encode("utf-8", errors="surrogatepass")) for text in batch)
        n_chars += sum(map(len, batch))
        n_tokens += sum(map(len, tok.encode_batch(batch)))
    return {"bytes": n_bytes, "tokens": n_tokens, "chars": n_chars,
            "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
            "chars_per_token": n_chars / n_tokens if n_tokens else 0.0}


# ---- command line: gptrecipe tokenizer train|encode|decode|stats ---------------------------------------

DEFAULT_INPUTS = ("builtin:shakespeare", "builtin:kjv", "builtin:chatterbot")


def read_texts(sources: Sequence[str], max_chars: int) -> Iterator[str]:
    """Documents of the sources, at most `max_chars` in all, shared evenly by the sources (in rounds, so
    what a small source leaves unused goes to the others); the last document of a share may be cut."""
    readers = {src: read_documents(src) for src in sources}
    left = max_chars
    while readers and left >= len(readers):
        share = left // len(readers)
        for src in list(readers):
            budget = share
            while budget > 0:
                doc = next(readers[src], None)
                if doc is None:
                    del readers[src]
                    break
                doc = doc[:budget]
                budget -= len(doc)
                left -= len(doc)
                yield doc


def _cmd_train(args: argparse.Namespace) -> int:
    sources = args.input or list(DEFAULT_INPUTS)
    n_chars = 0

    def texts() -> Iterator[str]:
        nonlocal n_chars
        for doc in read_texts(sources, args.max_chars):
            n_chars += len(doc)
            yield doc

    t0 = time.perf_counter()
    tok = Tokenizer.train(texts(), args.vocab_size, show_progress=sys.stderr.isatty())
    tok.save(args.out)
    print(f"trained a {tok.vocab_size:,}-token tokenizer on {n_chars:,} chars of {', '.join(sources)} "
          f"in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _arg_or_stdin(values: list[str]) -> str:
    return " ".join(values) if values else sys.stdin.read()


def _cmd_encode(args: argparse.Namespace) -> int:
    tok = Tokenizer.from_file(args.tokenizer)
    print(" ".join(map(str, tok.encode(_arg_or_stdin(args.text), allow_special=args.allow_special))))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    tok = Tokenizer.from_file(args.tokenizer)
    words = _arg_or_stdin(args.ids).replace(",", " ").replace("[", " ").replace("]", " ").split()
    try:
        ids = [int(w) for w in words]
    except ValueError:
        raise TokenizerError(f"decode expects integer ids, got {' '.join(words[:5])!r}") from None
    text = tok.decode(ids)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    tok = Tokenizer.from_file(args.tokenizer)
    print(f"{args.tokenizer}: {tok.vocab_size:,} tokens, fingerprint {tok.fingerprint[:12]}")
    row = "{:<28} {:>13} {:>13} {:>11} {:>12} {:>12}"
    print(row.format("corpus", "bytes", "chars", "tokens", "bytes/token", "chars/token"))
    for src in args.input or DEFAULT_INPUTS:
        s = compression_stats(tok, read_texts([src], args.max_chars))
        print(row.format(src, f"{s['bytes']:,}", f"{s['chars']:,}", f"{s['tokens']:,}",
                         f"{s['bytes_per_token']:.2f}", f"{s['chars_per_token']:.2f}"))
    return 0


def add_cli(subparsers) -> None:
    """Register `tokenizer train|encode|decode|stats` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "tokenizer", help="train / use the byte-level BPE tokenizer (train, encode, decode, stats)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Byte-level BPE (GPT-4's split regex with numbers in two-digit chunks, every two-digit "
        "string a token, 256-byte alphabet, 16 special tokens), trained with "
        "Hugging Face tokenizers and encoded with tiktoken.\n\nExamples:\n"
        "  gptrecipe tokenizer train --vocab-size 4096 --out runs/tokenizer/tokenizer.json\n"
        "  gptrecipe tokenizer encode --tokenizer runs/tokenizer/tokenizer.json 'Hello, 世界'\n"
        "  gptrecipe tokenizer decode --tokenizer runs/tokenizer/tokenizer.json 15 2043 300\n"
        "  gptrecipe tokenizer stats --tokenizer runs/tokenizer/tokenizer.json --input my_texts/")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    uses = argparse.ArgumentParser(add_help=False)  # the commands that read a tokenizer
    uses.add_argument("--tokenizer", required=True, metavar="PATH", help="tokenizer.json")

    t = sub.add_parser("train", help="learn BPE merges from corpora and save tokenizer.json",
                       description="Learn byte-level BPE merges from corpora and save tokenizer.json.")
    t.add_argument("--out", default="runs/tokenizer/tokenizer.json", metavar="PATH",
                   help="output path (default: %(default)s)")
    t.add_argument("--vocab-size", type=int, default=4096, metavar="N",
                   help=f"tokens in the vocabulary, specials included, >= {MIN_VOCAB_SIZE} (default: %(default)s)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("encode", help="print the ids of TEXT (or of stdin)", parents=[uses],
                       description="Print the token ids of TEXT (words joined by spaces), or of stdin when "
                       "no TEXT is given, space-separated.")
    e.add_argument("--allow-special", action="store_true", help="read <|endoftext|> etc. as special tokens")
    e.add_argument("text", nargs="*", help="text to encode (default: stdin)")
    e.set_defaults(func=_cmd_encode)

    d = sub.add_parser("decode", help="print the text of IDS (or of stdin)", parents=[uses],
                       description="Print the text of token ids given as arguments or on stdin (separated by "
                       "spaces or commas).")
    d.add_argument("ids", nargs="*", help="token ids (default: stdin)")
    d.set_defaults(func=_cmd_decode)

    s = sub.add_parser("stats", help="compression (bytes/token, chars/token) per corpus", parents=[uses],
                       description="Print bytes/token and chars/token of the tokenizer on each corpus.")
    s.set_defaults(func=_cmd_stats)
    for q, max_chars, what in [(t, 20_000_000, "cap on training text, shared evenly by the inputs"),
                               (s, 2_000_000, "text measured per corpus")]:
        q.add_argument("--input", nargs="+", action="extend", metavar="PATH",
                       help="a .txt/.md/.jsonl/.parquet file, a directory of them, or builtin:shakespeare, "
                       "builtin:kjv, builtin:chatterbot (repeatable; default: the three builtin corpora)")
        q.add_argument("--max-chars", type=int, default=max_chars, metavar="N", help=f"{what} (default: %(default)s)")
