"""`janus eval judge`: a prompt set drawn by each checkpoint and scored by the run's judge (janus_eval.judge_eval)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from janus_cli.common import ProgressOpt, RunConfigOpt, bars, section, show, user_errors
from janus_data.errors import ConfigError
from janus_data.progress import quiet_libraries

if TYPE_CHECKING:
    from janus_data.config import JanusRunConfig


def check_inputs(run: Path | None, out: Path | None) -> None:
    """What fails before the config loads: where results go, and the run."""
    from janus_eval.gen_checks import check_run

    if run is None and out is None:
        raise ConfigError(
            "nowhere to write the results", hint="pass --run RUN (results in RUN/eval/judge) or --out DIR"
        )
    check_run(run)


def prompt_file(prompts: Path | None, cfg: JanusRunConfig) -> Path:
    """--prompts, else eval.judge_prompts, checked (a missing or malformed file fails in one line)."""
    from janus_data.prompts import check_prompt_file

    path = prompts or (Path(cfg.eval.judge_prompts) if cfg.eval.judge_prompts else None)
    if path is None:
        raise ConfigError("no prompt file to draw", hint="pass --prompts FILE (or set eval.judge_prompts)")
    check_prompt_file(path)
    return path


@user_errors
def judge(
    checkpoint: Annotated[
        list[str],
        typer.Option(
            "--checkpoint",
            help="base (synth.janus.model), sft or rl (the run's latest), a checkpoint directory or a hub id; repeat to compare.",
        ),
    ],
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Prompt file: .jsonl, .csv, .parquet or .txt (DPG-Bench, T2I-CompBench, your own); tags kept "
            "[config: eval.judge_prompts]."
        ),
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run", "--run-dir", help="The run: its config, checkpoints and judge; results in RUN/eval/judge."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Results directory [default: RUN/eval/judge]; one folder per checkpoint.")
    ] = None,
    config: RunConfigOpt = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", help="Judge server base URL; repeat for several (sets score.backend to lmdeploy)."),
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Images per prompt [config: eval.images_per_prompt].")] = None,
    introspect: Annotated[
        bool | None,
        typer.Option("--introspect/--no-introspect", help="Image, own Yes/No, redraw on No [config: eval.introspect]."),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Most redraws per image with --introspect [config: eval.rounds].")
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Draw a prompt set with each checkpoint and score every image with the judge: mean S and pass rate per tag.

    Rerun the same command to resume: only missing images are drawn and only unscored ones judged.
    Example: janus eval judge --run runs/r1 --checkpoint base --checkpoint rl --prompts dpg_bench.jsonl
    """
    quiet_libraries()
    check_inputs(run, out)
    from janus_data.config import load_config
    from janus_data.eval_results import JUDGE, eval_root
    from janus_data.rundir import load_run_config
    from janus_eval.checkpoints import resolve_checkpoint

    overrides = section("eval", images_per_prompt=n, introspect=introspect, rounds=rounds)
    if endpoint:
        overrides |= section("score", backend="lmdeploy", endpoints=list(endpoint))
    cfg = load_run_config(run, config, overrides) if run is not None else load_config(config or "paper", overrides)
    prompts = prompt_file(prompts, cfg)
    for ref in checkpoint:
        resolve_checkpoint(ref, run, cfg)  # a missing checkpoint fails here, before torch loads
    out_root = out if out is not None else eval_root(run, JUDGE)
    from janus_eval.judge_eval import run_judge_eval
    from janus_eval.tables import judge_eval_tables

    result = run_judge_eval(checkpoint, prompts, out_root, cfg, run_dir=run, progress=bars(progress))
    show(*judge_eval_tables(result))
