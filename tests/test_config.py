from dataclasses import dataclass, field

import pytest

from gptrecipe.config import ConfigError, apply_overrides, dump_toml, find_preset, from_dict, load_toml
from gptrecipe.model import GPTConfig


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    names: list[str] = field(default_factory=list)
    flag: bool = False
    maybe: int | None = None


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_overrides_are_typed():
    cfg = apply_overrides(Outer(), ["inner.lr=3e-4", "inner.steps=2e3", "inner.names=a,b", "inner.flag=true",
                                    "name=run1", "--inner.maybe=5"])
    assert cfg.inner == Inner(lr=3e-4, steps=2000, names=["a", "b"], flag=True, maybe=5)
    assert cfg.name == "run1"
    assert apply_overrides(cfg, ["inner.maybe=none"]).inner.maybe is None


@pytest.mark.parametrize("bad,msg", [
    ("inner.lrr=1", "unknown config key 'inner.lrr'"),
    ("inner.steps=abc", "inner.steps: expected int"),
    ("inner.steps=1.5", "inner.steps: expected int"),
    ("inner.flag=maybe", "inner.flag: expected true/false"),
    ("inner", "must look like key=value"),
    ("name.x=1", "name is not a table"),
])
def test_bad_overrides_name_the_key(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        apply_overrides(Outer(), [bad])


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown config key.*inner.nope"):
        from_dict(Outer, {"inner": {"nope": 1}})


def test_toml_roundtrip(tmp_path):
    cfg = Outer(name="r", inner=Inner(lr=0.5, names=["a"], flag=True))
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(cfg))
    assert from_dict(Outer, load_toml(p)) == cfg


def test_presets_resolve_and_unknown_lists_available():
    assert find_preset("models", "tiny").name == "tiny.toml"
    with pytest.raises(ConfigError, match="available: .*gpt3-small"):
        find_preset("models", "gpt5")
    cfg = from_dict(GPTConfig, load_toml(find_preset("models", "gpt3-small")))
    assert cfg.n_layer == 12


def test_invalid_toml_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("x = = 1")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_toml(p)


@dataclass
class WithModel:
    model: GPTConfig = field(default_factory=GPTConfig)


@pytest.mark.parametrize("bad,msg", [
    ("model.attention=dense,bogus(3)", r"model.attention: unknown kind 'bogus\(3\)'"),
    ("model.attention=fixed(8)", r"model.attention: bad entry 'fixed\(8\)'"),
    ("model.n_head=5", "model.n_embd=768 is not divisible by model.n_head=5"),
])
def test_validate_errors_are_config_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        apply_overrides(WithModel(), [bad])


def test_validation_sees_all_overrides_at_once():
    assert apply_overrides(WithModel(), ["model.n_embd=64", "model.n_head=4"]).model.n_head == 4
