"""What every `janus` command shares: option aliases, one-line errors, printing summaries."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from janus_data.errors import JanusError, one_line
from janus_data.progress import console

F = TypeVar("F", bound=Callable[..., Any])

# Shared option aliases.
RunOpt = Annotated[
    Path, typer.Option("--run", "--run-dir", help="Run directory (created if missing); --run-dir under torchrun.")
]
ConfigOpt = Annotated[
    str, typer.Option("--config", "-c", help="Preset name (tiny, paper) or a YAML file over the typed configs.")
]
RunConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Preset or YAML file [default: the run's own config.yaml, else paper]."),
]
RankOpt = Annotated[int | None, typer.Option(help="This process's rank [default: RANK or SLURM_PROCID, else 0].")]
WorldOpt = Annotated[
    int | None, typer.Option(help="Number of processes [default: WORLD_SIZE or SLURM_NTASKS, else 1].")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def user_errors(fn: F) -> F:
    """Print JanusError as one line and exit 2; JANUS_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(os.environ.get("JANUS_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except JanusError as err:
            if debug:
                raise
            raise fail(str(err), 2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] finished batches are kept; rerun the same command to resume")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:  # last line of defence: one line, not a traceback
            if debug:
                raise
            hint = "rerun with JANUS_DEBUG=1 for the traceback"
            raise fail(f"{type(err).__name__}: {one_line(err)} ({hint})", 1) from None

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int) -> typer.Exit:
    """Print `message` as the one error line; the exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def show(*parts: Any) -> None:
    """Print a summary: headlines (with markup) and tables."""
    for part in parts:
        console.print(part, highlight=False)


def show_stage(stage: str, result: Any) -> None:
    """A stage's headline and tables (process 0 only for the trainers)."""
    from janus_run.summary import stage_summary

    show(*stage_summary(stage, result))


def show_outcome(outcome: Any) -> None:
    """As `janus run` finishes a stage: its summary, or that it was already complete."""
    from janus_run.summary import outcome_summary

    show(*outcome_summary(outcome))


def bars(progress: bool) -> bool | None:
    """--progress leaves the choice to the terminal (None); --no-progress turns bars off."""
    return None if progress else False


def section(name: str, **flags: Any) -> dict[str, Any]:
    """Config overrides for one section: the flags that were given."""
    return {name: {k: v for k, v in flags.items() if v is not None}}
