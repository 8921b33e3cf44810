"""`janus data synth --task edit`: every edit source's candidate edits from FLUX.1 Kontext and Janus-Pro.

The text-to-image stage's machinery (janus_data.synth) on other inputs: the edit sources enter the
run's edits manifest with their prepared images (janus_data.edit_manifest); the work is planned as
(edit, generator, index) items with derived seeds (`prompt_id` = edit_id), sliced by rank,
anti-joined against the edit image manifest and drawn in batches per editor; each batch's bytes
are appended to `images/edit-<generator>/rankN/` shards and fsynced before its manifest part
appears atomically, and torn shard tails are cut off at the next start. A rerun draws only what is
missing and loads no model when nothing is.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image

from janus_data.checks import require_edits
from janus_data.config import JanusRunConfig, edit_split_counts
from janus_data.dist import Shard
from janus_data.edit_manifest import SOURCES_DIR, read_edits_manifest, read_source, write_edits
from janus_data.edit_sources import EditStats, load_edits
from janus_data.manifest import EDIT_IMAGES_KIND, clean_temp_files, ensure_writable, manifest_dir
from janus_data.models import resolve_device, resolve_dtype, resolve_model
from janus_data.rundir import save_run_config
from janus_data.synth import (
    ImageStore,
    SynthResult,
    draw_missing,
    existing_image_ids,
    plan_items,
    repair_rank_shards,
)

EDIT_STORE = ImageStore(kind=EDIT_IMAGES_KIND, prefix="edit-", label="edit")


@dataclass
class EditSynthResult(SynthResult):
    """What an edit synth call did: SynthResult's counts (n_prompts: the run's edits) and the sources read."""

    task: str = "edit"
    edit_stats: EditStats | None = None
    new_edits: int = 0


def plan_edit_images(edits: pl.DataFrame, cfg: JanusRunConfig, shard: Shard) -> pl.DataFrame:
    """Every candidate edit this rank owns: image_id, prompt_id (= edit_id), prompt (= instruction), generator,
    index, seed = derive_seed(synth.seed, edit_id, generator, index)."""
    counts = edit_split_counts(cfg.edit)
    return plan_items(edits["edit_id"], edits["instruction"], counts, cfg.edit.generators, cfg.synth.seed, shard)


def editor_model(cfg: JanusRunConfig, name: str) -> str:
    """The checkpoint an editor loads: edit.kontext.model, or synth.janus.model (Janus-Pro edits with its settings)."""
    return cfg.edit.kontext.model if name == "kontext" else cfg.synth.janus.model


def editor_factories(cfg: JanusRunConfig) -> dict[str, Callable[[], object]]:
    """Lazy constructors, so a run with nothing left to do never loads a model."""
    device = resolve_device(cfg.runtime)
    dtype = resolve_dtype(cfg.runtime, device)

    def kontext() -> object:
        from janus_data.generators.kontext import KontextEditor

        return KontextEditor(cfg.edit.kontext, device, dtype)

    def janus() -> object:
        from janus_data.generators.janus_edit import JanusEditor

        return JanusEditor(cfg.synth.janus, device, dtype, trust_remote_code=cfg.runtime.trust_remote_code)

    return {"kontext": kontext, "janus": janus}


def run_edit_synth(
    run_dir: Path,
    cfg: JanusRunConfig,
    edits_path: Path | None = None,
    shard: Shard = Shard(),
    progress: bool | None = None,
    factories: dict[str, Callable[[], object]] | None = None,
    loaded: tuple[pl.DataFrame, EditStats] | None = None,
) -> EditSynthResult:
    """Draw every missing candidate edit of this rank's slice of the run's edits (`edits_path`'s added first).

    `loaded` is `load_edits(edits_path)` when the caller has read the source already (janus_run.stages).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if loaded is None and edits_path is not None:
        loaded = load_edits(edits_path, skip_bad_images=cfg.edit.skip_bad_images)
    ensure_writable(run_dir)
    clean_temp_files(run_dir / SOURCES_DIR)
    new_edits = write_edits(run_dir, loaded[0], cfg.synth.image_size) if loaded is not None else 0
    require_edits(run_dir)
    edits = read_edits_manifest(run_dir)
    clean_temp_files(manifest_dir(run_dir, EDIT_IMAGES_KIND))
    stats = loaded[1] if loaded is not None else None
    result = EditSynthResult(run_dir, shard, edits.height, None, edit_stats=stats, new_edits=new_edits)
    generators = cfg.edit.generators
    result.shards_repaired = repair_rank_shards(run_dir, generators, shard.rank, EDIT_STORE)

    plan = plan_edit_images(edits, cfg, shard)
    todo = plan.join(existing_image_ids(run_dir, EDIT_IMAGES_KIND), on="image_id", how="anti")
    todo = todo.sort("generator", "prompt_id", "index")
    if factories is None:
        # Check every checkpoint this call needs before any work, so a bad path fails in seconds.
        for name in set(todo["generator"].unique()):
            resolve_model(editor_model(cfg, name))
        factories = editor_factories(cfg)
    save_run_config(run_dir, cfg)
    batch_sizes = {"kontext": cfg.edit.kontext.batch_size, "janus": cfg.synth.janus.batch_size}

    def draw(editor, batch: pl.DataFrame) -> list[Image.Image]:
        # An edit's candidates share one source object, so JanusEditor crops and encodes it once.
        sources = {eid: _open(read_source(run_dir, eid)) for eid in batch["prompt_id"].unique()}
        images = [sources[eid] for eid in batch["prompt_id"]]
        return editor.generate(images, batch["prompt"].to_list(), batch["seed"].to_list())

    draw_missing(run_dir, cfg.synth, generators, plan, todo, factories, batch_sizes, draw, result, progress, EDIT_STORE)
    result.seconds = time.perf_counter() - start
    return result


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
