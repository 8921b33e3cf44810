"""`janus run`: synth -> score -> filter -> sft -> rl -> eval from one config, resumable stage by stage.

Each stage is already resumable on its own (it does only the missing work). The chain adds:

- a completion record per stage, `<run>/pipeline/<stage>.json`, written atomically when the
  stage returns. It holds a fingerprint of what the stage's output depends on: its own config
  section, the settings it shares with others (the generator checkpoint, the judge), the prompt
  file's bytes for synth, and the fingerprint of the stage before it. A stage whose record
  matches is skipped without loading a model; a changed setting upstream re-runs everything
  after it (each stage then does only what is missing);
- SFT and GRPO continue from their latest checkpoint when they were stopped midway (the
  trainers do that themselves, `janus_train.resume`). When they had finished with other
  inputs, or were stopped midway under other settings, their old checkpoints are set aside
  (`resume.set_aside`: `checkpoints/<stage>.stale-<fingerprint or date-time>`) and they train
  afresh. To train longer with the same inputs, raise `sft|rl.max_steps` or use
  `janus train sft|rl --max-steps N`;
- the eval stage's results (`<run>/eval/`) are set aside the same way when it finished before
  with other inputs (a retrained checkpoint, other eval settings), so nothing stale is reported;
- the first failure stops the chain with one line naming the stage and the command that
  resumes it. Completed stages stay recorded.

It runs in one process: the stages' own commands are the way to spread a stage over a
cluster (docs/scaling.md). A prompt file is checked before anything is written; each stage's
inputs are checked before its libraries are imported (`janus_run.stages`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from janus_data.config import JanusRunConfig, to_dict
from janus_data.edit_sources import check_edit_source
from janus_data.errors import ConfigError, JanusError, one_line
from janus_data.eval_results import EVAL_DIR
from janus_data.manifest import atomic_write
from janus_data.prompts import check_prompt_file
from janus_data.rundir import CKPT_DIRS, save_run_config
from janus_run import stages
from janus_run.stages import STAGES
from janus_train.resume import is_stale, set_aside

RECORD_DIR = "pipeline"
# The config each stage's output depends on, beyond its own section.
_DEPENDS = {
    "synth": ("runtime.dtype",),
    "score": ("runtime.dtype",),
    "filter": ("synth.janus.model",),
    "sft": ("synth.janus.model",),
    "rl": ("score", "synth.janus.model"),
    # eval draws with synth's sampling, judges with the score section and passes at filter.threshold
    "eval": ("synth.janus", "score", "filter.threshold"),
}


class PipelineError(JanusError):
    """A stage of `janus run` failed."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran" | "skipped"
    seconds: float = 0.0
    result: Any = None


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


EDIT_STAGES = ("synth", "score", "filter")  # the stages that also run `--task edit` when the chain has edits


# Settings added after runs were first recorded: at their defaults they are left out of the fingerprint,
# so a run recorded before they existed is not redone (and its checkpoints not set aside) for them.
LATER_SETTINGS = {"sft": ("edit_share", "edit_mix"), "rl": ("edit_share", "edits")}


def _section(tree: dict[str, Any], stage: str) -> dict[str, Any]:
    defaults = to_dict(JanusRunConfig()).get(stage, {})
    later = LATER_SETTINGS.get(stage, ())
    return {k: v for k, v in tree[stage].items() if not (k in later and v == defaults.get(k))}


def fingerprint(cfg: JanusRunConfig, stage: str, upstream: str, prompts: Path | None, edits: Path | None = None) -> str:
    """What `stage`'s output depends on, as a hex digest (with edits: also the edit section and source)."""
    tree = to_dict(cfg)
    parts = {
        "stage": stage,
        "upstream": upstream,
        "section": _section(tree, stage),
        "depends": {key: _lookup(tree, key) for key in _DEPENDS[stage]},
    }
    if stage == "synth" and prompts is not None:
        parts["prompts"] = _digest(Path(prompts))
    if edits is not None and stage in EDIT_STAGES:  # absent without edits: text-to-image runs keep their records
        parts["edit"] = tree["edit"]
        if stage == "synth":
            parts["edits"] = _digest(Path(edits))
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digest(path: Path) -> str:
    """sha256 of a prompt file's bytes, or of every file (name and bytes) of a saved `datasets` directory.

    An edit source's images are files beside it: their paths are in its bytes, their bytes are not
    (a changed image under the same name is not noticed; `janus data synth --task edit` itself keys
    edits by the image bytes)."""
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def record_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / RECORD_DIR / f"{stage}.json"


def read_record(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = record_path(run_dir, stage)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or torn: the stage counts as not done


def stage_range(start: str | None, stop: str | None) -> list[str]:
    """The stages from `start` to `stop` inclusive, or a one-line error naming the valid ones."""
    for name in (start, stop):
        if name is not None and name not in STAGES:
            raise PipelineError(f"unknown stage '{name}'", hint=f"stages: {', '.join(STAGES)}")
    first = STAGES.index(start) if start else 0
    last = STAGES.index(stop) if stop else len(STAGES) - 1
    if first > last:
        raise PipelineError(f"--from {start} comes after --to {stop}", hint=f"stage order: {' -> '.join(STAGES)}")
    return list(STAGES[first : last + 1])


def run_pipeline(
    run_dir: Path,
    cfg: JanusRunConfig,
    prompts: Path | None = None,
    start: str | None = None,
    stop: str | None = None,
    progress: bool | None = None,
    on_stage: Callable[[StageOutcome], None] | None = None,
    resume_hint: str = "janus run",
    edits: Path | None = None,
) -> list[StageOutcome]:
    """Run the selected stages in order, skipping those already complete with the same inputs.

    `on_stage` is called after each stage (ran or skipped), e.g. to print its summary.
    `resume_hint` is the command line a failure message tells the user to rerun.
    `edits`: an edit source; synth, score and filter then run on the edits too (their result is
    then the list [text-to-image result, edit result]) for sft.edit_share and rl.edit_share.
    """
    run_dir = Path(run_dir)
    selected = stage_range(start, stop)
    if prompts is not None:  # before anything is written: a wrong path leaves no run directory behind
        check_prompt_file(prompts)
    if edits is not None:
        check_edit_source(Path(edits))
    save_run_config(run_dir, cfg)

    def both(t2i: Callable[[], Any], edit: Callable[[], Any]) -> Callable[[], Any]:
        return t2i if edits is None else lambda: [t2i(), edit()]

    runners: dict[str, Callable[[], Any]] = {
        "synth": both(
            lambda: stages.synth(run_dir, cfg, prompts, progress=progress),
            lambda: stages.synth_edits(run_dir, cfg, Path(edits), progress=progress),
        ),
        "score": both(
            lambda: stages.score(run_dir, cfg, progress=progress),
            lambda: stages.score(run_dir, cfg, progress=progress, task="edit"),
        ),
        "filter": both(
            lambda: stages.filter_(run_dir, cfg, progress=progress),
            lambda: stages.filter_(run_dir, cfg, progress=progress, task="edit"),
        ),
        "sft": lambda: stages.sft(run_dir, cfg, progress=progress),
        "rl": lambda: stages.rl(run_dir, cfg, progress=progress),
        "eval": lambda: stages.eval_(run_dir, cfg, progress=progress),
    }
    outcomes = []
    upstream = ""
    for stage in STAGES:
        fp = fingerprint(cfg, stage, upstream, prompts if stage == "synth" else None, edits)
        if stage == "synth" and prompts is None:
            # No prompt file given: the run's own prompts, whatever was recorded when they came in.
            fp = (read_record(run_dir, stage) or {}).get("fingerprint", fp)
        upstream = fp
        if stage not in selected:
            continue
        record = read_record(run_dir, stage)
        if record is not None and record.get("fingerprint") == fp:
            outcome = StageOutcome(stage, "skipped")
        else:
            t0 = time.perf_counter()
            try:
                if stage in CKPT_DIRS:
                    _set_aside_stale(run_dir / CKPT_DIRS[stage], stage, cfg, record)
                elif stage == "eval" and record is not None:  # measured other checkpoints or settings before
                    set_aside(run_dir / EVAL_DIR, record["fingerprint"])
                result = runners[stage]()
            except Exception as err:  # KeyboardInterrupt passes: the CLI says how to resume
                message, hint = (err.message, err.hint) if isinstance(err, JanusError) else (one_line(err), "")
                raise PipelineError(
                    f"stage {stage} failed: {message}",
                    hint=f"{hint + '; then ' if hint else 'fix it, then '}resume with `{resume_hint} --from {stage}` "
                    "(finished stages are skipped)",
                ) from err
            outcome = StageOutcome(stage, "ran", time.perf_counter() - t0, result)
            text = json.dumps({"stage": stage, "fingerprint": fp, "seconds": round(outcome.seconds, 3)}).encode()
            atomic_write(record_path(run_dir, stage), lambda fh, text=text: fh.write(text))
        outcomes.append(outcome)
        if on_stage is not None:
            on_stage(outcome)
    return outcomes


def _set_aside_stale(ckpt_root: Path, stage: str, cfg: JanusRunConfig, record: dict | None) -> None:
    """Set a trainer's checkpoints aside when they belong to other inputs; the trainer then starts afresh.

    Finished before with other inputs (a record with another fingerprint), or stopped midway
    under other settings (`resume.is_stale`). A run stopped midway with these settings has no
    record and a matching checkpoint: the trainer continues from it.
    """
    if record is not None:
        set_aside(ckpt_root, record["fingerprint"])
    elif is_stale(ckpt_root, stage, to_dict(getattr(cfg, stage))):
        set_aside(ckpt_root)


@dataclass
class ChainResult:
    """What `janus run` did: each selected stage's outcome, and the report it wrote."""

    run_dir: Path
    outcomes: list[StageOutcome]
    report: Path | None = None


def run_chain(
    cfg: JanusRunConfig,
    config: str,
    run_dir: Path | None = None,
    prompts: Path | None = None,
    start: str | None = None,
    stop: str | None = None,
    report: bool = True,
    progress: bool | None = None,
    on_stage: Callable[[StageOutcome], None] | None = None,
    edits: Path | None = None,
) -> ChainResult:
    """`janus run`: run dir, prompt file and edit source (flags, else the config's `pipeline`), the stages, the report."""
    run_dir = run_dir or (Path(cfg.pipeline.run_dir) if cfg.pipeline.run_dir else None)
    if run_dir is None:
        raise ConfigError("no run directory", hint="pass --run DIR or set pipeline.run_dir in the config")
    prompts = prompts or (Path(cfg.pipeline.prompts) if cfg.pipeline.prompts else None)
    edits = edits or (Path(cfg.pipeline.edits) if cfg.pipeline.edits else None)
    hint = f"janus run --config {config} --run {run_dir}"  # `config`: the preset or file, as the user gave it
    outcomes = run_pipeline(
        run_dir, cfg, prompts, start, stop, progress, on_stage=on_stage, resume_hint=hint, edits=edits
    )
    return ChainResult(run_dir, outcomes, stages.report(run_dir).path if report else None)
