import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptrecipe.model import (
    ATTENTION_KINDS,
    GPT,
    IGNORE_INDEX,
    GPTConfig,
    KVCache,
    dense_attention,
    explicit_causal_attention,
    optimizer_groups,
)
from tests.conftest import assert_left_padding_matches_rows, tiny_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "models"

# GPT-3 paper, table 2.1
GPT3_SIZES = {"gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9,
              "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9}
GPT3_SHAPES = {"gpt3-small": (12, 768, 12), "gpt3-medium": (24, 1024, 16), "gpt3-large": (24, 1536, 16),
               "gpt3-xl": (24, 2048, 24), "gpt3-2.7b": (32, 2560, 32), "gpt3-6.7b": (32, 4096, 32),
               "gpt3-13b": (40, 5140, 40), "gpt3-175b": (96, 12288, 96)}


def preset(name: str) -> GPTConfig:
    return GPTConfig(**tomllib.loads((CONFIGS / f"{name}.toml").read_text()))


@pytest.mark.parametrize("name", sorted(GPT3_SIZES))
def test_gpt3_presets_match_the_paper(name):
    cfg = preset(name)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == GPT3_SHAPES[name]
    assert cfg.block_size == 2048 and cfg.vocab_size == 50257
    with torch.device("meta"):
        n = GPT(cfg).num_params()
    assert abs(n - GPT3_SIZES[name]) / GPT3_SIZES[name] < 0.02, f"{name}: {n / 1e6:.1f}M"


@pytest.mark.parametrize("name,size", [("gpt2", 124e6), ("gpt2-medium", 355e6), ("gpt2-large", 774e6),
                                       ("gpt2-xl", 1558e6)])
def test_gpt2_presets(name, size):
    with torch.device("meta"):
        n = GPT(preset(name)).num_params()
    assert abs(n - size) / size < 0.01


def test_cpu_presets_are_small():
    for name, limit in [("tiny", 10e6), ("small", 20e6)]:
        with torch.device("meta"):
            assert GPT(preset(name)).num_params() < limit


def test_head_is_tied_and_shapes(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.wte.weight
    x = torch.randint(0, 257, (3, 10))
    logits, loss = tiny_model(x)
    assert logits.shape == (3, 10, 257) and loss is None


def test_causality_future_tokens_do_not_change_past_logits(tiny_model):
    x = torch.randint(0, 257, (1, 20))
    y = x.clone()
    y[0, 12:] = torch.randint(0, 257, (8,))
    a, _ = tiny_model(x)
    b, _ = tiny_model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_loss_is_cross_entropy_and_ignores_masked_targets(tiny_model):
    x = torch.randint(0, 257, (2, 16))
    y = torch.randint(0, 257, (2, 16))
    logits, loss = tiny_model(x, y)
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 257), y.view(-1))
    torch.testing.assert_close(loss, ref)
    y2 = y.clone()
    y2[:, :8] = IGNORE_INDEX
    _, masked = tiny_model(x, y2)
    ref2 = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 257), y[:, 8:].reshape(-1))
    torch.testing.assert_close(masked, ref2)


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    m = GPT(tiny_config())
    x, y = torch.randint(0, 257, (2, 4, 32))
    _, loss = m(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(257.0)).item()) < 0.3


def test_kv_cache_logits_equal_full_recompute(tiny_model):
    torch.manual_seed(1)
    x = torch.randint(0, 257, (2, 40))
    full, _ = tiny_model(x)
    cache = tiny_model.new_cache(2)
    parts = [tiny_model(x[:, :17], cache=cache)[0]]  # prefill
    for t in range(17, 40):  # then one token at a time
        parts.append(tiny_model(x[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-5)


def test_kv_cache_chunked_prefill(tiny_model):
    x = torch.randint(0, 257, (1, 30))
    full, _ = tiny_model(x)
    cache = tiny_model.new_cache(1)
    a = tiny_model(x[:, :10], cache=cache)[0]
    b = tiny_model(x[:, 10:30], cache=cache)[0]  # several new tokens on top of a cache
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=0, atol=1e-5)


def test_left_padded_batch_matches_each_row_alone(tiny_model):
    assert_left_padding_matches_rows(tiny_model, short=5, long=12, new=3)


def test_kv_cache_select_trim_merge_and_grow_match_each_row_alone(tiny_model):
    """Rows moved between left-padded caches (trimmed, merged right-aligned, grown) compute what they would alone."""
    torch.manual_seed(3)
    m = tiny_model
    p = [torch.randint(0, 257, (n,)) for n in (4, 9, 12, 3)]

    def prefill(rows: list[torch.Tensor]) -> KVCache:
        width = max(len(r) for r in rows)
        ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
        cache = m.new_cache(len(rows), max_len=width, pad=torch.tensor([width - len(r) for r in rows]))
        m(ids, cache=cache)
        return cache

    sub = prefill([p[2], p[3]]).select(torch.tensor([1]), trim=True)  # the 3-token row; its 9 pad columns go
    assert (sub.length, sub.pad.tolist()) == (3, [0])
    cache = KVCache.merge([prefill([p[0], p[1]]), sub])  # right-aligned at the longest (9)
    assert (cache.length, cache.pad.tolist(), cache.room) == (9, [5, 0, 6], 0)
    cache = cache.grow(20)
    assert cache.room == 11
    nxt = torch.randint(0, 257, (3, 7))
    steps = [m(nxt[:, i:i + 1], cache=cache)[0] for i in range(5)]
    cache = cache.select(torch.tensor([0, 2]), trim=True)  # the unpadded row leaves: 5 columns are padding in both
    assert (cache.length, cache.pad.tolist(), cache.room) == (14 - 5, [0, 1], 20 - 14)
    first, later = torch.cat(steps, 1), torch.cat([m(nxt[[0, 2], i:i + 1], cache=cache)[0] for i in (5, 6)], 1)
    got = [torch.cat([first[0], later[0]]), first[1], torch.cat([first[2], later[1]])]
    for r, prompt in enumerate((p[0], p[1], p[3])):
        alone = m(torch.cat([prompt, nxt[r]])[None])[0][0, len(prompt):]
        torch.testing.assert_close(got[r], alone[: len(got[r])], rtol=0, atol=1e-5)


def test_context_overflow_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="longer than the model's context"):
        tiny_model(torch.zeros(1, 65, dtype=torch.long))


def test_attention_schedule_and_unknown_kind():
    cfg = tiny_config(n_layer=4, attention="dense")
    assert cfg.attention_kinds() == ["dense"] * 4
    with pytest.raises(ValueError, match="sprase"):
        GPT(tiny_config(attention="dense,sprase"))
    # GPT-3's "dense,sparse": the strided pattern with k = round(sqrt(block_size)) on every other layer
    assert tiny_config(attention="dense,sparse", n_layer=4).attention_kinds() == ["dense", "strided(8)"] * 2
    assert "dense" in ATTENTION_KINDS


def test_attention_matches_explicit_softmax_formula(tiny_model):
    """SDPA path equals softmax(q k^T / sqrt(d)) v with a causal mask, written out by hand."""
    attn = tiny_model.blocks[0].attn
    x = torch.randn(2, 9, 32)
    q, k, v = attn.c_attn(x).split(32, dim=2)
    q, k, v = (t.view(2, 9, 2, 16).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-2, -1) * (1.0 / 16**0.5)
    att = att.masked_fill(torch.ones(9, 9).triu(1).bool(), float("-inf")).softmax(-1)
    ref = attn.c_proj((att @ v).transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


def test_explicit_attention_matches_sdpa_values_and_gradients():
    """The written-out path CPU bf16 takes (model.EXPLICIT_MAX_LEN) equals SDPA in fp32, forward and backward;
    and in bf16 dense_attention takes it with and without gradients (checked by its result)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 16, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 3, 20, 16)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    out = explicit_causal_attention(q, k, v)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    torch.testing.assert_close(dense_attention(qb, kb, vb, None, 0.0), explicit_causal_attention(qb, kb, vb),
                               rtol=0, atol=0)
    with torch.no_grad():  # the same path without gradients (PPO's old log-probs must equal the update's)
        torch.testing.assert_close(dense_attention(qb, kb, vb, None, 0.0), explicit_causal_attention(qb, kb, vb),
                                   rtol=0, atol=0)


def test_optimizer_groups_decay_only_matrices(tiny_model):
    decay, no_decay = optimizer_groups(tiny_model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == tiny_model.num_params()
