"""What the CLI prints after each stage: the stages' summary tables and the `janus run` outputs table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from janus_data.janus_format import ALL_TASKS
from janus_data.rundir import CKPT_DIRS, METRICS, first_latest_table, read_metrics
from janus_run.stages import STAGE_OUTPUTS
from janus_train.resume import POLICY_SOURCES

if TYPE_CHECKING:
    from janus_eval.run_eval import RunEvalResult
    from janus_run.pipeline import StageOutcome
    from janus_train.core import TrainResult
    from janus_train.rl import RLResult
    from janus_train.sft import SFTResult

# What the tables compare, and the report's tables too: the first and latest steps logged.
LOGGED = "first/latest: the first and latest steps logged in {path}, as the report shows them"


def _metrics_table(title: str, run_dir: Path, stage: str, keys: dict[str, str], first_col: str) -> Table:
    path = Path(run_dir) / CKPT_DIRS[stage] / METRICS
    header, rows = first_latest_table(read_metrics(path), keys)
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for i, col in enumerate([first_col, *header[1:]]):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    table.caption_justify = "left"
    return table


def already_done(stage: str, result: TrainResult) -> str:
    """The one line a rerun of a finished trainer prints."""
    return (
        f"{stage}: already finished at step {result.end_step} (target {result.max_steps}): {result.checkpoint}; "
        f"nothing to do (--max-steps N trains longer, --restart starts over)"
    )


def _start_note(result: TrainResult) -> str:
    aside = f"previous checkpoints set aside as {result.set_aside} · " if result.set_aside else ""
    return aside + (f"resumed from {result.resumed_from} · " if result.resumed_from else "")


def sft_table(result: SFTResult) -> Table:
    """Each task's loss at the first and latest logged step, throughput, where the checkpoint is."""
    title = f"janus train sft — steps {result.start_step} -> {result.end_step} of {result.max_steps}"
    keys = {task: f"loss/{task}" for task in (*ALL_TASKS, "total")}
    table = _metrics_table(title, result.run_dir, "sft", keys, "loss")
    table.caption = (
        f"{_start_note(result)}{result.samples:,} samples on {result.world_size} process(es) "
        f"at {result.samples_per_s:.2f} samples/s · wall {result.seconds:.1f} s\n"
        f"checkpoint: {result.checkpoint or '-'}\n"
        + LOGGED.format(path=Path(result.run_dir) / CKPT_DIRS["sft"] / METRICS)
    )
    return table


RL_ROWS = {
    "R1 = S(image 1)": "reward/r1",
    "R2 = self-check": "reward/r2",
    "R3 = S(final)": "reward/r3",
    "self-check acc @0.5": "selfcheck_acc",
    "regeneration rate": "regen_rate",
    "Aha rate (S2 > S1)": "aha_rate",
    "edit steps: S_flw (final)": "reward/flw",
    "edit steps: S_psv (final)": "reward/psv",
    "KL to reference": "kl",
    "clip fraction": "clip_frac",
}


def rl_table(result: RLResult) -> Table:
    """Rewards, self-check and regeneration rates at the first and latest logged step, the time split."""
    title = f"janus train rl — steps {result.start_step} -> {result.end_step} of {result.max_steps}"
    table = _metrics_table(title, result.run_dir, "rl", RL_ROWS, "metric")
    spent = sum(result.times.values()) or 1.0
    split = " · ".join(f"{k} {v:.1f} s ({100 * v / spent:.0f}%)" for k, v in result.times.items())
    source = POLICY_SOURCES.get(result.init_from, "as recorded in the checkpoint")
    table.caption = (
        f"policy started from {result.init} ({source})\n"
        f"{_start_note(result)}{result.rollouts:,} rollouts on {result.world_size} process(es) · "
        f"scorer {result.scorer} · reference refreshes {result.refreshes} · wall {result.seconds:.1f} s\n{split}\n"
        f"checkpoint: {result.checkpoint or '-'}\n"
        + LOGGED.format(path=Path(result.run_dir) / CKPT_DIRS["rl"] / METRICS)
    )
    return table


def stage_summary(stage: str, result: Any) -> list[Any]:
    """What to print after `stage` (or the report) ran: its headline and tables; nothing on processes other than 0."""
    if stage in ("sft", "rl"):
        if result.rank != 0:
            return []
        if result.already_done:
            return [already_done(stage, result)]
        return [sft_table(result) if stage == "sft" else rl_table(result)]
    if stage == "report":
        from janus_data.report import report_table

        return [report_table(result)]
    if stage == "eval":
        return eval_summary(result)
    from janus_data import summaries

    if stage == "synth":
        out = [summaries.synth_headline(result), summaries.synth_table(result)]
    elif stage == "score" and result.task == "edit":
        out = [summaries.score_headline(result), summaries.edit_score_table(result)]
    elif stage == "score":
        histogram = summaries.score_histogram(result) if result.histogram.height else None
        out = [summaries.score_headline(result), summaries.score_table(result), histogram]
    else:
        out = [summaries.filter_headline(result), summaries.filter_table(result)]
    return [part for part in out if part]


def eval_summary(result: RunEvalResult) -> list[Any]:
    """The eval stage: what it measured (or why nothing), then `janus eval`'s own tables."""
    from janus_eval.tables import geneval_tables, judge_eval_tables

    skipped = f" ({', '.join(result.skipped)} not trained yet: skipped)" if result.skipped else ""
    if not result.ran:
        return ["[dim]eval: no prompt set in the config (eval.geneval_prompts, eval.judge_prompts): nothing to do[/]"]
    out: list[Any] = [f"[bold]eval[/]: {', '.join(result.checkpoints)}{skipped}"]
    if result.geneval is not None:
        out += geneval_tables(result.geneval)
    if result.judge is not None:
        out += judge_eval_tables(result.judge)
    return out


def outcome_summary(outcome: StageOutcome) -> list[Any]:
    """What `janus run` prints as it finishes a stage, or finds it already complete."""
    if outcome.status == "skipped":
        return [f"[dim]skip {outcome.stage}: already complete with these inputs[/]"]
    if isinstance(outcome.result, list):  # text-to-image and edits (`run_pipeline`'s edits)
        return [part for result in outcome.result for part in stage_summary(outcome.stage, result)]
    return stage_summary(outcome.stage, outcome.result)


def outputs_table(run_dir: Path, outcomes: list[StageOutcome], report: Path | None = None) -> Table:
    """What the chain produced and where."""
    table = Table(title=f"janus run — {run_dir}", title_justify="left", box=box.SIMPLE)
    for col in ("stage", "status", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left", no_wrap=True, min_width=7)
    table.add_column("outputs", overflow="fold")
    for o in outcomes:
        seconds = f"{o.seconds:.1f}" if o.status == "ran" else "-"
        table.add_row(o.stage, o.status, seconds, f"{run_dir}/{STAGE_OUTPUTS[o.stage]}")
    if report is not None:
        table.caption = f"report: {report}"
        table.caption_justify = "left"
    return table
