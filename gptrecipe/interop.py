"""The Hugging Face GPT-2 format: `export` a checkpoint to a folder transformers / vLLM / llama.cpp read, `import`
a local GPT2LMHeadModel folder (e.g. GPT-2 itself from the HF cache) into a checkpoint every stage starts from.

    gptrecipe export runs/speedrun/sft hf/sft        # config.json, model.safetensors, tokenizer, generation config
    gptrecipe import ~/.cache/huggingface/hub/models--gpt2/snapshots/<hash> runs/gpt2   # a run dir: checkpoints/

Our GPT is GPT-2's architecture: pre-LayerNorm blocks (eps 1e-5), tanh-approximated GELU ("gelu_new"), learned
positions, a head tied to the token embedding. GPT-2 keeps its four projections as Conv1D ([in, out]): they are
transposed against nn.Linear's [out, in]. A bias-free model exports zero biases (exact). What GPT-2 cannot express
(sparse attention layers, a head width other than n_embd / n_head, a reward or task head) is refused, as is an HF
folder whose config or tensors our GPT cannot reproduce. Imported weights are loaded without unpickling code
(safetensors, or torch.load(weights_only=True) for pytorch_model.bin).

GPT-2's vocabulary has one special token; importing appends the others our chat template needs (<|pad|>,
<|system|>, <|user|>, <|assistant|>, <|end|>, ...). Their embeddings (tied: also their output rows) start at the
mean of the existing embeddings plus Gaussian noise of 1% of the embeddings' per-dimension spread (seeded): a new
token starts as an "average" token, neither favoured nor impossible, and SFT teaches it its role.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from .model import GPT, GPTConfig
from .serve.hf_tokenizer import CHAT_TEMPLATE, export_hf_tokenizer
from .serve.served import CHAT_STAGES
from .tokenizer import Tokenizer, read_hf_tokenizer

ARCHITECTURE = "GPT2LMHeadModel"
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored [in, out] by GPT-2
# tanh-approximated GELU under its names in transformers' ACT2FN ("gelu" there is the exact erf form: refused)
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
LN_EPS = 1e-5  # nn.LayerNorm's default, which our GPT uses
NEW_TOKEN_NOISE = 0.01  # the new embeddings' noise, as a fraction of the embeddings' per-dimension std


class InteropError(CheckpointError):
    """A model or folder the GPT-2 format (or our GPT) cannot express; the message says what and why."""


# ---- weights: our names <-> GPT-2's ------------------------------------------------------------------------

def _names(n_layer: int) -> dict[str, str]:
    """Our parameter name -> GPT-2's (without the "transformer." prefix), every tensor but the tied head."""
    names = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
             "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
    for i in range(n_layer):
        for part in ("ln_1", "ln_2", *CONV1D):
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{part}.{kind}"] = f"h.{i}.{part}.{kind}"
    return names


def _is_conv1d(hf_name: str) -> bool:
    return any(f".{part}.weight" in hf_name for part in CONV1D)


def to_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's tensors of `model`: Conv1D weights transposed, zeros for the biases a bias-free model lacks."""
    ours = model.state_dict()
    out = {}
    for name, hf in _names(model.config.n_layer).items():
        t = ours.get(name)
        if t is None:  # a bias of a bias-free model: zero is exact
            weight = ours[name.removesuffix(".bias") + ".weight"]
            t = weight.new_zeros(weight.shape[0])
        out[f"transformer.{hf}"] = (t.t() if _is_conv1d(hf) else t).contiguous()
    return out


def from_hf_state(state: dict[str, torch.Tensor], config: GPTConfig, where: Path) -> dict[str, torch.Tensor]:
    """Our state dict from GPT-2's tensors (keys with or without "transformer."), each checked by name and shape."""
    state = {k.removeprefix("transformer."): v for k, v in state.items()
             if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # old causal-mask buffers
    with torch.device("meta"):  # the shapes, without allocating a model
        want = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    head = state.pop("lm_head.weight", None)
    out = {}
    for name, hf in _names(config.n_layer).items():
        if hf not in state:
            raise InteropError(f"{where}: tensor transformer.{hf} is missing")
        raw = state.pop(hf)
        t = raw.t() if _is_conv1d(hf) else raw
        if tuple(t.shape) != want[name]:
            stored = want[name][::-1] if _is_conv1d(hf) else want[name]
            raise InteropError(f"{where}: tensor transformer.{hf} has shape {list(raw.shape)}, expected "
                               f"{list(stored)} for its config.json")
        out[name] = t.float().contiguous()
    if state:
        raise InteropError(f"{where}: unexpected tensor {sorted(state)[0]} (not part of GPT2LMHeadModel)")
    if head is not None and not torch.equal(head.float(), out["wte.weight"]):
        raise InteropError(f"{where}: tensor lm_head.weight differs from transformer.wte.weight: our GPT ties its "
                           "head to the token embedding")
    return out


# ---- configs ---------------------------------------------------------------------------------------------

def hf_config(config: GPTConfig, tok: Tokenizer, chat: bool) -> dict[str, Any]:
    """The GPT2Config that reproduces `config` exactly (no dropout: an exported model is for inference)."""
    eos = tok.id_of("<|end|>") if chat else tok.eot_id
    return {"architectures": [ARCHITECTURE], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": config.mlp_ratio * config.n_embd,
            "activation_function": "gelu_new", "layer_norm_epsilon": LN_EPS, "resid_pdrop": 0.0,
            "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
            "bos_token_id": tok.eot_id, "eos_token_id": eos, "pad_token_id": tok.id_of("<|pad|>"),
            "torch_dtype": "float32"}


def gpt_config_of(hf: dict[str, Any], where: Path) -> GPTConfig:
    """Our GPTConfig of a GPT2Config, or an InteropError naming the field our GPT cannot reproduce."""
    archs = hf.get("architectures") or []
    if ARCHITECTURE not in archs and not (not archs and hf.get("model_type") == "gpt2"):
        raise InteropError(f"{where}: architectures {archs or hf.get('model_type')} is not {ARCHITECTURE}: only "
                           "GPT-2's architecture imports")

    def get(name: str, default: Any) -> Any:  # a missing or null field has transformers' default
        return default if hf.get(name) is None else hf[name]

    n_embd, n_head = int(get("n_embd", 768)), int(get("n_head", 12))
    n_inner = int(get("n_inner", 4 * n_embd))
    act = get("activation_function", "gelu_new")
    eps = float(get("layer_norm_epsilon", LN_EPS))
    checks = [
        ("activation_function", act not in TANH_GELU, f"{act!r}: our GPT's MLP uses the tanh GELU (gelu_new)"),
        ("layer_norm_epsilon", abs(eps - LN_EPS) > 1e-12, f"{eps}: our LayerNorms use {LN_EPS}"),
        ("n_inner", n_inner % n_embd, f"{n_inner} is not a multiple of n_embd={n_embd}"),
        ("n_embd", n_embd % n_head, f"{n_embd} is not divisible by n_head={n_head}"),
        ("scale_attn_weights", not get("scale_attn_weights", True), "false: our attention scales by 1/sqrt(d)"),
        ("scale_attn_by_inverse_layer_idx", get("scale_attn_by_inverse_layer_idx", False), "true: not supported"),
        ("add_cross_attention", get("add_cross_attention", False), "true: a decoder-only GPT has none"),
        ("tie_word_embeddings", not get("tie_word_embeddings", True), "false: our GPT ties its head"),
    ]
    # reorder_and_upcast_attn only computes the scores in fp32 (the same function): accepted
    for name, bad, why in checks:
        if bad:
            raise InteropError(f"{where}: config field {name} = {why}")
    return GPTConfig(vocab_size=int(get("vocab_size", 50257)), block_size=int(get("n_positions", 1024)),
                     n_layer=int(get("n_layer", 12)), n_head=n_head, n_embd=n_embd, mlp_ratio=n_inner // n_embd,
                     bias=True, dropout=0.0)


# ---- export ----------------------------------------------------------------------------------------------

def check_exportable(model: torch.nn.Module, stage: str, where: Path) -> GPT:
    """The GPT of a checkpoint, or an InteropError saying why the GPT-2 format cannot hold it."""
    if not isinstance(model, GPT):
        raise InteropError(f"{where}: a {stage!r} checkpoint holds a {type(model).__name__} (a GPT with its own "
                           "head); GPT-2's format has a language-model head only: export the language model it "
                           "was trained from")
    c = model.config
    if kinds := sorted({k for k in c.attention_kinds() if k != "dense"}):
        raise InteropError(f"{where}: model.attention={c.attention!r} has sparse attention layers ({', '.join(kinds)})"
                           "; GPT-2's format has dense attention only")
    if c.n_head * c.d_head != c.n_embd:
        raise InteropError(f"{where}: model.head_dim={c.head_dim} makes n_head x d_head = {c.n_head * c.d_head} != "
                           f"n_embd = {c.n_embd}; GPT-2's format needs d_head = n_embd / n_head")
    return model


def export_hf(ckpt: str | Path, out: str | Path) -> Path:
    """Write checkpoint `ckpt` (a GPT of any stage: pretrain, sft, ppo policy) as a GPT2LMHeadModel folder `out`."""
    loaded = load_checkpoint(ckpt, "cpu", expect=torch.nn.Module)
    model = check_exportable(loaded.model, loaded.meta.stage, loaded.path)
    tok, chat = loaded.tokenizer, loaded.meta.stage in CHAT_STAGES
    out = Path(out)
    tmp = _staging(out, "config.json")
    save_file(to_hf_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(model.config, tok, chat)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    stops = [tok.id_of("<|end|>"), tok.eot_id] if chat else [tok.eot_id]
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.eot_id, "eos_token_id": stops if chat else stops[0],
         "pad_token_id": config["pad_token_id"]}, indent=2))
    export_hf_tokenizer(tok, tmp, model_max_length=model.config.block_size, chat=chat)
    return _replace(tmp, out)


def _staging(out: Path, marker: str) -> Path:
    """An empty folder beside `out` to write into; `out` itself must be new, empty, or an older result (holding
    `marker`): never a folder of something else that replacing would delete."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise InteropError(f"{out} exists and is not an earlier output (no {marker} in it): give a new folder")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _replace(tmp: Path, out: Path) -> Path:
    """Move the finished folder `tmp` to `out` (an older `out` is replaced)."""
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out


# ---- import ----------------------------------------------------------------------------------------------

def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin read with torch.load(weights_only=True): tensors only, no code."""
    if (folder / "model.safetensors").is_file():
        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as e:  # safetensors raises several types on a corrupt file
            raise InteropError(f"{folder / 'model.safetensors'}: unreadable ({e})") from None
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # an UnpicklingError for anything that is not plain tensors
            raise InteropError(f"{folder / 'pytorch_model.bin'}: not loadable as plain tensors ({e})") from None
    raise InteropError(f"{folder}: no model.safetensors or pytorch_model.bin (sharded weights are not supported)")


def add_token_rows(wte: torch.Tensor, new_ids: list[int], vocab_size: int, seed: int) -> torch.Tensor:
    """The embedding grown to `vocab_size` rows; rows `new_ids` set to the mean embedding plus seeded noise."""
    mean, std = wte.mean(0), wte.std(0)
    grown = torch.cat([wte, mean.expand(max(0, vocab_size - wte.size(0)), -1)]) if vocab_size > wte.size(0) else wte
    g = torch.Generator().manual_seed(seed)
    for i in new_ids:
        grown[i] = mean + NEW_TOKEN_NOISE * std * torch.randn(wte.size(1), generator=g)
    return grown.contiguous()


def import_hf(src: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """Turn a local GPT2LMHeadModel folder into a run dir `out` holding one checkpoint (out/checkpoints/...)."""
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise InteropError(f"{src}: no config.json (expected a Hugging Face model folder)")
    try:
        hf = json.loads((src / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InteropError(f"{src / 'config.json'}: unreadable ({e})") from None
    config = gpt_config_of(hf, src / "config.json")
    state = from_hf_state(read_hf_weights(src), config, src)
    tok, appended = read_hf_tokenizer(src)
    new_ids = [tok.id_of(name) for name in appended]  # appended after the folder's last id
    rows, top = config.vocab_size, min(new_ids, default=tok.vocab_size) - 1
    if top >= rows:
        raise InteropError(f"{src}: the tokenizer has id {top} but transformer.wte.weight only {rows} rows")
    config.vocab_size = max(rows, tok.vocab_size)
    if new_ids:
        state["wte.weight"] = add_token_rows(state["wte.weight"], new_ids, config.vocab_size, seed)
    model = GPT(config)
    model.load_state_dict(state, strict=False)  # strict about shapes; the only key left out is the tied head
    tmp = _staging(out, "checkpoints")
    tok.save(tmp / "tokenizer.json")
    chat = _tokenizer_config(src).get("chat_template") == CHAT_TEMPLATE
    meta = CheckpointMeta.of("sft" if chat else "pretrain", config, tok, init=src.resolve(),
                             new_tokens={n: tok.id_of(n) for n in appended})
    save_checkpoint(tmp / "checkpoints" / "step_0000000", model, meta, tokenizer_path=tmp / "tokenizer.json")
    (tmp / "tokenizer.json").unlink()
    return _replace(tmp, out)


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}
