"""The trainers' learning-rate schedules: LambdaLR's share of the peak lr after `step` updates.

`core.build_optimizer` installs them. The optimizer steps before the scheduler, so update k
uses the share at step k - 1. Past max_steps (a longer `--max-steps`) every schedule holds its
last value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from janus_data.config import RLConfig, SFTConfig


class LrScale(Protocol):
    lr_scale: float


def sft_lr_lambda(cfg: SFTConfig) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine to min_lr_ratio at max_steps."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def rl_lr_lambda(cfg: RLConfig, state: LrScale) -> Callable[[int], float]:
    """rl.schedule times the reference refreshes' lr scale (`grpo.RefState.lr_scale`, read at every step).

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
