"""The SFT run's summary table."""

from __future__ import annotations

from rich import box
from rich.table import Table

from janus_train.sft import TASKS, SFTResult


def sft_table(result: SFTResult) -> Table:
    """Each task's loss at its first and latest step of this call, throughput, where the checkpoint is."""
    title = f"janus train sft — steps {result.start_step} -> {result.end_step} of {result.max_steps}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for col in ("loss", "first", "latest"):
        table.add_column(col, justify="left" if col == "loss" else "right", no_wrap=True)
    for task in (*TASKS, "total"):
        if task in result.last_loss:
            first = result.first_loss.get(task)
            table.add_row(task, "-" if first is None else f"{first:.4f}", f"{result.last_loss[task]:.4f}")
    resumed = f"resumed from {result.resumed_from} · " if result.resumed_from else ""
    table.caption = (
        f"{resumed}{result.samples:,} samples on {result.world_size} process(es) at {result.samples_per_s:.2f} "
        f"samples/s · wall {result.seconds:.1f} s\ncheckpoint: {result.checkpoint or '-'}"
    )
    table.caption_justify = "left"
    return table
