"""`janus run`'s eval stage: GenEval and judge-based scores of the run's own checkpoints.

The config names the prompt sets (`eval.geneval_prompts`, `eval.judge_prompts`; neither: the
stage has nothing to do) and which checkpoints to measure (`eval.checkpoints`: base, sft, rl).
A checkpoint the run does not have yet (no SFT or GRPO checkpoint) is skipped and named. Results
land under `<run>/eval/geneval/<label>/` and `<run>/eval/judge/<label>/`, where `janus eval` and the
report's evaluation section read them; reruns draw and score only what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from janus_data.eval_results import GENEVAL, JUDGE, eval_root
from janus_data.rundir import CKPT_DIRS
from janus_train.checkpoint import latest_checkpoint

if TYPE_CHECKING:
    from janus_data.config import JanusRunConfig
    from janus_eval.geneval import GenEvalRun
    from janus_eval.judge_eval import JudgeEvalRun


@dataclass
class RunEvalResult:
    """What the eval stage measured: the checkpoints, those skipped (not trained yet), each evaluation."""

    run_dir: Path
    checkpoints: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    geneval: GenEvalRun | None = None
    judge: JudgeEvalRun | None = None

    @property
    def ran(self) -> bool:
        return self.geneval is not None or self.judge is not None


def available_checkpoints(run_dir: Path, cfg: JanusRunConfig) -> tuple[list[str], list[str]]:
    """`eval.checkpoints` split into those the run has (base always) and those it has not trained yet."""
    have, missing = [], []
    for ref in cfg.eval.checkpoints:
        present = ref == "base" or latest_checkpoint(Path(run_dir) / CKPT_DIRS[ref]) is not None
        (have if present else missing).append(ref)
    return have, missing


def evaluate_run(run_dir: Path, cfg: JanusRunConfig, progress: bool | None = None) -> RunEvalResult:
    """GenEval on `eval.geneval_prompts` and the judge on `eval.judge_prompts`, each when set."""
    run_dir = Path(run_dir)
    have, missing = available_checkpoints(run_dir, cfg)
    result = RunEvalResult(run_dir, have, missing)
    e = cfg.eval
    if e.geneval_prompts:
        from janus_eval.geneval import run_geneval

        result.geneval = run_geneval(
            have, Path(e.geneval_prompts), eval_root(run_dir, GENEVAL), cfg, run_dir=run_dir, progress=progress
        )
    if e.judge_prompts:
        from janus_eval.judge_eval import run_judge_eval

        result.judge = run_judge_eval(
            have, Path(e.judge_prompts), eval_root(run_dir, JUDGE), cfg, run_dir=run_dir, progress=progress
        )
    return result
