"""Checks of `janus generate`'s inputs that need neither torch nor polars (milliseconds, one line each).

The CLI runs them before it imports the generator; `run_generate` runs them again for library callers.
"""

from __future__ import annotations

from pathlib import Path

from janus_data.errors import ConfigError, PromptError, RunDirError
from janus_data.manifest import ensure_writable
from janus_data.prompts import check_prompt_file, normalise_prompt


def check_counts(n: int, rounds: int) -> None:
    """Images per prompt and regeneration rounds are >= 1."""
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}", hint="images per prompt (eval.images_per_prompt)")
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}", hint="most regenerations per image (eval.rounds)")


def check_prompt_args(prompt: str | None, prompts: Path | None) -> None:
    """Exactly one of --prompt TEXT and --prompts FILE, and it holds a prompt."""
    if (prompt is None) == (prompts is None):
        both = "both" if prompt is not None else "neither"
        raise PromptError(
            f"{both} of --prompt and --prompts given", hint="pass exactly one: --prompt TEXT or --prompts FILE"
        )
    if prompt is not None and not normalise_prompt(prompt):
        raise PromptError("--prompt is empty", hint="pass the text to draw, e.g. --prompt 'a red cube'")
    if prompts is not None:
        check_prompt_file(prompts)


def check_out(out: Path) -> Path:
    """Create --out if needed and prove it writable (RunDirError naming --out)."""
    try:
        return ensure_writable(out)
    except RunDirError as err:
        detail = err.message.split(" is not writable", 1)[-1]
        raise RunDirError(
            f"output directory {out} is not writable{detail}", hint="pick a directory you can write to with --out"
        ) from None


def check_run(run_dir: Path | None) -> None:
    """--run, when given, is an existing directory (its config and checkpoints are read)."""
    if run_dir is not None and not Path(run_dir).is_dir():
        raise RunDirError(f"run {run_dir} does not exist", hint="pass the run directory of `janus run` or the trainers")
