"""What both trainers share: processes, the dtype policy, trainable modules, optimizer, start, save, NaN stop, metrics.

A trainer (`sft.run_sft`, `rl.run_rl`) is a recipe over these pieces: set up (`begin`: where it
starts; the models; `build_optimizer`; `restore`), train (its own step), save (`Saver`).
Nothing here knows SFT from GRPO.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from janus_data.config import RuntimeConfig, to_dict
from janus_data.errors import ConfigError, JanusError
from janus_data.manifest import atomic_write
from janus_data.models import resolve_dtype
from janus_data.rundir import METRICS, save_run_config
from janus_train.checkpoint import latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from janus_train.parallel import full_model_state, full_optimizer_state, load_optimizer_state
from janus_train.resume import Start, plan_start, set_aside

# docs/paper.md, 'SFT': trained are the language model and its head, the generation embedding, aligner and
# head, and the understanding aligner; frozen are SigLIP and the VQ model.
TRAINABLE = ("language_model", "lm_head", "generation_embeddings", "generation_aligner", "generation_head", "aligner")
FROZEN = ("vision_model", "vqmodel")


class TrainError(JanusError):
    """Training cannot go on (a non-finite loss, a bad setup)."""


@dataclass
class TrainResult:
    """What a training call did: the steps it ran, where it wrote, how long it took."""

    run_dir: Path
    rank: int = 0
    start_step: int = 0
    end_step: int = 0
    max_steps: int = 0
    world_size: int = 1
    seconds: float = 0.0
    checkpoint: Path | None = None
    resumed_from: Path | None = None
    already_done: bool = False  # the latest checkpoint was at max_steps already: nothing ran
    set_aside: Path | None = None  # where --restart moved the previous checkpoints


# -- processes -------------------------------------------------------------------------------------
@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def init_distributed(device: torch.device) -> Distributed:
    """torchrun's environment -> a process group (NCCL on GPU, gloo on CPU); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# -- dtype policy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """The trainers' dtype policy: fp32 master weights, compute in `compute` (runtime.dtype).

    'auto' computes in bf16 on GPU (autocast, or FSDP2's parameter cast) and in fp32 on CPU.
    float16 is refused: training it needs loss scaling, which the trainers do not do.
    """

    device: torch.device
    compute: torch.dtype = torch.float32

    @classmethod
    def resolve(cls, device: torch.device, dtype: str = "auto") -> Precision:
        compute = resolve_dtype(RuntimeConfig(dtype=dtype), device)
        if compute == torch.float16:
            raise ConfigError("runtime.dtype float16 cannot train (no loss scaling)", hint="use auto or bfloat16")
        return cls(device, compute)

    def autocast(self, parallel: str | None = None):
        """Autocast to `compute`; none in fp32, nor under FSDP2, whose policy casts the parameters itself."""
        if self.compute == torch.float32 or parallel == "fsdp":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute)

    def fsdp_policy(self):
        """FSDP2's mixed precision: parameters in `compute`, gradients reduced in fp32 (None in fp32)."""
        if self.compute == torch.float32:
            return None
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=self.compute, reduce_dtype=torch.float32)

    def rollout_dtype(self, setting: str) -> torch.dtype:
        """rl.rollout_dtype: 'float32' / 'bfloat16' as named; 'auto' = `compute` on GPU, fp32 elsewhere."""
        if setting == "auto":
            return self.compute if self.device.type == "cuda" else torch.float32
        return getattr(torch, setting)


# -- modules and optimizer -------------------------------------------------------------------------
def module_of(name: str) -> str:
    """The top-level Janus module a parameter belongs to (model.X.* -> X, lm_head.* -> lm_head)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "model" else parts[0]


def set_trainable(model) -> tuple[int, int]:
    """requires_grad as docs/paper.md ('SFT') says; returns (trainable, frozen) parameter counts."""
    counts = [0, 0]
    for name, param in model.named_parameters():
        module = module_of(name)
        if module not in TRAINABLE and module not in FROZEN:
            raise TrainError(
                f"parameter {name} belongs to no known Janus module", hint="is this a Janus-Pro checkpoint?"
            )
        param.requires_grad_(module in TRAINABLE)
        counts[module in FROZEN] += param.numel()
    return counts[0], counts[1]


def build_optimizer(params: list, cfg: Any, schedule: Callable[[int], float]):
    """AdamW from a trainer section (lr, betas, eps, weight_decay) and LambdaLR over `schedule` (optim.py)."""
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


# -- start, restore, save --------------------------------------------------------------------------
def begin(
    ckpt_root: Path,
    stage: str,
    section: dict,
    dist: Distributed,
    target: int,
    resume: bool = False,
    restart: bool = False,
) -> Start:
    """Where the trainer starts (`resume.plan_start`), its checkpoint's state loaded (sha256-checked).

    `restart`: the old checkpoints are set aside first, by process 0 while the others wait.
    """
    if restart and resume:
        raise ConfigError("--restart and --resume contradict each other", hint="pass one of them")
    moved = None
    if restart:
        moved = set_aside(ckpt_root) if dist.rank == 0 else None
        dist.barrier()
    start = plan_start(ckpt_root, stage, section, dist.world_size, target, resume)
    if start.checkpoint is not None and not start.finished:
        start.trainer, start.info = load_trainer_state(start.checkpoint)
    start.set_aside = moved
    return start


def open_run(run_dir: Path, cfg, ckpt_root: Path, step: int, dist: Distributed) -> None:
    """Process 0 records the resolved config and drops the metrics of steps after `step` (trained again)."""
    if dist.rank == 0:
        save_run_config(run_dir, cfg)
        truncate_metrics(ckpt_root / METRICS, step)


def restore(start: Start, module: torch.nn.Module, optimizer, scheduler) -> None:
    """Optimizer, schedule and every RNG as the start checkpoint left them (nothing from step 0)."""
    if start.checkpoint is None:
        return
    load_optimizer_state(module, optimizer, start.trainer["optimizer"])
    scheduler.load_state_dict(start.trainer["scheduler"])
    set_rng_state(start.trainer["rng"])


@dataclass
class Saver:
    """Checkpoints of one trainer: `module` (the stepper's loss module) holds `model` and its parallel wrapping."""

    dist: Distributed
    root: Path
    model: Any
    module: torch.nn.Module
    parallel: str | None
    base_path: Path
    section: Any  # the stage's config (keep_last; saved as "config" for resume.mismatch)

    def save(self, step: int, optimizer, scheduler, meta: dict, extra: dict | None = None) -> Path | None:
        """Write step `step`; its path on process 0, else None.

        A collective under FSDP (every process gathers the weights and optimizer), then process
        0 writes while the others wait.
        """
        weights = full_model_state(self.module, self.parallel)
        trainer = {
            "optimizer": full_optimizer_state(self.module, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            **(extra or {}),
        }
        meta = {**meta, "world_size": self.dist.world_size, "config": to_dict(self.section)}
        path = None
        if self.dist.rank == 0:
            keep = self.section.keep_last
            path = save_checkpoint(self.root, step, self.model, self.base_path, trainer, meta, keep, weights).path
        self.dist.barrier()
        return path


def note_start(result: TrainResult, start: Start) -> TrainResult:
    """Record where the call starts: its checkpoint, or that the run had finished already (nothing to do)."""
    result.start_step = result.end_step = start.step
    result.set_aside = start.set_aside
    if start.finished:
        result.already_done, result.checkpoint = True, start.checkpoint.path
    elif start.checkpoint is not None:
        result.resumed_from = start.checkpoint.path
    return result


# -- NaN stop and metrics --------------------------------------------------------------------------
def check_finite(loss: float, grad_norm: torch.Tensor, step: int, ckpt_root: Path, what: str, hint: str) -> None:
    """The NaN guard: a non-finite loss or gradient norm stops training before update `step`, so the
    weights stay good, with one line naming the checkpoint that is intact."""
    if math.isfinite(loss) and torch.isfinite(grad_norm):
        return
    last = latest_checkpoint(ckpt_root)
    kept = f"the last good checkpoint {last.path} is intact" if last else "no checkpoint was written yet"
    stage = ckpt_root.name  # checkpoints/sft or checkpoints/rl
    raise TrainError(
        f"non-finite {what} or gradient at step {step}: training stopped; {kept}",
        hint=f"{hint}; rerun `janus train {stage}` to continue from the last checkpoint",
    )


def append_metrics(path: Path, row: dict) -> None:
    """One line of metrics.jsonl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines of steps <= `step` (atomically)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    text = "".join(line + "\n" for line in keep).encode()
    atomic_write(path, lambda fh: fh.write(text))
