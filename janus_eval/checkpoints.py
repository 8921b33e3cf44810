"""Checkpoint references of `janus generate` and `janus eval`: a ref -> its label and what loads it.

A reference is one of:
- "base": the run's base model, `cfg.synth.janus.model`;
- "sft" / "rl": the run's latest checkpoint under `janus_data.rundir.CKPT_DIRS` (needs a run);
- a checkpoint directory: ours (`<run>/checkpoints/sft/step-000020`) or any `save_pretrained`
  directory of the transformers Janus-Pro layout (`deepseek-community/Janus-Pro-7B` downloaded);
- a hub id ("org/name") or "tiny:janus".

Labels name results on disk (`<run>/eval/<kind>/<label>/`): "base", "sft" and "rl" for the first
three, else the last two parts of the path or id, sanitised ("sft-step-000020", "tiny_janus").

No torch here: a missing path or checkpoint fails in milliseconds, before any heavy import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from janus_data.errors import ModelError, RunDirError
from janus_data.models import TINY_MODELS, resolve_model
from janus_data.rundir import CKPT_DIRS
from janus_train.checkpoint import STATE_JSON, WEIGHTS, latest_checkpoint

if TYPE_CHECKING:
    from janus_data.config import JanusRunConfig

RUN_REFS = ("base", *CKPT_DIRS)  # "base", "sft", "rl"
# The command that writes each run checkpoint, for the error when there is none yet.
_MAKES = {"sft": "janus train sft", "rl": "janus train rl"}
# What transformers' JanusForConditionalGeneration reads; DeepSeek's original repos say "multi_modality".
JANUS_MODEL_TYPE = "janus"


@dataclass(frozen=True)
class EvalCheckpoint:
    """A checkpoint to draw from.

    label: names its results; ref: as the user gave it; path: what `janus_data.models.resolve_model`
    takes (a local directory, a hub id, or "tiny:NAME")."""

    label: str
    ref: str
    path: str


def resolve_checkpoint(ref: str, run_dir: Path | None, cfg: JanusRunConfig) -> EvalCheckpoint:
    """`ref` -> EvalCheckpoint, or a one-line ModelError / RunDirError (no heavy import)."""
    ref = ref.strip()
    if not ref:
        raise ModelError("empty checkpoint reference", hint="pass base, sft, rl, a checkpoint directory or a hub id")
    if ref == "base":
        return EvalCheckpoint("base", ref, _check_path(cfg.synth.janus.model))
    if ref in CKPT_DIRS:
        if run_dir is None:
            raise RunDirError(f"checkpoint '{ref}' is the run's latest {ref} checkpoint", hint="pass --run RUN")
        found = latest_checkpoint(Path(run_dir) / CKPT_DIRS[ref])
        if found is None:
            raise RunDirError(
                f"run {run_dir} has no {ref} checkpoint under {CKPT_DIRS[ref]}",
                hint=f"run `{_MAKES[ref]} --run {run_dir}` first",
            )
        return EvalCheckpoint(ref, ref, _check_path(str(found.path)))
    return EvalCheckpoint(checkpoint_label(ref), ref, _check_path(ref))


def weights_digest(path: str) -> str | None:
    """The sha256 of a checkpoint's weights as its trainer recorded them (our checkpoints), else None.

    Read from trainer_state.json, so a retrained checkpoint at the same path is told apart cheaply."""
    try:
        info = json.loads((Path(path) / STATE_JSON).read_text())
    except (OSError, ValueError):
        return None
    digests = info.get("sha256") if isinstance(info, dict) else None
    return digests.get(WEIGHTS) if isinstance(digests, dict) else None


def checkpoint_label(ref: str) -> str:
    """A file-name-safe label from a path or id: its last two parts joined by '-', other characters '_'.

    >>> checkpoint_label("runs/r1/checkpoints/sft/step-000020")
    'sft-step-000020'
    >>> checkpoint_label("deepseek-community/Janus-Pro-7B"), checkpoint_label("tiny:janus")
    ('deepseek-community-Janus-Pro-7B', 'tiny_janus')
    """
    parts = [p for p in Path(ref.rstrip("/")).parts if p not in ("/", ".", "..", "~")]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts[-2:])).strip(".")
    return label or "checkpoint"


def _check_path(path: str) -> str:
    """The reference as `resolve_model` takes it, checked without building or loading anything."""
    if path.startswith("tiny:"):
        name = path.removeprefix("tiny:")
        if name != "janus":
            known = ", ".join(f"tiny:{t}" for t in TINY_MODELS)
            raise ModelError(f"'{path}' is not a Janus-Pro checkpoint", hint=f"of {known}, only tiny:janus draws")
        return path
    resolved = resolve_model(path)
    local = Path(resolved).expanduser()
    if local.is_dir():
        _check_model_type(local, path)
        return str(local.resolve())
    return resolved


def _check_model_type(local: Path, ref: str) -> None:
    """A local directory holds a transformers Janus checkpoint (config.json model_type 'janus')."""
    try:
        model_type = json.loads((local / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise ModelError(
            f"checkpoint {ref}: config.json is not readable JSON", hint="pass a save_pretrained directory"
        ) from None
    if model_type != JANUS_MODEL_TYPE:
        raise ModelError(
            f"checkpoint {ref} is a '{model_type}' model, not a transformers Janus-Pro ('{JANUS_MODEL_TYPE}')",
            hint="use the transformers layout (deepseek-community/Janus-Pro-1B or -7B) or a checkpoint of this run",
        )
