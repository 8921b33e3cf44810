"""Choosing the SFT samples: Task I/II/III from the scored pool, as lazy Polars plans.

Pure functions of the manifests and a FilterConfig, so the same inputs always give the same
samples, in the same order. Every choice among candidates ranks images by a seeded key
drawn from the image bytes' sha256 (uniform, and stable across Polars versions, unlike
Polars' own hash); `choice: best` ranks by S first.

- Task I  (t2i):   (prompt, good image), at most t2i_per_prompt per prompt.
- Task II (judge): (prompt, image, "Yes"/"No" + reason): at most judge_per_prompt good and
  judge_per_prompt bad images per prompt, then the larger side is cut to the smaller one
  (by the same key), so yes and no are balanced exactly.
- Task III (regen): (prompt, bad image + its "No" evaluation -> good image of the same
  prompt): each prompt's chosen bad images (at most regen_per_prompt) are paired with its
  good images in turn (a good image serves several bad ones when there are fewer of them).
  Good means S >= threshold and bad S < threshold, so S(good) > S(bad) always holds.
"""

from __future__ import annotations

import hashlib
import re

import polars as pl

from janus_data.config import FilterConfig

TASKS = ("t2i", "judge", "regen")
_KEY_BITS = 60  # 15 hex digits of sha256: fits Int64
_LEADING_ANSWER = re.compile(r"^\s*(?:(?:yes|no)\b[\s,.;:!?-]*)+", re.IGNORECASE)


def seed_mask(seed: int) -> int:
    """A 60-bit mask derived from the seed; XOR-ing it into uniform keys reorders them per seed."""
    digest = hashlib.blake2b(f"janus-filter:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << _KEY_BITS) - 1)


def labelled_reason(label: str, reason: str | None) -> str:
    """The judge's reason rewritten to start with `label` ('Yes' or 'No'), whatever it began with.

    >>> labelled_reason("No", "yes, the cat is red.")
    'No. The cat is red.'
    >>> labelled_reason("Yes", "  Yes. It matches.")
    'Yes. It matches.'
    >>> labelled_reason("No", "")
    'No.'
    """
    rest = _LEADING_ANSWER.sub("", reason or "").strip()
    return f"{label}. {rest[:1].upper()}{rest[1:]}" if rest else f"{label}."


def pool(scores: pl.LazyFrame, images: pl.LazyFrame, prompts: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Usable scored images as a slim frame: image_id, prompt_id, score, good, seeded `order`, rank,
    and `image_row` / `score_row`, the rows of the image and score manifests (as scanned) that
    later lookups join on (integers: much cheaper than joining on image_id again).

    Usable: status ok, the image in the image manifest, its prompt in the prompt manifest. Synth
    and score write one row per image_id, so no deduplication is needed (or paid for) here.

    Sorted once, in choice order: by the seeded key (and by S first, best first on each side, when
    choice is 'best'). Everything downstream keeps that order, so per-prompt ranks are cheap.
    """
    ok = (
        scores.with_row_index("score_row")
        .filter(pl.col("status") == "ok")
        .select("image_id", "prompt_id", "score", "score_row")
    )
    order = pl.col("sha256").str.slice(0, _KEY_BITS // 4).str.to_integer(base=16).xor(pl.lit(seed_mask(cfg.seed)))
    located = images.with_row_index("image_row").select("image_id", "image_row", order.alias("order"))
    pooled = (
        ok.join(prompts.select("prompt_id"), on="prompt_id", how="semi", maintain_order="left")
        .join(located, on="image_id", how="inner", maintain_order="left")
        .with_columns((pl.col("score") >= cfg.threshold).alias("good"))
    )
    # Ties (identical image bytes) keep the score manifest's order: deterministic for the same inputs.
    by = [pl.col("order")]
    if cfg.choice == "best":
        by = [pl.when(pl.col("good")).then(-pl.col("score")).otherwise(pl.col("score")), *by]
    ranked = pooled.sort(by, maintain_order=True)
    return ranked.with_columns(pl.int_range(pl.len()).over("prompt_id", "good").alias("rank"))


def _cap(cap: int) -> pl.Expr:
    return pl.col("rank") < cap if cap > 0 else pl.lit(True)


def select_t2i(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task I: (prompt, good image)."""
    chosen = pooled.filter(pl.col("good") & _cap(cfg.t2i_per_prompt))
    return chosen.select(
        pl.concat_str(pl.lit("t2i-"), pl.col("image_id")).alias("key"),
        "prompt_id",
        "image_id",
        "score",
        "order",
        "image_row",
    )


def select_judge(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task II: images with their Yes/No label, yes and no balanced exactly (by the seeded order)."""
    capped = pooled.filter(_cap(cfg.judge_per_prompt))
    if cfg.choice == "best":  # the balance cut is by the seeded order on both sides
        capped = capped.sort("order", "image_id")
    balanced = capped.with_columns(
        pl.int_range(pl.len()).over("good").alias("side_rank"), pl.len().over("good").alias("side_n")
    ).filter((pl.col("side_rank") < pl.col("side_n").min()) & (pl.col("good").n_unique() == 2))
    return balanced.select(
        pl.concat_str(pl.lit("judge-"), pl.col("image_id")).alias("key"),
        "prompt_id",
        "image_id",
        "score",
        pl.when(pl.col("good")).then(pl.lit("Yes")).otherwise(pl.lit("No")).alias("label"),
        "order",
        "image_row",
        "score_row",
    )


def select_regen(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task III: (bad image, good image) pairs of one prompt; the good image's columns end in _good."""
    bad = pooled.filter(~pl.col("good") & _cap(cfg.regen_per_prompt))
    good = pooled.filter(pl.col("good")).select(
        "prompt_id",
        pl.col("rank").alias("good_rank"),
        pl.col("image_id").alias("image_id_good"),
        pl.col("score").alias("score_good"),
        pl.col("image_row").alias("image_row_good"),
        pl.len().over("prompt_id").alias("n_good"),
    )
    n_good = good.group_by("prompt_id").agg(pl.col("n_good").first())
    pairs = (
        bad.join(n_good, on="prompt_id", how="inner")
        .with_columns((pl.col("rank") % pl.col("n_good")).alias("good_rank"))
        .join(good.drop("n_good"), on=["prompt_id", "good_rank"], how="inner")
    )
    return pairs.select(
        pl.concat_str(pl.lit("regen-"), pl.col("image_id")).alias("key"),
        "prompt_id",
        "image_id",
        "score",
        "image_id_good",
        "score_good",
        "order",
        "image_row",
        "image_row_good",
        "score_row",
    )


def select_all(pooled: pl.LazyFrame, cfg: FilterConfig) -> dict[str, pl.LazyFrame]:
    """The three tasks' slim plans, each in writing order (seeded order of its first image, then key)."""
    plans = {"t2i": select_t2i(pooled, cfg), "judge": select_judge(pooled, cfg), "regen": select_regen(pooled, cfg)}
    return {task: plan.sort("order", "key") for task, plan in plans.items()}
