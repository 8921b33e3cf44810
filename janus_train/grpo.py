"""`janus train rl`: GRPO with introspective rollouts and dual-layer rewards (PAPER.md "GRPO").

One step:
1. rollout: `prompts_per_step` prompts per process, `group_size` rollouts each
   (`rollout.RolloutEngine`: image 1 -> forced Yes/No + reason -> image 2 if No), through the
   fast image loop and the fused sampler, which also return behaviour log-probs;
2. judge: S(image 1) for every rollout and S(image 2) for those that regenerated, in one batch
   per step (`rewards.JudgeScorer`: in process or LMDeploy servers); R1 = S(image 1),
   R2 = 1 - |S(image 1) - selfcheck|, R3 = S(final image), each normalised within its group;
3. update: per-token log-probs of the three segments under the policy (with gradient) and the
   frozen reference, the clipped surrogate + beta * k3 KL per segment, reduced per rollout then
   over rollouts ('sequence') or over tokens ('token', `rl.loss_reduction`), combined with the
   segment weights (`grpo_math.grpo_loss`), in micro-batches whose losses sum to the step's loss.

Log-probs in the loss (`rl.image_logp`):
- image tokens, 'sampled' (default): log softmax of the CFG logits after top-k, temperature and
  top-p, the very distribution the rollout drew from; the ratio's old log-probs are the
  rollout's own. 'cfg_divided': the released code's log softmax(CFG logits / w); the old
  log-probs are then the policy's own, detached, so the ratio is 1 at the update, as in the
  released code (one update per rollout batch);
- the answer token (`rl.answer_logp`): 'two_way' = log softmax over the two words' first tokens
  (the forced answer's distribution); 'full' = log softmax(lm_head / text temperature) over the
  whole vocabulary, as the released code trains it (janus-rl/src/open_r1/grpo_trainer_t2iv1.py:
  366-395; needs 'cfg_divided', whose ratio is 1). Reason tokens: log softmax(lm_head / text
  temperature). Tokens forced after the answer's first token (a split "No") belong to no segment,
  nor does the reason's <EOS> with `rl.judge_eos` False.
- image 2 is conditioned on `Rollouts.context1`, the very codes the rollout's prefix held
  (`rl.regen_context`).

Processes split the prompts; a group lives on one process, so advantages need no
communication; token and rollout counts are summed over processes so the loss is the global batch's.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from janus_data.config import JanusRunConfig, RLConfig, check_rl_logps, to_dict
from janus_data.errors import RunDirError
from janus_data.generators.sampling import SamplerParams, cfg_logits, masked_scaled_logits
from janus_data.models import resolve_device, resolve_model
from janus_data.progress import stage_progress
from janus_data.rundir import CKPT_DIRS, save_run_config
from janus_data.seeds import derive_seed
from janus_train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    set_rng_state,
)
from janus_train.grpo_math import (
    SEGMENTS,
    SegmentWeights,
    consistency_reward,
    final_reward,
    group_advantages,
    grpo_loss,
    segment_masks,
    selfcheck_reward,
)
from janus_train.losses import collate, hidden_states
from janus_train.rollout import RolloutEngine, RolloutParams, Rollouts, answer_words, closed
from janus_train.sequences import IGNORE, SequenceBuilder
from janus_train.sft import CKPT_DIR as SFT_CKPT_DIR
from janus_train.sft import (
    METRICS,
    Distributed,
    TrainResult,
    init_distributed,
    nan_error,
    save_on_rank0,
    set_trainable,
    truncate_metrics,
)
from janus_train.steps import (
    clip_gradients,
    full_model_state,
    full_optimizer_state,
    gradient_sync,
    load_optimizer_state,
    touch_trainable_heads,
    wrap_parallel,
)

if TYPE_CHECKING:  # frames come from janus_data.prompts; the trainer itself needs no polars
    import polars as pl

CKPT_DIR = CKPT_DIRS["rl"]


# -- per-token log-probs of rollouts ---------------------------------------------------------------
def image_logprobs(cond: torch.Tensor, uncond: torch.Tensor, tokens: torch.Tensor, cfg: RLConfig) -> torch.Tensor:
    """Log-prob of each image token under `cfg.image_logp`: (R, N, V) x2, (R, N) -> (R, N)."""
    rows, n, vocab = cond.shape
    logits = cfg_logits(cond.reshape(-1, vocab), uncond.reshape(-1, vocab), cfg.cfg_weight)
    flat = tokens.reshape(-1, 1)
    if cfg.image_logp == "cfg_divided":
        scaled = logits / cfg.cfg_weight
    else:
        params = SamplerParams(cfg.cfg_weight, cfg.temperature, cfg.top_k, cfg.top_p)
        masked = masked_scaled_logits(logits, params)
        # The sampled token is in the kept set by construction; keep it even if this forward's
        # rounding puts it a hair outside (a -inf log-prob would poison the step).
        keep = torch.isfinite(masked).scatter(-1, flat, True)
        scaled = torch.where(keep, logits / cfg.temperature, float("-inf"))
    return torch.log_softmax(scaled, dim=-1).gather(-1, flat).reshape(rows, n)


def two_way_logprobs(scaled: torch.Tensor, targets: torch.Tensor, builder: SequenceBuilder) -> torch.Tensor:
    """Log-prob of each target under the softmax over the first tokens of Yes and No: (K, V), (K,) -> (K,).

    The forced answer's own distribution (rows whose target is neither word get No's; only the
    answer position is read).
    """
    yes, no = answer_words(builder)
    pair = torch.tensor([yes[0], no[0]], device=scaled.device)
    two_way = torch.log_softmax(scaled[:, pair], dim=-1)
    return torch.where(targets == pair[0], two_way[:, 0], two_way[:, 1])


def _image_targets(model, samples, builder, n: int, image_processor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation-head logits at the image targets of 2R samples (R cond, then R uncond): (R, N, V) x2."""
    device = next(model.parameters()).device
    batch = collate(samples, builder.pad_id, image_processor).to(device)
    hidden = hidden_states(model, batch, image_processor)
    logits = model.model.generation_head(hidden[batch.image_labels != IGNORE]).float()
    logits = logits.reshape(len(samples), n, -1)
    half = len(samples) // 2
    return logits[:half], logits[half:]


def rollout_logprobs(
    model,
    builder: SequenceBuilder,
    image_processor,
    ro: Rollouts,
    rows: list[int],
    cfg: RLConfig,
    lockstep: bool = False,
) -> torch.Tensor:
    """The (R, T) grid of per-token log-probs of rollouts `rows` under `model`, T = N + J + N.

    Columns: image 1's N codes, the evaluation's J tokens (J = the longest among `rows`, padded
    with 0), image 2's N codes (0 on rows that said Yes). See `segments_for` for the masks.
    `lockstep`: always run the image-2 forward, even without a No row (FSDP needs the same
    forwards on every process).
    """
    device = next(model.parameters()).device
    n = ro.image1.shape[1]
    width = max(len(ro.judge_ids[r]) for r in rows)
    grid = torch.zeros(len(rows), 2 * n + width, device=device)
    prompts = [ro.prompts[r] for r in rows]
    tok1 = ro.image1[rows].to(device)
    # image 1: Task-I sequences and their unconditional twins (the turn padded)
    samples = [
        builder.t2i(p, t.cpu().numpy(), drop=d) for d in (False, True) for p, t in zip(prompts, tok1, strict=True)
    ]
    cond, uncond = _image_targets(model, samples, builder, n, image_processor)
    grid[:, :n] = image_logprobs(cond, uncond, tok1, cfg)
    # the evaluation: Task-II sequences (image 1 through the understanding path)
    samples = [builder.judge(ro.prompts[r], Image.fromarray(ro.pixels1[r]), ro.judge_ids[r]) for r in rows]
    batch = collate(samples, builder.pad_id, image_processor).to(device)
    hidden = hidden_states(model, batch, image_processor)
    scaled = model.lm_head(hidden[batch.text_labels != IGNORE]).float() / cfg.text_temperature
    targets = batch.text_labels[batch.text_labels != IGNORE]
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    answer_logp = logp if cfg.answer_logp == "full" else two_way_logprobs(scaled, targets, builder)
    start = 0
    for i, r in enumerate(rows):
        k = len(ro.judge_ids[r])
        grid[i, n] = answer_logp[start]
        grid[i, n + 1 : n + k] = logp[start + 1 : start + k]
        start += k
    # image 2: Task-III sequences of the rows that said No, and their twins (the first turn padded)
    redo = [i for i, r in enumerate(rows) if not bool(ro.said_yes[r])]
    if redo or lockstep:
        # Under FSDP every process must run the same forwards (each one gathers the shards): with
        # no No row, row 0 stands in and its zero-weighted logits join the graph, changing nothing.
        picks = redo or [0]
        context = ro.context1[rows] if redo else tok1  # the codes the rollout's prefix held
        samples = [
            builder.regen(
                prompts[i],
                context[i].cpu().numpy(),
                closed(ro.judge_ids[rows[i]], builder.eos_id),
                (ro.image2[rows[i]] if redo else tok1[i]).cpu().numpy(),
                drop=d,
            )
            for d in (False, True)
            for i in picks
        ]
        cond, uncond = _image_targets(model, samples, builder, n, image_processor)
        if redo:
            grid[redo, n + width :] = image_logprobs(cond, uncond, ro.image2[[rows[i] for i in redo]].to(device), cfg)
        else:
            grid = grid + 0.0 * (cond.sum() + uncond.sum())
    return grid


def segments_for(
    ro: Rollouts, rows: list[int], device, eos_id: int | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The three segment masks over `rollout_logprobs`' grid, and the behaviour log-probs on it.

    image1 = image 1's codes; judge = the evaluation's sampled tokens (forced ones excluded, and
    the closing <EOS> when `eos_id` is given: rl.judge_eos False, as the released
    janus-rl/src/open_r1/llama.py:222-224); final = image 1's codes on rows that said Yes, image
    2's on the others.
    """
    n = ro.image1.shape[1]
    width = max(len(ro.judge_ids[r]) for r in rows)
    total = 2 * n + width
    said_yes = ro.said_yes[rows].to(device)
    lens = torch.tensor([len(ro.judge_ids[r]) for r in rows], device=device)
    span = lambda a, b: torch.stack([a, b], dim=1)  # noqa: E731
    zeros = torch.zeros(len(rows), dtype=torch.long, device=device)
    masks = segment_masks(
        span(zeros, zeros + n), span(zeros + n, n + lens), span(zeros + n + width, zeros + total), said_yes, total
    )
    behaviour = torch.zeros(len(rows), total, device=device)
    behaviour[:, :n] = ro.image1_logp[rows].to(device)
    behaviour[:, n + width :] = ro.image2_logp[rows].to(device)
    for i, r in enumerate(rows):
        behaviour[i, n : n + len(ro.judge_logp[r])] = torch.tensor(ro.judge_logp[r], device=device)
    forced = torch.isnan(behaviour)
    masks["judge"] = masks["judge"] & ~forced
    for i, r in enumerate(rows):
        ids = ro.judge_ids[r]
        if eos_id is not None and ids and ids[-1] == eos_id:
            masks["judge"][i, n + len(ids) - 1] = False  # still context for image 2, without a loss
    return masks, torch.nan_to_num(behaviour, nan=0.0)


class GRPOLossModule(torch.nn.Module):
    """The policy's side of the loss, so that DDP's forward is the whole computation."""

    def __init__(self, model, builder: SequenceBuilder, image_processor, cfg: RLConfig):
        super().__init__()
        self.model = model
        self.builder = builder
        self.image_processor = image_processor
        self.cfg = cfg

    def forward(self, ro: Rollouts, rows, ref_logp, segments, advantages, counts, behaviour, lockstep=False):
        """The micro-batch `rows`' share of the step's loss; `counts`: {"tokens"|"sequences": {segment: global n}}."""
        cfg = self.cfg
        logp = rollout_logprobs(self.model, self.builder, self.image_processor, ro, rows, cfg, lockstep)
        old = logp.detach() if cfg.image_logp == "cfg_divided" else behaviour
        weights = SegmentWeights(cfg.weight_image1, cfg.weight_judge, cfg.weight_final)
        loss, stats = grpo_loss(
            logp,
            old,
            ref_logp,
            segments,
            advantages,
            weights,
            cfg.beta,
            cfg.clip_eps,
            token_counts=counts["tokens"],
            reduction=cfg.loss_reduction,
            sequence_counts=counts["sequences"],
        )
        return loss + touch_trainable_heads(self.model), stats


class GRPOStep:
    """The three phases of one GRPO step on this process: rollout, judge, loss + backward.

    `run_rl` drives it with checkpoints, schedules and metrics; benchmarks time its phases.
    """

    def __init__(self, policy, reference, builder: SequenceBuilder, image_processor, scorer, cfg: RLConfig, dist):
        check_rl_logps(cfg)  # a config built without validate() (benchmarks) is checked here
        self.policy = policy
        self.reference = reference
        self.builder = builder
        self.image_processor = image_processor
        self.scorer = scorer
        self.cfg = cfg
        self.dist = dist
        self.device = next(policy.parameters()).device
        image = SamplerParams(cfg.cfg_weight, cfg.temperature, cfg.top_k, cfg.top_p)
        params = RolloutParams(image, cfg.text_temperature, cfg.reason_tokens, cfg.regen_context)
        dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else None, "float32": None}.get(
            cfg.rollout_dtype, torch.bfloat16
        )
        self.parallel = cfg.parallel if dist.active else None
        # The actor draws the rollouts: the policy itself, or a copy of it (low precision, or whole
        # when FSDP shards the policy) that `sync_actor` refreshes in place after every update (in
        # place keeps the fast loop's captured graphs valid).
        self.actor = policy
        if self.parallel == "fsdp" or (dtype is not None and dtype != next(policy.parameters()).dtype):
            self.actor = copy.deepcopy(policy).to(dtype or torch.float32).eval().requires_grad_(False)
        self.engine = RolloutEngine(self.actor, builder, image_processor, params)
        self.module = GRPOLossModule(policy, builder, image_processor, cfg)
        self.wrapped = wrap_parallel(self.module, policy, self.parallel, self.device)

    def autocast(self):
        """bf16 autocast on GPU, except under FSDP2, whose policy casts the parameters itself."""
        if self.device.type == "cuda" and self.parallel != "fsdp":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def sync_actor(self) -> None:
        """Copy the policy's weights into the rollout copy (no-op when the policy draws itself).

        Under FSDP every process gathers each sharded parameter (a collective: all call it).
        """
        if self.actor is self.policy:
            return
        for mine, theirs in zip(self.actor.parameters(), self.policy.parameters(), strict=True):
            mine.copy_(theirs.full_tensor() if hasattr(theirs, "full_tensor") else theirs)  # buffers never train

    def full_policy_state(self) -> dict:
        """The policy's whole state dict on every process (gathered under FSDP), e.g. for a reference refresh."""
        return full_model_state(self.module, self.parallel) or self.policy.state_dict()

    def rollout(self, texts: list[str], seeds: list[int]) -> Rollouts:
        self.policy.eval()
        if self.actor is not self.policy:  # already in low precision: no autocast casts
            return self.engine.run(texts, seeds)
        with self.autocast():
            return self.engine.run(texts, seeds)

    def score(self, ro: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
        """S(image 1) per rollout and S(image 2) (NaN where none was drawn), in one scorer call."""
        redo = ro.regenerated
        scores = self.scorer.score(
            ro.prompts + [ro.prompts[i] for i in redo],
            [*ro.pixels1, *(ro.pixels2[i] for i in redo)],
            [*ro.image1, *(ro.image2[i] for i in redo)],
        )
        s1 = torch.tensor(scores[: len(ro)], dtype=torch.float32)
        s2 = torch.full_like(s1, float("nan"))
        s2[redo] = torch.tensor(scores[len(ro) :], dtype=torch.float32)
        return s1, s2

    def backward(self, ro: Rollouts, advantages: dict[str, torch.Tensor]) -> dict[str, float]:
        """Accumulate the step's gradient over micro-batches; sums for the loss statistics."""
        cfg, dist = self.cfg, self.dist
        self.policy.train()
        rows = list(range(len(ro)))
        chunks = [rows[i : i + cfg.micro_batch] for i in range(0, len(rows), cfg.micro_batch)]
        eos_id = None if cfg.judge_eos else self.builder.eos_id
        masks = [segments_for(ro, c, self.device, eos_id) for c in chunks]
        # per segment: tokens, and rollouts with any token in it; summed over processes, so that
        # every micro-batch divides by the global batch's counts
        counts = torch.tensor(
            [[[float(m[s].sum()), float(m[s].any(1).sum())] for s in SEGMENTS] for m, _ in masks]
        ).sum(0)
        if dist.active:
            torch.distributed.all_reduce(counts)
        global_counts = {
            "tokens": dict(zip(SEGMENTS, counts[:, 0].tolist(), strict=True)),
            "sequences": dict(zip(SEGMENTS, counts[:, 1].tolist(), strict=True)),
        }
        sums = {"loss": 0.0, "kl": 0.0, "kl_n": 0.0, "clip": 0.0, "clip_n": 0.0}
        for k, (chunk, (segs, behaviour)) in enumerate(zip(chunks, masks, strict=True)):
            adv = {s: a[chunk].to(self.device) for s, a in advantages.items()}
            with torch.no_grad(), self.autocast():
                ref_logp = rollout_logprobs(self.reference, self.builder, self.image_processor, ro, chunk, cfg)
            with gradient_sync(self.wrapped, self.parallel, sync=k == len(chunks) - 1):
                with self.autocast():
                    lockstep = self.parallel == "fsdp"
                    loss, stats = self.wrapped(ro, chunk, ref_logp, segs, adv, global_counts, behaviour, lockstep)
                (loss * dist.world_size).backward()
            union = float(torch.stack(list(segs.values())).any(0).sum())
            terms = float(sum(m.sum() for m in segs.values()))
            sums["loss"] += float(stats["loss"])
            sums["kl"] += float(stats["kl"]) * union
            sums["kl_n"] += union
            sums["clip"] += float(stats["clip_frac"]) * terms
            sums["clip_n"] += terms
        return sums


def rollout_rewards(s1: torch.Tensor, s2: torch.Tensor, said_yes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-segment rewards: image1 <- R1 = S(image 1), judge <- R2 = 1 - |S1 - selfcheck|, final <- R3 = S(final)."""
    return {
        "image1": consistency_reward(s1),
        "judge": selfcheck_reward(s1, said_yes),
        "final": final_reward(s1, s2, said_yes),
    }


# -- prompts, seeds, schedule ------------------------------------------------------------------------
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


def lr_lambda(cfg: RLConfig, state: RefState):
    """LambdaLR's share of rl.lr after `step` updates: the `schedule`, times the refresh lr scale.

    'cosine' / 'linear': warm-up (step + 1) / warmup_steps, then decay to min_lr_ratio at
    max_steps; 'released': `released_lr_ratio`.
    """

    def f(step: int) -> float:
        if cfg.schedule == "released":
            base = released_lr_ratio(step, cfg)
        elif step < cfg.warmup_steps:
            base = (step + 1) / cfg.warmup_steps
        else:
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
            shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
            base = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
        return base * state.lr_scale

    return f


def released_lr_ratio(x: int, cfg: RLConfig) -> float:
    """The released three-piece schedule at LambdaLR step x, as a share of rl.lr.

    janus-rl/src/open_r1/grpo_trainer_t2iv1.py:70-88 (installed as a LambdaLR at :751-775): x / warmup
    from 0 (the optimizer steps before the scheduler, so the first update uses lr 0), then linear to
    convert_lr_ratio at convert_step, then linear to min_lr_ratio at max_steps. The last piece holds
    min_lr_ratio past max_steps (a longer --max-steps), where the released line goes on down to a
    negative lr, and is min_lr_ratio outright when max_steps <= convert_step (no division by zero).
    """
    warmup, convert, total = cfg.warmup_steps, cfg.convert_step, cfg.max_steps
    if x < warmup:
        return x / warmup
    if x < convert:  # warmup < convert here: no division by zero
        return 1.0 + (cfg.convert_lr_ratio - 1.0) * (x - warmup) / (convert - warmup)
    if total <= convert:
        return cfg.min_lr_ratio
    progress = min(1.0, (x - convert) / (total - convert))
    return cfg.convert_lr_ratio + (cfg.min_lr_ratio - cfg.convert_lr_ratio) * progress


@dataclass
class RefState:
    """The reference policy's bookkeeping: the reward's moving average, its best, refreshes so far."""

    ema: float | None = None
    best: float | None = None
    refreshes: int = 0
    last_refresh: int = 0
    lr_scale: float = 1.0

    def observe(self, reward: float, cfg: RLConfig, step: int) -> bool:
        """Fold in a step's mean reward; True when the reference should be refreshed now."""
        self.ema = reward if self.ema is None else cfg.reward_ema * self.ema + (1 - cfg.reward_ema) * reward
        self.best = self.ema if self.best is None else max(self.best, self.ema)
        due = cfg.ref_refresh_every > 0 and step - self.last_refresh >= cfg.ref_refresh_every
        dropped = cfg.ref_refresh_drop > 0 and self.best - self.ema > cfg.ref_refresh_drop
        return due or dropped

    def refreshed(self, step: int, cfg: RLConfig) -> None:
        self.refreshes += 1
        self.last_refresh = step
        self.best = self.ema
        self.lr_scale *= cfg.refresh_lr_factor


@dataclass
class RLResult(TrainResult):
    rollouts: int = 0
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=lambda: {"rollout": 0.0, "judge": 0.0, "update": 0.0})
    refreshes: int = 0
    scorer: str = ""


# -- the trainer ------------------------------------------------------------------------------------
def default_init(run_dir: Path, cfg: JanusRunConfig) -> str:
    """rl.model, else the run's latest SFT checkpoint, else the generator checkpoint."""
    if cfg.rl.model:
        return cfg.rl.model
    sft = latest_checkpoint(Path(run_dir) / SFT_CKPT_DIR)
    return str(sft.path) if sft else cfg.synth.janus.model


def load_rl_prompts(run_dir: Path, cfg: RLConfig) -> pl.DataFrame:
    from janus_data.prompts import load_prompts, read_prompts_manifest

    if cfg.prompts:
        return load_prompts(cfg.prompts)[0].select("prompt_id", "prompt").sort("prompt_id")
    if not (Path(run_dir) / "manifests" / "prompts").exists():
        raise RunDirError(f"run {run_dir} has no prompts", hint="set rl.prompts to a prompt file, or run synth first")
    return read_prompts_manifest(run_dir).select("prompt_id", "prompt").sort("prompt_id")


def run_rl(
    run_dir: Path,
    cfg: JanusRunConfig,
    init: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
    scorer=None,
) -> RLResult:
    """Train (or resume) GRPO up to `max_steps`; checkpoints under <run>/checkpoints/rl.

    `scorer`: what gives S (default: the configured judge, `score.*`); see `rewards.py`.
    """
    import dataclasses

    from transformers import AutoImageProcessor, AutoTokenizer, JanusForConditionalGeneration

    from janus_data.judge.factory import check_judge, make_judge
    from janus_train.rewards import JudgeScorer

    start_time = time.perf_counter()
    run_dir = Path(run_dir)
    rcfg = cfg.rl
    check_rl_logps(rcfg)  # before the judge check and the model loads
    target = max_steps if max_steps is not None else rcfg.max_steps
    device = resolve_device(cfg.runtime)
    dist = init_distributed(device)
    ckpt_root = run_dir / CKPT_DIR
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if resume and ckpt is None:
        raise CheckpointError(f"no checkpoint to resume under {ckpt_root}", hint="start without --resume")
    trainer_state, info = load_trainer_state(ckpt) if ckpt else ({}, {})
    init_ref = info.get("init") or init or default_init(run_dir, cfg)
    init_path = resolve_model(init_ref)
    prompts = load_rl_prompts(run_dir, rcfg)
    if prompts.height == 0:
        raise RunDirError("no prompts for RL", hint="set rl.prompts or run synth with --prompts")
    if scorer is None:
        judge_cfg = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, reason_tokens=0))
        check_judge(judge_cfg)  # a dead server fails now, in seconds, not after the first rollout
        scorer = JudgeScorer(make_judge(judge_cfg), retries=rcfg.judge_retries, backoff_s=cfg.score.backoff_s)
    result = RLResult(run_dir, rank=dist.rank, max_steps=target, world_size=dist.world_size, scorer=scorer.name)

    torch.manual_seed(rcfg.seed)
    load = lambda path: JanusForConditionalGeneration.from_pretrained(  # noqa: E731
        path, dtype=torch.float32, use_safetensors=True
    ).to(device)
    policy = load(ckpt.path if ckpt else init_path)
    set_trainable(policy)
    reference = load(init_path).eval().requires_grad_(False)
    if trainer_state.get("reference") is not None:
        reference.load_state_dict(trainer_state["reference"])
    tokenizer = AutoTokenizer.from_pretrained(init_path)
    image_processor = AutoImageProcessor.from_pretrained(init_path)
    builder = SequenceBuilder(
        tokenizer, int(policy.config.vision_config.num_image_tokens), int(policy.config.vq_config.num_patches) ** 2
    )
    stepper = GRPOStep(policy, reference, builder, image_processor, scorer, rcfg, dist)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=rcfg.lr, betas=tuple(rcfg.betas), eps=rcfg.eps, weight_decay=rcfg.weight_decay
    )
    ref_state = RefState(**info.get("refresh", {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(rcfg, ref_state))
    step = 0
    if ckpt is not None:
        load_optimizer_state(stepper.module, optimizer, trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        set_rng_state(trainer_state["rng"])
        step = info["step"]
        result.resumed_from = ckpt.path
    result.start_step = step
    result.refreshes = ref_state.refreshes
    if dist.rank == 0:
        save_run_config(run_dir, cfg)
        truncate_metrics(ckpt_root / METRICS, step)
    g = rcfg.group_size
    with stage_progress(progress if dist.rank == 0 else False) as bars:
        bar = bars.add_task("rl", total=target, completed=step, unit="step")
        while step < target:
            t0 = time.perf_counter()
            batch = step_prompts(prompts, step, rcfg.prompts_per_step, dist, rcfg.seed)
            texts = [p for p in batch["prompt"].to_list() for _ in range(g)]
            seeds = [
                derive_seed(rcfg.seed, pid, f"rl-{step}", m) for pid in batch["prompt_id"].to_list() for m in range(g)
            ]
            ro = stepper.rollout(texts, seeds)
            t1 = time.perf_counter()
            s1, s2 = stepper.score(ro)
            t2 = time.perf_counter()
            rewards = rollout_rewards(s1, s2, ro.said_yes)
            advantages = {k: group_advantages(v, g) for k, v in rewards.items()}
            optimizer.zero_grad(set_to_none=True)
            sums = stepper.backward(ro, advantages)
            grad_norm = clip_gradients(params, rcfg.grad_clip)
            metrics = _step_metrics(rewards, s1, s2, ro, sums, dist)
            if not (math.isfinite(metrics["loss"]) and torch.isfinite(grad_norm)):
                raise nan_error(step + 1, ckpt_root, "GRPO loss", "lower rl.lr or rl.beta")
            lr_used = optimizer.param_groups[0]["lr"]  # this update's lr (the scheduler then moves to the next)
            optimizer.step()
            stepper.sync_actor()
            scheduler.step()
            step += 1
            t3 = time.perf_counter()
            if ref_state.observe(metrics["reward"], rcfg, step):
                reference.load_state_dict(stepper.full_policy_state())
                ref_state.refreshed(step, rcfg)
                for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
                    group["lr"] = lr * rcfg.refresh_lr_factor
            metrics.update(
                {
                    "grad_norm": float(grad_norm),
                    "lr": lr_used,
                    "refreshes": ref_state.refreshes,
                    "time/rollout": t1 - t0,
                    "time/judge": t2 - t1,
                    "time/update": t3 - t2,
                }
            )
            for key, share in (("rollout", t1 - t0), ("judge", t2 - t1), ("update", t3 - t2)):
                result.times[key] += share
            result.rollouts += len(texts) * dist.world_size
            result.first = result.first or dict(metrics)
            result.last = dict(metrics)
            result.refreshes = ref_state.refreshes
            bars.update(bar, completed=step, description=_describe(metrics))
            if dist.rank == 0 and (step % rcfg.log_every == 0 or step == target):
                _log(ckpt_root / METRICS, step, metrics)
            if step % rcfg.save_every == 0 or step == target:
                # Collective under FSDP (every process gathers), then process 0 writes.
                weights = full_model_state(stepper.module, stepper.parallel)
                trainer = {
                    "optimizer": full_optimizer_state(stepper.module, optimizer),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "reference": reference.state_dict() if ref_state.refreshes else None,
                }
                meta = {
                    "init": init_ref,
                    "base_model": init_ref,
                    "world_size": dist.world_size,
                    "metrics": metrics,
                    "refresh": dataclasses.asdict(ref_state),
                    "scorer": scorer.name,
                    "config": to_dict(rcfg),
                }
                saved = save_on_rank0(dist, ckpt_root, step, policy, init_path, trainer, meta, rcfg.keep_last, weights)
                result.checkpoint = saved or result.checkpoint
    result.end_step = step
    result.seconds = time.perf_counter() - start_time
    return result


def _step_metrics(rewards, s1, s2, ro: Rollouts, sums: dict, dist: Distributed) -> dict[str, float]:
    """Global (all processes) means of the step's rewards and rates, and the loss statistics."""
    said_yes = ro.said_yes.float()
    redo = ~ro.said_yes
    improved = (s2 > s1) & redo
    local = torch.tensor(
        [
            float(rewards["image1"].sum()),
            float(rewards["judge"].sum()),
            float(rewards["final"].sum()),
            float(((s1 >= 0.5).float() == said_yes).float().sum()),  # self-check agrees with the judge at 0.5
            float(redo.float().sum()),
            float(improved.float().sum()),
            float(len(s1)),
            sums["loss"],
            sums["kl"],
            sums["kl_n"],
            sums["clip"],
            sums["clip_n"],
        ],
        dtype=torch.float64,
    )
    if dist.active:
        torch.distributed.all_reduce(local)
    r1, r2, r3, agree, regen, better, n, loss, kl, kl_n, clip, clip_n = local.tolist()
    return {
        "reward/r1": r1 / n,
        "reward/r2": r2 / n,
        "reward/r3": r3 / n,
        "reward": (r1 + r2 + r3) / (3 * n),
        "selfcheck_acc": agree / n,
        "regen_rate": regen / n,
        "aha_rate": better / regen if regen else 0.0,
        "loss": loss,  # each process's share is already normalised by the global token counts
        "kl": kl / kl_n if kl_n else 0.0,
        "clip_frac": clip / clip_n if clip_n else 0.0,
    }


def _describe(m: dict[str, float]) -> str:
    return f"rl R1 {m['reward/r1']:.3f} R2 {m['reward/r2']:.3f} R3 {m['reward/r3']:.3f} kl {m['kl']:.4f}"


def _log(path: Path, step: int, metrics: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
