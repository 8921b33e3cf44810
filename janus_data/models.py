"""Checkpoint references, device and dtype: resolved here and nowhere else.

A model reference is a local directory (saved with save_pretrained), a hub id
('org/name'), or 'tiny:<name>' for a tiny random model that is built once into the
cache and then loaded with from_pretrained like any other checkpoint.

torch is imported by the functions that need it, so checking a reference costs no torch import.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from janus_data.config import RuntimeConfig
from janus_data.errors import ConfigError, ModelError, one_line

if TYPE_CHECKING:
    import torch

TINY_VERSION = "v3"


# Each builder is imported only when its model is built (the FLUX one needs diffusers).
# mask2former and clip are GenEval's detector and colour classifier (janus_eval.detect); kontext is
# the tiny FLUX under FluxKontextPipeline, the diffusion editor of image edits.
TINY_MODELS = ("janus", "flux", "internvl", "mask2former", "clip", "kontext")


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


def build_tiny(name: str, out: Path | None = None, seed: int = 0) -> Path:
    """`janus models tiny`: tiny model `name` saved to `out` (built with `seed`), or the cached one."""
    if out is None:
        return tiny_model_path(name)
    if name not in TINY_MODELS:
        raise ModelError(f"unknown tiny model '{name}'", hint=f"choose from {', '.join(sorted(TINY_MODELS))}")
    build = tiny_builder(name)
    return build(out) if seed == 0 else build(out, seed)


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
        if _not_in_cache(ref, err):
            # The hint the caller passes names the default checkpoints, which is what just failed.
            raise ModelError(
                f"cannot load {kind} checkpoint '{ref}': {offline_reason()}", hint=fetch_hint(ref)
            ) from None
        raise ModelError(f"cannot load {kind} checkpoint '{ref}': {one_line(err)}", hint=hint) from None


_NETWORK_ERRORS = ("ConnectError", "ConnectTimeout", "gaierror")  # httpx's, and a failed DNS lookup


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub read it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def offline_reason() -> str:
    """Why a hub id could not be loaded: not in the local cache, and the hub not asked or not reached."""
    reached = "HF_HUB_OFFLINE is set, so the hub was not asked" if hub_offline() else "the hub could not be reached"
    return f"it is not (fully) in the local Hugging Face cache and {reached}"


def fetch_hint(ref: str) -> str:
    """How to get hub checkpoint `ref` onto a machine that cannot download it (not: 'use `ref`')."""
    online = "unset HF_HUB_OFFLINE (or set it to 0)" if hub_offline() else "check this machine's network or proxy"
    return (
        f"download it where the hub is reachable (`hf download {ref} --local-dir DIR`), copy DIR here and pass "
        f"that directory instead of the hub id; or {online}; or try the pipeline with --config tiny"
    )


def _not_in_cache(ref: str, err: BaseException) -> bool:
    """`ref` is a hub id whose files are not all on this machine, and the hub could not be asked for them."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if ref.startswith("tiny:") or Path(ref).expanduser().exists():
        return False
    seen: BaseException | None = err
    for _ in range(8):  # transformers and diffusers wrap the hub's (or httpx's) error in their own
        if seen is None:
            return False
        if isinstance(seen, (LocalEntryNotFoundError, ConnectionError)) or type(seen).__name__ in _NETWORK_ERRORS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# The name transformers' forwards take the KV cache by: `cache` from 5.24 on, `past_key_values` before.
CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_keyword(module) -> str:
    """The keyword a transformers model's or decoder layer's forward takes its KV cache by, from its signature.

    Both forwards also take **kwargs, so the wrong name is swallowed silently and no cache is kept.
    """
    params = inspect.signature(module.forward).parameters
    return next((name for name in CACHE_KEYWORDS if name in params), "past_key_values")


def cache_not_written(where: str, keyword: str) -> ModelError:
    """The one-line error for a forward that ignored the KV cache it was handed (its images would be noise)."""
    import transformers

    return ModelError(
        f"{where} did not write the KV cache passed as '{keyword}=' under transformers {transformers.__version__}: "
        "every token after the first would ignore the prompt",
        hint="install a transformers version in the tested range (pyproject.toml; docs/models.md, 'Dependency floors')",
    )


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """'auto' picks cuda when available, else cpu."""
    import torch

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


_DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(runtime: RuntimeConfig, device: torch.device) -> torch.dtype:
    """'auto' gives bf16 on GPU and fp32 on CPU."""
    import torch

    if runtime.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if runtime.dtype not in _DTYPES:
        raise ConfigError(f"runtime.dtype '{runtime.dtype}' is unknown", hint=f"use auto or one of {list(_DTYPES)}")
    return getattr(torch, runtime.dtype)
