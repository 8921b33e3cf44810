"""`janus eval geneval|judge`: measure checkpoints (docs/evaluation.md)."""

from __future__ import annotations

import typer

from janus_cli.eval_geneval import geneval
from janus_cli.eval_judge import judge

eval_app = typer.Typer(help="Measure checkpoints: GenEval, judge-based scores.", no_args_is_help=True)
eval_app.command("geneval")(geneval)
eval_app.command("judge")(judge)
