"""`janus demo`: every stage on a small prompt file with tiny random models on CPU, its evaluation, a contact sheet, the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from janus_data.config import DEMO_EDITS, GENEVAL_DEMO, demo_prompts_path, load_config, with_overrides
from janus_run import stages
from janus_run.pipeline import StageOutcome, run_pipeline

NOTE = "tiny random models on CPU: they demonstrate the mechanics, not image quality"
CONTACT_SHEET = "contact_sheet.png"


@dataclass
class DemoResult:
    """What the demo ran and wrote."""

    run_dir: Path
    outcomes: list[StageOutcome]
    contact_sheet: Path
    report: Path

    def epilogue(self) -> str:
        """Where to look next, and the reminder that tiny models draw noise."""
        samples = self.run_dir / "manifests" / "samples" / "samples.parquet"
        return (
            f"contact sheet: {self.contact_sheet}\nreport: {self.report}  (open it in a browser)\n"
            f"inspect: python -c \"import polars as pl; print(pl.read_parquet('{samples}'))\"\n"
            f"[bold]Remember[/]: {NOTE}."
        )


# The demo's small edit run: a quarter of SFT's samples and half of GRPO's steps are edits; 8 candidate
# edits per source, good at q >= 0.5 (the tiny random judge rarely gives an edit more).
DEMO_EDIT_SHARE = {"sft": 0.25, "rl": 0.5}
DEMO_EDIT = {"images_per_source": 8, "threshold": 0.5}


def demo_config(prompts: Path):
    """The `tiny` preset, ending with the eval stage: GenEval on the bundled GenEval-format prompts and
    the judge on the demo prompts, for the base, SFT and GRPO checkpoints, with the introspective chain.
    SFT and GRPO mix in the bundled edits (`DEMO_EDIT_SHARE`)."""
    evaluation = {"geneval_prompts": str(demo_prompts_path(GENEVAL_DEMO)), "judge_prompts": str(prompts)}
    overrides = {"eval": {**evaluation, "introspect": True, "images_per_prompt": 1}}
    overrides |= {stage: {"edit_share": share} for stage, share in DEMO_EDIT_SHARE.items()}
    overrides["edit"] = DEMO_EDIT
    return with_overrides(load_config("tiny"), overrides)


def run_demo(
    run_dir: Path,
    prompts: Path,
    progress: bool | None = None,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> DemoResult:
    """The `tiny` preset's chain on `prompts` and the bundled edits (resumable like `janus run`), a contact
    sheet, the report."""
    from janus_data.contact import contact_sheet

    run_dir = Path(run_dir)
    outcomes = run_pipeline(
        run_dir,
        demo_config(prompts),
        prompts,
        progress=progress,
        on_stage=on_stage,
        resume_hint=f"janus demo --run {run_dir}",
        edits=demo_prompts_path(DEMO_EDITS),
    )
    sheet = contact_sheet(run_dir, run_dir / CONTACT_SHEET)
    return DemoResult(run_dir, outcomes, sheet, stages.report(run_dir).path)
