"""`janus train sft`: mixed sub-task SFT of Janus-Pro on the filter's shards.

The recipe: set up (where it starts: `core.begin`; the model, `sft_step.SFTStep`, AdamW and
warm-up + cosine, the task mixer), train (`micro_step` x grad_accum, clip, update), save
(`core.Saver`, with the mixer's position).

One optimizer step draws `batch_size x grad_accum x world_size` samples from one global task
mixer (every process runs the same mixer and builds only its own slice), so N processes train
exactly what one process with the same global batch trains. `sft.mix_unit` draws a task per
sample or one task per step (the released trainer); `sft.edit_share` of the draws come from the edit
tasks' shards (`<run>/sft_edit`, weights: `config_train.sft_task_weights`). `sft.loss_reduction`:
- 'sample': each sample's loss is the mean over its own targets; a step's loss is the mean over
  the global batch's samples, so every sample counts the same whatever its length or task;
- 'batch' (the released code): each micro-batch's loss pools each task's targets token-level
  over one process's micro-batch (losses.forward_losses); a step's loss is the mean of those
  over micro-steps and processes, so it depends on how the global batch is split.

Trainable and frozen modules: `core.TRAINABLE`, `core.FROZEN` (docs/paper.md, 'SFT').
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from janus_data.checks import require_sft_shards
from janus_data.config import JanusRunConfig, SFTConfig, to_dict
from janus_data.config_train import sft_task_weights
from janus_data.janus_format import ALL_TASKS
from janus_data.models import resolve_device, resolve_model
from janus_data.progress import stage_progress
from janus_data.rundir import CKPT_DIRS, METRICS, SFT_DIR, SFT_EDIT_DIR
from janus_data.wds import decode_sample
from janus_train.core import (
    Distributed,
    Precision,
    Saver,
    TrainError,
    TrainResult,
    append_metrics,
    begin,
    build_optimizer,
    check_finite,
    init_distributed,
    note_start,
    open_run,
    restore,
    set_trainable,
)
from janus_train.optim import sft_lr_lambda
from janus_train.parallel import clip_gradients
from janus_train.resume import Start

CKPT_DIR = CKPT_DIRS["sft"]


@dataclass
class SFTResult(TrainResult):
    samples: int = 0
    last_loss: dict[str, float] = field(default_factory=dict)
    first_loss: dict[str, float] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def sample_rng(seed: int, draw: int) -> random.Random:
    """The RNG of one drawn sample (caption dropout): a function of the seed and the draw index only."""
    digest = hashlib.blake2b(f"sft:{seed}:{draw}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def run_sft(
    run_dir: Path,
    cfg: JanusRunConfig,
    max_steps: int | None = None,
    resume: bool = False,
    restart: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> SFTResult:
    """Train up to `max_steps` (default sft.max_steps); checkpoints under <run>/checkpoints/sft.

    A rerun continues from the latest checkpoint, or does nothing once it is at `max_steps`
    (`resume.py`; `resume`: fail without a checkpoint; `restart`: set the old ones aside first).
    `log`: told where training starts, on process 0.
    """
    clock = time.perf_counter()
    run_dir, scfg = Path(run_dir), cfg.sft
    require_sft_shards(run_dir, scfg)
    target = max_steps if max_steps is not None else scfg.max_steps
    device = resolve_device(cfg.runtime)
    dist = init_distributed(device)
    ckpt_root = run_dir / CKPT_DIR
    start = begin(ckpt_root, "sft", to_dict(scfg), dist, target, resume, restart)
    result = note_start(SFTResult(run_dir, rank=dist.rank, max_steps=target, world_size=dist.world_size), start)
    if start.finished:
        return result
    if log is not None and dist.rank == 0:
        origin = start.checkpoint.path if start.checkpoint else scfg.model or cfg.synth.janus.model
        log(f"sft: steps {start.step} -> {target}, from {origin}")
    s = _setup(run_dir, cfg, start, dist, device)

    step = start.step
    with stage_progress(progress if dist.rank == 0 else False) as bars:
        bar = bars.add_task("sft", total=target, completed=step, unit="step")
        while step < target:
            t0 = time.perf_counter()
            losses, grad_norm, lr = _train_step(s, scfg, dist, step, ckpt_root)
            step += 1
            for task, value in losses.items():  # first and latest value of each task this call
                result.first_loss.setdefault(task, value)
                result.last_loss[task] = value
            samples = scfg.batch_size * dist.world_size * scfg.grad_accum
            result.samples += samples
            bars.update(bar, completed=step, description=_describe(losses, s.mixer.tasks))
            if dist.rank == 0 and (step % scfg.log_every == 0 or step == target):
                rate = samples / (time.perf_counter() - t0)
                row = {"step": step, "loss": losses, "lr": lr, "grad_norm": grad_norm, "samples_per_s": rate}
                append_metrics(ckpt_root / METRICS, row)
                if s.board is not None:
                    for name, value in {**{f"loss/{k}": v for k, v in losses.items()}, "lr": lr}.items():
                        s.board.add_scalar(name, value, step)
            if step % scfg.save_every == 0 or step == target:
                meta = {"data": s.mixer.state_dict(), "base_model": s.base_ref, "losses": losses}
                result.checkpoint = s.saver.save(step, s.optimizer, s.scheduler, meta) or result.checkpoint
    if s.board is not None:
        s.board.close()
    result.end_step = step
    result.seconds = time.perf_counter() - clock
    return result


@dataclass
class _Setup:
    """What the SFT loop works with."""

    stepper: Any
    params: list
    optimizer: Any
    scheduler: Any
    mixer: Any
    saver: Saver
    base_ref: str
    board: Any = None


def _setup(run_dir: Path, cfg: JanusRunConfig, start: Start, dist: Distributed, device: torch.device) -> _Setup:
    """The model (the base, or the start checkpoint's weights), its step, AdamW + schedule, the task
    mixer, restored to the start checkpoint; the run's config and metrics brought to its step."""
    from transformers import AutoImageProcessor, AutoTokenizer, JanusForConditionalGeneration

    from janus_train.data import TaskMixer
    from janus_train.sft_step import SFTStep

    scfg, ckpt_root = cfg.sft, run_dir / CKPT_DIR
    base_ref = scfg.model or cfg.synth.janus.model
    base_path = resolve_model(base_ref)
    torch.manual_seed(scfg.seed)
    load_from = start.checkpoint.path if start.checkpoint else base_path
    model = JanusForConditionalGeneration.from_pretrained(load_from, dtype=torch.float32, use_safetensors=True)
    model.to(device)
    set_trainable(model)
    if scfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    image_processor = AutoImageProcessor.from_pretrained(base_path)
    parallel = scfg.parallel if dist.active else None
    precision = Precision.resolve(device, cfg.runtime.dtype)
    stepper = SFTStep(model, tokenizer, image_processor, scfg, device, parallel, precision)
    params = stepper.trainable_parameters()
    optimizer, scheduler = build_optimizer(params, scfg, sft_lr_lambda(scfg))
    mixer = TaskMixer(
        run_dir / SFT_DIR,
        sft_task_weights(scfg),  # edit_share 0: exactly sft.mix, the draws of before edits
        seed=scfg.seed,
        shuffle_buffer=scfg.shuffle_buffer,
        expected_vq_model=cfg.synth.janus.model,
        mix_unit=scfg.mix_unit,
        step_samples=scfg.batch_size * dist.world_size * scfg.grad_accum,
        edit_dir=run_dir / SFT_EDIT_DIR,
    )
    restore(start, stepper.module, optimizer, scheduler)
    if start.checkpoint is not None:
        mixer.load_state_dict(start.info["data"])
    open_run(run_dir, cfg, ckpt_root, start.step, dist)
    saver = Saver(dist, ckpt_root, model, stepper.module, parallel, base_path, scfg)
    board = _tensorboard(ckpt_root) if scfg.tensorboard and dist.rank == 0 else None
    return _Setup(stepper, params, optimizer, scheduler, mixer, saver, base_ref, board)


def _train_step(s: _Setup, scfg: SFTConfig, dist: Distributed, step: int, ckpt_root: Path):
    """Update `step` + 1 from one global batch: (each task's global mean loss, gradient norm, the update's lr).

    Every process draws the same global batch from the mixer and builds only its own slice; a
    non-finite loss or gradient stops before the update, naming the last good checkpoint.
    """
    s.optimizer.zero_grad(set_to_none=True)
    step_losses: dict[str, list[float]] = {t: [] for t in ALL_TASKS}
    global_batch = scfg.batch_size * dist.world_size
    for micro in range(scfg.grad_accum):
        first = s.mixer.draws + dist.rank * scfg.batch_size  # global index of this process's first sample
        drawn = [s.mixer.next_raw() for _ in range(global_batch)]  # every process: the same global draw
        mine = [(t, decode_sample(raw)) for t, raw in drawn[dist.rank * scfg.batch_size :][: scfg.batch_size]]
        rngs = [sample_rng(scfg.seed, first + i) for i in range(len(mine))]
        micro_step(s.stepper, mine, rngs, micro == scfg.grad_accum - 1, scfg, step_losses)
    grad_norm = clip_gradients(s.params, scfg.grad_clip)
    losses = _global_task_means(step_losses, dist)  # the same on every process
    check_finite(losses["total"], grad_norm, step + 1, ckpt_root, "loss", "lower sft.lr or check the data")
    lr = s.optimizer.param_groups[0]["lr"]  # this update's lr (the scheduler then moves to the next)
    s.optimizer.step()
    s.scheduler.step()
    return losses, float(grad_norm), lr


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


def _global_task_means(step_losses: dict[str, list[float]], dist: Distributed) -> dict[str, float]:
    """Each task's mean loss value over the whole global batch (all ranks), and the step's "total".

    Values are per sample ('sample') or per micro-batch ('batch', which also logs its "total");
    without a logged "total" it is the mean over all samples.
    """
    names = [*ALL_TASKS, "total"]
    sums = torch.tensor(
        [[sum(step_losses.get(k, [])), len(step_losses.get(k, []))] for k in names], dtype=torch.float64
    )
    if dist.active:
        torch.distributed.all_reduce(sums)
    out = {t: float(s / n) for t, (s, n) in zip(names, sums.tolist(), strict=True) if n > 0}
    if "total" not in out:
        total_n = float(sums[: len(ALL_TASKS), 1].sum())
        out["total"] = float(sums[: len(ALL_TASKS), 0].sum() / total_n) if total_n else float("nan")
    return out


def _describe(losses: dict[str, float], tasks: list[str]) -> str:
    """The progress bar's text: the total and each drawn task's (weight > 0) loss this step."""
    parts = " ".join(f"{t} {losses[t]:.3f}" for t in tasks if t in losses)
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
