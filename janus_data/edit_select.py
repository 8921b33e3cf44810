"""Choosing the edit SFT samples: the text-to-image selection (janus_data.select) applied per edit.

An edit candidate plays an image, its edit plays the prompt (`prompt_id` = edit_id) and its
normalised reward plays S:

    q = reward / (edit.reward_flw + edit.reward_psv)        (reward = w_flw * S_flw + w_psv * S_psv)

Each side (following, preservation) answers with the first word of its reason (an empty reason
takes that side's S >= filter.threshold); `says_yes` is True when both sides answer yes, False
when either answers no, null otherwise. `edit_pool` gives the same columns `select.pool` gives,
so `label_expr` and the three selections apply unchanged:
- Yes: q >= threshold and says_yes; No: 'agree' q < threshold and says_yes is False, 'answer'
  says_yes is False; unlabelled otherwise.
- edit (Task I), edit_judge (Task II), edit_regen (Task III) are select_t2i / select_judge /
  select_regen with the edit section's generator roles, keys renamed; `edit` also gets every
  edit's reference image (edit.reference_samples), unscored, as one more sample.
- The target reason of a labelled candidate: Yes -> the following reason; No -> the reason of the
  first side answering no (following first, then preservation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from janus_data.config import EditConfig, FilterConfig, JanusRunConfig
from janus_data.edit_manifest import read_edits_manifest, source_path
from janus_data.edit_score import EDIT_SCORE_SCHEMA
from janus_data.janus_format import EDIT_TASKS, TASKS
from janus_data.manifest import EDIT_IMAGES_KIND, EDIT_SCORES_KIND, scan_manifest
from janus_data.select import (
    _KEY_BITS,
    answer_expr,
    pool,
    pool_stats,
    seed_mask,
    select_judge,
    select_regen,
    select_t2i,
)
from janus_data.synth import IMAGE_SCHEMA

REFERENCE = "reference"  # the generator name of a reference sample
EDIT_TASK_OF = dict(zip(TASKS, EDIT_TASKS, strict=True))  # t2i -> edit, judge -> edit_judge, regen -> edit_regen
LOCATION = ("image_id", "generator", "format", "shard", "offset", "length", "sha256")
SIDES = ("flw", "psv")


def side_answer(side: str, threshold: float) -> pl.Expr:
    """One question's answer (True yes, False no, null neither) from `reason_<side>`, else S_<side>."""
    return answer_expr(threshold, reason=f"reason_{side}", score=f"score_{side}")


def says_yes_expr(threshold: float) -> pl.Expr:
    """True when both questions answer yes, False when either answers no, null otherwise."""
    flw, psv = (side_answer(s, threshold) for s in SIDES)
    says_no = flw.not_().fill_null(False) | psv.not_().fill_null(False)
    return pl.when(says_no).then(pl.lit(False)).when(flw & psv).then(pl.lit(True)).otherwise(pl.lit(None, pl.Boolean))


def q_expr(ecfg: EditConfig) -> pl.Expr:
    """An edit's score for the filter: its reward over the weights' sum (in [0, 1])."""
    return pl.col("reward") / (ecfg.reward_flw + ecfg.reward_psv)


def target_reason_expr(threshold: float) -> pl.Expr:
    """The judge reason a labelled candidate's target starts from: Yes -> following; No -> the first side saying no."""
    first_no = pl.when(side_answer("flw", threshold).not_().fill_null(False))
    return (
        pl.when(pl.col("label") == "Yes")
        .then(pl.col("reason_flw"))
        .when(pl.col("label") == "No")
        .then(first_no.then(pl.col("reason_flw")).otherwise(pl.col("reason_psv")))
        .otherwise(pl.lit(None, pl.Utf8))
    )


def edit_filter_config(fcfg: FilterConfig, ecfg: EditConfig) -> FilterConfig:
    """The filter config with the edit section's generator roles (caps, threshold, seed, choice as set)."""
    return replace(
        fcfg,
        target_generators=ecfg.target_generators,
        judge_generators=ecfg.judge_generators,
        context_generators=ecfg.context_generators,
    )


def edit_pool(
    scores: pl.LazyFrame, images: pl.LazyFrame, edits: pl.LazyFrame, fcfg: FilterConfig, ecfg: EditConfig
) -> pl.LazyFrame:
    """Usable scored candidate edits with select.pool's columns (prompt_id = edit_id, score = q)."""
    scored = scores.with_columns(q_expr(ecfg).alias("score"))
    prompts = edits.select(pl.col("edit_id").alias("prompt_id"))
    return pool(scored, images, prompts, fcfg, says_yes=says_yes_expr(fcfg.threshold))


def _keyed(plan: pl.LazyFrame, task: str) -> pl.LazyFrame:
    return plan.with_columns(pl.concat_str(pl.lit(f"{task}-"), pl.col("image_id")).alias("key"))


def select_edit(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task I for edits: (edit, Yes candidate of a target editor), at most t2i_per_prompt per edit."""
    return _keyed(select_t2i(pooled, cfg), "edit")


def select_edit_judge(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task II for edits: labelled candidates of the judge editors, yes and no balanced exactly."""
    return _keyed(select_judge(pooled, cfg), "edit_judge")


def select_edit_regen(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task III for edits: (No candidate of a context editor -> Yes candidate of higher q of the same edit)."""
    return _keyed(select_regen(pooled, cfg), "edit_regen")


def reference_order(edit_id: str, seed: int) -> int:
    """A reference sample's seeded writing-order key (select's key width, from sha256 of its id)."""
    digest = hashlib.sha256(f"{edit_id}-{REFERENCE}".encode()).hexdigest()
    return int(digest[: _KEY_BITS // 4], 16) ^ seed_mask(seed)


def reference_rows(edits: pl.DataFrame, seed: int, schema: pl.Schema) -> pl.DataFrame:
    """One unscored `edit` sample per edit with a reference image, in select_edit's columns."""
    refs = edits.filter(pl.col("reference_path").is_not_null())
    ids = refs["edit_id"].to_list()
    return pl.DataFrame(
        {
            "key": [f"edit-{e}-{REFERENCE}" for e in ids],
            "prompt_id": ids,
            "image_id": [f"{e}-{REFERENCE}" for e in ids],
            "score": [None] * len(ids),
            "order": [reference_order(e, seed) for e in ids],
            "image_row": [None] * len(ids),
        },
        schema_overrides={"score": pl.Float64, "order": pl.Int64},
    ).cast(dict(schema))


def select_edit_all(
    pooled: pl.LazyFrame, fcfg: FilterConfig, ecfg: EditConfig, edits: pl.DataFrame | None = None
) -> dict[str, pl.LazyFrame]:
    """The three edit tasks' slim plans in writing order; `edits` (the edits manifest) adds reference samples."""
    cfg = edit_filter_config(fcfg, ecfg)
    plans = {
        "edit": select_edit(pooled, cfg),
        "edit_judge": select_edit_judge(pooled, cfg),
        "edit_regen": select_edit_regen(pooled, cfg),
    }
    if ecfg.reference_samples and edits is not None:
        target = plans["edit"]
        refs = reference_rows(edits, fcfg.seed, target.collect_schema())
        plans["edit"] = pl.concat([target, refs.lazy()])
    return {task: plan.sort("order", "key") for task, plan in plans.items()}


@dataclass
class EditSelection:
    """The chosen edit samples (slim, in writing order) and pool statistics; `details(task)` adds what shards need."""

    samples: dict[str, pl.DataFrame]
    stats: dict
    edits: pl.DataFrame
    images: pl.LazyFrame
    scores: pl.LazyFrame
    threshold: float

    def details(self, task: str) -> pl.DataFrame:
        """The task's samples with the instruction, each image's location and side scores, and the target reason.

        Columns follow the text-to-image details (`prompt` = instruction), plus `path_source` /
        `format_source` (the prepared source) and, for a reference sample, `path` (its image file).
        """
        df = self.samples[task]
        suffixes = ("", "_good") if task == "edit_regen" else ("",)
        rows = pl.concat([df[f"image_row{x}"] for x in suffixes]).drop_nulls().unique().to_frame()
        ids = pl.concat([df[f"image_id{x}"] for x in suffixes]).unique().to_frame()
        located, sides = pl.collect_all(
            [
                self.images.with_row_index("image_row")
                .select("image_row", *LOCATION)
                .join(rows.lazy(), on="image_row", how="semi"),
                self.scores.filter(pl.col("status") == "ok")
                .select("image_id", *[f"{c}_{s}" for c in ("score", "reason") for s in SIDES])
                .join(ids.lazy(), on="image_id", how="semi"),
            ]
        )
        edits = self.edits.select(
            pl.col("edit_id").alias("prompt_id"),
            pl.col("instruction").alias("prompt"),
            pl.col("reference_path").alias("path"),
        )
        out = df.join(edits, on="prompt_id", how="left", maintain_order="left")
        for x in suffixes:
            out = out.join(
                located.drop("image_id").rename({c: f"{c}{x}" for c in ("image_row", *LOCATION[1:])}),
                on=f"image_row{x}",
                how="left",
                maintain_order="left",
            ).join(
                sides.rename({c: f"{c}{x}" for c in sides.columns}),
                on=f"image_id{x}",
                how="left",
                maintain_order="left",
            )
        reference = pl.col("image_row").is_null()  # only `edit` has reference samples: no image row
        out = out.with_columns(
            pl.when(reference).then(pl.lit(REFERENCE)).otherwise(pl.col("generator")).alias("generator"),
            pl.when(reference).then(pl.lit("png")).otherwise(pl.col("format")).alias("format"),
            pl.when(reference).then(pl.col("path")).otherwise(pl.lit(None, pl.Utf8)).alias("path"),
            pl.col("prompt_id").map_elements(source_path, return_dtype=pl.Utf8).alias("path_source"),
            pl.lit("png").alias("format_source"),
        )
        if task == "edit":
            return out.with_columns(pl.lit(None, pl.Utf8).alias("reason"))
        if task == "edit_regen":
            out = out.with_columns(pl.lit("No").alias("label"))
        return out.with_columns(target_reason_expr(self.threshold).alias("reason"))


def scan_edit_inputs(run_dir: Path) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.DataFrame]:
    """The edit scores, edit images (lazy) and the edits manifest of a run."""
    scores = scan_manifest(run_dir, EDIT_SCORES_KIND, EDIT_SCORE_SCHEMA)
    images = scan_manifest(run_dir, EDIT_IMAGES_KIND, IMAGE_SCHEMA)
    return scores, images, read_edits_manifest(run_dir)


def select_edit_samples(run_dir: Path, cfg: JanusRunConfig) -> EditSelection:
    """The three edit tasks' samples and the pool statistics of the summary."""
    fcfg, ecfg = cfg.filter, cfg.edit
    scores, images, edits = scan_edit_inputs(Path(run_dir))
    pooled = edit_pool(scores, images, edits.lazy(), fcfg, ecfg).cache()
    plans = select_edit_all(pooled, fcfg, ecfg, edits)
    status = scores.group_by("status").agg(pl.len().alias("n"))
    labels = pooled.group_by("label").agg(pl.len().alias("n"))
    frames = pl.collect_all([*plans.values(), status, labels])
    samples = dict(zip(plans, frames[:3], strict=True))
    status_counts, label_counts = dict(frames[3].iter_rows()), dict(frames[4].iter_rows())
    scored_targets = samples["edit"].filter(pl.col("image_row").is_not_null())
    stats = {
        **pool_stats(status_counts, label_counts),
        "prompts": int(edits.height),
        "prompts_without_sample": int(edits.height - scored_targets["prompt_id"].n_unique()),
        "prompts_without_pair": int(edits.height - samples["edit_regen"]["prompt_id"].n_unique()),
        "references": int(samples["edit"].height - scored_targets.height),
    }
    return EditSelection(samples, stats, edits, images, scores, fcfg.threshold)


__all__ = [
    "EDIT_TASK_OF",
    "REFERENCE",
    "EditSelection",
    "edit_filter_config",
    "edit_pool",
    "q_expr",
    "says_yes_expr",
    "select_edit",
    "select_edit_all",
    "select_edit_judge",
    "select_edit_regen",
    "select_edit_samples",
    "side_answer",
    "target_reason_expr",
]
