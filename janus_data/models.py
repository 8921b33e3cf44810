"""Checkpoint references, device and dtype: resolved here and nowhere else.

A model reference is a local directory (saved with save_pretrained), a hub id
('org/name'), or 'tiny:<name>' for a tiny random model that is built once into the
cache and then loaded with from_pretrained like any other checkpoint.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from janus_data.config import RuntimeConfig
from janus_data.errors import ConfigError, ModelError, one_line

TINY_VERSION = "v3"


# Each builder is imported only when its model is built (the FLUX one needs diffusers).
TINY_MODELS = ("janus", "flux", "internvl")


def tiny_builder(name: str) -> Callable[..., Path]:
    """The build function of tiny model `name` (out_dir, seed=0) -> out_dir."""
    module = importlib.import_module(f"janus_data.tiny.{name}")
    return getattr(module, f"build_tiny_{name}")


def cache_dir() -> Path:
    """Where tiny models are built: $JANUS_CACHE, else ~/.cache/janus."""
    return Path(os.environ.get("JANUS_CACHE", Path.home() / ".cache" / "janus"))


def tiny_model_path(name: str) -> Path:
    """Build (once, atomically) and return the directory of tiny model `name`."""
    if name not in TINY_MODELS:
        raise ModelError(f"unknown tiny model 'tiny:{name}'", hint=f"tiny models: {', '.join(sorted(TINY_MODELS))}")
    target = cache_dir() / "tiny" / TINY_VERSION / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tiny_builder(name)(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; theirs is identical
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(ref: str) -> str:
    """Turn a model reference into what from_pretrained takes, or raise ModelError."""
    if ref.startswith("tiny:"):
        return str(tiny_model_path(ref.removeprefix("tiny:")))
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"checkpoint path {ref} is a file", hint="pass the directory written by save_pretrained")
        if not (path / "config.json").exists() and not (path / "model_index.json").exists():
            raise ModelError(
                f"checkpoint directory {ref} has no config.json or model_index.json",
                hint="pass the directory written by save_pretrained",
            )
        return str(path)
    looks_local = ref.startswith(("/", ".", "~")) or ref.count("/") != 1
    if looks_local:
        raise ModelError(f"checkpoint not found: {ref}", hint="check the path, or use a hub id like org/name")
    return ref


@contextmanager
def loading(kind: str, ref: str, hint: str) -> Iterator[None]:
    """Turn any library failure while loading checkpoint `ref` into a one-line ModelError."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise ModelError(f"cannot load {kind} checkpoint '{ref}': {one_line(err)}", hint=hint) from None


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """'auto' picks cuda when available, else cpu."""
    if runtime.device == "auto":
        if torch.cuda.is_available():
            from janus_data.dist import local_device_index

            return torch.device("cuda", local_device_index() % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(runtime.device)
    except RuntimeError:
        raise ConfigError(f"runtime.device '{runtime.device}' is not a device", hint="use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device asks for cuda but no GPU is visible", hint="set runtime.device: cpu")
    return device


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(runtime: RuntimeConfig, device: torch.device) -> torch.dtype:
    """'auto' gives bf16 on GPU and fp32 on CPU."""
    if runtime.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if runtime.dtype not in _DTYPES:
        raise ConfigError(f"runtime.dtype '{runtime.dtype}' is unknown", hint=f"use auto or one of {list(_DTYPES)}")
    return _DTYPES[runtime.dtype]
