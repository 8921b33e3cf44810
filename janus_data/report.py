"""The run report: one self-contained HTML page (inline CSS, no JS, no network) of every stage of a run.

`build_report` writes `<run>/report/index.html` and `<run>/report/assets/*` (PNG thumbnails and
strips, SVG plots) into a temp directory next to the target and swaps it in with renames, so a
killed report never leaves a half-written one. Each section has a stable id and says
"not run yet: <command>" when its stage has not run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from janus_data.report_data import RunData, load_run
from janus_data.report_edit import edit_section
from janus_data.report_eval import evaluation
from janus_data.report_html import CSS, NOT_RUN, Assets, esc
from janus_data.report_sections import LOSSES, RL_PLOTS, RL_SUMMARY, SFT_PLOTS, curves, overview, samples, scores, tasks

# Section id -> (heading, how a note names its stage: "GRPO: not run yet"), in page order.
SECTIONS = {
    "overview": ("Overview", "overview"),
    "scores": ("Judge scores", "scores"),
    "tasks": ("SFT tasks", "SFT data"),
    "samples": ("Samples", "samples"),
    "sft": ("SFT", "SFT"),
    "rl": ("GRPO", "GRPO"),
}
# Written only when the run has edits (`janus data synth --task edit`), after `samples`, and only when
# it has evaluation results (`janus eval geneval|judge`), after the others.
HEADINGS = SECTIONS | {"edit": ("Image editing", "image editing"), "eval": ("Evaluation", "evaluation")}


@dataclass
class ReportResult:
    """What `build_report` wrote."""

    path: Path  # <out>/index.html
    sections: list[str]  # ids of the sections written, in order
    assets: list[Path]  # every file the HTML references
    notes: list[str] = field(default_factory=list)  # e.g. "GRPO: not run yet"


def render(d: RunData, bodies: dict[str, str], notes: list[str]) -> str:
    nav = "".join(f'<a href="#{s}">{HEADINGS[s][0]}</a>' for s in bodies)
    sections = "".join(f'<section id="{s}"><h2>{HEADINGS[s][0]}</h2>{body}</section>' for s, body in bodies.items())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = f'<p class="sub">{esc(" · ".join(notes))}</p>' if notes else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>janus report · {esc(d.run_dir.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>janus run report</h1><div class='sub'>run <code>{esc(d.run_dir)}</code> · "
        f"generated {stamp}</div>{note}</header><nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )


def _swap(tmp: Path, out: Path) -> None:
    """Replace `out` with the finished `tmp` directory by renames (a directory cannot be replaced in one)."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _clean_leftovers(out: Path) -> None:
    """Temp and old directories a killed report left next to `out`."""
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for p in out.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def build_report(
    run_dir: Path, out_dir: Path | None = None, prompts_shown: int = 6, edits_shown: int = 4
) -> ReportResult:
    """Write the HTML report of a run to `out_dir` (default <run>/report) and return what was written.

    `prompts_shown`: prompts in the samples section (and the evaluation's grid); `edits_shown`: edits in the
    image-editing gallery (half with the highest mean R, half with the lowest)."""
    run_dir = Path(run_dir)
    data, notes = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        assets = Assets(tmp)
        bodies = {
            "overview": overview(data, assets),
            "scores": scores(data, assets),
            "tasks": tasks(data, assets),
            "samples": samples(data, assets, prompts_shown, notes),
        }
        if (body := edit_section(data, assets, edits_shown, notes)) is not None:
            bodies["edit"] = body
        bodies["sft"] = curves(data, assets, "sft", "train sft", SFT_PLOTS, LOSSES)
        bodies["rl"] = curves(data, assets, "rl", "train rl", RL_PLOTS, RL_SUMMARY)
        if (body := evaluation(run_dir, assets, prompts_shown, notes)) is not None:
            bodies["eval"] = body
        notes[:0] = [f"{SECTIONS[s][1]}: {NOT_RUN}" for s in SECTIONS if 'class="notrun"' in bodies[s]]
        (tmp / "index.html").write_text(render(data, bodies, notes), encoding="utf-8")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReportResult(out / "index.html", list(bodies), [out / n for n in assets.names], notes)


def report_table(result: ReportResult) -> Table:
    """A short terminal summary: each section and whether it has data."""
    t = Table(title="janus data report", title_justify="left")
    t.add_column("section")
    t.add_column("status")
    for s in result.sections:
        t.add_row(HEADINGS[s][0], NOT_RUN if f"{HEADINGS[s][1]}: {NOT_RUN}" in result.notes else "ok")
    t.caption = f"{len(result.assets)} assets · open {result.path}"
    t.caption_justify = "left"
    return t
