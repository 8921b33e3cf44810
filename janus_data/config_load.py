"""Config plumbing: YAML presets (package data), nested dicts <-> dataclasses, and merging.

Generic over the dataclass: `janus_data.config` applies it to `JanusRunConfig`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from janus_data.errors import ConfigError, one_line

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Shipped as package data, read through importlib.resources: an installed wheel has no checkout to look in.
PRESET_DIR = resources.files("janus_data") / "presets"
ASSETS = resources.files("janus_data") / "assets"
DEMO_PROMPTS = ASSETS / "demo_prompts.jsonl"  # what `janus demo` draws and trains on
GENEVAL_DEMO = ASSETS / "geneval_demo.jsonl"  # our own GenEval-format prompts: the demo's evaluation
DEMO_EDITS = ASSETS / "demo_edits.jsonl"  # four drawn images and their instructions: the demo's edit run


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{path or 'root'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'",
            hint=f"valid keys under '{path or 'root'}': {', '.join(sorted(known))}",
        )
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{path}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(item, v, path) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"config key '{path}' must be {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), for YAML."""
    out = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return fix(out)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path | Traversable) -> dict[str, Any]:
    """Read a YAML mapping (a file, or a shipped preset), with one-line errors for a missing or malformed file."""
    if isinstance(path, str):
        path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="pass an existing YAML file or a preset name")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name.removesuffix(".yaml") for p in PRESET_DIR.iterdir() if p.name.endswith(".yaml"))


def demo_prompts_path(asset: Path | Traversable = DEMO_PROMPTS) -> Path:
    """A prompt file shipped in the package (default: the demo's prompts), as a path on disk."""
    if not isinstance(asset, Path):  # e.g. imported from a zip archive: no file to hand to readers
        raise ConfigError(
            f"the bundled prompt file is not a file on disk ({asset})",
            hint="install janus-r1 as a directory (pip install), not as a zip archive",
        )
    return asset


def resolve_presets(path: Path | Traversable, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML file's mapping over the chain of presets it starts from (`preset: NAME`, which may have its own)."""
    data = read_yaml(path)
    base = data.pop("preset", None)
    if base is None:
        return data
    if base not in preset_names():
        raise ConfigError(f"{path}: unknown base preset '{base}'", hint=f"presets: {', '.join(preset_names())}")
    if base in seen:
        raise ConfigError(f"{path}: presets start from each other in a cycle ({' -> '.join([*seen, base])})")
    return deep_merge(resolve_presets(PRESET_DIR / f"{base}.yaml", (*seen, base)), data)
