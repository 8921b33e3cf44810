"""Rich progress bars with throughput, shared by every stage."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)  # paths and commands stay copy-pasteable


class RateColumn(ProgressColumn):
    """Items per second, with the task's unit (e.g. 'img/s')."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if speed is None:
            return Text(f"-- {unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.2f} {unit}/s", style="progress.data.speed")


def progress_enabled() -> bool:
    """Bars on a terminal unless JANUS_NO_PROGRESS is set."""
    return sys.stderr.isatty() and not os.environ.get("JANUS_NO_PROGRESS")


def stage_progress(enabled: bool | None = None) -> Progress:
    """A progress display with rate and ETA; silent when disabled (tests, logs)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (progress_enabled() if enabled is None else enabled),
        transient=False,
    )


# transformers reads these when it is imported; diffusers reads its verbosity and follows the hub's
# progress-bar switch in `quiet_diffusers`. Set here, nothing heavy is imported before a command
# has checked its inputs.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}


def quiet_libraries() -> None:
    """Silence transformers/diffusers progress bars and chatter; our own bars say enough."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:  # already imported: its environment was read before this call
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        quiet_diffusers()


def quiet_diffusers() -> None:
    """diffusers' loading bar has no environment switch: follow the hub's (set by `quiet_libraries`)."""
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().lower() in ("1", "on", "yes", "true"):
        import diffusers

        diffusers.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
