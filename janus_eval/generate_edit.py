"""`janus generate --edit IMAGE --instruction TEXT`: N edits of one image from a Janus-Pro checkpoint.

The edit is drawn by `janus_data.generators.janus_edit.JanusEditor` (the released edit template, the
source centre-cropped to the model's image size). It is one chain per sample: prompt_id is the
edit's id (`edit_sources.edit_id_for`, the same id `janus data synth --task edit` gives it), the seed
derive_seed(eval.seed, edit_id, "edit", sample). Images and the generations manifest are those of
`janus generate` (`gen_manifest`, written by `generate.write_batch`), so a rerun draws only what is
missing; OUT/edit_source.png is the prepared source, as the model saw it.

With --introspect (`EditChain`) every sample is the trained edit chain instead: the edit, the model's
own evaluation of it (the `edit_judge` sequence), and on No a redraw from the `edit_regen` prefix, up
to `rounds` times: `chain.IntrospectiveChain` with the source's codes, as GRPO's edit steps draw.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from janus_data.config import JanusRunConfig
from janus_data.edit_sources import edit_id_for
from janus_data.generators.janus_edit import center_crop
from janus_data.manifest import atomic_write
from janus_data.prompts import normalise_prompt, prompt_schema
from janus_eval.chain import ChainImage, IntrospectiveChain, load_chain_steps
from janus_eval.checkpoints import EvalCheckpoint, resolve_checkpoint
from janus_eval.gen_checks import check_edit_args, check_edit_image, check_out
from janus_eval.gen_manifest import check_settings, clean_out, drop_incomplete_chains
from janus_eval.generate import (
    GenerateResult,
    chain_options,
    draw_all,
    drawing_settings,
    finish,
    plan_chains,
    remaining,
)

EDIT_STREAM = "edit"  # derive_seed's `generator` field for edit chains
SOURCE_FILE = "edit_source.png"


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One edit: the image file, its bytes' sha256, the normalised instruction and the edit's id."""

    image: Path
    sha256: str
    instruction: str
    edit_id: str

    @classmethod
    def read(cls, image: str | Path, instruction: str) -> EditRequest:
        """Check the image (exists, decodes) and the instruction, and derive the edit's id."""
        image = Path(image)
        check_edit_args(image, instruction, None, None, None)
        check_edit_image(image)
        sha = hashlib.sha256(image.read_bytes()).hexdigest()
        text = normalise_prompt(instruction)
        return cls(image.resolve(), sha, text, edit_id_for(sha, text))

    def frame(self) -> pl.DataFrame:
        """The edit as one `load_prompts` row: prompt_id = edit_id, prompt = instruction, the source in metadata."""
        metadata = json.dumps({"source_image": str(self.image), "source_sha256": self.sha256}, sort_keys=True)
        row = {
            "prompt_id": [self.edit_id],
            "prompt": [self.instruction],
            "source": [str(self.image)],
            "source_id": [None],
            "tags": [[]],
            "n_occurrences": [1],
            "metadata": [metadata],
        }
        return pl.DataFrame(row, schema=prompt_schema())


def edit_settings(
    ckpt: EvalCheckpoint, cfg: JanusRunConfig, edit: EditRequest, introspect: bool = False, rounds: int = 0
) -> dict:
    """What decides the edits' images: the drawing settings of `generate`, the task and the edit itself.

    An OUT holds one edit (its edit_source.png): another image or instruction needs another --out."""
    settings = drawing_settings(ckpt, cfg, introspect=introspect, rounds=rounds)
    return {**settings, "task": "edit", "edit_id": edit.edit_id, "source_fit": "center_crop"}


def load_editor(ckpt: EvalCheckpoint, cfg: JanusRunConfig):
    """JanusEditor on the checkpoint, with synth.janus's sampling and loop, on the configured device and dtype."""
    from janus_data.generators.janus_edit import JanusEditor
    from janus_data.models import resolve_device, resolve_dtype

    device = resolve_device(cfg.runtime)
    gen_cfg = dataclasses.replace(cfg.synth.janus, model=ckpt.path)
    return JanusEditor(gen_cfg, device, resolve_dtype(cfg.runtime, device), cfg.runtime.trust_remote_code)


def run_generate_edit(
    checkpoint: str,
    image: str | Path,
    instruction: str,
    out: Path,
    cfg: JanusRunConfig,
    *,
    run_dir: Path | None = None,
    n: int | None = None,
    progress: bool | None = None,
    introspect: bool | None = None,
    rounds: int | None = None,
) -> GenerateResult:
    """Draw every missing edit sample 0..n-1 of (`image`, `instruction`) from `checkpoint` into OUT.

    `checkpoint`: see `checkpoints.resolve_checkpoint`; n, introspect and rounds default to `cfg.eval`'s.
    With `introspect` each edit is a chain: the model evaluates its edit and redraws on No (the edit
    sequences of SFT and GRPO, `chain.IntrospectiveChain` with sources)."""
    start = time.perf_counter()
    out = Path(out)
    n, introspect, rounds = chain_options(cfg, n, introspect, rounds)
    edit = EditRequest.read(image, instruction)
    ckpt = resolve_checkpoint(checkpoint, run_dir, cfg)
    check_out(out)
    clean_out(out)
    check_settings(out, edit_settings(ckpt, cfg, edit, introspect, rounds))
    result = GenerateResult(out, ckpt, 1, n, introspect=introspect, rounds=rounds)
    result.repaired = drop_incomplete_chains(out)
    todo = remaining(result, plan_chains(edit.frame(), n, cfg.eval.seed, EDIT_STREAM))
    if todo.height or not (out / SOURCE_FILE).is_file():
        editor = load_editor(ckpt, cfg) if not introspect else EditChain(ckpt, cfg, rounds)
        with Image.open(edit.image) as opened:
            source = opened.convert("RGB")
        prepared = editor.prepare_sources([source])
        atomic_write(out / SOURCE_FILE, lambda fh: prepared[0].save(fh, format="PNG"))
        source_codes = editor.encode_sources(prepared)  # (1, N): encoded alone, whatever the batch
        draw = functools.partial(draw_batch, editor, source_codes)
        draw_all(result, todo, draw, cfg.synth.janus.batch_size, f"edit {ckpt.label}", "image", progress)
    return finish(result, start)


class EditChain:
    """The introspective edit chain on a checkpoint: the source prepared and encoded by the model's own
    VQ (JanusEditor's centre crop), then `IntrospectiveChain` with the source's codes on every row."""

    def __init__(self, ckpt: EvalCheckpoint, cfg: JanusRunConfig, rounds: int):
        self.steps = load_chain_steps(ckpt.path, cfg)
        self.chain = IntrospectiveChain(self.steps, introspect=True, rounds=rounds)

    def prepare_sources(self, sources: list[Image.Image]) -> list[Image.Image]:
        return [center_crop(s, self.steps.vq.image_size) for s in sources]

    def encode_sources(self, prepared: list[Image.Image]) -> np.ndarray:
        return self.steps.vq.encode(prepared)

    def draw(self, source_codes: np.ndarray, batch: pl.DataFrame) -> list[list[ChainImage]]:
        codes = np.repeat(source_codes, batch.height, axis=0)
        return self.chain.run(batch["prompt"].to_list(), batch["seed"].to_list(), sources=codes)


@torch.inference_mode()
def draw_batch(editor, source_codes: np.ndarray, batch: pl.DataFrame) -> list[list[ChainImage]]:
    """B edits of one source (its (1, N) codes): one chain each (`EditChain`), or one single image each.

    Images are VQ-decoded one at a time, as `chain.IntrospectiveChain` does: the VQ convolutions round
    differently with the batch size, and an image must not depend on the batch it was drawn in."""
    from janus_data.generators.janus_loop import decode_image_tokens

    if isinstance(editor, EditChain):
        return editor.draw(source_codes, batch)
    codes = np.repeat(source_codes, batch.height, axis=0)
    tokens, _ = editor.generate_tokens(codes, batch["prompt"].to_list(), batch["seed"].to_list())
    chains = []
    for j in range(batch.height):
        pixels = decode_image_tokens(editor.model, tokens[j : j + 1]).cpu().numpy()[0]
        chains.append([ChainImage(0, tokens[j].cpu().numpy().astype(np.int32), pixels)])
    return chains
