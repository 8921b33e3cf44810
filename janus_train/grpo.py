"""One GRPO step on this process (docs/paper.md, 'GRPO'): rollout, judge, loss + backward; the reference's bookkeeping.

1. rollout: `rollout.RolloutEngine` (image 1 -> forced Yes/No + reason -> image 2 if No), through
   the fast image loop and the fused sampler, which also return behaviour log-probs;
2. judge: S(image 1) for every rollout and S(image 2) for those that regenerated, in one scorer
   call (`rewards.JudgeScorer`: in process or LMDeploy servers);
3. update: per-token log-probs of the three segments under the policy (with gradient) and the
   frozen reference (`logprobs.py`), the clipped surrogate + beta * k3 KL per segment, reduced
   per rollout then over rollouts ('sequence') or over tokens ('token', `rl.loss_reduction`),
   combined with the segment weights (`grpo_math.grpo_loss`), in micro-batches whose losses sum
   to the step's loss.

Processes split the prompts; a group lives on one process, so advantages need no
communication; token and rollout counts are summed over processes so the loss is the global
batch's. `rl.run_rl` drives the step with checkpoints, schedules and metrics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from janus_data.config import RLConfig, check_rl_logps
from janus_data.generators.sampling import SamplerParams
from janus_data.judge.scoring import W_FLW, W_PSV
from janus_train.core import Distributed, Precision
from janus_train.grpo_math import SEGMENTS, SegmentWeights, grpo_loss
from janus_train.logprobs import rollout_logprobs, segments_for
from janus_train.parallel import full_model_state, gradient_sync, touch_trainable_heads, wrap_parallel
from janus_train.rewards import combined_edit_reward
from janus_train.rollout import RolloutEngine, RolloutParams, Rollouts
from janus_train.sequences import SequenceBuilder


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
    `precision`: the dtype policy (default: runtime.dtype 'auto' on the policy's device).
    """

    def __init__(
        self,
        policy,
        reference,
        builder: SequenceBuilder,
        image_processor,
        scorer,
        cfg: RLConfig,
        dist: Distributed,
        precision: Precision | None = None,
        edit_weights: tuple[float, float] = (W_FLW, W_PSV),
    ):
        """`edit_weights`: (w_flw, w_psv) of an edit's reward R = w_flw * S_flw + w_psv * S_psv."""
        check_rl_logps(cfg)  # a config built without validate() (benchmarks) is checked here
        self.policy = policy
        self.reference = reference
        self.builder = builder
        self.image_processor = image_processor
        self.scorer = scorer
        self.cfg = cfg
        self.dist = dist
        self.edit_weights = edit_weights
        self.device = next(policy.parameters()).device
        image = SamplerParams(cfg.cfg_weight, cfg.temperature, cfg.top_k, cfg.top_p)
        params = RolloutParams(image, cfg.text_temperature, cfg.reason_tokens, cfg.regen_context)
        self.precision = precision or Precision.resolve(self.device)
        dtype = self.precision.rollout_dtype(cfg.rollout_dtype)
        self.parallel = cfg.parallel if dist.active else None
        # The actor draws the rollouts: the policy itself, or a copy of it (low precision, or whole
        # when FSDP shards the policy) that `sync_actor` refreshes in place after every update (in
        # place keeps the fast loop's captured graphs valid).
        self.actor = policy
        if self.parallel == "fsdp" or dtype != next(policy.parameters()).dtype:
            self.actor = copy.deepcopy(policy).to(dtype).eval().requires_grad_(False)
        self.engine = RolloutEngine(self.actor, builder, image_processor, params)
        self.module = GRPOLossModule(policy, builder, image_processor, cfg)
        self.wrapped = wrap_parallel(self.module, policy, self.parallel, self.precision)

    def autocast(self):
        return self.precision.autocast(self.parallel)

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

    def rollout(self, texts: list[str], seeds: list[int], sources: list | None = None) -> Rollouts:
        """B rollouts of `texts`; with `sources` (B source images, PIL) the texts are instructions and
        the rollouts are edits of the sources, prepared by the policy's own VQ."""
        self.policy.eval()
        codes = pixels = None
        if sources is not None:
            codes, pixels = self.engine.prepare_sources(sources)
        if self.actor is not self.policy:  # already in low precision: no autocast casts
            return self.engine.run(texts, seeds, codes, pixels)
        with self.autocast():
            return self.engine.run(texts, seeds, codes, pixels)

    @property
    def reward_scale(self) -> float:
        """What S is divided by for the self-check reward: 1, or w_flw + w_psv for edits (R's range)."""
        return float(sum(self.edit_weights))

    def score(self, ro: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
        """S(image 1) per rollout and S(image 2) (NaN where none was drawn), in one scorer call.

        Edit rollouts: S is the combined R = w_flw * S_flw + w_psv * S_psv of (source, edit); the two
        sides land in `ro.edit_scores`."""
        redo = ro.regenerated
        rows = list(range(len(ro))) + redo
        pixels = [*ro.pixels1, *(ro.pixels2[i] for i in redo)]
        tokens = [*ro.image1, *(ro.image2[i] for i in redo)]
        texts = [ro.prompts[i] for i in rows]
        if ro.is_edit:
            assert ro.sources is not None and ro.source_pixels is not None
            sources = [ro.source_pixels[i] for i in rows]
            flw, psv = self.scorer.score_edits(texts, sources, pixels, tokens, [ro.sources[i] for i in rows])
            sides = {"flw": torch.tensor(flw), "psv": torch.tensor(psv)}
            scores = combined_edit_reward(sides["flw"], sides["psv"], *self.edit_weights).tolist()
            ro.edit_scores = {}
            for side, values in sides.items():
                first, second = _split(values.tolist(), len(ro), redo)
                ro.edit_scores[f"{side}1"], ro.edit_scores[f"{side}2"] = first, second
        else:
            scores = self.scorer.score(texts, pixels, tokens)
        return _split(scores, len(ro), redo)

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


def _final_sides(ro: Rollouts) -> list[float]:
    """Sums of S_flw and S_psv of the final images of an edit step ([] for text-to-image)."""
    if ro.edit_scores is None:
        return []
    yes = ro.said_yes.bool()
    return [
        float(torch.where(yes, ro.edit_scores[f"{side}1"], ro.edit_scores[f"{side}2"]).sum()) for side in ("flw", "psv")
    ]


def _split(scores: list[float], n: int, redo: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of image 1 (n) then of the redone rows' image 2 -> (s1, s2 with NaN where none was drawn)."""
    s1 = torch.tensor(scores[:n], dtype=torch.float32)
    s2 = torch.full_like(s1, float("nan"))
    s2[redo] = torch.tensor(scores[n:], dtype=torch.float32)
    return s1, s2


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


def step_metrics(rewards, s1, s2, ro: Rollouts, sums: dict, dist: Distributed, scale: float = 1.0) -> dict[str, float]:
    """Global (all processes) means of the step's rewards and rates, and the loss statistics.

    Edit steps (every process runs the same kind of step) add the final images' mean S_flw and S_psv
    and `edit` = 1; the self-check agreement compares the answer with S / `scale` at 0.5."""
    said_yes = ro.said_yes.float()
    redo = ~ro.said_yes
    improved = (s2 > s1) & redo
    local = torch.tensor(
        [
            float(rewards["image1"].sum()),
            float(rewards["judge"].sum()),
            float(rewards["final"].sum()),
            float(((s1 / scale >= 0.5).float() == said_yes).float().sum()),  # self-check agrees with the judge at 0.5
            float(redo.float().sum()),
            float(improved.float().sum()),
            float(len(s1)),
            sums["loss"],
            sums["kl"],
            sums["kl_n"],
            sums["clip"],
            sums["clip_n"],
            *_final_sides(ro),
        ],
        dtype=torch.float64,
    )
    if dist.active:
        torch.distributed.all_reduce(local)
    r1, r2, r3, agree, regen, better, n, loss, kl, kl_n, clip, clip_n, *sides = local.tolist()
    edit = {"reward/flw": sides[0] / n, "reward/psv": sides[1] / n} if sides else {}
    return {
        "edit": float(ro.is_edit),
        **edit,
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
