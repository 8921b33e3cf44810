"""The six stages: their order, where each writes, and an entry point per stage.

Each entry point checks the stage's inputs (prompt file, run directory, the manifests it reads)
in milliseconds, and only then imports its stage and with it torch, polars and the model
libraries: a bad input costs what `janus --help` costs, not ten seconds of imports. The `janus`
commands and `janus run` call these; `janus_data.synth.run_synth` and the other stage functions
remain the library API (they check the same inputs themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from janus_data.checks import (
    require_edit_images,
    require_edit_scores,
    require_edits,
    require_images,
    require_manifests,
    require_report_inputs,
    require_rl_inputs,
    require_sft_shards,
)
from janus_data.config import JanusRunConfig
from janus_data.dist import Shard
from janus_data.edit_sources import check_edit_source
from janus_data.errors import ConfigError
from janus_data.manifest import ensure_writable
from janus_data.prompts import check_prompt_file, require_prompts
from janus_data.rundir import CKPT_DIRS

if TYPE_CHECKING:
    from janus_data.filter import FilterResult
    from janus_data.report import ReportResult
    from janus_data.score import ScoreResult
    from janus_data.synth import SynthResult
    from janus_eval.run_eval import RunEvalResult
    from janus_train.rl import RLResult
    from janus_train.sft import SFTResult

STAGES = ("synth", "score", "filter", "sft", "rl", "eval")
DATA_TASKS = ("t2i", "edit")  # `janus data synth|score --task`: text-to-image, or instruction edits (docs/edit.md)
# What each stage writes, relative to the run directory.
STAGE_OUTPUTS = {
    "synth": "manifests/images, images/",
    "score": "manifests/scores",
    "filter": "sft/{t2i,judge,regen}/*.tar, manifests/samples (edits: sft_edit/, manifests/edit_samples)",
    "sft": CKPT_DIRS["sft"],
    "rl": CKPT_DIRS["rl"],
    "eval": "eval/{geneval,judge}/<checkpoint>/",
}


def synth(
    run_dir: Path,
    cfg: JanusRunConfig,
    prompts: Path | None = None,
    shard: Shard = Shard(),
    progress: bool | None = None,
    task: str = "t2i",
    edits: Path | None = None,
) -> SynthResult:
    """`janus data synth`: the prompt file (else the run's prompts) and the run directory, then the stage."""
    if _task(task) == "edit":
        return synth_edits(run_dir, cfg, edits, shard, progress, prompts=prompts)
    if edits is not None:
        raise ConfigError("--edits is an edit source for --task edit", hint="add --task edit, or pass --prompts")
    if prompts is not None:
        check_prompt_file(prompts)
    else:
        require_prompts(run_dir)
    ensure_writable(run_dir)
    from janus_data.synth import run_synth

    return run_synth(run_dir, cfg, prompts, shard, progress=progress)


def synth_edits(
    run_dir: Path,
    cfg: JanusRunConfig,
    edits: Path | None = None,
    shard: Shard = Shard(),
    progress: bool | None = None,
    prompts: Path | None = None,
) -> SynthResult:
    """`janus data synth --task edit`: the edit source (else the run's edits), read and decoded before torch loads."""
    if prompts is not None:
        raise ConfigError("--prompts is a prompt file for --task t2i", hint="pass the edit source with --edits FILE")
    if edits is not None:
        check_edit_source(edits)
    else:
        require_edits(run_dir)
    ensure_writable(run_dir)
    loaded = None
    if edits is not None:
        from janus_data.edit_sources import load_edits  # polars and PIL: an undecodable image fails before torch

        loaded = load_edits(edits, skip_bad_images=cfg.edit.skip_bad_images)
    from janus_data.edit_synth import run_edit_synth

    return run_edit_synth(run_dir, cfg, edits, shard, progress=progress, loaded=loaded)


def _task(task: str) -> str:
    if task not in DATA_TASKS:
        raise ConfigError(f"--task must be one of {', '.join(DATA_TASKS)}, got {task!r}")
    return task


def score(
    run_dir: Path, cfg: JanusRunConfig, shard: Shard = Shard(), progress: bool | None = None, task: str = "t2i"
) -> ScoreResult:
    """`janus data score`: the run's image manifest (edit image manifest for --task edit), then the stage."""
    if _task(task) == "edit":
        require_edit_images(run_dir)
        from janus_data.edit_score import run_edit_score

        return run_edit_score(run_dir, cfg, shard, progress=progress)
    require_images(run_dir)
    from janus_data.score import run_score

    return run_score(run_dir, cfg, shard, progress=progress)


def filter_(run_dir: Path, cfg: JanusRunConfig, progress: bool | None = None, task: str = "t2i") -> FilterResult:
    """`janus data filter`: the prompts, images and scores manifests (the edit manifests for --task edit), then
    the stage."""
    if _task(task) == "edit":
        require_edit_scores(run_dir)
    else:
        require_manifests(run_dir)
    from janus_data.filter import run_filter

    return run_filter(run_dir, cfg, progress=progress, task=task)


def sft(
    run_dir: Path,
    cfg: JanusRunConfig,
    max_steps: int | None = None,
    resume: bool = False,
    restart: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> SFTResult:
    """`janus train sft`: the filter's shards its task weights draw from, then the trainer (`sft.run_sft`)."""
    require_sft_shards(run_dir, cfg.sft)
    from janus_train.sft import run_sft

    return run_sft(run_dir, cfg, max_steps, resume=resume, restart=restart, progress=progress, log=log)


def rl(
    run_dir: Path,
    cfg: JanusRunConfig,
    init: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    restart: bool = False,
    from_base: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> RLResult:
    """`janus train rl`: the RL prompts (rl.prompts, else the run's) and edits (rl.edit_share > 0), then the trainer."""
    require_rl_inputs(run_dir, cfg.rl)
    from janus_train.rl import run_rl

    flags = {"resume": resume, "restart": restart, "from_base": from_base}
    return run_rl(run_dir, cfg, init, max_steps, **flags, progress=progress, log=log)


def eval_(run_dir: Path, cfg: JanusRunConfig, progress: bool | None = None) -> RunEvalResult:
    """`janus run`'s eval stage: the prompt sets the config names, checked, then GenEval and the judge (`run_eval`)."""
    from janus_eval.geneval_rules import check_geneval_file

    if cfg.eval.geneval_prompts:
        check_geneval_file(Path(cfg.eval.geneval_prompts))
    if cfg.eval.judge_prompts:
        check_prompt_file(Path(cfg.eval.judge_prompts))
    from janus_eval.run_eval import evaluate_run

    return evaluate_run(run_dir, cfg, progress=progress)


def report(run_dir: Path, out: Path | None = None, prompts_shown: int = 6) -> ReportResult:
    """`janus data report`: a run with images, then the HTML report."""
    require_report_inputs(run_dir)
    from janus_data.report import build_report

    return build_report(run_dir, out, prompts_shown=prompts_shown)
