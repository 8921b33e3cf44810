"""Checks of a stage's inputs that need neither torch nor polars, so a bad path fails in milliseconds.

`janus_run.stages` runs them before it imports a stage (and with it torch, polars and the model
libraries); the stages run the same checks themselves, for library callers.
"""

from __future__ import annotations

from pathlib import Path

from janus_data.config_train import RLConfig, SFTConfig, sft_task_weights
from janus_data.errors import RunDirError
from janus_data.janus_format import EDIT_TASKS, TASKS
from janus_data.manifest import (
    EDIT_IMAGES_KIND,
    EDIT_SCORES_KIND,
    EDITS_KIND,
    IMAGES_KIND,
    PROMPTS_KIND,
    SCORES_KIND,
    manifest_dir,
    part_files,
)
from janus_data.prompts import check_prompt_file
from janus_data.rundir import SFT_DIR, SFT_EDIT_DIR, STATE_FILE


def require_images(run_dir: Path) -> None:
    """`janus data score`'s input: the run's image manifest."""
    if not manifest_dir(run_dir, IMAGES_KIND).exists():
        raise RunDirError(f"run {run_dir} has no image manifest", hint="run `janus data synth` on it first")


def require_edits(run_dir: Path) -> None:
    """`janus data synth --task edit` without --edits: the run's edits manifest."""
    if not part_files(run_dir, EDITS_KIND):
        raise RunDirError(f"run {run_dir} has no edits", hint="pass an edit source with --edits FILE")


def require_edit_images(run_dir: Path) -> None:
    """`janus data score --task edit`'s input: the run's candidate edits."""
    if not part_files(run_dir, EDIT_IMAGES_KIND):
        raise RunDirError(
            f"run {run_dir} has no edit image manifest",
            hint="run `janus data synth --task edit --edits FILE` on it first",
        )


def require_edit_scores(run_dir: Path) -> None:
    """`janus data filter --task edit`'s inputs: the edits, the candidate edits and their scores."""
    synth = "janus data synth --task edit --edits FILE"
    for kind, stage in (
        (EDITS_KIND, synth),
        (EDIT_IMAGES_KIND, synth),
        (EDIT_SCORES_KIND, "janus data score --task edit"),
    ):
        if not part_files(run_dir, kind):
            raise RunDirError(f"run {run_dir} has no {kind} manifest", hint=f"run `{stage}` on it first")


def require_manifests(run_dir: Path) -> None:
    """`janus data filter`'s inputs: every manifest it joins, or a one-line error says which stage to run."""
    for kind, stage in ((PROMPTS_KIND, "synth"), (IMAGES_KIND, "synth"), (SCORES_KIND, "score")):
        if not part_files(run_dir, kind):
            raise RunDirError(f"run {run_dir} has no {kind} manifest", hint=f"run `janus data {stage}` on it first")


def require_report_inputs(run_dir: Path) -> None:
    """`janus data report`'s input: a run with images (text-to-image candidates or candidate edits) at least."""
    if not part_files(run_dir, IMAGES_KIND) and not part_files(run_dir, EDIT_IMAGES_KIND):
        what = "does not exist" if not Path(run_dir).exists() else "has no image manifest"
        raise RunDirError(f"run {run_dir} {what}", hint=f"run `janus data synth --run {run_dir}` first, or fix --run")


def require_sft_shards(run_dir: Path, scfg: SFTConfig | None = None) -> None:
    """`janus train sft`'s input: the filter's finished shards that the task weights draw from
    (`sft_task_weights`: the t2i shards unless sft.edit_share is 1, the edit shards when it is > 0;
    no `scfg`: the t2i shards). janus_train.sft checks the same."""
    weights = sft_task_weights(scfg if scfg is not None else SFTConfig())
    drawn = {t for t, w in weights.items() if w > 0}
    if drawn & set(TASKS) and not (Path(run_dir) / SFT_DIR / STATE_FILE).is_file():
        raise RunDirError(f"run {run_dir} has no SFT shards", hint="run `janus data filter` on it first")
    if drawn & set(EDIT_TASKS) and not (Path(run_dir) / SFT_EDIT_DIR / STATE_FILE).is_file():
        raise RunDirError(
            f"run {run_dir} has no edit SFT shards (sft.edit_share > 0)",
            hint="run `janus data filter --task edit` on it first, or set sft.edit_share to 0",
        )


def require_rl_inputs(run_dir: Path, rl: RLConfig) -> None:
    """`janus train rl`'s prompts (unless every step edits) and, with rl.edit_share > 0, its edits."""
    if rl.edit_share < 1:
        require_rl_prompts(run_dir, rl.prompts)
    if rl.edit_share <= 0:
        return
    if rl.edits:
        from janus_data.edit_sources import check_edit_source

        check_edit_source(Path(rl.edits))
    elif not part_files(run_dir, EDITS_KIND):
        raise RunDirError(
            f"rl.edit_share is {rl.edit_share} but run {run_dir} has no edits",
            hint="set rl.edits to an edit source file, run `janus data synth --task edit`, or set rl.edit_share 0",
        )


def require_rl_prompts(run_dir: Path, prompts: str | None) -> None:
    """`janus train rl`'s prompts: `rl.prompts` if set, else the run's (janus_train.grpo checks the same)."""
    if prompts:
        check_prompt_file(prompts)
    elif not manifest_dir(run_dir, PROMPTS_KIND).exists():
        raise RunDirError(f"run {run_dir} has no prompts", hint="set rl.prompts to a prompt file, or run synth first")
