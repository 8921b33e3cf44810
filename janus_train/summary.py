"""The training stages' summary tables."""

from __future__ import annotations

from rich import box
from rich.table import Table

from janus_train.grpo import RLResult
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


def rl_table(result: RLResult) -> Table:
    """Rewards, self-check and regeneration rates at the first and latest step of this call, the time split."""
    title = f"janus train rl — steps {result.start_step} -> {result.end_step} of {result.max_steps}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for col in ("metric", "first", "latest"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    rows = (
        ("R1 = S(image 1)", "reward/r1"),
        ("R2 = self-check", "reward/r2"),
        ("R3 = S(final)", "reward/r3"),
        ("self-check acc @0.5", "selfcheck_acc"),
        ("regeneration rate", "regen_rate"),
        ("Aha rate (S2 > S1)", "aha_rate"),
        ("KL to reference", "kl"),
        ("clip fraction", "clip_frac"),
    )
    for label, key in rows:
        if key in result.last:
            table.add_row(label, f"{result.first.get(key, float('nan')):.4f}", f"{result.last[key]:.4f}")
    spent = sum(result.times.values()) or 1.0
    split = " · ".join(f"{k} {v:.1f} s ({100 * v / spent:.0f}%)" for k, v in result.times.items())
    resumed = f"resumed from {result.resumed_from} · " if result.resumed_from else ""
    table.caption = (
        f"{resumed}{result.rollouts:,} rollouts on {result.world_size} process(es) · scorer {result.scorer} · "
        f"reference refreshes {result.refreshes} · wall {result.seconds:.1f} s\n{split}\n"
        f"checkpoint: {result.checkpoint or '-'}"
    )
    table.caption_justify = "left"
    return table
