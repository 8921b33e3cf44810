"""Checks of `janus generate`'s inputs that need neither torch nor polars (milliseconds, one line each).

The CLI runs them before it imports the generator; `run_generate` runs them again for library callers.
"""

from __future__ import annotations

from pathlib import Path

from janus_data.errors import ConfigError, PromptError, RunDirError, one_line
from janus_data.manifest import ensure_writable
from janus_data.prompts import check_prompt_file, normalise_prompt


def check_n(n: int) -> None:
    """Images per prompt (or per edit) are >= 1."""
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}", hint="images per prompt (eval.images_per_prompt)")


def check_counts(n: int, rounds: int) -> None:
    """Images per prompt and regeneration rounds are >= 1."""
    check_n(n)
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


def check_edit_args(
    edit: Path | None, instruction: str | None, prompt: str | None, prompts: Path | None, introspect: bool | None
) -> None:
    """--edit IMAGE goes with a non-empty --instruction, and with neither prompt option (--introspect: the edit chain)."""
    if edit is None:
        if instruction is not None:
            raise PromptError("--instruction needs --edit", hint="pass the image to edit: --edit IMAGE")
        return
    if instruction is None or not normalise_prompt(instruction):
        what = "is empty" if instruction is not None else "is missing"
        raise PromptError(f"--edit needs an --instruction; it {what}", hint="e.g. --instruction 'make the car red'")
    clash = [flag for flag, value in (("--prompt", prompt), ("--prompts", prompts)) if value is not None]
    if clash:
        raise PromptError(
            f"--edit cannot be combined with {', '.join(clash)}", hint="draw edits and prompts in separate calls"
        )


def check_edit_image(path: Path) -> None:
    """The --edit image exists and PIL decodes it fully (no torch)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise PromptError(f"--edit image {path} not found", hint="pass an existing image file")
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # PIL raises many types: a truncated PNG, text named .jpg, ...
        raise PromptError(
            f"--edit image {path} cannot be decoded ({type(err).__name__}: {one_line(err, 120)})",
            hint="pass a PNG, JPEG or WebP image",
        ) from None
