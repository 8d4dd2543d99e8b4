"""The Hugging Face GPT-2 format, without any hub: export to transformers, import from a local GPT2LMHeadModel."""

from __future__ import annotations

import json

import pytest
import torch

from gptrecipe.chat import ChatTemplate, Message
from gptrecipe.checkpoint import load_checkpoint, read_meta
from gptrecipe.cli import main
from gptrecipe.heads import RewardModel
from gptrecipe.model import GPT
from gptrecipe.sample import SamplingConfig, generate
from gptrecipe.tokenizer import SPECIAL_TOKENS
from tests.conftest import save_stage_checkpoint, tiny_config

transformers = pytest.importorskip("transformers")

PROBES = ["Hello! How are you?", "Ünïcödé: 世界, naïve café, emoji 🙂👍🏽", "digits 0 7 42 1234567 3.14159 1e-5",
          "runs    of     spaces\n\n\n  and\ttabs \t ", "   leading and trailing   ", "don't you'll WE'RE",
          "<|endoftext|>a<|user|>b<|end|><|assistant|>c<|pad|>"]
CHAT = [Message("system", "You are helpful."), Message("user", "Hi! 世界 123"), Message("assistant", "Hello  there."),
        Message("user", "Tell me a joke.")]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (biases and LayerNorms too), so a mix-up of any tensor shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (".ln_" in f".{name}" and name.endswith("weight")))
    return model.eval()


def cli(*argv: str) -> int:
    return main([str(a) for a in argv])


# ---- a GPT2LMHeadModel folder, as save_pretrained writes it (GPT-2's vocabulary: one special token) -----------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    import tokenizers

    out = tmp_path_factory.mktemp("hf_gpt2")
    text = ("Hello! How are you? I am fine, thank you. What is AI? Artificial intelligence is the study of "
            "machines that think. Tell me a joke. Why did the chicken cross the road? 1234 5678  ") * 50
    bpe = tokenizers.ByteLevelBPETokenizer()  # GPT-2's pre-tokenizer and decoder
    bpe.train_from_iterator([text], vocab_size=380, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(out))  # vocab.json + merges.txt, as GPT-2 ships them (and tokenizer.json, read first)
    bpe.save(str(out / "tokenizer.json"))
    vocab = bpe.get_vocab_size()
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = randomize(transformers.GPT2LMHeadModel(config))
    model.save_pretrained(out)
    return out


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def test_import_gives_the_same_logits_and_ids(hf_dir, tmp_path):
    assert cli("import", hf_dir, tmp_path / "gpt2") == 0
    loaded = load_checkpoint(tmp_path / "gpt2")
    model, tok = loaded.model.eval(), loaded.tokenizer
    n_hf = json.loads((hf_dir / "config.json").read_text())["vocab_size"]
    assert model.config.vocab_size == tok.vocab_size == n_hf + len(SPECIAL_TOKENS) - 1  # all but <|endoftext|> added
    torch.manual_seed(1)
    ids = torch.randint(0, n_hf, (2, 64))
    with torch.no_grad():
        ours = model(ids)[0]
    torch.testing.assert_close(ours[..., :n_hf], hf_logits(hf_dir, ids), rtol=0, atol=1e-5)
    # GPT-2's tokenization is kept (its own split regex): ids as GPT-2's tokenizer gives them
    ref = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for text in PROBES[:-1]:
        assert tok.encode(text) == tok.encode_hf(text) == ref(text)["input_ids"], text
    # the new tokens: the mean embedding plus small noise, recorded in the checkpoint
    new = read_meta(tmp_path / "gpt2").extras["new_tokens"]
    assert sorted(new) == sorted(s for s in SPECIAL_TOKENS if s != "<|endoftext|>")
    wte = model.wte.weight.detach()
    mean, std = wte[:n_hf].mean(0), wte[:n_hf].std(0)
    rows = wte[list(new.values())]
    assert (rows - mean).abs().max() < 0.05 * std.max() and rows.std(0).min() > 0  # near the mean, not equal


def test_import_reads_pytorch_bin_with_old_names(hf_dir, tmp_path):
    """An old GPT-2 pytorch_model.bin (no "transformer." prefix, mask buffers) loads through weights_only."""
    from safetensors.torch import load_file

    src = tmp_path / "bin"
    src.mkdir()
    for f in ("config.json", "vocab.json", "merges.txt"):
        (src / f).write_bytes((hf_dir / f).read_bytes())
    state = {k.removeprefix("transformer."): v for k, v in load_file(hf_dir / "model.safetensors").items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    torch.save(state, src / "pytorch_model.bin")
    assert cli("import", src, tmp_path / "a") == 0 and cli("import", hf_dir, tmp_path / "b") == 0
    a, b = (load_checkpoint(tmp_path / n).model.state_dict() for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_imported_gpt2_exports_back_to_the_same_model(hf_dir, tmp_path):
    """GPT-2 -> ours -> GPT-2: the same logits on GPT-2's ids, and its tokenizer (GPT-2's split) gives GPT-2's ids."""
    assert cli("import", hf_dir, tmp_path / "gpt2") == 0 and cli("export", tmp_path / "gpt2", tmp_path / "hf") == 0
    n_hf = json.loads((hf_dir / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, n_hf, (1, 40))
    torch.testing.assert_close(hf_logits(tmp_path / "hf", ids)[..., :n_hf], hf_logits(hf_dir, ids), rtol=0, atol=1e-5)
    ref, back = (transformers.AutoTokenizer.from_pretrained(d) for d in (hf_dir, tmp_path / "hf"))
    for text in PROBES[:-1]:
        assert back(text)["input_ids"] == ref(text)["input_ids"], text


# ---- export ------------------------------------------------------------------------------------------------

def our_checkpoint(tmp_path, tok, stage: str, bias: bool = True, **kw):
    torch.manual_seed(0)
    model = randomize(GPT(tiny_config(vocab_size=tok.vocab_size, bias=bias, **kw)), seed=3)
    return save_stage_checkpoint(tmp_path / stage, model, tok, stage=stage), model


@pytest.mark.parametrize("stage,bias", [("pretrain", True), ("sft", False)])
def test_export_loads_in_transformers_with_our_logits_ids_and_generation(small_tok, tmp_path, stage, bias):
    ckpt, model = our_checkpoint(tmp_path, small_tok, stage, bias)
    out = tmp_path / "hf"
    assert cli("export", ckpt, out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["activation_function"] == "gelu_new"
    assert config["n_ctx"] == config["n_positions"] == 64 and config["resid_pdrop"] == 0.0
    torch.manual_seed(1)
    ids = torch.randint(0, small_tok.vocab_size, (2, 64))
    with torch.no_grad():
        ours = model(ids)[0]
    theirs = hf_logits(out, ids)
    assert (ours - theirs).abs().max() < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in PROBES:
        assert hf_tok(text)["input_ids"] == small_tok.encode(text, allow_special=True), text
        assert hf_tok.decode(small_tok.encode(text)) == text
    template = ChatTemplate(small_tok)
    if stage == "sft":
        got = hf_tok.apply_chat_template([{"role": m.role, "content": m.content} for m in CHAT], tokenize=True,
                                         add_generation_prompt=True, return_dict=False)
        assert list(got) == template.prompt_ids(CHAT)
    reply = transformers.pipeline("text-generation", str(out))("Hello!", max_new_tokens=3, do_sample=False)
    assert reply[0]["generated_text"].startswith("Hello!")
    gen = json.loads((out / "generation_config.json").read_text())
    stops = template.stop_ids if stage == "sft" else [small_tok.eot_id]
    assert gen["eos_token_id"] in (stops, stops[0])
    # greedy generation, token for token (transformers stops at the generation config's eos ids, as we do)
    prompt = template.prompt_ids(CHAT[:2]) if stage == "sft" else small_tok.encode("Hello! How are")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        hf_out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
    hf_ids = hf_out.tolist()
    ended = next((i for i, t in enumerate(hf_ids) if t in stops), None)
    ours = generate(model, small_tok, [prompt], SamplingConfig(max_new_tokens=24, temperature=0.0),
                    stop_ids=stops)[0]
    assert ours.token_ids == hf_ids[:ended] and len(hf_ids) > 0


def test_export_then_import_gives_identical_weights(small_tok, tmp_path):
    ckpt, model = our_checkpoint(tmp_path, small_tok, "sft")
    assert cli("export", ckpt, tmp_path / "hf") == 0 and cli("export", ckpt, tmp_path / "hf") == 0  # replaces
    assert cli("import", tmp_path / "hf", tmp_path / "back") == 0
    back = load_checkpoint(tmp_path / "back")
    assert back.meta.stage == "sft" and back.meta.extras["new_tokens"] == {}  # a chat model stays one
    assert back.model.config == model.config
    mine, theirs = model.state_dict(), back.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert back.tokenizer.hf.get_vocab() == small_tok.hf.get_vocab()
    assert all(back.tokenizer.encode(t, allow_special=True) == small_tok.encode(t, allow_special=True) for t in PROBES)


def test_ppo_policy_exports(small_tok, tmp_path):
    """A PPO checkpoint holds the actor-critic: its policy is what exports."""
    from gptrecipe.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    policy = randomize(GPT(tiny_config(vocab_size=small_tok.vocab_size)))
    both = torch.nn.ModuleDict({"policy": policy, "value": RewardModel(tiny_config(vocab_size=small_tok.vocab_size))})
    small_tok.save(tmp_path / "tok.json")
    ckpt = save_checkpoint(tmp_path / "ppo", both, CheckpointMeta.of("ppo", policy.config, small_tok),
                           tokenizer_path=tmp_path / "tok.json")
    assert cli("export", ckpt, tmp_path / "hf") == 0
    ids = torch.randint(0, small_tok.vocab_size, (1, 20))
    with torch.no_grad():
        assert (policy(ids)[0] - hf_logits(tmp_path / "hf", ids)).abs().max() < 1e-5


# ---- refusals: one line, no traceback ----------------------------------------------------------------------

def refused(capsys, *argv) -> str:
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_export_refuses_what_gpt2_cannot_express(small_tok, tmp_path, capsys):
    ckpt, _ = our_checkpoint(tmp_path, small_tok, "pretrain", attention="dense,local(8)")
    assert "sparse attention layers (local(8))" in refused(capsys, "export", ckpt, tmp_path / "a")
    ckpt, _ = our_checkpoint(tmp_path / "h", small_tok, "pretrain", head_dim=8)
    assert "head_dim" in refused(capsys, "export", ckpt, tmp_path / "b")
    torch.manual_seed(0)
    rm = RewardModel(tiny_config(vocab_size=small_tok.vocab_size))
    ckpt = save_stage_checkpoint(tmp_path / "rm", rm, small_tok, stage="rm")
    assert "RewardModel" in refused(capsys, "export", ckpt, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    ckpt, _ = our_checkpoint(tmp_path / "ok", small_tok, "pretrain")
    assert "not an earlier output" in refused(capsys, "export", ckpt, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_import_refuses_folders_it_cannot_reproduce(hf_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    def variant(name, config_edit=None, state_edit=None):
        src = tmp_path / name
        src.mkdir()
        for f in ("vocab.json", "merges.txt", "model.safetensors"):
            (src / f).write_bytes((hf_dir / f).read_bytes())
        config = json.loads((hf_dir / "config.json").read_text())
        (config_edit or (lambda c: None))(config)
        (src / "config.json").write_text(json.dumps(config))
        if state_edit:
            state = load_file(src / "model.safetensors")
            state_edit(state)
            save_file(state, src / "model.safetensors")
        return src

    err = refused(capsys, "import", variant("miss", state_edit=lambda s: s.pop("transformer.h.1.mlp.c_fc.bias")),
                  tmp_path / "o")
    assert "transformer.h.1.mlp.c_fc.bias is missing" in err
    wide = "transformer.h.0.attn.c_attn.weight"
    bad = variant("shape", state_edit=lambda s: s.__setitem__(wide, torch.zeros(32, 64)))
    assert "transformer.h.0.attn.c_attn.weight has shape [32, 64], expected [32, 96]" in refused(
        capsys, "import", bad, tmp_path / "o")
    llama = variant("llama", lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"))
    assert "LlamaForCausalLM" in refused(capsys, "import", llama, tmp_path / "o")
    erf = variant("erf", lambda c: c.update(activation_function="gelu"))
    assert "activation_function" in refused(capsys, "import", erf, tmp_path / "o")
    inv = variant("inv", lambda c: c.update(scale_attn_by_inverse_layer_idx=True))
    assert "scale_attn_by_inverse_layer_idx" in refused(capsys, "import", inv, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---- every stage starts from an import ---------------------------------------------------------------------

def test_imported_model_fine_tunes_samples_and_serves(hf_dir, tmp_path, capsys):
    from gptrecipe.serve.served import load_served

    assert cli("import", hf_dir, tmp_path / "gpt2") == 0
    data = tmp_path / "chats.jsonl"
    pairs = [("Hello!", "Hi, how are you?"), ("What is AI?", "Artificial intelligence."),
             ("Tell me a joke.", "Why did the chicken cross the road?")]
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs * 12))
    assert cli("sft", "--init", tmp_path / "gpt2", "--data", data, f"out_dir={tmp_path}", "name=sft",
               "train.max_steps=30", "train.micro_batch_size=8", "train.lr=1e-2", "train.warmup_steps=3",
               "train.eval_every=30", "train.checkpoint_every=0", "train.device=cpu", "train.dtype=fp32",
               "train.progress=false", "sample.max_new_tokens=4", "sample_prompts=[\"Hello!\"]") == 0
    evals = [json.loads(ln) for ln in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    val = [e["val_loss"] for e in evals if "val_loss" in e]
    assert len(val) == 2 and val[-1] < 0.5 * val[0]
    assert cli("sample", tmp_path / "gpt2", "-p", "Hello", "-n", "5", "-t", "0", "--device", "cpu") == 0
    (tmp_path / "text.txt").write_text("What is AI? Artificial intelligence is the study of machines.\n" * 20)
    assert cli("eval", tmp_path / "gpt2", "--corpus", tmp_path / "text.txt", "--name", "ev", "tasks=[]",
               f"out_dir={tmp_path}") == 0
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["corpora"][0]["bits_per_byte"] > 0
    served = load_served(tmp_path / "sft", device="cpu")
    assert served.chat and served.name == "sft"


def test_hf_tokenizer_folders_tiktoken_cannot_reproduce_are_refused(hf_dir, tmp_path):
    from gptrecipe.tokenizer import TokenizerError, read_hf_tokenizer

    good = json.loads((hf_dir / "tokenizer.json").read_text())

    def refused_with(edit, match: str) -> None:
        config = json.loads(json.dumps(good))
        edit(config)
        (tmp_path / "tokenizer.json").write_text(json.dumps(config))
        with pytest.raises(TokenizerError, match=match):
            read_hf_tokenizer(tmp_path)

    refused_with(lambda c: c["added_tokens"].append({"id": 999, "content": "<pad>", "special": True}),
                 "added token '<pad>' is not one of gptrecipe's special tokens")
    refused_with(lambda c: c["model"].update(byte_fallback=True), "BPE option byte_fallback is set")
    refused_with(lambda c: c.update(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer is neither")
    refused_with(lambda c: c["model"]["vocab"].update({"▁word": 998}), "'▁word' is not a byte-level BPE token")
    with pytest.raises(TokenizerError, match="no tokenizer.json, nor GPT-2's vocab.json and merges.txt"):
        read_hf_tokenizer(tmp_path / "empty")
