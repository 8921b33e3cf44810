"""`janus eval geneval`: GenEval's protocol on the images of one or more checkpoints.

Each checkpoint draws the metadata file's prompts (`cfg.eval.images_per_prompt` each, GenEval: 4)
through `janus_eval.generate.run_generate` into OUT = `<out_root>/<label>/`; then every image of
OUT's generations manifest is judged by GenEval's rules (`geneval_rules`) on the objects the
detector finds and the colours CLIP gives them (`detect`). Resumable: each batch of
`eval.detector_batch_size` images lands as one part of OUT/manifests/geneval (gen_id, label,
prompt_id, tag, sample, round, final, correct, reason, answer); a rerun scores only images
without a row, and loads no model when none is left.

OUT/geneval_summary.parquet: per label, image ("first": each chain's first image; "final": its
last, the checkpoint's answer; the same without --introspect) and tag (GenEval's 6 + "overall",
the mean of the tag means): n_images, accuracy. When the model evaluated its own images
(--introspect), OUT/geneval_introspect.parquet adds the first and final overall scores, the Aha
gain (final - first), the regeneration rate (share of chains redrawn at least once) and the
agreement of the model's own Yes/No with GenEval's verdict on the same image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from janus_data.config import JanusRunConfig
from janus_data.errors import ConfigError, PromptError, RunDirError, one_line
from janus_data.eval_results import GENEVAL_INTROSPECT, GENEVAL_KIND, GENEVAL_SUMMARY
from janus_data.manifest import clean_temp_files, ensure_writable, manifest_dir, part_files, write_parquet_atomic
from janus_data.models import resolve_device
from janus_data.progress import stage_progress
from janus_data.score import batches, part_path
from janus_eval.gen_manifest import require_generations
from janus_eval.geneval_rules import (
    GenEvalSpec,
    check_geneval_file,
    color_needs,
    evaluate,
    parse_spec,
    tag_accuracies,
    threshold_for,
)

IMAGES = ("first", "final")
OVERALL = "overall"
GENEVAL_SCHEMA: dict[str, pl.DataType] = {
    "gen_id": pl.Utf8,
    "label": pl.Utf8,
    "prompt_id": pl.Utf8,
    "tag": pl.Utf8,
    "sample": pl.Int32,
    "round": pl.Int32,
    "final": pl.Boolean,
    "correct": pl.Boolean,
    "reason": pl.Utf8,  # why GenEval says no, one line per failed clause; "" when correct
    "answer": pl.Utf8,  # the model's own Yes/No on this image (--introspect), else null
}
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "label": pl.Utf8,
    "image": pl.Utf8,
    "tag": pl.Utf8,
    "n_images": pl.Int64,
    "accuracy": pl.Float64,
}
INTROSPECT_SCHEMA: dict[str, pl.DataType] = {
    "label": pl.Utf8,
    "first_overall": pl.Float64,
    "final_overall": pl.Float64,
    "aha_gain": pl.Float64,
    "regeneration_rate": pl.Float64,
    "agreement": pl.Float64,
    "n_evaluated": pl.Int64,
}
GEN_COLUMNS = ("gen_id", "label", "prompt_id", "prompt", "metadata", "sample", "round", "final", "image_path", "answer")


@dataclass
class GenEvalResult:
    """What scoring one OUT directory did, and its tables afterwards."""

    out: Path
    label: str
    planned: int = 0  # images in the generations manifest
    existing: int = 0  # already had a verdict
    written: int = 0  # verdicts written now
    seconds: float = 0.0
    summary: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SUMMARY_SCHEMA))
    introspect: pl.DataFrame | None = None  # one row, when the model evaluated its own images


@dataclass
class GenEvalRun:
    """`run_geneval`'s results: one per checkpoint, in the order given."""

    out_root: Path
    results: list[GenEvalResult]

    @property
    def summary(self) -> pl.DataFrame:
        """Every label's summary rows, in checkpoint order."""
        frames = [r.summary for r in self.results]
        return pl.concat(frames) if frames else pl.DataFrame(schema=SUMMARY_SCHEMA)

    def table(self, label: str) -> pl.DataFrame:
        """One label's tag x image accuracies: rows tag (GenEval's order, overall last), columns first and final."""
        rows = self.summary.filter(pl.col("label") == label)
        wide = rows.pivot(on="image", index="tag", values="accuracy")
        counts = rows.filter(pl.col("image") == "final").select("tag", "n_images")
        return wide.join(counts, on="tag", how="left", maintain_order="left")


class Scorers:
    """The detector and CLIP, each loaded on first use: a rerun with nothing to score loads neither."""

    def __init__(self, cfg: JanusRunConfig) -> None:
        self.cfg = cfg
        self._detector = self._clip = None

    @property
    def detector(self):
        if self._detector is None:
            from janus_eval.detect import Detector

            ev = self.cfg.eval
            self._detector = Detector(ev.detector, resolve_device(self.cfg.runtime), ev.detector_batch_size)
        return self._detector

    @property
    def clip(self):
        if self._clip is None:
            from janus_eval.detect import ColorClassifier

            ev = self.cfg.eval
            self._clip = ColorClassifier(ev.clip, resolve_device(self.cfg.runtime), ev.detector_batch_size)
        return self._clip


# ---------------------------------------------------------------- one OUT directory


def read_generations(out: Path) -> pl.DataFrame:
    """OUT's generations manifest (the columns this evaluation needs), one row per image, or RunDirError."""
    return require_generations(out, GEN_COLUMNS)


def prompt_specs(gens: pl.DataFrame) -> dict[str, GenEvalSpec]:
    """Each prompt's GenEval metadata (the metadata line it was drawn from), or a PromptError naming the prompt."""
    specs = {}
    for row in gens.select("prompt_id", "prompt", "metadata").unique("prompt_id").iter_rows(named=True):
        if row["metadata"] is None:
            raise PromptError(
                f"prompt {row['prompt']!r} carries no GenEval metadata",
                hint="draw the images from a GenEval metadata file (evaluation_metadata.jsonl)",
            )
        specs[row["prompt_id"]] = parse_spec(row["metadata"], where=f"metadata of prompt {row['prompt']!r}")
    return specs


def verdict_rows(out: Path, batch: pl.DataFrame, specs: dict[str, GenEvalSpec], scorers: Scorers) -> pl.DataFrame:
    """GenEval's verdict on each image of `batch`: detect, classify the colours asked for, apply the rules."""
    from janus_eval.detect import masked_crop, objects_by_class

    ev = scorers.cfg.eval
    rows = list(batch.iter_rows(named=True))
    images = [_open(out, row["image_path"]) for row in rows]
    instances = scorers.detector.detect(images)
    objects, crops, owners = [], [], []
    for i, (row, inst) in enumerate(zip(rows, instances, strict=True)):
        spec = specs[row["prompt_id"]]
        threshold = threshold_for(spec, ev.threshold, ev.counting_threshold)
        objects.append(objects_by_class(inst, scorers.detector.label_map, threshold, ev.max_objects))
        for cls, n in color_needs(spec, objects[-1]).items():
            for det in objects[-1][cls][:n]:
                crops.append(masked_crop(images[i], det.box, det.mask))
                owners.append((i, cls))
    colors: list[dict[str, list[str]]] = [{} for _ in rows]
    if crops:
        for (i, cls), color in zip(owners, scorers.clip.classify(crops, [c for _, c in owners]), strict=True):
            colors[i].setdefault(cls, []).append(color)
    out_rows: dict[str, list] = {k: [] for k in GENEVAL_SCHEMA}
    for row, objs, cols in zip(rows, objects, colors, strict=True):
        spec = specs[row["prompt_id"]]
        verdict = evaluate(spec, objs, cols, ev.position_threshold)
        for key in ("gen_id", "label", "prompt_id", "sample", "round", "final", "answer"):
            out_rows[key].append(row[key])
        out_rows["tag"].append(spec.tag)
        out_rows["correct"].append(verdict.correct)
        out_rows["reason"].append(verdict.reason)
    return pl.DataFrame(out_rows, schema=GENEVAL_SCHEMA)


def _open(out: Path, image_path: str | None):
    """An image of OUT as GenEval opens it, or a RunDirError saying how to redraw it."""
    from janus_eval.detect import load_image

    rel = Path(image_path or "")
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise RunDirError(f"image_path {image_path!r} is not a path inside {out}", hint="redraw: janus generate --out")
    try:
        return load_image(out / rel)
    except OSError as err:
        raise RunDirError(
            f"cannot read {out / rel}: {one_line(err)}", hint="rerun the generation: it redraws missing images"
        ) from None


def geneval_summary(rows: pl.DataFrame) -> pl.DataFrame:
    """Per label, image (first | final) and tag (+ overall): n_images and accuracy, as GenEval averages them."""
    out: dict[str, list] = {k: [] for k in SUMMARY_SCHEMA}
    for label in dict.fromkeys(rows["label"].to_list()):
        mine = rows.filter(pl.col("label") == label)
        for image, view in zip(IMAGES, (mine.filter(pl.col("round") == 0), mine.filter(pl.col("final"))), strict=True):
            accs = tag_accuracies(list(zip(view["tag"].to_list(), view["correct"].to_list(), strict=True)))
            for tag, (n, acc) in accs.items():
                for key, value in zip(SUMMARY_SCHEMA, (label, image, tag, n, acc), strict=True):
                    out[key].append(value)
    return pl.DataFrame(out, schema=SUMMARY_SCHEMA)


def introspect_summary(rows: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame | None:
    """The Aha table (INTROSPECT_SCHEMA), one row per label; None when no image carries the model's answer."""
    if rows["answer"].is_null().all():
        return None
    out = []
    for label in dict.fromkeys(rows["label"].to_list()):
        mine = rows.filter(pl.col("label") == label)
        overall = {r["image"]: r["accuracy"] for r in summary.filter(label=label, tag=OVERALL).iter_rows(named=True)}
        chains = mine.group_by("prompt_id", "sample").agg(pl.col("round").max())
        judged = mine.filter(pl.col("answer").is_not_null())
        agree = ((judged["answer"] == "Yes") == judged["correct"]).mean() if judged.height else None
        first, final = overall.get("first"), overall.get("final")
        gain = None if first is None or final is None else final - first
        regen = float((chains["round"] > 0).mean()) if chains.height else None
        out.append((label, first, final, gain, regen, agree, judged.height))
    return pl.DataFrame(out, schema=INTROSPECT_SCHEMA, orient="row")


def score_generations(
    out: Path, cfg: JanusRunConfig, *, scorers: Scorers | None = None, progress: bool | None = None
) -> GenEvalResult:
    """GenEval's verdict on every image of OUT's generations manifest without one; rewrite OUT's summaries."""
    start = time.perf_counter()
    out = Path(out)
    gens = read_generations(out)
    ensure_writable(out)
    root = manifest_dir(out, GENEVAL_KIND)
    clean_temp_files(root)
    specs = prompt_specs(gens)
    labels = sorted(gens["label"].unique().to_list())
    result = GenEvalResult(out, ", ".join(labels) or out.name)
    done = _read_verdicts(out).select("gen_id")
    todo = gens.join(done, on="gen_id", how="anti").sort("prompt_id", "sample", "round")
    result.planned, result.existing = gens.height, gens.height - todo.height
    if todo.height:
        scorers = scorers or Scorers(cfg)
        with stage_progress(progress) as bars:
            task = bars.add_task(f"geneval {result.label}", total=todo.height, unit="img")
            for batch in batches(todo, cfg.eval.detector_batch_size):
                df = verdict_rows(out, batch, specs, scorers)
                write_parquet_atomic(df, part_path(root, df["gen_id"]))
                result.written += df.height
                bars.advance(task, batch.height)
    rows = _read_verdicts(out).join(gens.select("gen_id"), on="gen_id", how="semi")
    result.summary = geneval_summary(rows)
    write_parquet_atomic(result.summary, out / GENEVAL_SUMMARY)
    result.introspect = introspect_summary(rows, result.summary)
    if result.introspect is not None:
        write_parquet_atomic(result.introspect, out / GENEVAL_INTROSPECT)
    result.seconds = time.perf_counter() - start
    return result


def _read_verdicts(out: Path) -> pl.DataFrame:
    parts = part_files(out, GENEVAL_KIND)
    if not parts:
        return pl.DataFrame(schema=GENEVAL_SCHEMA)
    return pl.read_parquet([str(p) for p in parts]).cast(GENEVAL_SCHEMA).unique("gen_id", keep="first")


# ---------------------------------------------------------------- checkpoints: draw, then score


def run_geneval(
    checkpoints: Sequence[str],
    metadata: Path,
    out_root: Path,
    cfg: JanusRunConfig,
    *,
    run_dir: Path | None = None,
    introspect: bool | None = None,
    progress: bool | None = None,
) -> GenEvalRun:
    """Draw GenEval's prompts with each checkpoint into `<out_root>/<label>/`, then score every image.

    The metadata file and every checkpoint are checked before any image is drawn; all drawing
    happens before the detector loads (one model in memory at a time), and the detector and CLIP
    load once, only when some image has no verdict yet.
    """
    from janus_eval.checkpoints import resolve_checkpoint
    from janus_eval.generate import run_generate

    if not checkpoints:
        raise ConfigError("no checkpoint to evaluate", hint="pass --checkpoint base|sft|rl|PATH (repeatable)")
    check_geneval_file(metadata)
    labels = [resolve_checkpoint(c, run_dir, cfg).label for c in checkpoints]
    seen: dict[str, str] = {}
    for ckpt, label in zip(checkpoints, labels, strict=True):
        if label in seen:
            raise ConfigError(
                f"checkpoints {seen[label]!r} and {ckpt!r} share the label {label!r}", hint="give each once"
            )
        seen[label] = ckpt
    out_root = ensure_writable(Path(out_root))
    for ckpt, label in zip(checkpoints, labels, strict=True):
        run_generate(
            ckpt, Path(metadata), out_root / label, cfg, run_dir=run_dir, introspect=introspect, progress=progress
        )
    scorers = Scorers(cfg)
    results = [score_generations(out_root / label, cfg, scorers=scorers, progress=progress) for label in labels]
    return GenEvalRun(out_root, results)
