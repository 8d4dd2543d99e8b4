import json

import pytest
import torch

from gptrecipe.chat import ChatTemplate, Message, parse_messages, read_conversations
from gptrecipe.data.readers import DataError
from gptrecipe.model import GPT, IGNORE_INDEX, PackedRows
from gptrecipe.sft import MaskedLMTask, pack, render_all
from gptrecipe.train import TrainConfig, train
from tests.conftest import assert_resume_is_exact, save_stage_checkpoint, tiny_config

CONV = [Message("system", "Be kind."), Message("user", "Hello!"), Message("assistant", "Hi, how are you?"),
        Message("user", "Fine.")]


def test_template_renders_turns_and_masks_assistant_only(small_tok):
    t = ChatTemplate(small_tok)
    r = t.render(CONV)
    sp = small_tok.id_of
    enc = small_tok.encode
    expected = ([small_tok.eot_id, sp("<|system|>"), *enc("Be kind."), sp("<|end|>"), sp("<|user|>"), *enc("Hello!"),
                 sp("<|end|>"), sp("<|assistant|>"), *enc("Hi, how are you?"), sp("<|end|>"), sp("<|user|>"),
                 *enc("Fine."), sp("<|end|>")])
    assert r.ids == expected
    trained = [i for i, m in zip(r.ids, r.mask, strict=True) if m]
    assert trained == [*enc("Hi, how are you?"), sp("<|end|>")]  # the reply and the end-of-turn it stops on
    assert t.prompt_ids(CONV[:2])[-1] == sp("<|assistant|>") and sp("<|end|>") in t.stop_ids
    assert small_tok.decode(r.ids[1:]).count("<|end|>") == 4


def test_formats_and_errors(tmp_path):
    assert parse_messages({"prompt": "a", "response": "b"}, "x") == [Message("user", "a"), Message("assistant", "b")]
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n"
                 + json.dumps({"messages": [{"role": "robot", "content": "q"}]}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl: line 2: messages\[0\] must be"):
        read_conversations(p)
    p.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(DataError, match="c.jsonl: line 2: malformed JSON"):
        read_conversations(p)
    with pytest.raises(DataError, match="expected 'messages' or 'prompt' and 'response'"):
        parse_messages({"text": "x"}, "here")


def make_task(tok, convs, block=48, packing=False):
    t = ChatTemplate(tok)
    rows, dropped = render_all(t, convs, block)
    if packing:
        rows = pack(rows, block + 1)
    return MaskedLMTask(rows, rows[:4], tok.id_of("<|pad|>"), 0, block), dropped


def test_user_tokens_do_not_contribute(small_tok):
    """Changing the final user turn (a non-target after the last reply) leaves loss and gradient unchanged."""
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    a, _ = make_task(small_tok, [CONV])
    b, _ = make_task(small_tok, [CONV[:-1] + [Message("user", "Something else entirely, why?")]])
    ba, bb = a.get_batch(0, 0, 1, 1, 0, 1), b.get_batch(0, 0, 1, 1, 0, 1)
    (xa, ya), (xb, yb) = ba.tensors, bb.tensors
    assert not torch.equal(xa, xb) and ba.counts == bb.counts
    la, lb = a.loss(model, (xa, ya))["lm"], b.loss(model, (xb, yb))["lm"]
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-6)
    ga = torch.autograd.grad(la, model.wte.weight)[0]
    gb = torch.autograd.grad(b.loss(model, (xb, yb))["lm"], model.wte.weight)[0]
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-6)
    # and the loss is the CE summed over exactly the assistant tokens, whose count the batch carries
    logits, _ = model(xa)
    keep = ya != IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(logits[keep], ya[keep], reduction="sum")
    torch.testing.assert_close(la, ref, rtol=1e-5, atol=1e-5)
    assert ba.counts == {"lm": int(keep.sum())} and ba.tokens == xa.numel()


def test_overlong_conversations_are_cut_or_dropped_never_nan(small_tok):
    long_user = [Message("user", "Hello! " * 200), Message("assistant", "Hi.")]
    ok = [Message("user", "Hi"), Message("assistant", "Hello! " * 200)]
    task, dropped = make_task(small_tok, [long_user, ok, CONV])
    assert dropped == 1 and len(task.rows) == 2 and task.rows[0].truncated
    torch.manual_seed(0)
    loss = task.loss(GPT(tiny_config(vocab_size=small_tok.vocab_size)), task.get_batch(0, 0, 4, 1, 0, 1).tensors)
    assert torch.isfinite(loss["lm"])
    with pytest.raises(DataError, match="no training conversation"):
        make_task(small_tok, [long_user])


def test_packing_keeps_every_conversation(small_tok):
    convs = [[Message("user", f"Q{i}"), Message("assistant", f"A{i}")] for i in range(30)]
    task, _ = make_task(small_tok, convs, block=48, packing=True)
    assert len(task.rows) < 30 and all(len(r.ids) <= 49 for r in task.rows)
    assert sum(r.n_trainable for r in task.rows) == sum(ChatTemplate(small_tok).render(c).n_trainable for c in convs)


def test_packed_conversations_compute_as_if_alone(small_tok):
    """Every logit of a packed row equals its conversation's logit alone (no attention across conversations,
    positions from each one's start), to 1e-5 in fp32; without the packing mask they differ."""
    convs = [[Message("user", f"Question {i}?"), Message("assistant", "Answer " * (i + 1))] for i in range(6)]
    alone, _ = make_task(small_tok, convs, block=96)
    packed, _ = make_task(small_tok, convs, block=96, packing=True)
    assert len(packed.rows) < len(convs) and len(packed.rows[0].starts) > 1
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=small_tok.vocab_size, block_size=96)).eval()
    x, _, starts = packed._tensors(packed.rows)
    with torch.no_grad():
        got = model(x, cache=PackedRows(starts))[0]
        seeing_each_other = model(x)[0]
        ends = [*packed.rows[0].starts[1:], len(packed.rows[0].ids)]
        for a, b, row in zip(packed.rows[0].starts, ends, alone.rows, strict=False):
            want = model(torch.tensor([row.ids[:-1]]))[0][0]  # its logits alone: one per token but the last
            assert len(want) == b - a - 1
            assert torch.allclose(got[0, a: b - 1], want, atol=1e-5)
    assert not torch.allclose(got, seeing_each_other, atol=1e-3)


def test_sft_learns(small_tok, tmp_path):
    convs = [[Message("user", q), Message("assistant", a)] for q, a in
             [("Hello!", "Hi, how are you?"), ("What is AI?", "Artificial intelligence."),
              ("Tell me a joke.", "Why did the chicken cross the road?")] * 10]
    task, _ = make_task(small_tok, convs)
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    cfg = TrainConfig(max_steps=40, micro_batch_size=8, lr=1e-2, warmup_steps=5, eval_every=20, checkpoint_every=0,
                      device="cpu", progress=False, dtype="fp32")
    res = train(model, task, cfg, tmp_path)
    assert res.evals[0]["val_loss"] > 2 * res.evals[-1]["val_loss"] and res.evals[-1]["val_loss"] < 1.0


def test_sft_stage_resume_is_exact(small_tok, tmp_path):
    import json as js

    from gptrecipe.sft import SFTConfig, sft

    torch.manual_seed(0)
    base = GPT(tiny_config(vocab_size=small_tok.vocab_size, dropout=0.1))
    save_stage_checkpoint(tmp_path / "base", base, small_tok, stage="pretrain")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(js.dumps({"prompt": f"Hello {i}!", "response": "Hi, how are you?"}) + "\n"
                            for i in range(40)))

    def cfg(name: str) -> SFTConfig:
        return SFTConfig(name=name, out_dir=str(tmp_path), init=str(tmp_path / "base"), data=str(data),
                         train=TrainConfig(max_steps=8, micro_batch_size=4, lr=3e-3, warmup_steps=2, eval_every=0,
                                           checkpoint_every=4, device="cpu", progress=False, dtype="fp32"),
                         sample_prompts=["Hello"])

    assert_resume_is_exact(lambda name, resume: sft(cfg(name), resume=resume, log=lambda *a: None), tmp_path)


def test_tokens_per_second_and_mfu_count_the_padded_batch(small_tok, tmp_path):
    """Rows padded to each batch's longest: tokens/s and MFU count the positions computed (B x width), not
    block_size per row."""
    import json as js

    from gptrecipe.runtime import measure_peak_flops

    convs = [[Message("user", "Hi " * (1 + i % 7)), Message("assistant", "Hello " * (1 + i % 5))] for i in range(40)]
    task, _ = make_task(small_tok, convs, block=64)
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    cfg = TrainConfig(max_steps=4, micro_batch_size=4, batch_tokens=2 * 4 * 64, lr=1e-3, warmup_steps=0,
                      eval_every=0, checkpoint_every=0, device="cpu", progress=False, dtype="fp32")
    train(model, task, cfg, tmp_path)
    rows = [js.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    peak = measure_peak_flops(torch.device("cpu"), torch.float32)
    seen = 0
    for r in steps:
        batches = [task.get_batch(r["step"] - 1, m, 4, 2, 0, 1) for m in range(2)]
        tokens = sum(b.tensors[0].numel() for b in batches)
        assert tokens < 2 * 4 * 64  # padded to the batch's longest row, well under the context
        seen += tokens
        assert r["tokens"] == seen
        assert r["tok_per_s"] == pytest.approx(tokens / r["dt"], rel=1e-6)
        flops = sum(b.tokens * model.flops_per_token(b.width) for b in batches)
        assert r["mfu"] == pytest.approx(flops / r["dt"] / peak, rel=1e-6)
