"""GRPO's edit steps (#18, docs/train_rl.md "Edit steps"): which steps edit, and their edit sources.

A step is an edit step when a uniform number hashed from (rl.seed, step) falls below
`rl.edit_share`, so the kind of every step is a pure function of the seed (the same on every
process, and after a resume). Each kind walks its own prompts: a step's batch is taken at that
kind's own step count (`StepKinds`), so text-to-image steps see the prompts in the order they
would without edits, and edit steps see every edit in turn.

Edit sources are `rl.edits` (an edit source file, docs/edit.md, read into memory: sized for an
RL set) or the run's edits manifest, whose prepared sources are read from disk per step.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from janus_data.config import RLConfig
from janus_data.errors import RunDirError

if TYPE_CHECKING:
    import polars as pl


def is_edit_step(seed: int, step: int, share: float) -> bool:
    """Whether GRPO step `step` (0-based) is an edit step under `rl.edit_share` = `share`."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.blake2b(f"janus-rl-edit:{seed}:{step}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / (1 << 53) < share


@dataclass
class StepKinds:
    """How many steps of each kind ran before a step: the index each kind's prompt order is read at."""

    seed: int
    share: float
    t2i: int = 0
    edit: int = 0

    @classmethod
    def before(cls, seed: int, share: float, step: int) -> StepKinds:
        kinds = cls(seed, share)
        for k in range(step):
            kinds.take(k)
        return kinds

    def take(self, step: int) -> tuple[bool, int]:
        """(is `step` an edit step, its index among the steps of its kind); counts it."""
        edit = is_edit_step(self.seed, step, self.share)
        index = self.edit if edit else self.t2i
        if edit:
            self.edit += 1
        else:
            self.t2i += 1
        return edit, index


def load_rl_edits(run_dir: Path, cfg: RLConfig, skip_bad_images: bool = False) -> pl.DataFrame:
    """The edits of the edit steps, sorted by edit_id: edit_id, instruction, and `source_image`
    (bytes, from rl.edits) or null (read from the run's prepared source when the step needs it)."""
    import polars as pl

    if cfg.edits:
        from janus_data.edit_sources import load_edits

        frame = load_edits(cfg.edits, skip_bad_images=skip_bad_images)[0]
        frame = frame.select("edit_id", "instruction", "source_image")
    else:
        from janus_data.edit_manifest import read_edits_manifest

        frame = read_edits_manifest(run_dir).select(
            "edit_id", "instruction", pl.lit(None, pl.Binary).alias("source_image")
        )
    if frame.height == 0:
        raise RunDirError("no edits for the edit steps of RL", hint="set rl.edits, or run synth --task edit first")
    return frame.sort("edit_id")


def source_images(run_dir: Path, batch: pl.DataFrame) -> list[Image.Image]:
    """The batch's source images (RGB, loaded): the edit file's bytes, else the run's prepared source."""
    from janus_data.edit_manifest import read_source

    images = []
    for edit_id, data in zip(batch["edit_id"].to_list(), batch["source_image"].to_list(), strict=True):
        blob = data if data is not None else read_source(run_dir, edit_id)
        with Image.open(io.BytesIO(blob)) as image:
            images.append(image.convert("RGB"))
    return images
