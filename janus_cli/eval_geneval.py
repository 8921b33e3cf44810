"""`janus eval geneval`: GenEval's protocol on one or more checkpoints (`janus_eval.geneval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from janus_cli.common import ProgressOpt, RunConfigOpt, bars, fail, section, show, user_errors
from janus_data.progress import quiet_libraries

CheckpointOpt = Annotated[
    list[str],
    typer.Option("--checkpoint", help="base, sft, rl (the run's), a checkpoint directory or a hub id; repeatable."),
]
PromptsOpt = Annotated[
    Path | None,
    typer.Option(help="GenEval metadata JSONL (evaluation_metadata.jsonl) [config: eval.geneval_prompts]."),
]


@user_errors
def geneval(
    checkpoint: CheckpointOpt,
    prompts: PromptsOpt = None,
    run: Annotated[Path | None, typer.Option(help="Run directory: its config, checkpoints and eval/ folder.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output root: one folder per checkpoint [default: RUN/eval/geneval].")
    ] = None,
    n: Annotated[
        int | None, typer.Option(help="Images per prompt [config: eval.images_per_prompt; GenEval: 4].")
    ] = None,
    introspect: Annotated[
        bool | None,
        typer.Option("--introspect/--no-introspect", help="Run the trained chain: image, own Yes/No, redraw on No."),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(help="With --introspect: most redraws per image [config: eval.rounds].")
    ] = None,
    config: RunConfigOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """GenEval (4 images per prompt, Mask2Former + CLIP, GenEval's rules) per checkpoint; per-tag tables.

    Rerun the same command to resume: only missing images are drawn and scored.
    Example: janus eval geneval --run runs/r1 --checkpoint base --checkpoint rl --prompts evaluation_metadata.jsonl
    """
    quiet_libraries()
    from janus_data.config import load_config
    from janus_data.eval_results import GENEVAL, eval_root
    from janus_data.rundir import load_run_config
    from janus_eval.checkpoints import resolve_checkpoint
    from janus_eval.geneval_rules import check_geneval_file

    overrides = section("eval", images_per_prompt=n, introspect=introspect, rounds=rounds)
    cfg = load_run_config(run, config, overrides) if run else load_config(config or "paper", overrides)
    metadata = prompts or (Path(cfg.eval.geneval_prompts) if cfg.eval.geneval_prompts else None)
    if metadata is None:
        raise fail("no GenEval metadata: pass --prompts evaluation_metadata.jsonl (or set eval.geneval_prompts)", 2)
    check_geneval_file(metadata)
    if out is None and run is None:
        raise fail("nowhere to write: pass --out DIR or --run RUN", 2)
    for ref in checkpoint:
        resolve_checkpoint(ref, run, cfg)  # a missing path or checkpoint fails here, before torch loads
    from janus_eval.geneval import run_geneval

    out_root = out or eval_root(run, GENEVAL)
    result = run_geneval(checkpoint, metadata, out_root, cfg, run_dir=run, progress=bars(progress))
    from janus_eval.tables import geneval_tables

    show(*geneval_tables(result))
