"""The pure-math core of Janus-Pro-R1's GRPO (docs/paper.md, 'GRPO'): rewards, advantages, losses.

No model code. A rollout of one prompt is image 1 -> a forced Yes/No answer + reason -> image 2
(only if the answer was No). Three rewards, each normalised within its prompt's group of G
rollouts, are applied to three token segments:

- R1 = S(image 1)                      -> "image1" tokens
- R2 = 1 - |S(image 1) - selfcheck|    -> "judge" tokens (the Yes/No token and the reason)
- R3 = S(final image)                  -> "final" tokens (image 1's tokens if Yes, else image 2's)

Conventions:
- Advantages: A = (R - group mean) / (group std + eps), std unbiased (torch.std default, as
  TRL does). A constant group, or G = 1, gives exactly 0.
- Segment loss: per-token clipped surrogate + beta * k3 KL, reduced by `reduction`:
  'token' = the mean over ALL the segment's tokens in the batch (a long row weighs more than a
  short one); 'sequence' = each row's mean over its own segment tokens, then the mean over the
  rows that have any (the GRPO paper's 1/G sum 1/|o_i|; the released
  janus-rl/src/open_r1/grpo_trainer_t2iv1.py:655). A segment with no tokens has loss 0.
- Total: sum_s w_s * L_s / sum_s w_s over every segment given (empty ones included, as 0);
  equal weights = the released code's unweighted mean of the segment losses.
- old_logp, ref_logp and the advantages are constants: detached inside, so gradients reach
  logp only. All the math runs in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import torch

SEGMENTS = ("image1", "judge", "final")
REDUCTIONS = ("sequence", "token")


@dataclass(frozen=True)
class SegmentWeights:
    """Weights of the three segment losses (the paper weighs "final" higher; released code: all 1)."""

    image1: float = 1.0
    judge: float = 1.0
    final: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# --- rewards -------------------------------------------------------------------------------


def consistency_reward(s1: torch.Tensor) -> torch.Tensor:
    """R1 = S(image 1): (N,) -> (N,).

    >>> consistency_reward(torch.tensor([0.9, 0.2]))
    tensor([0.9000, 0.2000])
    """
    return s1.float().clone()


def selfcheck_reward(s1: torch.Tensor, said_yes: torch.Tensor) -> torch.Tensor:
    """R2 = 1 - |S(image 1) - selfcheck|, selfcheck = 1 if the model said Yes else 0: (N,), (N,) bool -> (N,).

    >>> selfcheck_reward(torch.tensor([0.9, 0.9, 0.2]), torch.tensor([True, False, False]))
    tensor([0.9000, 0.1000, 0.8000])
    """
    return 1.0 - (s1.float() - said_yes.float()).abs()


def final_reward(s1: torch.Tensor, s2: torch.Tensor, said_yes: torch.Tensor) -> torch.Tensor:
    """R3 = S(final image): s1 where the model said Yes, else s2: (N,), (N,), (N,) bool -> (N,).

    s2 may be NaN on Yes rows (no image 2 was drawn); it is never read there.

    >>> nan = float("nan")
    >>> final_reward(torch.tensor([0.9, 0.3]), torch.tensor([nan, 0.7]), torch.tensor([True, False]))
    tensor([0.9000, 0.7000])
    """
    said_yes = said_yes.bool()
    if torch.isnan(s2[~said_yes]).any():
        raise ValueError("final_reward: s2 (the score of image 2) is NaN on a row that said No")
    return torch.where(said_yes, s1.float(), s2.float())


# --- advantages ----------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages, rows group-contiguous (prompt p = rows p*G .. p*G+G-1): (P*G,) -> (P*G,).

    A = (R - mean) / (std + eps), std unbiased. A group whose rewards are all equal gives exactly
    0 (not a rounding residue); G = 1 gives 0 everywhere (the unbiased std of one value is undefined).

    >>> group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), group_size=3, eps=0.0)
    tensor([-1.,  0.,  1.,  0.,  0.,  0.])
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (P*G,), got shape {tuple(rewards.shape)}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards is not a multiple of group_size={group_size}: "
            "each prompt needs exactly G rollouts, laid out group-contiguous"
        )
    if torch.isnan(rewards).any():
        bad = torch.nonzero(torch.isnan(rewards)).flatten().tolist()
        raise ValueError(f"rewards has NaN at rows {bad}: a missing score must not be used as a reward")
    r = rewards.detach().float().view(-1, group_size)
    if group_size == 1:
        return torch.zeros_like(r).flatten()
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(adv), adv).flatten()


# --- segments ------------------------------------------------------------------------------


def _span_mask(span: torch.Tensor, total_len: int) -> torch.Tensor:
    """[start, end) spans -> masks: (B, 2) -> (B, T) bool."""
    pos = torch.arange(total_len, device=span.device)
    return (pos >= span[:, :1]) & (pos < span[:, 1:])


def _check_span(name: str, span: torch.Tensor, rows: torch.Tensor, total_len: int) -> None:
    if span.dim() != 2 or span.shape[1] != 2:
        raise ValueError(f"{name} must be (B, 2) [start, end), got shape {tuple(span.shape)}")
    start, end = span[rows, 0], span[rows, 1]
    if ((start < 0) | (start > end) | (end > total_len)).any():
        raise ValueError(f"{name} needs 0 <= start <= end <= total_len={total_len} on every used row")


def segment_masks(
    img1_span: torch.Tensor,
    judge_span: torch.Tensor,
    img2_span: torch.Tensor,
    said_yes: torch.Tensor,
    total_len: int,
) -> dict[str, torch.Tensor]:
    """Token masks of the three segments: spans (B, 2) [start, end), said_yes (B,) -> {name: (B, T) bool}.

    Positions index the same (B, T) grid as the per-token log-probs. On a Yes row the final
    image IS image 1, so "final" equals "image1" there: those tokens get both the R1 and the R3
    advantage (two loss terms). On a No row "final" covers img2_span. img2_span is not read on
    Yes rows (put anything there, e.g. [0, 0)).
    """
    said_yes = said_yes.bool()
    every = torch.ones_like(said_yes)
    _check_span("img1_span", img1_span, every, total_len)
    _check_span("judge_span", judge_span, every, total_len)
    _check_span("img2_span", img2_span, ~said_yes, total_len)
    image1 = _span_mask(img1_span, total_len)
    final = torch.where(said_yes[:, None], image1, _span_mask(img2_span, total_len))
    return {"image1": image1, "judge": _span_mask(judge_span, total_len), "final": final}


# --- per-token losses ----------------------------------------------------------------------


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(policy || ref) per token: exp(ref - logp) - (ref - logp) - 1, >= 0: (...) -> (...).

    >>> k3_kl(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.6931472]))
    tensor([0.0000, 0.3069])
    """
    d = ref_logp.detach().float() - logp.float()
    return torch.exp(d) - d - 1.0


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, eps: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped loss per token and whether the clip bound was taken: (B, T), (B, T), (B,) -> (B, T), (B, T) bool.

    loss = -min(r * A, clip(r, 1 - eps, 1 + eps) * A), r = exp(logp - old_logp). advantages of
    shape (B,) broadcast over T; any shape that already broadcasts to logp's (e.g. (N,) with
    flat (N,) tokens) is used as is. clipped: r > 1 + eps with A > 0, or r < 1 - eps with A < 0
    (the flat branch of the min, where the token gets no gradient).

    >>> loss, clipped = clipped_surrogate(torch.tensor([[0.4055]]), torch.zeros(1, 1), torch.tensor([2.0]))
    >>> loss, clipped
    (tensor([[-2.4000]]), tensor([[True]]))
    """
    adv = advantages.detach().float()
    if adv.dim() == logp.dim() - 1:
        adv = adv.unsqueeze(-1)
    ratio = torch.exp(logp.float() - old_logp.detach().float())
    loss = -torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)
    clipped = ((ratio > 1.0 + eps) & (adv > 0)) | ((ratio < 1.0 - eps) & (adv < 0))
    return loss, clipped


# --- the GRPO loss -------------------------------------------------------------------------


def _check_loss_inputs(
    logp: torch.Tensor,
    segments: Mapping[str, torch.Tensor],
    advantages: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
) -> None:
    if not segments:
        raise ValueError("grpo_loss needs at least one segment")
    if set(segments) != set(advantages):
        raise ValueError(f"segments {sorted(segments)} and advantages {sorted(advantages)} name different segments")
    missing = set(segments) - set(weights)
    if missing:
        raise ValueError(f"no weight for segments {sorted(missing)}")
    if any(weights[s] < 0 for s in segments) or sum(weights[s] for s in segments) <= 0:
        raise ValueError(f"segment weights must be >= 0 with a positive sum, got {dict(weights)}")
    for s, mask in segments.items():
        if mask.shape != logp.shape or mask.dtype != torch.bool:
            raise ValueError(f"segment {s!r} must be a bool mask of shape {tuple(logp.shape)}")
        if advantages[s].shape != logp.shape[:1]:
            raise ValueError(f"advantages[{s!r}] must be ({logp.shape[0]},), got {tuple(advantages[s].shape)}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    segments: Mapping[str, torch.Tensor],
    advantages: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | SegmentWeights,
    beta: float,
    eps: float = 0.2,
    token_counts: Mapping[str, float] | None = None,
    reduction: Literal["sequence", "token"] = "token",
    sequence_counts: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted GRPO loss over token segments: (B, T) log-probs, {s: (B, T) bool}, {s: (B,)} -> scalar, stats.

    With l = clipped_surrogate(A_s) + beta * k3_kl per token, L_s = the mean of l over segment s's
    tokens of all rows ('token'), or sum_i (sum_t l_it / n_i) / (rows with n_i > 0), n_i = row i's
    segment tokens ('sequence'); total = sum_s w_s L_s / sum_s w_s. Only positions inside some segment are read, so padding
    may hold anything (even NaN). stats: 0-dim detached float32 tensors (the caller picks when
    to .item() them, e.g. after an all-reduce): "loss", "loss/<segment>", "kl" (mean k3 over the union of the
    segments' tokens) and "clip_frac" (clipped (token, segment) terms / all terms, so a Yes-row
    image token counts once per segment it is in).

    `token_counts` ({segment: tokens}, read by 'token') and `sequence_counts` ({segment: rows with
    tokens in it}, read by 'sequence') replace the batch's own counts as the divisor: a trainer
    that splits one batch into micro-batches (or over processes) passes the whole batch's counts,
    so the micro-batch losses sum to the whole batch's loss.
    """
    if isinstance(weights, SegmentWeights):
        weights = weights.as_dict()
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    _check_loss_inputs(logp, segments, advantages, weights)
    total = logp.new_zeros((), dtype=torch.float32)
    stats: dict[str, torch.Tensor] = {}
    n_clipped = logp.new_zeros((), dtype=torch.float32)
    n_terms = 0
    for s, mask in segments.items():
        adv = advantages[s].detach().float()[:, None].expand(mask.shape)[mask]
        surrogate, clipped = clipped_surrogate(logp[mask], old_logp[mask], adv, eps)
        per_token = surrogate + beta * k3_kl(logp[mask], ref_logp[mask])
        if reduction == "sequence":
            per_row = mask.sum(1)
            # 1 / n_i on each of row i's tokens: the row's own mean, whatever its length
            share = (1.0 / per_row.clamp(min=1).float())[:, None].expand(mask.shape)[mask]
            count = sequence_counts[s] if sequence_counts is not None else int((per_row > 0).sum())
            loss_s = (per_token * share).sum() / max(count, 1)
        else:
            count = token_counts[s] if token_counts is not None else per_token.numel()
            loss_s = per_token.sum() / max(count, 1)
        total = total + weights[s] * loss_s
        stats[f"loss/{s}"] = loss_s.detach()
        n_clipped = n_clipped + clipped.sum()
        n_terms += clipped.numel()
    total = total / sum(weights[s] for s in segments)
    union = torch.stack(list(segments.values())).any(dim=0)
    kl = k3_kl(logp[union].detach(), ref_logp[union])
    stats["loss"] = total.detach()
    stats["kl"] = kl.mean() if kl.numel() else kl.new_zeros(())
    stats["clip_frac"] = n_clipped / max(n_terms, 1)
    return total, stats
