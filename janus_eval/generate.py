"""`janus generate`: images from a Janus-Pro checkpoint, and with introspection the trained chain.

Work is planned as chains, one per (prompt, sample), each with the seed
derive_seed(eval.seed, prompt_id, "eval", sample); chains the manifest already holds are skipped,
the rest are drawn in batches of `synth.janus.batch_size` through `chain.IntrospectiveChain`.
Every draw is counter-based on the chain's seed, so an image does not depend on the batch it
was drawn in, and a rerun (or a larger --n) only adds what is missing (`gen_manifest`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from PIL import Image

from janus_data.config import JanusRunConfig
from janus_data.manifest import atomic_write, manifest_dir
from janus_data.progress import stage_progress
from janus_data.prompts import check_prompt_file, load_prompts, normalise_prompt, prompt_id_for, prompt_schema
from janus_data.seeds import derive_seed
from janus_eval.chain import ChainImage, IntrospectiveChain, chain_params, load_chain_steps
from janus_eval.checkpoints import EvalCheckpoint, resolve_checkpoint, weights_digest
from janus_eval.gen_checks import check_counts, check_out
from janus_eval.gen_manifest import (
    CHAIN_KEY,
    GENERATIONS_KIND,
    GENERATIONS_SCHEMA,
    IMAGES_DIR,
    check_settings,
    clean_out,
    drop_incomplete_chains,
    gen_id_for,
    image_path_for,
    read_generations,
    write_part,
)

SEED_STREAM = "eval"  # derive_seed's `generator` field for evaluation chains


@dataclass
class GenerationCounts:
    """What a set of manifest rows holds. regenerated: chains with at least one regeneration;
    answers / yes: images the model evaluated / said Yes to."""

    chains: int = 0
    images: int = 0
    regenerated: int = 0
    answers: int = 0
    yes: int = 0

    @property
    def yes_rate(self) -> float | None:
        return self.yes / self.answers if self.answers else None

    @classmethod
    def of(cls, rows: pl.DataFrame) -> GenerationCounts:
        if rows.height == 0:
            return cls()
        chains = rows.group_by(list(CHAIN_KEY)).agg(pl.col("round").max())
        return cls(
            chains=chains.height,
            images=rows.height,
            regenerated=int((chains["round"] > 0).sum()),
            answers=int(rows["answer"].is_not_null().sum()),
            yes=int((rows["answer"] == "Yes").sum()),
        )


@dataclass
class GenerateResult:
    """What a `run_generate` call did (`new`) and what OUT now holds (`total`)."""

    out: Path
    checkpoint: EvalCheckpoint
    n_prompts: int
    n: int
    introspect: bool
    rounds: int
    planned: int = 0
    existing: int = 0
    repaired: int = 0
    new: GenerationCounts = field(default_factory=GenerationCounts)
    total: GenerationCounts = field(default_factory=GenerationCounts)
    draw_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.new.images / self.draw_seconds if self.draw_seconds > 0 else 0.0

    @property
    def manifest_dir(self) -> Path:
        return manifest_dir(self.out, GENERATIONS_KIND)

    @property
    def images_dir(self) -> Path:
        return self.out / IMAGES_DIR


def prompt_frame(texts: list[str], source: str = "--prompt") -> pl.DataFrame:
    """Prompts given as text, as `load_prompts` rows (normalised, deduplicated, no tags)."""
    seen: dict[str, str] = {}
    for text in texts:
        norm = normalise_prompt(text)
        if norm:
            seen.setdefault(prompt_id_for(norm), norm)
    n = len(seen)
    data = {
        "prompt_id": list(seen),
        "prompt": list(seen.values()),
        "source": [source] * n,
        "source_id": [None] * n,
        "tags": [[] for _ in range(n)],
        "n_occurrences": [1] * n,
        "metadata": [None] * n,
    }
    return pl.DataFrame(data, schema=prompt_schema())


def plan_chains(prompts: pl.DataFrame, n: int, seed: int, stream: str = SEED_STREAM) -> pl.DataFrame:
    """Every chain: the prompt's columns, sample 0..n-1, its seed (derive_seed(seed, prompt_id, stream,
    sample)); in prompt order, then sample."""
    base = prompts.select("prompt_id", "prompt", "tags", "metadata").with_row_index("order")
    samples = pl.DataFrame({"sample": list(range(n))}, schema={"sample": pl.Int32})
    plan = base.join(samples, how="cross").sort("order", "sample")
    seeds = [derive_seed(seed, p, stream, s) for p, s in zip(plan["prompt_id"], plan["sample"], strict=True)]
    return plan.with_columns(pl.Series("seed", seeds, dtype=pl.Int64))


def batches(todo: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """Consecutive slices of at most `size` chains."""
    for start in range(0, todo.height, size):
        yield todo.slice(start, size)


def chain_rows(ckpt: EvalCheckpoint, plan_row: dict, images: list[ChainImage]) -> list[dict]:
    """A chain's manifest rows, one per image, round order."""
    rows = []
    for image in images:
        gen_id = gen_id_for(plan_row["prompt_id"], plan_row["sample"], image.round)
        rows.append(
            {
                "gen_id": gen_id,
                "checkpoint": ckpt.ref,
                "label": ckpt.label,
                "prompt_id": plan_row["prompt_id"],
                "prompt": plan_row["prompt"],
                "tags": plan_row["tags"],
                "metadata": plan_row["metadata"],
                "sample": plan_row["sample"],
                "round": image.round,
                "seed": plan_row["seed"],
                "image_path": image_path_for(gen_id),
                "answer": image.answer,
                "reason": image.reason,
                "final": image is images[-1],
                "context_gen_id": gen_id_for(plan_row["prompt_id"], plan_row["sample"], image.round - 1)
                if image.round
                else None,
            }
        )
    return rows


def write_batch(out: Path, ckpt: EvalCheckpoint, batch: pl.DataFrame, chains: list[list[ChainImage]]) -> pl.DataFrame:
    """Store one batch: every image first (atomically), then its manifest part (its presence means done)."""
    rows = []
    for plan_row, images in zip(batch.iter_rows(named=True), chains, strict=True):
        for row, image in zip(chain_rows(ckpt, plan_row, images), images, strict=True):
            png = Image.fromarray(image.pixels)
            atomic_write(out / row["image_path"], lambda fh, png=png: png.save(fh, format="PNG"))
            rows.append(row)
    frame = pl.DataFrame(rows, schema=GENERATIONS_SCHEMA)
    write_part(out, frame)
    return frame


def drawing_settings(ckpt: EvalCheckpoint, cfg: JanusRunConfig, introspect: bool, rounds: int) -> dict:
    """What decides a chain's images and text (not n, the prompts, the batch size or the loop)."""
    params = chain_params(cfg)
    return {
        "checkpoint": ckpt.ref,
        "label": ckpt.label,
        "path": ckpt.path,
        "weights": weights_digest(ckpt.path),
        "seed": cfg.eval.seed,
        "cfg_weight": params.image.cfg_weight,
        "temperature": params.image.temperature,
        "top_k": params.image.top_k,
        "top_p": params.image.top_p,
        "introspect": introspect,
        "rounds": rounds if introspect else None,
        "text_temperature": params.text_temperature if introspect else None,
        "reason_tokens": params.reason_tokens if introspect else None,
        "regen_context": params.regen_context if introspect else None,
    }


def run_generate(
    checkpoint: str,
    prompts: str | Path | pl.DataFrame,
    out: Path,
    cfg: JanusRunConfig,
    *,
    run_dir: Path | None = None,
    n: int | None = None,
    introspect: bool | None = None,
    rounds: int | None = None,
    progress: bool | None = None,
) -> GenerateResult:
    """Draw every missing chain of `prompts` x `n` samples from `checkpoint` into OUT.

    `checkpoint`: see `checkpoints.resolve_checkpoint` ("sft"/"rl" need `run_dir`); `prompts`: a
    prompt file or a `load_prompts` frame; n, introspect, rounds default to `cfg.eval`'s."""
    start = time.perf_counter()
    out = Path(out)
    n, introspect, rounds = chain_options(cfg, n, introspect, rounds)
    ckpt = resolve_checkpoint(checkpoint, run_dir, cfg)
    if not isinstance(prompts, pl.DataFrame):
        check_prompt_file(prompts)
        prompts = load_prompts(prompts)[0]
    check_out(out)
    clean_out(out)
    check_settings(out, drawing_settings(ckpt, cfg, introspect, rounds))
    result = GenerateResult(out, ckpt, prompts.height, n, introspect, rounds)
    result.repaired = drop_incomplete_chains(out)
    todo = remaining(result, plan_chains(prompts, n, cfg.eval.seed))
    if todo.height:
        chain = IntrospectiveChain(load_chain_steps(ckpt.path, cfg), introspect, rounds)

        def draw(batch: pl.DataFrame) -> list[list[ChainImage]]:
            return chain.run(batch["prompt"].to_list(), batch["seed"].to_list())

        draw_all(result, todo, draw, cfg.synth.janus.batch_size, f"generate {ckpt.label}", "chain", progress)
    return finish(result, start)


def chain_options(cfg: JanusRunConfig, n: int | None, introspect: bool | None, rounds: int | None):
    """(n, introspect, rounds), each defaulting to `cfg.eval`'s, checked."""
    n = cfg.eval.images_per_prompt if n is None else n
    introspect = cfg.eval.introspect if introspect is None else introspect
    rounds = cfg.eval.rounds if rounds is None else rounds
    check_counts(n, rounds)
    return n, introspect, rounds


def remaining(result: GenerateResult, plan: pl.DataFrame) -> pl.DataFrame:
    """The planned chains OUT does not hold yet, in drawing order; counts them into `result`."""
    done = read_generations(result.out).select(CHAIN_KEY).unique()
    todo = plan.join(done, on=list(CHAIN_KEY), how="anti").sort("order", "sample")
    result.planned, result.existing = plan.height, plan.height - todo.height
    return todo


def draw_all(
    result: GenerateResult,
    todo: pl.DataFrame,
    draw: Callable[[pl.DataFrame], list[list[ChainImage]]],
    batch_size: int,
    label: str,
    unit: str,
    progress: bool | None,
) -> None:
    """Draw `todo` in batches with `draw`, each batch's images and rows written as it finishes (`write_batch`)."""
    new = []
    with stage_progress(progress) as bars:
        task = bars.add_task(label, total=todo.height, unit=unit)
        for batch in batches(todo, batch_size):
            t0 = time.perf_counter()
            chains = draw(batch)
            result.draw_seconds += time.perf_counter() - t0
            new.append(write_batch(result.out, result.checkpoint, batch, chains))
            bars.advance(task, batch.height)
    if new:
        result.new = GenerationCounts.of(pl.concat(new))


def finish(result: GenerateResult, start: float) -> GenerateResult:
    """What OUT holds in all, and the call's wall time."""
    result.total = GenerationCounts.of(read_generations(result.out))
    result.seconds = time.perf_counter() - start
    return result
