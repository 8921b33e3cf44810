"""`janus train rl`: GRPO with introspective rollouts and dual-layer rewards (docs/paper.md, 'GRPO').

The recipe: set up (where it starts: `core.begin`; the starting policy: `resume.start_policy`; the
prompts, the judge, the policy and its frozen reference, `grpo.GRPOStep`, AdamW and the
schedule), train (`_train_step`: rollout, judge, update; then the reference refresh), save
(`core.Saver`). The pieces: `rollout.py` draws, `rewards.py` scores, `logprobs.py` and
`grpo_math.py` make the loss, `grpo.py` runs one step on this process.

Prompts and seeds are functions of the step (`step_prompts`, `derive_seed`), so a resumed run
draws what an uninterrupted one draws.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from janus_data.checks import require_rl_inputs
from janus_data.config import JanusRunConfig, RLConfig, check_rl_logps, to_dict
from janus_data.errors import RunDirError
from janus_data.models import resolve_device, resolve_model
from janus_data.progress import stage_progress
from janus_data.rundir import CKPT_DIRS, METRICS
from janus_data.seeds import derive_seed
from janus_train.core import (
    Distributed,
    Precision,
    Saver,
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
from janus_train.grpo import GRPOStep, RefState, step_metrics
from janus_train.grpo_math import group_advantages
from janus_train.optim import rl_lr_lambda
from janus_train.parallel import clip_gradients
from janus_train.resume import POLICY_SOURCES, Start, asked_policy, start_policy
from janus_train.rewards import rollout_rewards
from janus_train.rl_edits import StepKinds, load_rl_edits, source_images
from janus_train.sequences import SequenceBuilder

if TYPE_CHECKING:  # frames come from janus_data.prompts; the trainer itself needs no polars
    import polars as pl

CKPT_DIR = CKPT_DIRS["rl"]


@dataclass
class RLResult(TrainResult):
    rollouts: int = 0
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=lambda: {"rollout": 0.0, "judge": 0.0, "update": 0.0})
    refreshes: int = 0
    scorer: str = ""
    init: str = ""  # the policy the run started from
    init_from: str = ""  # a key of resume.POLICY_SOURCES ("" in checkpoints older than the record)


def load_rl_prompts(run_dir: Path, cfg: RLConfig) -> pl.DataFrame:
    from janus_data.prompts import load_prompts, read_prompts_manifest

    if cfg.prompts:
        prompts = load_prompts(cfg.prompts)[0]
    else:
        prompts = read_prompts_manifest(run_dir)
    if prompts.height == 0:
        raise RunDirError("no prompts for RL", hint="set rl.prompts or run synth with --prompts")
    return prompts.select("prompt_id", "prompt").sort("prompt_id")


def step_prompts(prompts: pl.DataFrame, step: int, per_step: int, dist: Distributed, seed: int) -> pl.DataFrame:
    """This process's prompts for `step`: a seeded permutation per epoch over all prompts, cut in
    consecutive global batches of per_step x world_size, each process taking its slice."""
    n = prompts.height
    total = per_step * dist.world_size
    first = step * total + dist.rank * per_step
    picks = []
    for k in range(first, first + per_step):
        epoch, pos = divmod(k, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        picks.append(int(order[pos]))
    return prompts[picks]


def judge_scorer(cfg: JanusRunConfig):
    """The configured judge (`score.*`) as GRPO's scorer; a dead server fails now, in seconds, not after a rollout."""
    from janus_data.judge.factory import check_judge, make_judge
    from janus_train.rewards import JudgeScorer

    judge_cfg = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, reason_tokens=0))
    check_judge(judge_cfg)
    return JudgeScorer(make_judge(judge_cfg), retries=cfg.rl.judge_retries, backoff_s=cfg.score.backoff_s)


def run_rl(
    run_dir: Path,
    cfg: JanusRunConfig,
    init: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    restart: bool = False,
    from_base: bool = False,
    progress: bool | None = None,
    scorer=None,
    log: Callable[[str], None] | None = None,
) -> RLResult:
    """Train GRPO up to `max_steps` (default rl.max_steps); checkpoints under <run>/checkpoints/rl.

    A rerun continues from the latest checkpoint, or does nothing once it is at `max_steps`
    (`resume.py`; `resume`: fail without a checkpoint; `restart`: set the old ones aside first).
    The starting policy: `resume.start_policy`. `scorer`: what gives S (default: the
    configured judge; `rewards.py`). `log`: told where training starts, on process 0.
    """
    clock = time.perf_counter()
    run_dir, rcfg = Path(run_dir), cfg.rl
    check_rl_logps(rcfg)  # before the judge check and the model loads
    require_rl_inputs(run_dir, rcfg)
    target = max_steps if max_steps is not None else rcfg.max_steps
    device = resolve_device(cfg.runtime)
    dist = init_distributed(device)
    ckpt_root = run_dir / CKPT_DIR
    asked, source = asked_policy(cfg, init, from_base)
    start = begin(ckpt_root, "rl", {**to_dict(rcfg), "model": asked}, dist, target, resume, restart)
    if start.checkpoint is not None:
        init_ref, source = start.info["init"], start.info.get("init_from", "")
    else:
        init_ref, source = start_policy(run_dir, cfg, asked, source)
    result = RLResult(run_dir, dist.rank, max_steps=target, world_size=dist.world_size, init=init_ref, init_from=source)
    result = note_start(result, start)
    if start.finished:
        return result
    init_path = resolve_model(init_ref)
    prompts = load_rl_prompts(run_dir, rcfg) if rcfg.edit_share < 1 else None
    edits = load_rl_edits(run_dir, rcfg, cfg.edit.skip_bad_images) if rcfg.edit_share > 0 else None
    scorer = scorer or judge_scorer(cfg)
    result.scorer = scorer.name
    if log is not None and dist.rank == 0:
        log(f"rl: steps {start.step} -> {target}, policy from {init_ref} ({POLICY_SOURCES.get(source, 'recorded')})")
    s = _setup(run_dir, cfg, start, dist, device, init_path, scorer)
    result.refreshes = s.ref_state.refreshes

    step = start.step
    kinds = StepKinds.before(rcfg.seed, rcfg.edit_share, step)
    with stage_progress(progress if dist.rank == 0 else False) as bars:
        bar = bars.add_task("rl", total=target, completed=step, unit="step")
        while step < target:
            edit, index = kinds.take(step)
            if edit:
                metrics = _train_step(s, _EditBatch(edits, run_dir), step, ckpt_root, index)
            else:
                metrics = _train_step(s, prompts, step, ckpt_root, index)
            step += 1
            if s.ref_state.observe(metrics["reward"], rcfg, step):
                _refresh_reference(s, step)
            metrics["refreshes"] = result.refreshes = s.ref_state.refreshes
            for key in result.times:
                result.times[key] += metrics[f"time/{key}"]
            result.rollouts += rcfg.prompts_per_step * rcfg.group_size * dist.world_size
            result.first, result.last = result.first or dict(metrics), dict(metrics)
            bars.update(bar, completed=step, description=_describe(metrics))
            if dist.rank == 0 and (step % rcfg.log_every == 0 or step == target):
                append_metrics(ckpt_root / METRICS, {"step": step, **metrics})
            if step % rcfg.save_every == 0 or step == target:
                meta = {"init": init_ref, "init_from": source, "base_model": init_ref, "metrics": metrics}
                meta |= {"refresh": dataclasses.asdict(s.ref_state), "scorer": scorer.name}
                reference = s.stepper.reference.state_dict() if s.ref_state.refreshes else None
                saved = s.saver.save(step, s.optimizer, s.scheduler, meta, {"reference": reference})
                result.checkpoint = saved or result.checkpoint
    result.end_step = step
    result.seconds = time.perf_counter() - clock
    return result


@dataclass
class _Setup:
    """What the GRPO loop works with (the policy and its reference are the stepper's)."""

    stepper: GRPOStep
    params: list
    optimizer: Any
    scheduler: Any
    ref_state: RefState
    saver: Saver


def _setup(
    run_dir: Path, cfg: JanusRunConfig, start: Start, dist: Distributed, device: torch.device, init_path: Path, scorer
) -> _Setup:
    """The policy (the starting one, or the start checkpoint's weights) and its frozen reference, the
    GRPO step, AdamW + schedule, restored to the start checkpoint; the run's config and metrics
    brought to its step."""
    from transformers import AutoImageProcessor, AutoTokenizer

    rcfg, ckpt_root = cfg.rl, run_dir / CKPT_DIR
    torch.manual_seed(rcfg.seed)
    policy = _load_janus(start.checkpoint.path if start.checkpoint else init_path, device)
    set_trainable(policy)
    reference = _load_janus(init_path, device).eval().requires_grad_(False)
    if start.trainer.get("reference") is not None:
        reference.load_state_dict(start.trainer["reference"])
    tokenizer, image_processor = AutoTokenizer.from_pretrained(init_path), AutoImageProcessor.from_pretrained(init_path)
    n_und, n_gen = policy.config.vision_config.num_image_tokens, policy.config.vq_config.num_patches**2
    builder = SequenceBuilder(tokenizer, int(n_und), int(n_gen))
    precision = Precision.resolve(device, cfg.runtime.dtype)
    weights = (cfg.edit.reward_flw, cfg.edit.reward_psv)
    stepper = GRPOStep(policy, reference, builder, image_processor, scorer, rcfg, dist, precision, weights)
    params = [p for p in policy.parameters() if p.requires_grad]
    ref_state = RefState(**start.info.get("refresh", {}))
    optimizer, scheduler = build_optimizer(params, rcfg, rl_lr_lambda(rcfg, ref_state))
    restore(start, stepper.module, optimizer, scheduler)
    open_run(run_dir, cfg, ckpt_root, start.step, dist)
    saver = Saver(dist, ckpt_root, policy, stepper.module, stepper.parallel, init_path, rcfg)
    return _Setup(stepper, params, optimizer, scheduler, ref_state, saver)


@dataclass
class _EditBatch:
    """An edit step's source of prompts: the edits (edit_id, instruction, source bytes or null) and the run."""

    edits: pl.DataFrame
    run_dir: Path


def _train_step(
    s: _Setup, prompts: pl.DataFrame | _EditBatch, step: int, ckpt_root: Path, index: int | None = None
) -> dict[str, float]:
    """Update `step` + 1: rollout, judge, loss + backward, clip, update; the step's global metrics.

    `index`: where the step's prompts are read in their kind's order (default `step`; `rl_edits`).
    With an `_EditBatch` the step edits: instructions and their sources, edit rewards.
    A non-finite loss or gradient stops before the update, naming the last good checkpoint.
    """
    stepper, cfg, dist = s.stepper, s.stepper.cfg, s.stepper.dist
    t0 = time.perf_counter()
    index = step if index is None else index
    g = cfg.group_size
    if isinstance(prompts, _EditBatch):
        batch = step_prompts(prompts.edits, index, cfg.prompts_per_step, dist, cfg.seed)
        texts = [p for p in batch["instruction"].to_list() for _ in range(g)]
        seeds = [derive_seed(cfg.seed, e, f"rl-edit-{step}", m) for e in batch["edit_id"].to_list() for m in range(g)]
        sources = [im for im in source_images(prompts.run_dir, batch) for _ in range(g)]
    else:
        batch = step_prompts(prompts, index, cfg.prompts_per_step, dist, cfg.seed)
        texts = [p for p in batch["prompt"].to_list() for _ in range(g)]
        seeds = [derive_seed(cfg.seed, pid, f"rl-{step}", m) for pid in batch["prompt_id"].to_list() for m in range(g)]
        sources = None
    ro = stepper.rollout(texts, seeds, sources)
    t1 = time.perf_counter()
    s1, s2 = stepper.score(ro)
    t2 = time.perf_counter()
    scale = stepper.reward_scale if ro.is_edit else 1.0
    rewards = rollout_rewards(s1, s2, ro.said_yes, scale)
    advantages = {k: group_advantages(v, g) for k, v in rewards.items()}
    s.optimizer.zero_grad(set_to_none=True)
    sums = stepper.backward(ro, advantages)
    grad_norm = clip_gradients(s.params, cfg.grad_clip)
    metrics = step_metrics(rewards, s1, s2, ro, sums, dist, scale)
    check_finite(metrics["loss"], grad_norm, step + 1, ckpt_root, "GRPO loss", "lower rl.lr or rl.beta")
    lr_used = s.optimizer.param_groups[0]["lr"]  # this update's lr (the scheduler then moves to the next)
    s.optimizer.step()
    stepper.sync_actor()
    s.scheduler.step()
    t3 = time.perf_counter()
    times = {"time/rollout": t1 - t0, "time/judge": t2 - t1, "time/update": t3 - t2}
    return {**metrics, "grad_norm": float(grad_norm), "lr": lr_used, **times}


def _refresh_reference(s: _Setup, step: int) -> None:
    """The reference becomes the current policy; the lr is scaled by rl.refresh_lr_factor from now on."""
    cfg = s.stepper.cfg
    s.stepper.reference.load_state_dict(s.stepper.full_policy_state())
    s.ref_state.refreshed(step, cfg)
    for group, lr in zip(s.optimizer.param_groups, s.scheduler.get_last_lr(), strict=True):
        group["lr"] = lr * cfg.refresh_lr_factor


def _load_janus(path, device: torch.device):
    """A Janus-Pro checkpoint in fp32 (the master weights) on `device`."""
    from transformers import JanusForConditionalGeneration

    return JanusForConditionalGeneration.from_pretrained(path, dtype=torch.float32, use_safetensors=True).to(device)


def _describe(m: dict[str, float]) -> str:
    kind = "edit " if m.get("edit") else ""
    return f"rl {kind}R1 {m['reward/r1']:.3f} R2 {m['reward/r2']:.3f} R3 {m['reward/r3']:.3f} kl {m['kl']:.4f}"
