"""Terminal tables of evaluation summaries (GenEval and judge-based): per checkpoint and tag, and labels side by side.

Both take summary frames as written to disk (`label`, `tag`, a count and metric columns, maybe an
`image` column: first | final), so any evaluation of that shape can use them; the report lays out
the same side-by-side view in HTML (`janus_data.eval_results.side_by_side`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

from janus_data.eval_results import filtered, fmt_delta, fmt_metric, ordered, side_by_side

if TYPE_CHECKING:
    import polars as pl

    from janus_eval.geneval import GenEvalResult, GenEvalRun
    from janus_eval.judge_eval import JudgeEvalResult, JudgeEvalRun


def _caption(table: Table, caption: str | None) -> Table:
    if caption:
        table.caption, table.caption_justify = caption, "left"
    return table


def tag_table(
    summary: pl.DataFrame,
    metrics: Mapping[str, str],
    *,
    title: str,
    where: Mapping[str, object] | None = None,
    percent: Sequence[str] = (),
    count: str = "n_images",
    tag_order: Sequence[str] | None = None,
    caption: str | None = None,
) -> Table:
    """One row per checkpoint label and tag: the image count and each metric ({header: column}).

    `where` keeps the rows whose columns equal the given values (e.g. {"image": "final"}); the
    columns named in `percent` print as percentages.
    """
    frame = filtered(summary, where)
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for name in ("checkpoint", "tag"):
        table.add_column(name)
    table.add_column("images", justify="right")
    for header in metrics:
        table.add_column(header, justify="right", no_wrap=True)
    for label in dict.fromkeys(frame["label"].to_list()):
        rows = {r["tag"]: r for r in frame.filter(frame["label"] == label).iter_rows(named=True)}
        tags = ordered(list(rows), tag_order)
        for tag in tags:
            r = rows[tag]
            cells = [fmt_metric(r.get(col), col in percent) for col in metrics.values()]
            table.add_row(label, tag, f"{r.get(count) or 0:,}", *cells, end_section=tag == tags[-1])
    return _caption(table, caption)


def comparison_table(
    summary_frames: Sequence[pl.DataFrame] | pl.DataFrame,
    metric: str,
    *,
    title: str | None = None,
    where: Mapping[str, object] | None = None,
    labels: Sequence[str] | None = None,
    tag_order: Sequence[str] | None = None,
    percent: bool = False,
    digits: int = 3,
    delta: bool = True,
    caption: str | None = None,
) -> Table:
    """Checkpoints side by side: one row per tag, one column per label holding `metric`.

    The frames are stacked (one per checkpoint, or one holding several labels); `where` filters
    them (e.g. {"image": "final"}); `labels` and `tag_order` fix the column and row order (default:
    first seen). With two or more labels and `delta`, a last column gives the last label minus the first.
    GenEval: comparison_table(frames, "accuracy", where={"image": "final"}, percent=True).
    """
    view = side_by_side(summary_frames, metric, where=where, labels=labels, tag_order=tag_order)
    table = Table(title=title or metric, title_justify="left", box=box.SIMPLE)
    table.add_column("tag")
    for label in view.labels:
        table.add_column(label, justify="right", no_wrap=True)
    show_delta = delta and len(view.labels) >= 2
    if show_delta:
        table.add_column(f"{view.labels[-1]} − {view.labels[0]}", justify="right", no_wrap=True)
    for tag in view.tags:
        cells = [fmt_metric(view.values.get((label, tag)), percent, digits) for label in view.labels]
        table.add_row(tag, *cells, *([fmt_delta(view.delta(tag), percent, digits)] if show_delta else []))
    return _caption(table, caption)


def judge_eval_tables(run: JudgeEvalRun) -> list[object]:
    """`janus eval judge`'s summary: a headline, per checkpoint and tag, then the labels side by side."""
    judged = sum(r.written for r in run.results)
    existing = sum(r.existing for r in run.results)
    if judged:
        judges = ", ".join(sorted({r.judge for r in run.results if r.judge}))
        head = f"[bold]janus eval judge[/]: {judged:,} images judged by {judges}, {existing:,} already scored"
    else:
        head = f"[bold]janus eval judge[/]: nothing to do: all {existing:,} images already scored"
    final = {"image": "final"}
    pass_col = f"pass (S ≥ {run.threshold:g})"
    where = "\n".join(f"{r.label}: {r.out}{_problems(r)}" for r in run.results)
    parts: list[object] = [
        head,
        tag_table(
            run.summary,
            {"mean S": "mean_score", pass_col: "pass_rate"},
            title="judge-based scores per checkpoint and tag (the final image of each chain)",
            where=final,
            percent=("pass_rate",),
            caption=where,
        ),
    ]
    if len(run.results) >= 2:
        labels = [r.label for r in run.results]
        for metric, title, percent in (("mean_score", "mean S", False), ("pass_rate", pass_col, True)):
            parts.append(
                comparison_table(run.summary, metric, title=title, where=final, labels=labels, percent=percent)
            )
    return parts


def _problems(result: JudgeEvalResult) -> str:
    what = [f"{n:,} {k}" for n, k in ((result.errors, "error rows: rerun to judge again"), (result.flagged, "flagged"))]
    what = [w for w in what if not w.startswith("0 ")]
    return f" ({', '.join(what)})" if what else ""


def geneval_tables(run: GenEvalRun) -> list[object]:
    """The headline, one table per checkpoint (tags x first / final accuracy), then the checkpoints side by side."""
    written = sum(r.written for r in run.results)
    existing = sum(r.existing for r in run.results)
    head = f"[bold]janus eval geneval[/]: {written:,} images scored, {existing:,} already scored"
    parts: list[object] = [head, *(checkpoint_table(r) for r in run.results)]
    if len(run.results) >= 2:
        labels = [r.label for r in run.results]
        parts.append(
            comparison_table(
                run.summary,
                "accuracy",
                title="GenEval accuracy (final images)",
                where={"image": "final"},
                labels=labels,
            )
        )
    return parts


def checkpoint_table(result: GenEvalResult) -> object:
    """One checkpoint's GenEval table: a row per tag (overall last), first and final image accuracy."""
    aha = result.introspect.row(0, named=True) if result.introspect is not None else None
    table = Table(title=f"GenEval: {result.label}", title_justify="left", box=box.SIMPLE)
    for name, justify in (("tag", "left"), ("images", "right"), ("first", "right"), ("final", "right")):
        table.add_column(name, justify=justify)
    if aha:
        table.add_column("gain", justify="right")
    rows = {(r["image"], r["tag"]): r for r in result.summary.iter_rows(named=True)}
    for tag in dict.fromkeys(t for _, t in rows):
        first, final = rows.get(("first", tag), {}), rows.get(("final", tag), {})
        cells = [
            tag,
            f"{final.get('n_images') or 0:,}",
            fmt_metric(first.get("accuracy")),
            fmt_metric(final.get("accuracy")),
        ]
        if aha:
            gain = None if not first or not final else final["accuracy"] - first["accuracy"]
            cells.append(fmt_delta(gain))
        table.add_row(*cells, end_section=tag == "overall")
    caption = f"{result.out}"
    if aha:
        caption += (
            f"\nAha gain {fmt_delta(aha['aha_gain'])}, regeneration rate {fmt_metric(aha['regeneration_rate'], True)},"
            f" agreement with GenEval {fmt_metric(aha['agreement'], True)} ({aha['n_evaluated']:,} self-evaluated images)"
        )
    table.caption, table.caption_justify = caption, "left"
    return table
