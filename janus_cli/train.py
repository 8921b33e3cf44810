"""`janus train sft|rl`: the trainers' commands (`janus_train.sft`, `janus_train.rl`).

A rerun of the same command continues from the stage's latest checkpoint, or says in one line
that the run has finished (`janus_train.resume`). `--restart` sets the checkpoints aside first,
after asking on a terminal (off a terminal it needs `--yes`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from janus_cli.common import ProgressOpt, RunConfigOpt, RunOpt, bars, fail, section, show, show_stage, user_errors
from janus_data.progress import quiet_libraries

train_app = typer.Typer(help="Training: SFT on the filter's shards, then GRPO.", no_args_is_help=True)

MaxStepsOpt = Annotated[
    int | None, typer.Option(help="Train up to this step [config: max_steps]; past a finished run's, trains on.")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Fail if there is no checkpoint (a rerun resumes anyway).")]
RestartOpt = Annotated[bool, typer.Option("--restart", help="Set the stage's checkpoints aside, train from step 0.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Confirm --restart without asking (needed off a terminal).")]


def confirm_restart(run: Path, stage: str, yes: bool) -> None:
    """--restart sets the stage's checkpoints aside: asked on a terminal, else it needs --yes."""
    from janus_data.rundir import CKPT_DIRS
    from janus_train.resume import restart_preview

    what = restart_preview(run / CKPT_DIRS[stage])
    if what is None or yes:
        return
    if not interactive():
        raise fail(f"--restart would set aside {what}: pass --yes to confirm", 2)
    if not typer.confirm(f"set aside {what} and train {stage} from step 0?", default=False):
        raise typer.Exit(1)


def interactive() -> bool:
    """Someone can answer a question: stdin is a terminal and this is the only process (no torchrun)."""
    return sys.stdin.isatty() and int(os.environ.get("WORLD_SIZE", "1")) <= 1


@train_app.command("sft")
@user_errors
def train_sft(
    run: RunOpt,
    config: RunConfigOpt = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    yes: YesOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Mixed sub-task SFT of Janus-Pro (text->image, self-evaluation, regeneration) on the shards.

    Rerun the same command to continue; a finished run says so and does nothing.
    Example: torchrun --nproc-per-node 8 --no-python janus train sft --run-dir runs/r1
    Edit samples too (sft.edit_share: 0.3 in my.yaml; docs/edit.md): janus train sft --run-dir runs/r1 --config my.yaml
    """
    quiet_libraries()
    from janus_data.rundir import load_run_config
    from janus_run import stages

    cfg = load_run_config(run, config, {})
    if restart:
        confirm_restart(run, "sft", yes)
    flags = {"resume": resume, "restart": restart, "progress": bars(progress), "log": show}
    show_stage("sft", stages.sft(run, cfg, max_steps, **flags))


@train_app.command("rl")
@user_errors
def train_rl(
    run: RunOpt,
    init: Annotated[
        str | None,
        typer.Option(help="Policy to start from [config: rl.model; default: the run's latest SFT checkpoint]."),
    ] = None,
    from_base: Annotated[
        bool, typer.Option("--from-base", help="Start from the base model (synth.janus.model), not an SFT checkpoint.")
    ] = False,
    config: RunConfigOpt = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    yes: YesOpt = False,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(help="Judge server base URL (repeatable); sets score.backend to lmdeploy."),
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """GRPO with introspective rollouts (draw, judge yourself, redraw) and dual-layer judge rewards.

    Rerun the same command to continue; a finished run says so and does nothing.
    Example: torchrun --nproc-per-node 8 --no-python janus train rl --run-dir runs/r1 --endpoint http://judge:23333
    Edit steps too (rl.edit_share: 0.3 in my.yaml; docs/edit.md): janus train rl --run-dir runs/r1 --config my.yaml
    """
    quiet_libraries()
    from janus_data.rundir import load_run_config
    from janus_run import stages

    overrides = section("score", backend="lmdeploy", endpoints=list(endpoint)) if endpoint else {}
    cfg = load_run_config(run, config, overrides)
    if restart:
        confirm_restart(run, "rl", yes)
    flags = {"resume": resume, "restart": restart, "from_base": from_base, "progress": bars(progress), "log": show}
    show_stage("rl", stages.rl(run, cfg, init, max_steps, **flags))
