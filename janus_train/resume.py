"""Where a trainer starts: from step 0, from its latest checkpoint, or nowhere (it has finished).

The same command run again does only the missing work (README):
- no checkpoint: train from step 0;
- the latest checkpoint is below the target step and was trained with these settings:
  continue from it (weights, optimizer, schedule, data position, RNG);
- it is at or past the target step, same settings: nothing to do, and one line says so;
- it was trained with other settings: a one-line error naming them. `--restart` sets the
  stage's checkpoints aside (`set_aside`: `checkpoints/<stage>.stale-<date-time>`; `janus run`
  sets aside with the same function) and trains from step 0.

"Settings" (`settings`) are the stage's config section as the checkpoint's trainer_state.json
saved it, less RUN_SHAPE: step counts, cadences, parallelism and memory knobs change how a run
is laid out, not what a step computes. The per-process batch counts over all processes, so a
checkpoint resumes under another number of processes, and a larger max_steps (in the config
or `--max-steps`) continues a finished run. GRPO also compares the policy it started from,
when one is asked for; a new GRPO run's policy is `start_policy`'s.

No torch here: the CLI and `janus run` plan with it before anything heavy is imported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from janus_data.errors import ConfigError, RunDirError
from janus_data.rundir import CKPT_DIRS, SFT_DIR, SFT_EDIT_DIR
from janus_train.checkpoint import Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints, read_info

if TYPE_CHECKING:
    from janus_data.config import JanusRunConfig

# Settings that shape a run without changing what its steps compute. rl.model is compared as the
# policy the run started from (the checkpoint's `init`), when one is asked for.
RUN_SHAPE = {
    "sft": frozenset(
        {"max_steps", "save_every", "keep_last", "log_every", "tensorboard", "parallel", "gradient_checkpointing"}
    ),
    "rl": frozenset(
        {"model", "max_steps", "save_every", "keep_last", "log_every", "parallel", "micro_batch", "judge_retries"}
    ),
}
# Each stage's per-process batch: compared as its product with the number of processes.
PER_PROCESS = {"sft": "batch_size", "rl": "prompts_per_step"}
# Where a GRPO run's starting policy came from (recorded as `init_from` in every checkpoint).
POLICY_SOURCES = {
    "--init": "given with --init",
    "rl.model": "given in rl.model",
    "--from-base": "the base model, --from-base",
    "sft": "the run's latest SFT checkpoint",
    "base": "the base model: the run has no SFT shards",
}


@dataclass
class Start:
    """A trainer's start: its checkpoint (None: step 0), that checkpoint's state, whether it has finished."""

    checkpoint: Checkpoint | None = None
    info: dict[str, Any] = field(default_factory=dict)  # trainer_state.json
    trainer: dict[str, Any] = field(default_factory=dict)  # trainer_state.pt, once loaded
    finished: bool = False
    set_aside: Path | None = None  # where --restart moved the old checkpoints

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint else 0


def settings(stage: str, section: dict[str, Any], world_size: int) -> dict[str, Any]:
    """What a stage's steps compute with: its config section less RUN_SHAPE, the batch over all processes."""
    plain = json.loads(json.dumps(section))  # tuples as lists, as trainer_state.json holds them
    out = {k: v for k, v in plain.items() if k not in RUN_SHAPE[stage] and k != PER_PROCESS[stage]}
    if PER_PROCESS[stage] in plain:
        out[f"{PER_PROCESS[stage]} x processes"] = plain[PER_PROCESS[stage]] * world_size
    return out


def mismatch(stage: str, info: dict[str, Any], section: dict[str, Any], world_size: int) -> list[str]:
    """`stage.key: saved -> wanted` for each setting the checkpoint (trainer_state.json `info`) differs in.

    Keys an older checkpoint did not save are not compared. For GRPO, `section["model"]` is the
    starting policy asked for (None: whatever the checkpoint started from).
    """
    saved = settings(stage, info.get("config", {}), int(info.get("world_size", 1)))
    wanted = settings(stage, section, world_size)
    keys = sorted(saved.keys() & wanted.keys())
    out = [f"{stage}.{k}: {saved[k]!r} -> {wanted[k]!r}" for k in keys if saved[k] != wanted[k]]
    if stage == "rl" and section.get("model") and section["model"] != info.get("init"):
        out.append(f"starting policy: {info.get('init')!r} -> {section['model']!r}")
    return out


def plan_start(
    ckpt_root: Path, stage: str, section: dict[str, Any], world_size: int, target: int, resume: bool = False
) -> Start:
    """Where `stage` starts under `ckpt_root` (the module docstring); `resume`: fail when there is no checkpoint."""
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is None:
        if resume:
            raise CheckpointError(f"no checkpoint to resume under {ckpt_root}", hint="start without --resume")
        return Start()
    info = read_info(ckpt)
    changed = mismatch(stage, info, section, world_size)
    if changed:
        raise CheckpointError(
            f"{ckpt.path} was trained with other settings ({'; '.join(changed[:3])})",
            hint=f"pass --restart to set {ckpt_root} aside and train from step 0, or go back to those settings",
        )
    return Start(ckpt, info, finished=ckpt.step >= target)


def is_stale(ckpt_root: Path, stage: str, section: dict[str, Any], world_size: int = 1) -> bool:
    """Whether the latest checkpoint under `ckpt_root` was trained with other settings than `section`."""
    ckpt = latest_checkpoint(ckpt_root)
    return ckpt is not None and bool(mismatch(stage, read_info(ckpt), section, world_size))


def set_aside(ckpt_root: Path, tag: str | None = None) -> Path | None:
    """Rename `ckpt_root` to `<name>.stale-<tag>` (default: the date and time), never over an earlier one.

    Returns the new path, or None when there was nothing to set aside.
    """
    root = Path(ckpt_root)
    if not root.exists():
        return None
    base = f"{root.name}.stale-{tag or time.strftime('%Y%m%d-%H%M%S')}"
    dest, n = root.with_name(base), 1
    while dest.exists():
        n += 1
        dest = root.with_name(f"{base}-{n}")
    root.rename(dest)
    return dest


def restart_preview(ckpt_root: Path) -> str | None:
    """What --restart would set aside under `ckpt_root`, in words (None: nothing is there)."""
    root = Path(ckpt_root)
    if not root.exists():
        return None
    found = list_checkpoints(root)
    latest = f", latest {found[-1].path.name}" if found else ""
    return f"{root} ({len(found)} checkpoint(s){latest}) as {root.name}.stale-<date-time>"


def asked_policy(cfg: JanusRunConfig, init: str | None, from_base: bool) -> tuple[str | None, str]:
    """The starting policy the user named (--init, rl.model, --from-base) and how; (None, "") if none."""
    if init and from_base:
        raise ConfigError("--init and --from-base both name the starting policy", hint="pass one of them")
    if init:
        return init, "--init"
    if cfg.rl.model:
        return cfg.rl.model, "rl.model"
    return (cfg.synth.janus.model, "--from-base") if from_base else (None, "")


def start_policy(run_dir: Path, cfg: JanusRunConfig, asked: str | None, source: str) -> tuple[str, str]:
    """The policy a new run starts from and its POLICY_SOURCES key: the one asked for, else the run's
    latest SFT checkpoint, else the base model (synth.janus.model) when the run has no SFT shards."""
    if asked:
        return asked, source
    sft = latest_checkpoint(Path(run_dir) / CKPT_DIRS["sft"])
    if sft is not None:
        return str(sft.path), "sft"
    if any((Path(run_dir) / d).exists() for d in (SFT_DIR, SFT_EDIT_DIR)):
        raise RunDirError(
            "run has SFT shards but no SFT checkpoint: run `janus train sft` first, "
            "or pass --from-base to train the base model"
        )
    return cfg.synth.janus.model, "base"
