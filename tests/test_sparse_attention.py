"""Sparse attention: patterns against hand-written masks, the blocked implementation against dense attention
under the explicit pattern mask (outputs and gradients), KV-cache generation, config parsing, checkpoints."""

import warnings

import pytest
import torch

from gptrecipe.checkpoint import CheckpointError, CheckpointMeta, load_weights, read_meta, save_checkpoint
from gptrecipe.model import GPT
from gptrecipe.sparse_attention import (
    Pattern,
    SparseAttention,
    blocked_sparse_attention,
    decode_key_positions,
    flex_sparse_attention,
    fused_sparse_attention,
    masked_dense_attention,
    parse_pattern,
    pattern_mask,
    sparse_attention,
)
from tests.conftest import assert_left_padding_matches_rows, tiny_config

# T = 8, k = 3, written out by hand from the definitions (row = query i, column = key j)
GOLDEN = {
    "local(3)": [  # 0 <= i - j < 3
        "10000000",
        "11000000",
        "11100000",
        "01110000",
        "00111000",
        "00011100",
        "00001110",
        "00000111",
    ],
    "strided(3)": [  # local(3), plus i - j in {3, 6}
        "10000000",
        "11000000",
        "11100000",
        "11110000",
        "01111000",
        "00111100",
        "10011110",
        "01001111",
    ],
    "fixed(3,1)": [  # own block of 3 ({0,1,2}, {3,4,5}, {6,7}), plus the last cell of earlier blocks (2, 5)
        "10000000",
        "11000000",
        "11100000",
        "00110000",
        "00111000",
        "00111100",
        "00100110",
        "00100111",
    ],
}


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_pattern_mask_matches_hand_written_golden(kind):
    want = torch.tensor([[c == "1" for c in row] for row in GOLDEN[kind]])
    assert torch.equal(pattern_mask(kind, 8), want)


CASES = [  # (pattern, T): T multiples of k and not, T < k, a single token
    ("local(16)", 64), ("local(16)", 100), ("local(5)", 3),
    ("strided(8)", 64), ("strided(8)", 37), ("strided(16)", 200), ("strided(32)", 20), ("strided(4)", 1),
    ("fixed(16,4)", 64), ("fixed(16,4)", 100), ("fixed(8,8)", 50), ("fixed(8,1)", 9),
]


def _qkv(T, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, T, 16, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


IMPLS = {"fused": fused_sparse_attention, "blocked": blocked_sparse_attention}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("kind,T", CASES)
def test_sparse_equals_dense_with_pattern_mask_outputs_and_grads(kind, T, impl):
    q, k, v = _qkv(T)
    out = IMPLS[impl](q, k, v, kind)
    ref = masked_dense_attention(q, k, v, kind)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_sparse_accepts_transposed_and_expanded_inputs(impl):
    """As the model passes them: q/k/v views of a (B, T, H, D) tensor, and an expanded output gradient."""
    torch.manual_seed(0)  # the input is fixed, not whatever the tests before left in the global RNG
    x = torch.randn(2, 40, 3, 16, requires_grad=True)
    q = k = v = x.transpose(1, 2)
    out = IMPLS[impl](q, k, v, "strided(8)")
    (gx,) = torch.autograd.grad(out.sum(), x)
    (rx,) = torch.autograd.grad(masked_dense_attention(q, k, v, "strided(8)").sum(), x)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)  # gradients reach ~2: fp32 rounding is relative


@pytest.mark.parametrize("impl,dropout", [("blocked", 0.0), ("blocked", 0.3), ("fused", 0.0)])
def test_hand_written_backward_passes_gradcheck(impl, dropout):
    """float64 finite differences; with dropout the mask is made the same on every call by reseeding."""
    q, k, v = (torch.randn(1, 2, 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def f(kind):
        def run(q, k, v):
            torch.manual_seed(0)
            return sparse_attention(q, k, v, kind, dropout_p=dropout, impl=impl)
        return run

    for kind in ("strided(3)", "fixed(4,2)", "local(3)"):
        assert torch.autograd.gradcheck(f(kind), (q, k, v), fast_mode=True), kind


def test_auto_picks_fused_on_cpu_and_blocked_for_dropout():
    q, k, v = _qkv(20)
    assert type(sparse_attention(q, k, v, "strided(4)").grad_fn).__name__ == "_FusedAttentionBackward"
    out = sparse_attention(q, k, v, "strided(4)", dropout_p=0.1)
    assert type(out.grad_fn).__name__ == "_BlockedAttentionBackward"
    with pytest.raises(NotImplementedError, match="dropout"):
        sparse_attention(q, k, v, "strided(4)", dropout_p=0.1, impl="fused")


def test_implementation_choice_env_and_errors(monkeypatch):
    q, k, v = (t.detach() for t in _qkv(30))
    monkeypatch.setenv("GPTRECIPE_SPARSE_IMPL", "dense")  # the reference, e.g. to debug a model
    attend = SparseAttention("fixed(8,2)")
    assert attend.impl == "dense"
    torch.testing.assert_close(attend(q, k, v), sparse_attention(q, k, v, "fixed(8,2)"), rtol=0, atol=1e-5)
    monkeypatch.setenv("GPTRECIPE_SPARSE_IMPL", "fast")
    with pytest.raises(ValueError, match="GPTRECIPE_SPARSE_IMPL='fast'"):
        SparseAttention("fixed(8,2)")
    with pytest.raises(ValueError, match="impl 'fast'"):
        sparse_attention(q, k, v, "local(4)", impl="fast")


def test_dropout_drops_probabilities_and_keeps_the_expectation():
    q, k, v = (t.detach()[:1].expand(400, -1, -1, -1) for t in _qkv(24))  # 400 copies: 400 dropout draws
    clean = blocked_sparse_attention(q[:1], k[:1], v[:1], "strided(4)")[0]
    torch.manual_seed(0)
    runs = blocked_sparse_attention(q, k, v, "strided(4)", dropout_p=0.5)
    assert (runs[0] - clean).abs().mean() > 0.1  # dropout is on: one draw is far from the clean output
    assert (runs.mean(0) - clean).abs().mean() < 0.03  # inverted dropout keeps E[out]


@pytest.mark.parametrize("kind", ["local(5)", "strided(5)", "fixed(5,2)", "strided(1)"])
def test_decode_reads_exactly_the_pattern_row(kind):
    T = 23
    mask = pattern_mask(kind, T)
    keys, valid = decode_key_positions(kind, torch.arange(T))
    for i in range(T):
        assert sorted(keys[i][valid[i]].tolist()) == mask[i].nonzero().flatten().tolist()
    if kind == "strided(5)":  # k + i/k keys, not i
        assert valid[T - 1].sum() == 5 + (T - 1) // 5


def _saved_bytes(fn, T, k):
    """Bytes autograd keeps between forward and backward."""
    total = []
    q, k_, v = (torch.randn(1, 1, T, 8, requires_grad=True) for _ in range(3))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        fn(q, k_, v, f"strided({k})")
    return sum(total)


def test_memory_kept_for_backward_is_sub_quadratic():
    """blocked keeps P: n (2k + n/k) numbers, ~n^1.5; fused keeps O(n D); a dense score matrix is n^2."""
    small, large = _saved_bytes(blocked_sparse_attention, 1024, 32), _saved_bytes(blocked_sparse_attention, 4096, 64)
    assert large / small < 4 ** 1.5 * 1.1  # 4x the tokens: ~8x the memory, not 16x
    assert large < 0.1 * 4096 * 4096 * 4  # a dense fp32 score matrix would be 64 MiB
    small, large = _saved_bytes(fused_sparse_attention, 1024, 32), _saved_bytes(fused_sparse_attention, 4096, 64)
    assert large / small < 4 * 1.1  # linear


def test_flex_attention_forward_matches_on_cpu():
    """The CUDA path (flex attention + BlockMask) computes the same function; on CPU its forward runs."""
    q, k, v = (t.detach() for t in _qkv(40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_sparse_attention(q, k, v, "strided(8)")
    torch.testing.assert_close(out, masked_dense_attention(q, k, v, "strided(8)"), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# config parsing


def test_schedule_parses_parameterised_kinds():
    cfg = tiny_config(n_layer=4, attention="dense, strided(16)")
    assert cfg.attention_kinds() == ["dense", "strided(16)"] * 2
    cfg = tiny_config(n_layer=3, attention="fixed(16, 4),local(8)")  # the comma inside () is not a separator
    assert cfg.attention_kinds() == ["fixed(16, 4)", "local(8)", "fixed(16, 4)"]
    assert parse_pattern("fixed(16, 4)") == Pattern("fixed", 16, 4)
    m = GPT(cfg)
    assert isinstance(m.blocks[0].attn.attend, SparseAttention) and m.blocks[0].attn.attend.pattern.c == 4


@pytest.mark.parametrize("entry,match", [
    ("sprase", "unknown kind 'sprase'"),
    ("strided", "bad entry 'strided'.*strided\\(k\\)"),
    ("strided(0)", "bad entry 'strided\\(0\\)'.*k must be >= 1"),
    ("local(x)", "bad entry 'local\\(x\\)'"),
    ("fixed(8)", "bad entry 'fixed\\(8\\)'.*fixed\\(k,c\\)"),
    ("fixed(8,9)", "bad entry 'fixed\\(8,9\\)'.*c must be in 1..k"),
    ("strided(8", "unknown kind 'strided\\(8'"),
])
def test_bad_schedule_entries_name_the_field_and_entry(entry, match):
    with pytest.raises(ValueError, match="model.attention") as e:
        GPT(tiny_config(attention=f"dense,{entry}"))
    assert e.match(match)


# ----------------------------------------------------------------------------------------------
# the model with sparse layers


def _sparse_model(attention="dense,strided(8)", **kw):
    torch.manual_seed(0)
    return GPT(tiny_config(attention=attention, **kw))


def test_model_with_sparse_layers_trains():
    m = _sparse_model("dense,strided(4)")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    torch.manual_seed(1)
    x = torch.randint(0, 257, (2, 25))
    losses = []
    for _ in range(8):
        _, loss = m(x[:, :-1], x[:, 1:])
        loss.backward()
        assert m.blocks[1].attn.c_attn.weight.grad.abs().sum() > 0  # the sparse layer's q, k, v get gradients
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.5, losses  # ~5.5 -> ~3.0


def test_model_with_dropout_trains_through_the_blocked_path():
    m = _sparse_model("dense,strided(4)", dropout=0.1).train()
    x = torch.randint(0, 257, (2, 25))
    _, loss = m(x[:, :-1], x[:, 1:])
    loss.backward()
    assert torch.isfinite(loss) and m.blocks[1].attn.c_attn.weight.grad.abs().sum() > 0


def test_sparse_layer_ignores_keys_outside_its_pattern():
    """A one-layer strided(8) model: changing a key the pattern never reads leaves the last logit unchanged."""
    m = _sparse_model("strided(8)", n_layer=1).eval()
    x = torch.randint(0, 257, (1, 40))
    y = x.clone()
    y[0, 30] = (x[0, 30] + 1) % 257  # distance 9 from position 39: neither in the band nor a multiple of 8
    torch.testing.assert_close(m(x)[0][0, 39], m(y)[0][0, 39], rtol=0, atol=1e-6)
    y = x.clone()
    y[0, 31] = (x[0, 31] + 1) % 257  # distance 8: read
    assert not torch.allclose(m(x)[0][0, 39], m(y)[0][0, 39])


@pytest.mark.parametrize("attention", ["dense,strided(8)", "local(8),fixed(8,2)"])
def test_kv_cache_generation_equals_full_recompute(attention):
    m = _sparse_model(attention).eval()
    torch.manual_seed(1)
    x = torch.randint(0, 257, (2, 45))
    full, _ = m(x)
    cache = m.new_cache(2)
    parts = [m(x[:, :17], cache=cache)[0]]  # prefill (the blocked path)
    parts.append(m(x[:, 17:25], cache=cache)[0])  # several tokens on top of a cache
    for t in range(25, 45):  # then one token at a time (reads only the pattern's keys)
        parts.append(m(x[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["dense,strided(4)", "fixed(4,1)"])
def test_left_padded_batch_matches_each_row_alone(attention):
    """Positions (and so fixed's block boundaries) count from each row's first real token."""
    assert_left_padding_matches_rows(_sparse_model(attention).eval(), short=6, long=13, new=6)


def test_checkpoint_records_the_pattern_and_refuses_a_mismatch(tmp_path):
    m = _sparse_model("dense,fixed(8,2)").eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", m, CheckpointMeta.of("pretrain", m.config, None))
    saved = read_meta(ckpt)
    assert saved.model["attention"] == "dense,fixed(8,2)"
    loaded = GPT(saved.gpt_config)
    load_weights(loaded, ckpt)
    x = torch.randint(0, 257, (1, 30))
    torch.testing.assert_close(loaded.eval()(x)[0], m(x)[0], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="attention: checkpoint 'dense,fixed\\(8,2\\)' vs config 'dense'"):
        CheckpointMeta.of("pretrain", tiny_config(attention="dense"), None).check_resumes(saved, ckpt)
