"""Typed configuration: dataclasses filled from TOML preset files and `a.b=value` overrides.

Every stage describes its settings as a dataclass. A run's config is built in three layers:
defaults in the dataclass, then a preset file (TOML, under `configs/`), then command-line
overrides such as `train.lr=3e-4 model.n_layer=4`. Unknown keys and badly typed values are
errors that name the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class RunConfig:
    """Base of the stage configs: a run named `name` lives in `out_dir`/`name`."""

    name: str = "run"
    out_dir: str = "runs"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key."""


def config_dirs() -> list[Path]:
    """Where presets are looked up: ./configs first, then the configs/ shipped beside the package."""
    dirs = [Path.cwd() / "configs", REPO_ROOT / "configs"]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def find_preset(kind: str, name: str) -> Path:
    """Resolve a preset name (e.g. kind='models', name='tiny') or a path to a TOML file."""
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p
    for d in config_dirs():
        cand = d / kind / f"{name}.toml"
        if cand.is_file():
            return cand
    available = sorted({f.stem for d in config_dirs() for f in (d / kind).glob("*.toml")})
    raise ConfigError(f"unknown {kind} preset {name!r}; available: {', '.join(available) or '(none)'}")


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from TOML or a command-line string) to type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, str):
                return int(float(value)) if "e" in value.lower() else int(value)
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys."""
    types_ = _field_types(cls)
    unknown = set(data) - set(types_)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
            f"valid keys: {', '.join(prefix + k for k in types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain nested dicts/lists (JSON and TOML friendly)."""
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Apply `a.b=value` strings to a (nested) dataclass, returning a new one, checked by `validate_config`."""
    for ov in overrides:
        key, sep, raw = ov.removeprefix("--").partition("=")
        if not sep:
            raise ConfigError(f"override {ov!r} must look like key=value (e.g. train.lr=3e-4)")
        cfg = _set_path(cfg, key.strip().split("."), raw, key)
    return validate_config(cfg)


def validate_config(cfg: T) -> T:
    """Call `validate()` of cfg and of every dataclass in it (e.g. GPTConfig): a ValueError becomes a ConfigError."""
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(child := getattr(cfg, f.name)):
            validate_config(child)
    try:
        getattr(cfg, "validate", lambda: None)()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def _set_path(obj: Any, path: list[str], raw: str, full_key: str) -> Any:
    types_ = _field_types(type(obj))
    name = path[0].replace("-", "_")
    if name not in types_:
        raise ConfigError(f"unknown config key {full_key!r}; valid here: {', '.join(types_)}")
    if len(path) == 1:
        value = _coerce(raw, types_[name], full_key)
    else:
        child = getattr(obj, name)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{full_key}: {name} is not a table")
        value = _set_path(child, path[1:], raw, full_key)
    return dataclasses.replace(obj, **{name: value})


def dump_toml(cfg: Any) -> str:
    """Serialise a dataclass config to TOML (enough for our flat/nested configs)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v))

    def emit(d: dict[str, Any], prefix: str) -> None:
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        for k, v in d.items():
            if k not in tables and v is not None:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in tables.items():
            lines.append(f"\n[{prefix}{k}]")
            emit(v, f"{prefix}{k}.")

    emit(to_dict(cfg), "")
    return "\n".join(lines).strip() + "\n"


def load_config(cls: type[T], kind: str, preset: str | None = None, overrides: list[str] = ()) -> T:
    """Dataclass defaults <- preset `configs/<kind>/<preset>.toml` (or a TOML path) <- KEY=VALUE overrides."""
    raw = load_toml(find_preset(kind, preset)) if preset else {}
    return apply_overrides(from_dict(cls, raw), list(overrides))
