"""Rich summary tables printed at the end of each stage."""

from __future__ import annotations

from rich import box
from rich.table import Table

from janus_data.filter import FilterResult
from janus_data.manifest import (
    EDIT_IMAGES_KIND,
    EDIT_SCORES_KIND,
    IMAGES_KIND,
    SCORES_KIND,
    manifest_dir,
)
from janus_data.score import THRESHOLDS, ScoreResult
from janus_data.synth import SynthResult


def synth_table(result: SynthResult) -> Table:
    """Per generator: planned, already present, generated now, time and throughput."""
    shard = result.shard
    edit = result.task == "edit"
    what = f"{result.n_prompts} edits" if edit else f"{result.n_prompts} prompts"
    title = f"janus data synth{' --task edit' if edit else ''} — rank {shard.rank}/{shard.world_size}, {what} in run"
    table = Table(title=title, title_justify="left")
    for col in ("generator", "planned", "existing", "generated", "seconds", "img/s", "s/img"):
        table.add_column(col, justify="left" if col == "generator" else "right")
    for name, g in result.generators.items():
        table.add_row(
            name,
            f"{g.planned:,}",
            f"{g.existing:,}",
            f"{g.generated:,}",
            f"{g.seconds:.1f}",
            f"{g.images_per_s:.2f}" if g.generated else "-",
            f"{g.seconds / g.generated:.3f}" if g.generated else "-",
        )
    total = sum(g.planned for g in result.generators.values())
    done = sum(g.existing + g.generated for g in result.generators.values())
    table.caption = (
        f"{done:,}/{total:,} images complete for this rank · wall {result.seconds:.1f} s\n"
        f"images: {result.run_dir / 'images'}  "
        f"manifest: {manifest_dir(result.run_dir, EDIT_IMAGES_KIND if edit else IMAGES_KIND)}"
    )
    table.caption_justify = "left"
    return table


def synth_headline(result: SynthResult) -> str:
    """One line: what happened."""
    ps = result.prompt_stats
    parts = []
    es = getattr(result, "edit_stats", None)
    if es is not None:
        bad = f", {es.bad_images_skipped:,} with bad images skipped" if es.bad_images_skipped else ""
        parts.append(
            f"edits: {es.rows_read:,} read, {es.empty_dropped:,} empty dropped{bad}, "
            f"{es.duplicates_merged:,} duplicates merged, {es.unique:,} unique ({es.with_reference:,} with a "
            f"reference), {result.new_edits:,} new to the run"
        )
    if ps is not None:
        parts.append(
            f"prompts: {ps.rows_read:,} read, {ps.empty_dropped:,} empty dropped, "
            f"{ps.duplicates_merged:,} duplicates merged, {ps.unique:,} unique"
        )
    if result.shards_repaired:
        parts.append(f"repaired {result.shards_repaired} shard(s) left mid-batch by an interrupted run")
    if result.generated == 0:
        total = sum(g.planned for g in result.generators.values())
        parts.append(f"nothing to do: all {total:,} images of this rank already exist")
    return "\n".join(parts)


def score_table(result: ScoreResult) -> Table:
    """Per generator over the whole run: images, flagged and error rows, mean S and pass rates (S >= t)."""
    shard = result.shard
    title = f"janus data score — rank {shard.rank}/{shard.world_size}" + (
        f", judge {result.judge}" if result.judge else ""
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    columns = ("generator", "images", "flagged", "errors", "mean S", *[f"≥{t}" for t in THRESHOLDS])
    for col in columns:
        table.add_column(col, justify="left" if col == "generator" else "right", no_wrap=True, min_width=5)
    for row in result.by_generator.iter_rows(named=True):
        mean = row["mean_s"]
        table.add_row(
            row["generator"],
            f"{row['images']:,}",
            f"{row['flagged']:,}",
            f"{row['errors']:,}",
            "-" if mean is None else f"{mean:.3f}",
            *["-" if row[f"pass_{t}"] is None else f"{row[f'pass_{t}']:.1%}" for t in THRESHOLDS],
        )
    rate = f"{result.images_per_s:.2f} img/s" if result.judged else "-"
    retried = f", {result.retried:,} error rows of earlier runs judged again" if result.retried else ""
    table.caption = (
        f"this call: {result.written:,} rows written ({result.judged:,} judged at {rate}, "
        f"{result.errors:,} errors, {result.flagged:,} flagged{retried}), {result.existing:,}/{result.planned:,} "
        f"already scored · wall {result.seconds:.1f} s\n"
        f"manifest: {manifest_dir(result.run_dir, SCORES_KIND)}"
    )
    table.caption_justify = "left"
    return table


def edit_score_table(result: ScoreResult) -> Table:
    """Per editor over the whole run: candidate edits, flagged and error rows, mean S_flw, S_psv and R."""
    shard = result.shard
    title = f"janus data score --task edit — rank {shard.rank}/{shard.world_size}" + (
        f", judge {result.judge}" if result.judge else ""
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for col in ("generator", "edits", "flagged", "errors", "mean S_flw", "mean S_psv", "mean R"):
        table.add_column(col, justify="left" if col == "generator" else "right", no_wrap=True, min_width=5)
    for row in result.by_generator.iter_rows(named=True):
        means = [row[k] for k in ("mean_flw", "mean_psv", "mean_reward")]
        table.add_row(
            row["generator"],
            f"{row['images']:,}",
            f"{row['flagged']:,}",
            f"{row['errors']:,}",
            *["-" if m is None else f"{m:.3f}" for m in means],
        )
    rate = f"{result.images_per_s:.2f} edits/s" if result.judged else "-"
    retried = f", {result.retried:,} error rows of earlier runs judged again" if result.retried else ""
    table.caption = (
        f"this call: {result.written:,} rows written ({result.judged:,} judged at {rate}, "
        f"{result.errors:,} errors, {result.flagged:,} flagged{retried}), {result.existing:,}/{result.planned:,} "
        f"already scored · wall {result.seconds:.1f} s\n"
        f"R = edit.reward_flw * S_flw + edit.reward_psv * S_psv · manifest: "
        f"{manifest_dir(result.run_dir, EDIT_SCORES_KIND)}"
    )
    table.caption_justify = "left"
    return table


def score_histogram(result: ScoreResult, width: int = 30) -> Table:
    """A terminal histogram of S in ten bins, one bar column per generator."""
    counts = {(r["generator"], r["bin"]): r["count"] for r in result.histogram.iter_rows(named=True)}
    generators = sorted({g for g, _ in counts})
    table = Table(title="S histogram", title_justify="left", box=None, pad_edge=False)
    table.add_column("S", justify="left")
    for gen in generators:
        table.add_column(gen, justify="left")
    peak = max(counts.values(), default=0)
    for b in range(10):
        cells = []
        for gen in generators:
            n = counts.get((gen, b), 0)
            bar = "█" * round(width * n / peak) if peak else ""
            cells.append(f"{bar} {n:,}" if n else "")
        table.add_row(f"{b / 10:.1f}–{(b + 1) / 10:.1f}", *cells)
    return table


def score_headline(result: ScoreResult) -> str:
    """One line: what happened."""
    if result.written == 0:
        return f"nothing to do: all {result.planned:,} images of this rank already have a score"
    if result.errors and result.retry_errors:
        return (
            f"{result.errors:,} images got an error row (see the error column); "
            "rerun the same command to judge them again"
        )
    return ""


FILTER_TASK_NAMES = {
    "t2i": "I   text->image",
    "judge": "II  self-evaluation",
    "regen": "III regeneration",
    "edit": "I   edit",
    "edit_judge": "II  edit self-evaluation",
    "edit_regen": "III edit regeneration",
}


def filter_table(result: FilterResult) -> Table:
    """Per task: samples, shards, size, written by this call; pool, exclusions, prompt coverage, the mix."""
    kind = result.kind
    edit = kind.name == "edit"
    title = f"janus data filter{' --task edit' if edit else ''} — threshold {result.threshold}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for col in ("task", "samples", "shards", "MB", "written now"):
        table.add_column(col, justify="left" if col == "task" else "right", no_wrap=True)
    for task, t in result.tasks.items():
        table.add_row(
            FILTER_TASK_NAMES.get(task, task),
            f"{t.samples:,}",
            f"{t.shards:,}",
            f"{t.bytes / 1e6:,.1f}",
            f"{t.written_now:,}",
        )
    excluded = ", ".join(f"{n:,} {status}" for status, n in result.excluded.items()) or "none"
    labels = ", ".join(f"{n:,} {name}" for name, n in result.labels.items()) or "-"
    budget, dry = result.mix_budget()
    mix = ":".join(f"{w:g}" for w in result.mix)
    good = "a good edit" if edit else "a good image"
    plural = "" if result.references == 1 else "s"
    refs = f" · {result.references:,} reference sample{plural} (edit.reference_samples)" if edit else ""
    mix_key = "sft.edit_mix" if edit else "mix"
    table.caption = (
        f"pool: {result.pool:,} usable scored {kind.noun} (excluded: {excluded}) · {result.prompts:,} {kind.group}, "
        f"{result.prompts_without_sample:,} without {good}, {result.prompts_without_pair:,} without a "
        f"regeneration pair{refs}\nlabels ({result.judge_labels}): {labels}\n"
        f"{mix_key} {mix}: {budget:,} samples before {dry or '-'} runs dry · wall {result.seconds:.1f} s\n"
        f"shards: {result.run_dir / kind.out_dir}  manifest: {manifest_dir(result.run_dir, kind.samples_kind)}"
    )
    table.caption_justify = "left"
    return table


def filter_headline(result: FilterResult) -> str:
    if not result.rebuilt:
        what = "the edit shards" if result.task == "edit" else "the shards"
        return f"nothing to do: {what} already match these scores and this filter config"
    return ""
