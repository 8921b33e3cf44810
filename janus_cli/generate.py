"""`janus generate`: images (and, with --introspect, the model's own evaluation and redraws) from a checkpoint.

Every input is checked before torch, transformers or polars is imported (`janus_eval.gen_checks`,
`janus_eval.checkpoints`); the work is `janus_eval.generate.run_generate`. Rerun the same command
to finish an interrupted one: only the missing chains are drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from janus_cli.common import ProgressOpt, RunConfigOpt, bars, show, user_errors
from janus_data.progress import quiet_libraries

if TYPE_CHECKING:
    from janus_eval.generate import GenerateResult


@user_errors
def generate(
    checkpoint: Annotated[
        str,
        typer.Option(help="base, sft or rl (with --run), a checkpoint directory, a hub id, or tiny:janus."),
    ],
    out: Annotated[Path, typer.Option(help="Output directory: images/, manifests/generations/ (created).")],
    prompt: Annotated[str | None, typer.Option(help="One prompt to draw (or --prompts).")] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompt file: JSONL, text, CSV or Parquet (or --prompt).")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Images per prompt [config: eval.images_per_prompt].")] = None,
    introspect: Annotated[
        bool | None,
        typer.Option(
            "--introspect/--no-introspect",
            help="Run the trained chain: image, own Yes/No and reason, redraw on No [config: eval.introspect].",
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Most regenerations per image [config: eval.rounds].")] = None,
    edit: Annotated[
        Path | None, typer.Option("--edit", help="Draw edits of this image (with --instruction; no --prompt).")
    ] = None,
    instruction: Annotated[str | None, typer.Option(help="The editing instruction, with --edit.")] = None,
    config: RunConfigOpt = None,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run whose checkpoints base/sft/rl name, and whose config.yaml is the default."),
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Draw images from a Janus-Pro checkpoint; with --introspect, the model judges and redraws its own.

    Example: janus generate --checkpoint sft --run runs/r1 --prompts my_prompts.jsonl --introspect --out runs/r1/gen
    Edits:   janus generate --checkpoint rl --run runs/r1 --edit photo.jpg --instruction "make it red" --n 4 --out e1
    """
    quiet_libraries()
    from janus_data.config import load_config
    from janus_data.rundir import load_run_config
    from janus_eval.checkpoints import resolve_checkpoint
    from janus_eval.gen_checks import (
        check_counts,
        check_edit_args,
        check_edit_image,
        check_out,
        check_prompt_args,
        check_run,
    )

    check_edit_args(edit, instruction, prompt, prompts, introspect)
    if edit is None:
        check_prompt_args(prompt, prompts)
    else:
        check_edit_image(edit)
    check_run(run)
    cfg = load_run_config(run, config, {}) if run is not None else load_config(config or "paper")
    check_counts(cfg.eval.images_per_prompt if n is None else n, cfg.eval.rounds if rounds is None else rounds)
    resolve_checkpoint(checkpoint, run, cfg)
    check_out(out)
    if edit is not None:
        from janus_eval.generate_edit import run_generate_edit

        chain = {"introspect": introspect, "rounds": rounds}
        result = run_generate_edit(
            checkpoint, edit, instruction, out, cfg, run_dir=run, n=n, progress=bars(progress), **chain
        )
        show(summary(result, what="edit"))
        return
    from janus_eval.generate import prompt_frame, run_generate

    source = prompt_frame([prompt]) if prompt is not None else prompts
    flags = {"run_dir": run, "n": n, "introspect": introspect, "rounds": rounds, "progress": bars(progress)}
    show(summary(run_generate(checkpoint, source, out, cfg, **flags)))


def summary(result: GenerateResult, what: str = "prompts") -> Table:
    """Images, chains, regenerations, the model's Yes rate, speed, time, and where the outputs are."""
    new, total = result.new, result.total
    title = f"janus generate — {result.checkpoint.label} ({result.checkpoint.ref})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE)
    for i, col in enumerate(("", "this call", "in --out")):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    table.add_row("images", f"{new.images:,}", f"{total.images:,}")
    table.add_row(f"chains ({what.rstrip('s')} x sample)", f"{new.chains:,}", f"{total.chains:,}")
    if result.introspect:
        table.add_row("regenerated (said No)", f"{new.regenerated:,}", f"{total.regenerated:,}")
        table.add_row("Yes rate (own evaluation)", _rate(new.yes_rate), _rate(total.yes_rate))
    skipped = f"{result.existing:,} chains already there" + (
        f", {result.repaired} redrawn (images missing)" if result.repaired else ""
    )
    mode = f"introspect, up to {result.rounds} regeneration(s)" if result.introspect else "no introspection"
    if what == "edit":
        mode = f"source as drawn: {result.out / 'edit_source.png'}"
    table.caption = (
        f"{result.n_prompts:,} {what} x {result.n} samples · {mode} · {skipped}\n"
        f"{result.images_per_s:.2f} img/s · wall {result.seconds:.1f} s\n"
        f"images: {result.images_dir}\nmanifest: {result.manifest_dir}"
    )
    table.caption_justify = "left"
    return table


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
