"""Shared fixtures: a byte-level stand-in tokenizer and tiny models, so tests run in seconds on CPU."""

from __future__ import annotations

import os

import pytest
import torch

from gptrecipe.model import GPT, GPTConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("GPTRECIPE_CACHE", os.path.join(os.path.dirname(__file__), "..", "runs", "cache", "test"))


class ByteTokenizer:
    """ids = UTF-8 bytes; 256 = <|endoftext|>. Same interface as gptrecipe.tokenizer.Tokenizer."""

    eot_id = 256
    vocab_size = 257
    fingerprint = "bytes-v1"

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str], *, num_threads: int = 0) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@pytest.fixture
def byte_tok() -> ByteTokenizer:
    return ByteTokenizer()


def tiny_config(**kw) -> GPTConfig:
    base = dict(vocab_size=257, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config()).eval()


@pytest.fixture(scope="session")
def small_tok():
    """A real BPE tokenizer (with the chat special tokens) trained in a fraction of a second."""
    from gptrecipe.tokenizer import Tokenizer

    text = ("Hello! How are you? I am fine, thank you. What is AI? Artificial intelligence is the study of "
            "machines that think. Tell me a joke. Why did the chicken cross the road? ") * 50
    return Tokenizer.train([text], 400, show_progress=False)


def kill_after(run_dir, step: int) -> None:
    """Make a finished run look killed right after its checkpoint at `step` (later checkpoints gone)."""
    import shutil
    from pathlib import Path

    ckpts = Path(run_dir) / "checkpoints"
    for d in ckpts.glob("step_*"):
        if int(d.name.removeprefix("step_")) > step:
            shutil.rmtree(d)
    (ckpts / "latest").write_text(f"step_{step:07d}\n")


def assert_resume_is_exact(run, out_dir, steps: int = 8, killed_at: int = 4) -> None:
    """`run(name, resume)` trains a run named `name` under `out_dir` for `steps` steps with a checkpoint every
    `killed_at`. A run killed after that checkpoint and resumed logs the losses of the uninterrupted run (those up
    to the checkpoint taken back from its metrics.jsonl, the rest trained again)."""
    from pathlib import Path

    straight = run("a", False)
    run("b", False)
    kill_after(Path(out_dir) / "b", killed_at)
    resumed = run("b", True)
    assert sorted(resumed.losses) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert resumed.losses[s] == pytest.approx(straight.losses[s], abs=1e-5)


def assert_left_padding_matches_rows(model, short: int, long: int, new: int) -> None:
    """A left-padded batch of a `short` and a `long` random prompt, then `new` cached decode steps, gives the
    logits of each row run alone (positions count from each row's first real token)."""
    import torch

    torch.manual_seed(2)
    vocab = model.config.vocab_size
    s, lg = torch.randint(0, vocab, (1, short)), torch.randint(0, vocab, (1, long))
    pad = long - short
    batch = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), s], 1), lg])
    cache = model.new_cache(2, pad=torch.tensor([pad, 0]))
    out = model(batch, cache=cache)[0]
    nxt = torch.randint(0, vocab, (2, new))
    steps = torch.cat([model(nxt[:, i:i + 1], cache=cache)[0] for i in range(new)], 1)
    alone_short = model(torch.cat([s, nxt[:1]], 1))[0][0]
    alone_long = model(torch.cat([lg, nxt[1:]], 1))[0][0]
    assert torch.isfinite(out).all()
    for got, want in [(out[0, pad:], alone_short[:short]), (steps[0], alone_short[short:]),
                      (out[1], alone_long[:long]), (steps[1], alone_long[long:])]:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def save_stage_checkpoint(path, model, tok, stage: str = "sft"):
    """Save `model` (with its tokenizer) as a checkpoint of `stage`, as the stage commands would."""
    from pathlib import Path

    from gptrecipe.checkpoint import CheckpointMeta, save_checkpoint

    path = Path(path)
    tok_path = path.parent / "tok.json"
    tok.save(tok_path)
    return save_checkpoint(path, model, CheckpointMeta.of(stage, model.config, tok), tokenizer_path=tok_path)


def write_rankings(path, rankings) -> None:
    """Rankings as the `rank` stage writes them: {"prompt", "responses": [best, ..., worst]} per line."""
    import json
    from pathlib import Path

    Path(path).write_text("".join(json.dumps({"prompt": r.prompt, "responses": r.responses}) + "\n"
                                  for r in rankings))
