"""Training checkpoints: a stock Hugging Face model directory plus the trainer's state, atomically.

    <run>/checkpoints/sft/step-000100/
        config.json, generation_config.json, model.safetensors   JanusForConditionalGeneration.from_pretrained
        tokenizer*, processor / preprocessor configs              copied from the base checkpoint
        trainer_state.pt     optimizer and scheduler state, torch / numpy / python RNG states
        trainer_state.json   step, data position, metrics, base model, sha256 of the two binaries

A checkpoint is written into `.step-000100.tmp` and renamed when complete, so a directory named
`step-*` is always whole. `trainer_state.pt` is read with `torch.load(weights_only=True)`: tensors
and plain containers only, never arbitrary pickled objects. The sha256s catch a checkpoint that
was damaged after it was written; resuming from it fails with one line instead of training on
garbage.

torch and numpy are imported where they are used: finding checkpoints (`janus_train.resume`)
needs neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from janus_data.errors import JanusError, one_line

STATE_PT = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
WEIGHTS = "model.safetensors"
# Files a base checkpoint carries besides its weights that a trained one must carry too.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
)


class CheckpointError(JanusError):
    """A checkpoint to resume from is missing, incomplete or damaged."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict:
    """Every RNG a training step draws from (torch CPU and CUDA, numpy, python)."""
    import numpy as np
    import torch

    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].astype(np.int64).tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    model,
    base_path: Path,
    trainer: dict,
    info: dict,
    keep_last: int,
    state_dict: dict | None = None,
) -> Checkpoint:
    """Write step `step` atomically; then delete all but the newest `keep_last` checkpoints.

    `state_dict`: the full weights when `model`'s own are sharded (FSDP); None: `model`'s.
    """
    import torch

    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    for name in SIDE_FILES:
        if (Path(base_path) / name).is_file():
            shutil.copy2(Path(base_path) / name, tmp / name)
    torch.save(trainer, tmp / STATE_PT)
    info = {**info, "step": step, "sha256": {STATE_PT: _sha256(tmp / STATE_PT), WEIGHTS: _sha256(tmp / WEIGHTS)}}
    (tmp / STATE_JSON).write_text(json.dumps(info, indent=1, sort_keys=True))
    for path in (tmp / STATE_PT, tmp / WEIGHTS, tmp / STATE_JSON):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in root.glob("step-*"):
        if path.is_dir() and (path / STATE_JSON).is_file() and path.name[5:].isdigit():
            out.append(Checkpoint(path, int(path.name[5:])))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_info(ckpt: Checkpoint) -> dict:
    """trainer_state.json alone: what the checkpoint was trained with, cheaply (no sha256 check)."""
    try:
        return json.loads((ckpt.path / STATE_JSON).read_text())
    except (OSError, ValueError) as err:
        raise _damaged(ckpt, err) from None


def load_trainer_state(ckpt: Checkpoint) -> tuple[dict, dict]:
    """(trainer_state.pt contents, trainer_state.json contents), checked against their sha256s."""
    import torch

    info = read_info(ckpt)
    try:
        for name, digest in info["sha256"].items():
            if _sha256(ckpt.path / name) != digest:
                raise ValueError(f"{name} does not match the sha256 recorded when it was written")
        trainer = torch.load(ckpt.path / STATE_PT, map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise _damaged(ckpt, err) from None
    return trainer, info


def _damaged(ckpt: Checkpoint, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {ckpt.path} is damaged: {one_line(err)}",
        hint="delete it to resume from the one before, or pass --restart to start over",
    )
