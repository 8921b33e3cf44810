"""`janus data synth`: every prompt's candidate images from FLUX and Janus-Pro.

Work is planned as (prompt, generator, index) items with derived seeds, sliced by rank,
anti-joined against the image manifest, and generated in batches per generator. Each
batch's bytes are appended to the rank's tar shard and fsynced, then its manifest part
appears atomically: a killed run leaves whole batches, and a rerun does only what is
missing after cutting any unreferenced tail off the shards.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import polars as pl
import torch
from PIL import Image

from janus_data.config import JanusRunConfig, SynthConfig, split_counts
from janus_data.dist import Shard
from janus_data.manifest import (
    IMAGES_KIND,
    clean_temp_files,
    ensure_writable,
    manifest_dir,
    scan_manifest,
    write_parquet_atomic,
)
from janus_data.models import resolve_device, resolve_dtype, resolve_model
from janus_data.progress import stage_progress
from janus_data.prompts import (
    PromptStats,
    load_prompts,
    read_prompts_manifest,
    require_prompts,
    write_prompts_manifest,
)
from janus_data.rundir import rank_dir, save_run_config
from janus_data.seeds import derive_seed, image_id_for, shard_of
from janus_data.storage import EXTENSIONS, ShardWriter, encode_image, repair_shards

IMAGE_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.Utf8,
    "prompt_id": pl.Utf8,
    "generator": pl.Utf8,
    "index": pl.Int32,
    "model": pl.Utf8,
    "seed": pl.Int64,
    "width": pl.Int32,
    "height": pl.Int32,
    "format": pl.Utf8,
    "shard": pl.Utf8,
    "member": pl.Utf8,
    "offset": pl.Int64,
    "length": pl.Int64,
    "sha256": pl.Utf8,
    "params": pl.Utf8,
    "seconds": pl.Float64,
    "rank": pl.Int32,
}


class ImageGenerator(Protocol):
    """What synth needs of a generator."""

    name: str
    model_id: str

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]: ...

    def params(self) -> dict: ...


@dataclass(frozen=True)
class ImageStore:
    """Where a task's images go: their manifest kind, and each generator's shards under images/<prefix><generator>/."""

    kind: str = IMAGES_KIND
    prefix: str = ""
    label: str = "synth"

    def shard_dir(self, generator: str, rank: int) -> str:
        """A (generator, rank)'s shard folder, relative to the run."""
        return f"images/{self.prefix}{generator}/{rank_dir(rank)}"


T2I_STORE = ImageStore()


@dataclass
class GeneratorStats:
    """Counts and time for one generator in one synth call."""

    planned: int = 0
    existing: int = 0
    generated: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SynthResult:
    """What a synth call did, for the summary table."""

    run_dir: Path
    shard: Shard
    n_prompts: int
    prompt_stats: PromptStats | None
    generators: dict[str, GeneratorStats] = field(default_factory=dict)
    shards_repaired: int = 0
    seconds: float = 0.0
    task: str = "t2i"

    @property
    def generated(self) -> int:
        return sum(g.generated for g in self.generators.values())


def plan_images(prompts: pl.DataFrame, cfg: SynthConfig, shard: Shard) -> pl.DataFrame:
    """Every image this rank owns: image_id, prompt_id, prompt, generator, index, seed."""
    return plan_items(prompts["prompt_id"], prompts["prompt"], split_counts(cfg), cfg.generators, cfg.seed, shard)


def plan_items(
    ids: Iterable[str],
    texts: Iterable[str],
    counts: dict[str, int],
    generators: tuple[str, ...],
    seed: int,
    shard: Shard,
) -> pl.DataFrame:
    """(id, generator, index) items of the ids this rank owns, with their image ids, texts and derived seeds."""
    rows: dict[str, list] = {k: [] for k in ("image_id", "prompt_id", "prompt", "generator", "index", "seed")}
    for pid, text in zip(ids, texts, strict=True):
        if shard_of(pid, shard.world_size) != shard.rank:
            continue
        for gen in generators:
            for i in range(counts.get(gen, 0)):
                rows["image_id"].append(image_id_for(pid, gen, i))
                rows["prompt_id"].append(pid)
                rows["prompt"].append(text)
                rows["generator"].append(gen)
                rows["index"].append(i)
                rows["seed"].append(derive_seed(seed, pid, gen, i))
    schema = {"image_id": pl.Utf8, "prompt_id": pl.Utf8, "prompt": pl.Utf8, "generator": pl.Utf8}
    return pl.DataFrame(rows, schema={**schema, "index": pl.Int32, "seed": pl.Int64})


def existing_image_ids(run_dir: Path, kind: str = IMAGES_KIND) -> pl.DataFrame:
    """image_id of every image already in the manifest (any rank, any earlier world size)."""
    return scan_manifest(run_dir, kind, IMAGE_SCHEMA).select("image_id").unique().collect()


def repair_rank_shards(run_dir: Path, generators: tuple[str, ...], rank: int, store: ImageStore = T2I_STORE) -> int:
    """Cut this rank's shards back to what the manifest references (a kill mid-batch) and seal them."""
    extents = dict(
        scan_manifest(run_dir, store.kind, IMAGE_SCHEMA)
        .filter(pl.col("rank") == rank)
        .group_by("shard")
        .agg((pl.col("offset") + pl.col("length")).max().alias("end"))
        .collect()
        .iter_rows()
    )
    return sum(repair_shards(run_dir, store.shard_dir(gen, rank), extents) for gen in generators)


def batches(todo: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """Consecutive slices of at most `size` rows."""
    for start in range(0, todo.height, size):
        yield todo.slice(start, size)


def write_batch(
    run_dir: Path,
    cfg: SynthConfig,
    gen: ImageGenerator,
    writer: ShardWriter,
    batch: pl.DataFrame,
    images: list[Image.Image],
    seconds: float,
    rank: int,
    store: ImageStore = T2I_STORE,
) -> None:
    """Store one batch: bytes appended and fsynced first, then its manifest part (its presence means done)."""
    ids = batch["image_id"].to_list()
    part = "part-" + hashlib.sha1("|".join(ids).encode()).hexdigest()[:16]
    ext = EXTENSIONS[cfg.image_format]
    blobs = [encode_image(img, cfg.image_format, cfg.image_size, cfg.jpeg_quality) for img in images]
    stored = writer.write_batch([(f"{i}.{ext}", b) for i, b in zip(ids, blobs, strict=True)])
    params = json.dumps(gen.params(), sort_keys=True)
    n = len(ids)
    df = pl.DataFrame(
        {
            "image_id": ids,
            "prompt_id": batch["prompt_id"],
            "generator": [gen.name] * n,
            "index": batch["index"],
            "model": [gen.model_id] * n,
            "seed": batch["seed"],
            "width": [cfg.image_size] * n,
            "height": [cfg.image_size] * n,
            "format": [cfg.image_format] * n,
            "shard": [s.shard for s in stored],
            "member": [s.member for s in stored],
            "offset": [s.offset for s in stored],
            "length": [s.length for s in stored],
            "sha256": [hashlib.sha256(b).hexdigest() for b in blobs],
            "params": [params] * n,
            "seconds": [seconds / n] * n,
            "rank": [rank] * n,
        },
        schema=IMAGE_SCHEMA,
    )
    write_parquet_atomic(df, manifest_dir(run_dir, store.kind) / gen.name / rank_dir(rank) / f"{part}.parquet")


def generator_factories(cfg: JanusRunConfig) -> dict[str, Callable[[], ImageGenerator]]:
    """Lazy constructors, so a run with nothing left to do never loads a model."""
    device = resolve_device(cfg.runtime)
    dtype = resolve_dtype(cfg.runtime, device)
    trust = cfg.runtime.trust_remote_code

    def flux() -> ImageGenerator:
        from janus_data.generators.flux import FluxGenerator

        return FluxGenerator(cfg.synth.flux, device, dtype)

    def janus() -> ImageGenerator:
        from janus_data.generators.janus import JanusGenerator

        return JanusGenerator(cfg.synth.janus, device, dtype, trust_remote_code=trust)

    return {"flux": flux, "janus": janus}


def run_synth(
    run_dir: Path,
    cfg: JanusRunConfig,
    prompts_path: Path | None = None,
    shard: Shard = Shard(),
    progress: bool | None = None,
    factories: dict[str, Callable[[], ImageGenerator]] | None = None,
) -> SynthResult:
    """Generate every missing image of this rank's slice of the run's prompts."""
    start = time.perf_counter()
    scfg = cfg.synth
    prompt_stats = None
    if prompts_path is not None:
        prompts_df, prompt_stats = load_prompts(prompts_path)
    ensure_writable(run_dir)
    if prompts_path is not None:
        write_prompts_manifest(run_dir, prompts_df)
    require_prompts(run_dir)
    prompts = read_prompts_manifest(run_dir)
    clean_temp_files(manifest_dir(run_dir, IMAGES_KIND))
    result = SynthResult(Path(run_dir), shard, prompts.height, prompt_stats)
    result.shards_repaired = repair_rank_shards(run_dir, scfg.generators, shard.rank)

    plan = plan_images(prompts, scfg, shard)
    todo = plan.join(existing_image_ids(run_dir), on="image_id", how="anti").sort("generator", "prompt_id", "index")
    if factories is None:
        # Check every checkpoint this call needs before any work, so a bad path fails in seconds.
        for name in set(todo["generator"].unique()):
            resolve_model(getattr(scfg, name).model)
        factories = generator_factories(cfg)
    save_run_config(run_dir, cfg)
    batch_sizes = {"flux": scfg.flux.batch_size, "janus": scfg.janus.batch_size}

    def draw(gen: ImageGenerator, batch: pl.DataFrame) -> list[Image.Image]:
        return gen.generate(batch["prompt"].to_list(), batch["seed"].to_list())

    draw_missing(run_dir, scfg, scfg.generators, plan, todo, factories, batch_sizes, draw, result, progress)
    result.seconds = time.perf_counter() - start
    return result


def draw_missing(
    run_dir: Path,
    scfg: SynthConfig,
    generators: tuple[str, ...],
    plan: pl.DataFrame,
    todo: pl.DataFrame,
    factories: dict[str, Callable[[], object]],
    batch_sizes: dict[str, int],
    draw: Callable[[object, pl.DataFrame], list[Image.Image]],
    result: SynthResult,
    progress: bool | None,
    store: ImageStore = T2I_STORE,
) -> None:
    """Draw `todo` generator by generator in batches (`draw(gen, batch)`), storing each batch as it lands.

    A generator with nothing left is never built; `result.generators` gains each one's counts.
    """
    rank = result.shard.rank
    with stage_progress(progress) as bars:
        for name in generators:
            stats = result.generators[name] = GeneratorStats()
            stats.planned = int((plan["generator"] == name).sum())
            mine = todo.filter(pl.col("generator") == name)
            stats.existing = stats.planned - mine.height
            if mine.height == 0:
                continue
            gen = factories[name]()
            task = bars.add_task(f"{store.label} {name}", total=mine.height, unit="img")
            with ShardWriter(run_dir, store.shard_dir(name, rank), scfg.shard_images) as writer:
                for batch in batches(mine, batch_sizes[name]):
                    t0 = time.perf_counter()
                    images = draw(gen, batch)
                    dt = time.perf_counter() - t0
                    write_batch(run_dir, scfg, gen, writer, batch, images, dt, rank, store)
                    stats.generated += batch.height
                    stats.seconds += dt
                    bars.advance(task, batch.height)
            del gen
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next generator gets the whole GPU
