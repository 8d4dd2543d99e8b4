import io

import pytest
import torch

from gptrecipe.model import GPT
from gptrecipe.sample import (
    PromptTooLongError,
    RowDecoder,
    SamplingConfig,
    filter_logits,
    generate,
    generate_ids,
    generate_rows,
    stream_to_terminal,
)
from tests.conftest import tiny_config


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = filter_logits(logits, 1.0, 2, 1.0)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), 1.0, 0, 0.8)  # 0.5 + 0.3 reaches 0.8: two tokens kept
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = filter_logits(probs.log(), 1.0, 0, 0.81)
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    out = filter_logits(probs.log(), 1.0, 0, 0.1)  # the top token always survives
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(filter_logits(logits, 0.5, 0, 1.0), logits * 2)


def test_greedy_equals_argmax_of_full_forward(tiny_model):
    prompt = [5, 17, 99, 3]
    steps = list(generate_ids(tiny_model, [prompt], SamplingConfig(max_new_tokens=12, temperature=0)))
    got = [int(t[0]) for t in steps]
    seq = list(prompt)
    for _ in range(12):  # reference: recompute everything, no cache
        seq.append(int(tiny_model(torch.tensor([seq]))[0][0, -1].argmax()))
    assert got == seq[len(prompt):]


def test_seed_reproducible_and_batch_rows_independent(tiny_model, byte_tok):
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=123)
    a = generate(tiny_model, byte_tok, ["hello"] * 3, cfg)
    b = generate(tiny_model, byte_tok, ["hello"] * 3, cfg)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({tuple(c.token_ids) for c in a}) > 1  # a batch of N gives N different samples


def test_batched_prompts_of_different_lengths_match_single(tiny_model, byte_tok):
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    batch = generate(tiny_model, byte_tok, ["a", "a much longer prompt"], cfg, stop_ids=[])
    single = [generate(tiny_model, byte_tok, [p], cfg, stop_ids=[])[0] for p in ["a", "a much longer prompt"]]
    assert [c.token_ids for c in batch] == [c.token_ids for c in single]


def test_max_new_tokens_and_finish_reason(tiny_model, byte_tok):
    (c,) = generate(tiny_model, byte_tok, ["xyz"], SamplingConfig(max_new_tokens=7, temperature=0), stop_ids=[])
    assert len(c.token_ids) == 7 and c.finish_reason == "length"


def test_stop_token_and_stop_string(tiny_model, byte_tok):
    cfg = SamplingConfig(max_new_tokens=15, temperature=0)
    (free,) = generate(tiny_model, byte_tok, ["q"], cfg, stop_ids=[])
    first = free.token_ids[3]
    (c,) = generate(tiny_model, byte_tok, ["q"], cfg, stop_ids=[first])
    assert c.finish_reason == "stop" and first not in c.token_ids[: free.token_ids.index(first) + 1]
    stop = free.text[4:6]
    if stop and "\ufffd" not in stop:
        (s,) = generate(tiny_model, byte_tok, ["q"], SamplingConfig(max_new_tokens=15, temperature=0, stop=[stop]),
                        stop_ids=[])
        assert s.finish_reason == "stop" and stop not in s.text and free.text.startswith(s.text)


def test_row_decoder_never_streams_part_of_a_stop_string(byte_tok):
    row = RowDecoder(byte_tok, budget=20, stop_ids=[byte_tok.eot_id], stop=["\n\n"])
    assert [row.accept(t) for t in byte_tok.encode("ab\n")] == ["a", "b", ""]  # "\n" may become "\n\n"
    assert row.finish is None
    assert row.accept(ord("\n")) == "" and (row.finish, row.cut, row.stop_token) == ("stop", True, False)
    assert row.text == "ab" and row.tokens == byte_tok.encode("ab\n\n")
    row = RowDecoder(byte_tok, budget=5, stop=["\n\n"])
    assert [row.accept(t) for t in byte_tok.encode("a\nc")] == ["a", "", "\nc"]  # not a stop string after all
    assert [row.accept(t) for t in "é".encode()] == ["", "é"]  # a multi-byte character waits for its last byte
    assert row.finish == "length" and row.text == "a\ncé" and not row.cut


def test_row_decoder_stop_token_and_budget_release_held_text(byte_tok):
    row = RowDecoder(byte_tok, budget=10, stop_ids=[byte_tok.eot_id], stop=["\n\n"])
    assert [row.accept(t) for t in [ord("x"), ord("\n"), byte_tok.eot_id]] == ["x", "", "\n"]
    assert (row.finish, row.stop_token, row.tokens, row.text) == ("stop", True, [ord("x"), ord("\n")], "x\n")
    row = RowDecoder(byte_tok, budget=2, stop=["\n\n"])
    assert [row.accept(t) for t in byte_tok.encode("x\n")] == ["x", "\n"] and row.finish == "length"
    row = RowDecoder(None, budget=3, stop_ids=[7])  # tokens only (PPO rollouts)
    assert [row.accept(t) for t in (1, 2, 3)] == ["", "", ""] and row.tokens == [1, 2, 3] and row.finish == "length"


def test_generate_rows_keeps_the_raw_tokens_and_whether_a_stop_token_ended_the_row(tiny_model):
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=5)
    prompts = [[5, 17], [99, 3, 4, 8], [42]]
    raw = [[int(t[i]) for t in generate_ids(tiny_model, prompts, cfg)] for i in range(3)]
    stop = raw[0][4]
    rows = generate_rows(tiny_model, prompts, cfg, stop_ids=[stop])
    for r, seq in zip(rows, raw, strict=True):
        n = seq.index(stop) if stop in seq else len(seq)
        assert r.tokens == seq[:n] and r.stop_token == (stop in seq)
        assert r.finish == ("stop" if stop in seq else "length")


def test_prompt_longer_than_context_is_rejected(tiny_model):
    with pytest.raises(PromptTooLongError, match="longer than the model's context"):
        next(generate_ids(tiny_model, [[1] * 65], SamplingConfig()))


def test_generation_stops_at_context_end(tiny_model, byte_tok):
    (c,) = generate(tiny_model, byte_tok, [[1] * 60], SamplingConfig(max_new_tokens=50, temperature=0), stop_ids=[])
    assert len(c.token_ids) == 4 and c.finish_reason == "length"


def test_streaming_pieces_add_up_to_the_text(tiny_model, byte_tok):
    buf = io.StringIO()
    cfg = SamplingConfig(max_new_tokens=25, temperature=1.0, seed=7)
    (c,) = stream_to_terminal(tiny_model, byte_tok, "Once", cfg, file=buf)
    assert buf.getvalue() == c.text + "\n"


def test_sampler_draws_from_the_filtered_distribution():
    """Inverse-CDF sampling: frequencies match softmax(logits / T) within top-k; nothing outside is drawn."""
    from gptrecipe.sample import filter_logits, sample_next

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -30.0, 1.5, -0.5])
    n = 40_000
    cfg = SamplingConfig(temperature=0.8, top_k=5, seed=0)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1), cfg, g)
    freq = torch.bincount(draws, minlength=8).float() / n
    want = torch.softmax(filter_logits(logits[None], 0.8, 5, 1.0), -1)[0]
    assert (want == 0).sum() == 3 and bool((freq[want == 0] == 0).all())
    assert (freq - want).abs().max() < 0.01  # ~4 standard errors at n = 40k
    # top-p: the nucleus {0, 6} (p = 0.5) only
    draws = sample_next(logits.expand(n, -1), SamplingConfig(temperature=1.0, top_p=0.5), g)
    assert set(draws.tolist()) == {0, 6}


def test_compiled_decode_gives_the_eager_tokens_greedy_and_seeded(tiny_model):
    """The static-cache compiled step (left-padded rows of different lengths) draws what eager decoding draws,
    and its logits equal eager's to 1e-5 (fp32)."""
    from gptrecipe.model import StaticKVCache
    from gptrecipe.sample import compiled_decode_step

    prompts = [[5, 17, 99, 3], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    for cfg in (SamplingConfig(max_new_tokens=24, temperature=0),
                SamplingConfig(max_new_tokens=24, temperature=1.0, top_k=20, seed=7)):
        eager = torch.stack(list(generate_ids(tiny_model, prompts, cfg)), 1)
        compiled = torch.stack(list(generate_ids(tiny_model, prompts, cfg, compile=True)), 1)
        assert torch.equal(eager, compiled)
    # a generation that outgrows its first column bucket (64) moves its rows into the next one (128)
    torch.manual_seed(0)
    longer = GPT(tiny_config(block_size=160)).eval()
    prompts = [list(range(3, 43)), [7, 8]]
    cfg = SamplingConfig(max_new_tokens=60, temperature=0)
    eager = torch.stack(list(generate_ids(longer, prompts, cfg)), 1)
    assert torch.equal(eager, torch.stack(list(generate_ids(longer, prompts, cfg, compile=True)), 1))
    # one step's logits against the eager cached forward
    ids = torch.tensor([[0, 0, 5, 17], [1, 2, 3, 4]])
    pads = torch.tensor([2, 0])
    with torch.no_grad():
        cache = tiny_model.new_cache(2, max_len=8, pad=pads)
        tiny_model(ids, cache=cache)
        static = StaticKVCache.of(cache, 64, tiny_model.config)
        nxt = torch.tensor([[9], [11]])
        want = tiny_model(nxt, cache=cache)[0][:, -1]
        static.step_to(4)
        got = compiled_decode_step(tiny_model)(nxt, static)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_static_cache_refuses_to_run_past_its_length(tiny_model):
    from gptrecipe.model import StaticKVCache

    cache = tiny_model.new_cache(1, max_len=4)
    with torch.no_grad():
        tiny_model(torch.tensor([[1, 2]]), cache=cache)
    static = StaticKVCache.of(cache, 4, tiny_model.config)
    static.step_to(3)
    with pytest.raises(ValueError, match="KV cache full"):
        static.step_to(4)


def test_inference_dtype_of_a_loaded_checkpoint(tmp_path, tiny_model, small_tok):
    from gptrecipe.checkpoint import load_checkpoint
    from gptrecipe.config import ConfigError
    from gptrecipe.model import GPT
    from tests.conftest import save_stage_checkpoint, tiny_config

    model = GPT(tiny_config(vocab_size=small_tok.vocab_size))
    save_stage_checkpoint(tmp_path / "ckpt", model, small_tok, stage="pretrain")
    assert next(load_checkpoint(tmp_path / "ckpt").model.parameters()).dtype == torch.float32  # as saved
    bf16 = load_checkpoint(tmp_path / "ckpt", dtype="bf16").model
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    ids = [[1, 2, 3]]
    out = list(generate_ids(bf16, ids, SamplingConfig(max_new_tokens=4, temperature=0)))
    assert len(out) == 4
    with pytest.raises(ConfigError, match="dtype: unknown 'fp8'"):
        load_checkpoint(tmp_path / "ckpt", dtype="fp8")
