"""`janus train sft`: mixed sub-task SFT of Janus-Pro on the filter's shards.

One optimizer step draws `batch_size x grad_accum x world_size` samples from one global task
mixer (every process runs the same mixer and builds only its own slice), so N processes train
exactly what one process with the same global batch trains. `sft.mix_unit` draws a task per
sample or one task per step (the released trainer). `sft.loss_reduction`:
- 'sample': each sample's loss is the mean over its own targets; a step's loss is the mean over
  the global batch's samples, so every sample counts the same whatever its length or task;
- 'batch' (the released code): each micro-batch's loss pools each task's targets token-level
  over one process's micro-batch (losses.forward_losses); a step's loss is the mean of those
  over micro-steps and processes, so it depends on how the global batch is split.

Trainable (PAPER.md): the language model and its head, the generation embedding, aligner and
head, the understanding aligner. Frozen: SigLIP and the VQ model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from janus_data.config import JanusRunConfig, SFTConfig, to_dict
from janus_data.errors import JanusError, RunDirError
from janus_data.manifest import atomic_write
from janus_data.models import resolve_device, resolve_model
from janus_data.progress import stage_progress
from janus_data.rundir import CKPT_DIRS, METRICS, save_run_config
from janus_data.wds import decode_sample
from janus_train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

TASKS = ("t2i", "judge", "regen")
TRAINABLE = ("language_model", "lm_head", "generation_embeddings", "generation_aligner", "generation_head", "aligner")
FROZEN = ("vision_model", "vqmodel")
CKPT_DIR = CKPT_DIRS["sft"]


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


@dataclass
class SFTResult(TrainResult):
    samples: int = 0
    last_loss: dict[str, float] = field(default_factory=dict)
    first_loss: dict[str, float] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def module_of(name: str) -> str:
    """The top-level Janus module a parameter belongs to (model.X.* -> X, lm_head.* -> lm_head)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "model" else parts[0]


def set_trainable(model) -> tuple[int, int]:
    """requires_grad as PAPER.md says; returns (trainable, frozen) parameter counts."""
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


def lr_lambda(cfg: SFTConfig) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine to min_lr_ratio at max_steps."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def sample_rng(seed: int, draw: int) -> random.Random:
    """The RNG of one drawn sample (caption dropout): a function of the seed and the draw index only."""
    digest = hashlib.blake2b(f"sft:{seed}:{draw}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> Distributed:
    """torchrun's environment -> a process group (NCCL on GPU, gloo on CPU); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def run_sft(
    run_dir: Path,
    cfg: JanusRunConfig,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> SFTResult:
    """Train (or resume training) up to `max_steps`; checkpoints under <run>/checkpoints/sft."""
    from transformers import AutoImageProcessor, AutoTokenizer, JanusForConditionalGeneration

    from janus_train.data import TaskMixer
    from janus_train.steps import SFTStep

    start_time = time.perf_counter()
    run_dir = Path(run_dir)
    scfg = cfg.sft
    target = max_steps if max_steps is not None else scfg.max_steps
    sft_dir = run_dir / "sft"
    if not (sft_dir / "state.json").is_file():
        raise RunDirError(f"run {run_dir} has no SFT shards", hint="run `janus data filter` on it first")
    device = resolve_device(cfg.runtime)
    dist = init_distributed(device)
    base_ref = scfg.model or cfg.synth.janus.model
    base_path = resolve_model(base_ref)
    ckpt_root = run_dir / CKPT_DIR
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if resume and ckpt is None:
        raise CheckpointError(f"no checkpoint to resume under {ckpt_root}", hint="start without --resume")
    result = SFTResult(run_dir, rank=dist.rank, max_steps=target, world_size=dist.world_size)
    trainer_state, info = load_trainer_state(ckpt) if ckpt else ({}, {})
    load_from = ckpt.path if ckpt else base_path
    torch.manual_seed(scfg.seed)
    model = JanusForConditionalGeneration.from_pretrained(load_from, dtype=torch.float32, use_safetensors=True)
    model.to(device)
    set_trainable(model)
    if scfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    image_processor = AutoImageProcessor.from_pretrained(base_path)
    stepper = SFTStep(model, tokenizer, image_processor, scfg, device, parallel=scfg.parallel if dist.active else None)
    params = stepper.trainable_parameters()
    optimizer = torch.optim.AdamW(
        params, lr=scfg.lr, betas=tuple(scfg.betas), eps=scfg.eps, weight_decay=scfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(scfg))
    mixer = TaskMixer(
        sft_dir,
        dict(zip(TASKS, scfg.mix, strict=True)),
        seed=scfg.seed,
        shuffle_buffer=scfg.shuffle_buffer,
        expected_vq_model=cfg.synth.janus.model,
        mix_unit=scfg.mix_unit,
        step_samples=scfg.batch_size * dist.world_size * scfg.grad_accum,
    )
    step = 0
    if ckpt is not None:
        stepper.load_optimizer_state(optimizer, trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        set_rng_state(trainer_state["rng"])
        mixer.load_state_dict(info["data"])
        step = info["step"]
        result.resumed_from = ckpt.path
    result.start_step = step
    if dist.rank == 0:
        save_run_config(run_dir, cfg)
    metrics_path = ckpt_root / METRICS
    board = _tensorboard(ckpt_root) if scfg.tensorboard and dist.rank == 0 else None
    if dist.rank == 0:
        truncate_metrics(metrics_path, step)  # steps after the checkpoint are trained again
    global_batch = scfg.batch_size * dist.world_size
    with stage_progress(progress if dist.rank == 0 else False) as bars:
        bar = bars.add_task("sft", total=target, completed=step, unit="step")
        while step < target:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_losses: dict[str, list[float]] = {t: [] for t in TASKS}
            for micro in range(scfg.grad_accum):
                first = mixer.draws + dist.rank * scfg.batch_size  # global index of this process's first sample
                drawn = [mixer.next_raw() for _ in range(global_batch)]  # every process: the same global draw
                mine = [(t, decode_sample(raw)) for t, raw in drawn[dist.rank * scfg.batch_size :][: scfg.batch_size]]
                rngs = [sample_rng(scfg.seed, first + i) for i in range(len(mine))]
                micro_step(stepper, mine, rngs, micro == scfg.grad_accum - 1, scfg, step_losses)
            grad_norm = stepper.clip(params, scfg.grad_clip)
            losses = _global_task_means(step_losses, dist)  # the same on every process
            if not (math.isfinite(losses["total"]) and torch.isfinite(grad_norm)):
                raise nan_error(step + 1, ckpt_root)  # before the update: the weights stay good
            lr = optimizer.param_groups[0]["lr"]  # this update's lr (the scheduler then moves to the next)
            optimizer.step()
            scheduler.step()
            step += 1
            for task, value in losses.items():  # first and latest value of each task this call
                result.first_loss.setdefault(task, value)
                result.last_loss[task] = value
            result.samples += global_batch * scfg.grad_accum
            bars.update(bar, completed=step, description=_describe(losses))
            if dist.rank == 0 and (step % scfg.log_every == 0 or step == target):
                _log(metrics_path, step, losses, lr, float(grad_norm), t0, global_batch * scfg.grad_accum)
                if board is not None:
                    for name, value in {**{f"loss/{k}": v for k, v in losses.items()}, "lr": lr}.items():
                        board.add_scalar(name, value, step)
            if step % scfg.save_every == 0 or step == target:
                # Collective under FSDP (every process gathers), then process 0 writes.
                weights, optim_state = stepper.full_model_state(), stepper.full_optimizer_state(optimizer)
                trainer = {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng_state()}
                meta = {
                    "data": mixer.state_dict(),
                    "base_model": base_ref,
                    "world_size": dist.world_size,
                    "losses": losses,
                    "config": to_dict(scfg),
                }
                saved = save_on_rank0(dist, ckpt_root, step, model, base_path, trainer, meta, scfg.keep_last, weights)
                result.checkpoint = saved or result.checkpoint
    if board is not None:
        board.close()
    result.end_step = step
    result.seconds = time.perf_counter() - start_time
    return result


def micro_step(
    stepper, samples: list, rngs: list[random.Random], sync: bool, scfg: SFTConfig, step_losses: dict
) -> None:
    """Forward + backward of this process's micro-batch; its losses are appended to `step_losses`.

    DDP and FSDP average gradients over processes, so both reductions are scaled to give the
    step's gradient of the config's loss: 'sample' the mean sample loss over the global batch
    of all micro-steps, 'batch' the mean micro-batch loss over micro-steps and processes.
    """
    losses, tasks = stepper.forward(samples, rngs, sync=sync)
    if scfg.loss_reduction == "batch":
        stepper.backward(losses["total"] / scfg.grad_accum)
        for name, value in losses.items():
            step_losses.setdefault(name, []).append(float(value.detach()))
        return
    stepper.backward(losses.sum() / (len(samples) * scfg.grad_accum))
    for task, value in zip(tasks, losses.detach().tolist(), strict=True):
        step_losses[task].append(value)


def save_on_rank0(
    dist: Distributed, root: Path, step: int, model, base_path, trainer: dict, meta: dict, keep_last: int, weights
) -> Path | None:
    """Process 0 writes the checkpoint (the others wait for it); its path on process 0, else None."""
    path = None
    if dist.rank == 0:
        path = save_checkpoint(root, step, model, base_path, trainer, meta, keep_last, state_dict=weights).path
    if dist.active:
        torch.distributed.barrier()
    return path


def nan_error(
    step: int, ckpt_root: Path, what: str = "loss", hint: str = "lower sft.lr or check the data"
) -> TrainError:
    """A non-finite step: training stops before the update, and says which checkpoint is intact."""
    last = latest_checkpoint(ckpt_root)
    kept = f"the last good checkpoint {last.path} is intact" if last else "no checkpoint was written yet"
    stage = ckpt_root.name  # checkpoints/sft or checkpoints/rl
    return TrainError(
        f"non-finite {what} or gradient at step {step}: training stopped; {kept}",
        hint=f"{hint}; `janus train {stage} --resume` continues from the last checkpoint",
    )


def _global_task_means(step_losses: dict[str, list[float]], dist: Distributed) -> dict[str, float]:
    """Each task's mean loss value over the whole global batch (all ranks), and the step's "total".

    Values are per sample ('sample') or per micro-batch ('batch', which also logs its "total");
    without a logged "total" it is the mean over all samples.
    """
    names = [*TASKS, "total"]
    sums = torch.tensor(
        [[sum(step_losses.get(k, [])), len(step_losses.get(k, []))] for k in names], dtype=torch.float64
    )
    if dist.active:
        torch.distributed.all_reduce(sums)
    out = {t: float(s / n) for t, (s, n) in zip(names, sums.tolist(), strict=True) if n > 0}
    if "total" not in out:
        total_n = float(sums[: len(TASKS), 1].sum())
        out["total"] = float(sums[: len(TASKS), 0].sum() / total_n) if total_n else float("nan")
    return out


def _describe(losses: dict[str, float]) -> str:
    parts = " ".join(f"{t} {losses[t]:.3f}" for t in TASKS if t in losses)
    return f"sft loss {losses['total']:.3f} ({parts})"


def _tensorboard(ckpt_root: Path):
    """A TensorBoard writer under <run>/checkpoints/sft/tensorboard, or a one-line error."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError(
            "sft.tensorboard is on but the tensorboard package is not installed", hint="pip install tensorboard"
        ) from None
    return SummaryWriter(str(ckpt_root / "tensorboard"))


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines of steps <= `step` (atomically)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    text = "".join(line + "\n" for line in keep).encode()
    atomic_write(path, lambda fh: fh.write(text))


def _log(path: Path, step: int, losses: dict, lr: float, grad_norm: float, t0: float, samples: int) -> None:
    seconds = time.perf_counter() - t0
    line = {"step": step, "loss": losses, "lr": lr, "grad_norm": grad_norm, "samples_per_s": samples / seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")
