"""Rich summary tables printed at the end of each stage."""

from __future__ import annotations

from rich.table import Table

from janus_data.manifest import manifest_dir
from janus_data.synth import SynthResult


def synth_table(result: SynthResult) -> Table:
    """Per generator: planned, already present, generated now, time and throughput."""
    shard = result.shard
    title = f"janus data synth — rank {shard.rank}/{shard.world_size}, {result.n_prompts} prompts in run"
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
        f"images: {result.run_dir / 'images'}  manifest: {manifest_dir(result.run_dir, 'images')}"
    )
    table.caption_justify = "left"
    return table


def synth_headline(result: SynthResult) -> str:
    """One line: what happened."""
    ps = result.prompt_stats
    parts = []
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
