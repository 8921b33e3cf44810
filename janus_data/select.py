"""Choosing the SFT samples: Task I/II/III from the scored pool, as lazy Polars plans.

Pure functions of the manifests and a FilterConfig, so the same inputs always give the same
samples, in the same order. Every choice among candidates ranks images by a seeded key
drawn from the image bytes' sha256 (uniform, and stable across Polars versions, unlike
Polars' own hash); `choice: best` ranks by S first.

An image's answer is the first word of its judge reason (yes / no, any case; any other word:
none; an empty reason takes S's side). Its label (`label_expr`, `judge_labels`):
- Yes: S >= threshold and the answer is yes (both settings);
- No:  'agree': S < threshold and the answer is no; 'answer' (the released code,
  t2i_dataset.py:94-100): the answer is no, whatever S;
- none otherwise: the image is in neither Task II nor Task III's bad images.

- Task I  (t2i):   (prompt, Yes image of a target generator), at most t2i_per_prompt per prompt.
- Task II (judge): (prompt, image of a judge generator, its label + reason): at most
  judge_per_prompt Yes and judge_per_prompt No images per prompt, then the larger side is cut
  to the smaller one (by the same key), so yes and no are balanced exactly.
- Task III (regen): (prompt, No image of a context generator + its evaluation -> Yes image of
  a target generator of the same prompt with a higher S): each prompt's chosen bad images (at
  most regen_per_prompt, among those below the prompt's best good image) are paired with the
  good images above them in turn (a good image serves several bad ones when there are fewer).
"""

from __future__ import annotations

import hashlib
import re

import polars as pl

from janus_data.config import FilterConfig
from janus_data.janus_format import TASKS as TASKS  # re-exported: filter and report read it here

_KEY_BITS = 60  # 15 hex digits of sha256: fits Int64
# The answer word is the reason's first word (\w run) after any non-word characters; the same
# patterns run in Python (re) and in Polars (Rust regex), both Unicode-aware.
YES_WORD = r"(?i)^\W*yes\b"
NO_WORD = r"(?i)^\W*no\b"
EMPTY = r"^\s*$"
_FIRST_WORD = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def seed_mask(seed: int) -> int:
    """A 60-bit mask derived from the seed; XOR-ing it into uniform keys reorders them per seed."""
    digest = hashlib.blake2b(f"janus-filter:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << _KEY_BITS) - 1)


def reason_answer(reason: str | None) -> str | None:
    """'yes' or 'no' when the reason's first word is that answer (any case), else None.

    >>> [reason_answer(r) for r in ("Yes, it is.", "  no.", "Nothing here", "", None)]
    ['yes', 'no', None, None, None]
    """
    match = _FIRST_WORD.match(reason or "")
    return match.group(1).lower() if match else None


def labelled_reason(label: str, reason: str | None) -> str:
    """The judge's reason as a `label` target: its first word's case normalised, never flipped.

    Released: 'Yes' + reason[3:] / 'No' + reason[2:] (t2i_dataset.py:96, :99). An empty reason
    becomes just the label; a reason answering the other way (or neither) is a selection bug.

    >>> labelled_reason("Yes", "  yes, the cat is red.")
    'Yes, the cat is red.'
    >>> labelled_reason("No", "NO. It is blue.")
    'No. It is blue.'
    >>> labelled_reason("No", "")
    'No.'
    """
    if label not in ("Yes", "No"):
        raise ValueError(f"label must be 'Yes' or 'No', got {label!r}")
    text = reason or ""
    if re.fullmatch(EMPTY, text):
        return f"{label}."
    match = _FIRST_WORD.match(text)
    if match is None or match.group(1).lower() != label.lower():
        raise ValueError(f"a {label} sample's reason must start with {label}, got {text[:40]!r}")
    return label + text[match.end(1) :]


def answer_expr(threshold: float, reason: str = "reason", score: str = "score") -> pl.Expr:
    """The judge's own answer from column `reason`: True (yes), False (no) or null (another first word).

    An empty reason (score.reason_tokens 0) has nothing to contradict: it takes the side of
    column `score` (S; an edit's side reads its own S_flw or S_psv, janus_data.edit_select).
    """
    text = pl.col(reason).fill_null("")
    return (
        pl.when(text.str.contains(EMPTY))
        .then(pl.col(score) >= threshold)
        .when(text.str.contains(YES_WORD))
        .then(pl.lit(True))
        .when(text.str.contains(NO_WORD))
        .then(pl.lit(False))
        .otherwise(pl.lit(None, pl.Boolean))
    )


def label_expr(cfg: FilterConfig) -> pl.Expr:
    """'Yes', 'No' or null from `score` and `says_yes` under cfg.judge_labels (module docstring)."""
    good = pl.col("score") >= cfg.threshold
    says_no = pl.col("says_yes").not_()
    no = says_no & ~good if cfg.judge_labels == "agree" else says_no
    return pl.when(good & pl.col("says_yes")).then(pl.lit("Yes")).when(no).then(pl.lit("No")).otherwise(None)


def pool(
    scores: pl.LazyFrame,
    images: pl.LazyFrame,
    prompts: pl.LazyFrame,
    cfg: FilterConfig,
    says_yes: pl.Expr | None = None,
) -> pl.LazyFrame:
    """Usable scored images as a slim frame: image_id, prompt_id, generator, score, says_yes,
    label, seeded `order`, and `image_row` / `score_row`, the rows of the image and score
    manifests (as scanned) that later lookups join on (integers: much cheaper than joining on
    image_id again).

    Usable: status ok, the image in the image manifest, its prompt in the prompt manifest. Synth
    and score write one row per image_id, so no deduplication is needed (or paid for) here.

    Sorted once, in choice order: by the seeded key (and by S first, best first on each side, when
    choice is 'best'). Everything downstream keeps that order, so per-prompt ranks are cheap.

    `says_yes` is the judge's own answer over the score rows (default: `answer_expr` of `reason`;
    an edit's combines both questions, janus_data.edit_select).
    """
    if says_yes is None:
        says_yes = answer_expr(cfg.threshold)
    ok = (
        scores.with_row_index("score_row")
        .filter(pl.col("status") == "ok")
        .select("image_id", "prompt_id", "score", "score_row", says_yes.alias("says_yes"))
    )
    order = pl.col("sha256").str.slice(0, _KEY_BITS // 4).str.to_integer(base=16).xor(pl.lit(seed_mask(cfg.seed)))
    located = images.with_row_index("image_row").select("image_id", "image_row", "generator", order.alias("order"))
    pooled = (
        ok.join(prompts.select("prompt_id"), on="prompt_id", how="semi", maintain_order="left")
        .join(located, on="image_id", how="inner", maintain_order="left")
        .with_columns(label_expr(cfg).alias("label"))
    )
    # Ties (identical image bytes) keep the score manifest's order: deterministic for the same inputs.
    by = [pl.col("order")]
    if cfg.choice == "best":  # Yes: highest S first; No (and unlabelled): lowest S first
        by = [pl.when(pl.col("label") == "Yes").then(-pl.col("score")).otherwise(pl.col("score")), *by]
    return pooled.sort(by, maintain_order=True)


def pool_stats(status_counts: dict, label_counts: dict) -> dict:
    """The summary's pool counts: usable rows, excluded rows by status, labels (Yes / No / unlabelled)."""
    return {
        "pool": int(sum(label_counts.values())),
        "excluded": {k: int(v) for k, v in sorted(status_counts.items()) if k != "ok"},
        "labels": {
            name: int(label_counts.get(key, 0)) for name, key in (("Yes", "Yes"), ("No", "No"), ("unlabelled", None))
        },
    }


def _cap(cap: int) -> pl.Expr:
    return pl.col("rank") < cap if cap > 0 else pl.lit(True)


def _ranked(frame: pl.LazyFrame, *by: str) -> pl.LazyFrame:
    """`rank`: the row's place in choice order among its prompt's rows (and `by` group)."""
    return frame.with_columns(pl.int_range(pl.len()).over("prompt_id", *by).alias("rank"))


def _role(label: str, generators: tuple[str, ...]) -> pl.Expr:
    return (pl.col("label") == label) & pl.col("generator").is_in(list(generators))


def select_t2i(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task I: (prompt, Yes image of a target generator)."""
    chosen = _ranked(pooled.filter(_role("Yes", cfg.target_generators))).filter(_cap(cfg.t2i_per_prompt))
    return chosen.select(
        pl.concat_str(pl.lit("t2i-"), pl.col("image_id")).alias("key"),
        "prompt_id",
        "image_id",
        "score",
        "order",
        "image_row",
    )


def select_judge(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task II: labelled images of the judge generators, yes and no balanced exactly (by the seeded order)."""
    labelled = pooled.filter(pl.col("label").is_not_null() & pl.col("generator").is_in(list(cfg.judge_generators)))
    capped = _ranked(labelled, "label").filter(_cap(cfg.judge_per_prompt))
    if cfg.choice == "best":  # the balance cut is by the seeded order on both sides
        capped = capped.sort("order", "image_id")
    balanced = capped.with_columns(
        pl.int_range(pl.len()).over("label").alias("side_rank"), pl.len().over("label").alias("side_n")
    ).filter((pl.col("side_rank") < pl.col("side_n").min()) & (pl.col("label").n_unique() == 2))
    return balanced.select(
        pl.concat_str(pl.lit("judge-"), pl.col("image_id")).alias("key"),
        "prompt_id",
        "image_id",
        "score",
        "label",
        "order",
        "image_row",
        "score_row",
    )


def select_regen(pooled: pl.LazyFrame, cfg: FilterConfig) -> pl.LazyFrame:
    """Task III: (No image, Yes image of higher S) pairs of one prompt; the good image's columns end in _good.

    Bad image k of a prompt takes the (k mod n)-th of the n good images above it, in their choice order.
    """
    good = _ranked(pooled.filter(_role("Yes", cfg.target_generators))).select(
        "prompt_id",
        pl.col("rank").alias("good_rank"),
        pl.col("image_id").alias("image_id_good"),
        pl.col("score").alias("score_good"),
        pl.col("image_row").alias("image_row_good"),
    )
    per_prompt = good.group_by("prompt_id").agg(pl.len().alias("n_good"), pl.col("score_good").max().alias("top"))
    # Only bad images some good image beats take a cap slot ('answer' labels No above the threshold too).
    pairable = pooled.filter(_role("No", cfg.context_generators)).join(
        per_prompt, on="prompt_id", how="inner", maintain_order="left"
    )
    bad = _ranked(pairable.filter(pl.col("score") < pl.col("top"))).filter(_cap(cfg.regen_per_prompt))
    # Below the threshold every good image is above: a join on the rank, no pair enumeration.
    below = (
        bad.filter(pl.col("score") < cfg.threshold)
        .with_columns((pl.col("rank") % pl.col("n_good")).alias("good_rank"))
        .join(good, on=["prompt_id", "good_rank"], how="inner")
    )
    above = (
        bad.filter(pl.col("score") >= cfg.threshold)
        .join(good, on="prompt_id", how="inner")
        .filter(pl.col("score_good") > pl.col("score"))
        .with_columns(
            (pl.col("good_rank").rank("ordinal").over("image_id") - 1).alias("above_rank"),
            pl.len().over("image_id").alias("n_above"),
        )
        .filter(pl.col("above_rank") == pl.col("rank") % pl.col("n_above"))
    )
    columns = [
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
    ]
    return pl.concat([below.select(columns), above.select(columns)])


def select_all(pooled: pl.LazyFrame, cfg: FilterConfig) -> dict[str, pl.LazyFrame]:
    """The three tasks' slim plans, each in writing order (seeded order of its first image, then key)."""
    plans = {"t2i": select_t2i(pooled, cfg), "judge": select_judge(pooled, cfg), "regen": select_regen(pooled, cfg)}
    return {task: plan.sort("order", "key") for task, plan in plans.items()}
