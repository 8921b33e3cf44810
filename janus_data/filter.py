"""`janus data filter`: Task I/II/III samples from the scored pool, written as WebDataset shards.

The selection (janus_data.select) is a pure function of the manifests and the filter config.
Its output is written, one directory of shards per task, into a build directory named after
a fingerprint of the inputs (the manifest part files, which never change once written) and
the config. Each task's progress is recorded after every complete shard (janus_data.filter_shards),
so a killed run resumes at the next shard and writes exactly the bytes a clean run would. When every task
is done the build directory replaces `<run>/sft` in one rename and the samples manifest is
written; a rerun with the same fingerprint does nothing, any change (a new threshold, new
scores) rebuilds.

The same stage builds the edit SFT samples (`task="edit"`, `janus data filter --task edit`): the
selection is janus_data.edit_select's, the writing is shared (a `FilterKind` says what differs).

Layout:
    <run>/sft/{t2i,judge,regen}/sft-000000.tar ...   WebDataset shards, one member set per task
    <run>/sft/state.json                             fingerprint, config, counts, shards
    <run>/manifests/samples/samples.parquet          one row per sample: key, task, shard, ...
    <run>/sft_edit/{edit,edit_judge,edit_regen}/ ... the edit samples (--task edit), sft_edit/state.json
    <run>/manifests/edit_samples/edit_samples.parquet
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from janus_data.checks import require_edit_scores, require_manifests
from janus_data.config import FilterConfig, JanusRunConfig, to_dict
from janus_data.errors import JanusError
from janus_data.filter_shards import (
    EDIT,
    EDIT_IMAGE_ROLES,
    EDIT_SAMPLE_SCHEMA,
    EDIT_SAMPLES_KIND,
    IMAGE_ROLES,
    KINDS,
    SAMPLE_SCHEMA,
    T2I,
    FilterKind,
    npy_bytes,
    read_progress,
    sample_members,
    samples_manifest,
    samples_path,
    shard_column,
    write_task,
)
from janus_data.manifest import (
    IMAGES_KIND,
    PROMPTS_KIND,
    SCORES_KIND,
    atomic_write,
    part_files,
    scan_manifest,
    write_parquet_atomic,
)
from janus_data.progress import stage_progress
from janus_data.rundir import STATE_FILE, save_run_config
from janus_data.score import SCORE_SCHEMA
from janus_data.select import pool, pool_stats, select_all
from janus_data.synth import IMAGE_SCHEMA

FORMAT_VERSION = T2I.version  # 2: labels follow the judge's own answer (judge_labels), generator roles
DEFAULT_EDIT_MIX = (0.2, 0.3, 0.5)  # edit : edit_judge : edit_regen when the config has no sft.edit_mix


class FilterError(JanusError):
    """The scored pool cannot give any sample, or the run lacks a stage's output."""


@dataclass
class TaskStats:
    """One task's samples and shards."""

    samples: int = 0
    shards: int = 0
    bytes: int = 0
    written_now: int = 0


@dataclass
class FilterResult:
    """What one filter call did, for the summary."""

    run_dir: Path
    threshold: float
    fingerprint: str = ""
    rebuilt: bool = False
    pool: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    prompts: int = 0
    prompts_without_sample: int = 0
    prompts_without_pair: int = 0
    judge_labels: str = "agree"
    labels: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, TaskStats] = field(default_factory=dict)
    mix: tuple[float, ...] = (0.2, 0.3, 0.5)
    vq_model: str = ""
    seconds: float = 0.0
    task: str = "t2i"
    """Which filter: 't2i' (Tasks I-III from prompts) or 'edit' (their edit versions)."""
    references: int = 0
    """Edits: reference images added as `edit` samples (unscored)."""

    @property
    def kind(self) -> FilterKind:
        return KINDS[self.task]

    def mix_budget(self) -> tuple[int, str | None]:
        """Samples the mix can draw before its first task runs dry, and that task."""
        weights = dict(zip(self.kind.tasks, self.mix, strict=True))
        total = sum(weights.values())
        limits = {t: self.tasks[t].samples / (w / total) for t, w in weights.items() if w > 0 and t in self.tasks}
        if not limits:
            return 0, None
        dry = min(limits, key=lambda t: limits[t])
        return int(limits[dry]), dry


# ---------------------------------------------------------------- inputs and selection


EDIT_KEYS = (  # the edit section's settings the edit samples depend on
    "target_generators", "judge_generators", "context_generators", "reference_samples", "reward_flw", "reward_psv",
)  # fmt: skip


def config_inputs(cfg: JanusRunConfig, kind: FilterKind = T2I) -> dict:
    """The settings a kind's samples are a function of (fingerprinted, and kept in state.json)."""
    inputs = {"filter": to_dict(cfg.filter), "vq": cfg.synth.janus.model}
    if kind is EDIT:
        inputs["edit"] = {k: to_dict(cfg.edit)[k] for k in EDIT_KEYS}
    return inputs


def fingerprint(run_dir: Path, cfg: JanusRunConfig, kind: FilterKind = T2I) -> str:
    """Hash of the input part files (immutable once written: name and size identify them) and the config."""
    h = hashlib.sha256(f"{kind.tag}-v{kind.version}".encode())
    h.update(json.dumps(config_inputs(cfg, kind), sort_keys=True).encode())
    for manifest in kind.inputs:
        for part in part_files(run_dir, manifest):
            h.update(f"{part.relative_to(run_dir)}:{part.stat().st_size}\n".encode())
    return h.hexdigest()


@dataclass
class Selection:
    """The chosen samples (slim: ids, scores, labels, in writing order) and pool statistics.

    `details(task)` adds what that task's shards need (prompt text, reasons, where each image's
    bytes are), one task at a time so that only one task's lookups are in memory at once.
    """

    samples: dict[str, pl.DataFrame]
    stats: dict
    prompts: pl.DataFrame
    images: pl.LazyFrame
    scores: pl.LazyFrame

    def details(self, task: str) -> pl.DataFrame:
        df = self.samples[task]
        suffixes = ("", "_good") if task == "regen" else ("",)
        rows = pl.concat([df[f"image_row{x}"] for x in suffixes]).unique().to_frame()
        plans = [
            self.images.with_row_index("image_row")
            .select("image_row", *LOCATION)
            .join(rows.lazy(), on="image_row", how="semi")
            .with_columns(pl.col("shard").cast(pl.Categorical))
        ]
        if task != "t2i":  # the judge's reason of the image evaluated (Task II, and Task III's bad image)
            plans.append(
                self.scores.with_row_index("score_row")
                .select("score_row", "reason")
                .join(df.select("score_row").lazy(), on="score_row", how="semi")
            )
        frames = pl.collect_all(plans, engine="streaming")  # the scans stream through the semi-joins
        # `df` is in writing order already; every join keeps it.
        out = df.join(self.prompts, on="prompt_id", how="left", maintain_order="left")
        for x in suffixes:
            located = frames[0].drop("image_id").rename({c: f"{c}{x}" for c in ("image_row", *LOCATION[1:])})
            out = out.join(located, on=f"image_row{x}", how="left", maintain_order="left")
        if task == "t2i":
            return out.with_columns(pl.lit(None, pl.Utf8).alias("reason"))
        return out.join(frames[1], on="score_row", how="left", maintain_order="left")


LOCATION = ("image_id", "generator", "format", "shard", "offset", "length", "sha256")


def select_samples(run_dir: Path, fcfg: FilterConfig) -> Selection:
    """The three tasks' samples and the pool statistics of the summary."""
    scores = scan_manifest(run_dir, SCORES_KIND, SCORE_SCHEMA)
    images = scan_manifest(run_dir, IMAGES_KIND, IMAGE_SCHEMA)
    prompts = scan_manifest(run_dir, PROMPTS_KIND)
    pooled = pool(scores, images, prompts, fcfg).cache()
    plans = select_all(pooled, fcfg)
    status = scores.group_by("status").agg(pl.len().alias("n"))
    labels = pooled.group_by("label").agg(pl.len().alias("n"))
    frames = pl.collect_all([*plans.values(), status, labels, prompts.select("prompt_id", "prompt")])
    samples = dict(zip(plans, frames[:3], strict=True))
    status_counts, label_counts = dict(frames[3].iter_rows()), dict(frames[4].iter_rows())
    prompt_text = frames[5]
    n_prompts = prompt_text.height
    stats = {
        **pool_stats(status_counts, label_counts),
        "prompts": int(n_prompts),
        "prompts_without_sample": int(n_prompts - samples["t2i"]["prompt_id"].n_unique()),
        "prompts_without_pair": int(n_prompts - samples["regen"]["prompt_id"].n_unique()),
    }
    return Selection(samples, stats, prompt_text, images, scores)


# ---------------------------------------------------------------- the stage


def vq_factory(cfg: JanusRunConfig) -> Callable[[], object]:
    """Lazily load the run's Janus VQ model (only when a task needs codes)."""
    loaded: list = []

    def make():
        if not loaded:
            from janus_data.models import resolve_device, resolve_dtype
            from janus_data.vq import VQEncoder

            device = resolve_device(cfg.runtime)
            loaded.append(VQEncoder(cfg.synth.janus.model, device, resolve_dtype(cfg.runtime, device)))
        return loaded[0]

    return make


def _selection(kind: FilterKind, run_dir: Path, cfg: JanusRunConfig):
    """The kind's selection (`samples`, `stats`, `details(task)`)."""
    if kind is EDIT:
        from janus_data.edit_select import select_edit_samples

        return select_edit_samples(run_dir, cfg)
    return select_samples(run_dir, cfg.filter)


def filter_kind(task: str) -> FilterKind:
    if task not in KINDS:
        raise FilterError(f"filter task must be one of {', '.join(KINDS)}, got {task!r}")
    return KINDS[task]


def run_filter(
    run_dir: Path,
    cfg: JanusRunConfig,
    progress: bool | None = None,
    encoder: Callable[[], object] | None = None,
    task: str = "t2i",
) -> FilterResult:
    """Select Task I/II/III samples (their edit versions for task 'edit') and write their shards.

    Resumable: killed at any moment, a rerun finishes with the bytes a clean run writes; a rerun
    with nothing changed does nothing.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    kind = filter_kind(task)
    if kind is EDIT and cfg.edit.threshold is not None:  # edits' own threshold: everything below reads filter's
        cfg = dataclasses.replace(cfg, filter=dataclasses.replace(cfg.filter, threshold=cfg.edit.threshold))
    fcfg = cfg.filter
    if kind is EDIT:
        require_edit_scores(run_dir)
        mix = tuple(getattr(cfg.sft, "edit_mix", DEFAULT_EDIT_MIX))
    else:
        require_manifests(run_dir)
        mix = fcfg.mix
    result = FilterResult(
        run_dir, fcfg.threshold, mix=mix, vq_model=cfg.synth.janus.model, judge_labels=fcfg.judge_labels, task=task
    )
    result.fingerprint = fp = fingerprint(run_dir, cfg, kind)
    final = run_dir / kind.out_dir
    state_path = final / STATE_FILE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") == fp:
            _from_state(result, state)
            if not kind.samples_path(run_dir).is_file():  # killed between the swap and the manifest
                shards = {t: state["tasks"][t]["shard_files"] for t in kind.tasks}
                samples = _selection(kind, run_dir, cfg).samples
                write_parquet_atomic(samples_manifest(samples, shards), kind.samples_path(run_dir))
            result.seconds = time.perf_counter() - start
            return result

    selection = _selection(kind, run_dir, cfg)
    samples, stats = selection.samples, selection.stats
    for key, value in stats.items():
        setattr(result, key, value)
    if sum(df.height for df in samples.values()) == 0:
        raise FilterError(
            f"no sample at threshold {fcfg.threshold}: of {stats['pool']:,} usable scored {kind.noun}, "
            f"{stats['labels']['Yes']:,} are labelled Yes and {stats['labels']['No']:,} No "
            f"(filter.judge_labels: {fcfg.judge_labels})",
            hint=f"lower --threshold, or generate and score more {kind.noun}",
        )
    save_run_config(run_dir, cfg)
    build = run_dir / f"{kind.out_dir}.build-{fp[:16]}"
    for stale in run_dir.glob(f"{kind.out_dir}.build-*"):
        if stale != build:
            shutil.rmtree(stale, ignore_errors=True)
    for old in run_dir.glob(f"{kind.out_dir}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
    encoder = encoder or vq_factory(cfg)
    shards: dict[str, list[dict]] = {}
    with stage_progress(progress) as bars:
        for task in kind.tasks:
            done = read_progress(build / task).get("complete", False)
            df = samples[task] if done else selection.details(task)
            bar = bars.add_task(f"filter {task}", total=df.height, unit="sample")
            shards[task], written = write_task(
                run_dir, build / task, task, df, fcfg, encoder, lambda n, b=bar: bars.advance(b, n)
            )
            del df  # one task's lookups in memory at a time
            result.tasks[task] = TaskStats(
                samples=samples[task].height,
                shards=len(shards[task]),
                bytes=sum(s["bytes"] for s in shards[task]),
                written_now=written,
            )
    state = {
        "fingerprint": fp,
        "format": kind.version,
        "filter": to_dict(fcfg),
        "vq_model": cfg.synth.janus.model,
        "stats": stats,
        "tasks": {t: {**asdict(result.tasks[t]), "shard_files": shards[t]} for t in kind.tasks},
    }
    if kind is EDIT:
        state["edit"] = config_inputs(cfg, kind)["edit"]
    text = json.dumps(state, sort_keys=True, indent=1).encode()
    atomic_write(build / STATE_FILE, lambda fh: fh.write(text))
    if final.exists():
        final.rename(run_dir / f"{kind.out_dir}.old-{time.time_ns()}")
    build.rename(final)
    for old in run_dir.glob(f"{kind.out_dir}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
    write_parquet_atomic(samples_manifest(samples, shards), kind.samples_path(run_dir))
    result.rebuilt = True
    result.seconds = time.perf_counter() - start
    return result


def run_edit_filter(
    run_dir: Path, cfg: JanusRunConfig, progress: bool | None = None, encoder: Callable[[], object] | None = None
) -> FilterResult:
    """`janus data filter --task edit`: run_filter on the edit manifests (edit, edit_judge, edit_regen)."""
    return run_filter(run_dir, cfg, progress, encoder, task="edit")


def _from_state(result: FilterResult, state: dict) -> None:
    for key, value in state["stats"].items():
        setattr(result, key, value)
    for task in result.kind.tasks:
        t = state["tasks"][task]
        result.tasks[task] = TaskStats(samples=t["samples"], shards=t["shards"], bytes=t["bytes"])


__all__ = [  # the shard helpers live in janus_data.filter_shards; importable from here as before
    "EDIT",
    "EDIT_IMAGE_ROLES",
    "EDIT_SAMPLES_KIND",
    "EDIT_SAMPLE_SCHEMA",
    "FORMAT_VERSION",
    "IMAGE_ROLES",
    "KINDS",
    "SAMPLE_SCHEMA",
    "T2I",
    "FilterError",
    "FilterKind",
    "FilterResult",
    "Selection",
    "TaskStats",
    "fingerprint",
    "npy_bytes",
    "run_edit_filter",
    "run_filter",
    "sample_members",
    "samples_manifest",
    "samples_path",
    "select_samples",
    "shard_column",
    "vq_factory",
    "write_task",
]
