"""GRPO math: rewards, group advantages, segment masks, k3 KL, clipped surrogate, the segment loss.

Expected values are computed by hand in the comments.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import janus_train.grpo_math
from janus_train.grpo_math import (
    SegmentWeights,
    clipped_surrogate,
    consistency_reward,
    final_reward,
    group_advantages,
    grpo_loss,
    k3_kl,
    segment_masks,
    selfcheck_reward,
)

NAN = float("nan")
LN2 = math.log(2.0)
LN15 = math.log(1.5)
K3_LN2 = 2.0 - LN2 - 1.0  # k3 with ref - logp = ln 2: exp(ln 2) - ln 2 - 1 = 0.3068528


def close(a: torch.Tensor, b, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


def test_doctests() -> None:
    result = doctest.testmod(janus_train.grpo_math)
    assert result.attempted > 0
    assert result.failed == 0


# --- rewards -------------------------------------------------------------------------------


def test_rewards() -> None:
    s1 = torch.tensor([0.9, 0.9, 0.2, 0.2])
    s2 = torch.tensor([NAN, 0.6, NAN, 0.7])
    yes = torch.tensor([True, False, True, False])
    close(consistency_reward(s1), [0.9, 0.9, 0.2, 0.2])
    # 1 - |0.9 - 1| = 0.9, 1 - |0.9 - 0| = 0.1, 1 - |0.2 - 1| = 0.2, 1 - |0.2 - 0| = 0.8
    close(selfcheck_reward(s1, yes), [0.9, 0.1, 0.2, 0.8])
    # Yes rows keep s1 (their NaN s2 is never read), No rows take s2
    r3 = final_reward(s1, s2, yes)
    assert not torch.isnan(r3).any()
    close(r3, [0.9, 0.6, 0.2, 0.7])


def test_final_reward_refuses_nan_on_a_no_row() -> None:
    with pytest.raises(ValueError, match="NaN on a row that said No"):
        final_reward(torch.tensor([0.5]), torch.tensor([NAN]), torch.tensor([False]))


# --- advantages ----------------------------------------------------------------------------


def test_group_advantages_two_groups() -> None:
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0]), group_size=3)
    # group 0: mean 2, deviations (-1, 0, 1), unbiased var (1 + 0 + 1) / 2 = 1, std 1
    # group 1: mean 1, deviations (-1, -1, 2), unbiased var (1 + 1 + 4) / 2 = 3, std sqrt(3)
    s0, s1 = 1.0 + 1e-4, math.sqrt(3.0) + 1e-4
    close(adv, [-1 / s0, 0.0, 1 / s0, -1 / s1, -1 / s1, 2 / s1])


def test_group_advantages_constant_group_and_g1_are_zero() -> None:
    # 0.1 is not exact in float: the mean of three 0.1s may differ from 0.1 by an ulp
    adv = group_advantages(torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0, 0.5]), group_size=3)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert not torch.isnan(adv).any()
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.9]), group_size=1), torch.zeros(2))


def test_group_advantages_bad_input() -> None:
    with pytest.raises(ValueError, match="not a multiple of group_size=3"):
        group_advantages(torch.zeros(7), group_size=3)
    with pytest.raises(ValueError, match=r"NaN at rows \[1\]"):
        group_advantages(torch.tensor([0.5, NAN]), group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), group_size=0)


# --- segments ------------------------------------------------------------------------------


def test_segment_masks_yes_and_no_rows() -> None:
    img1 = torch.tensor([[0, 2], [0, 2]])
    judge = torch.tensor([[2, 4], [2, 3]])
    img2 = torch.tensor([[0, 0], [3, 5]])  # row 0 (Yes) is not read
    m = segment_masks(img1, judge, img2, torch.tensor([True, False]), total_len=6)
    assert set(m) == {"image1", "judge", "final"}
    assert all(v.dtype == torch.bool and v.shape == (2, 6) for v in m.values())
    assert m["image1"].int().tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert m["judge"].int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]]
    # Yes row: the final image is image 1; No row: image 2's span
    assert m["final"].int().tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0]]


def test_segment_masks_bad_span() -> None:
    ok = torch.tensor([[0, 2]])
    with pytest.raises(ValueError, match="img2_span"):
        segment_masks(ok, ok, torch.tensor([[3, 9]]), torch.tensor([False]), total_len=6)
    with pytest.raises(ValueError, match="judge_span"):
        segment_masks(ok, torch.tensor([[3, 2]]), ok, torch.tensor([True]), total_len=6)
    # a Yes row's img2_span is ignored, even out of range
    segment_masks(ok, ok, torch.tensor([[3, 9]]), torch.tensor([True]), total_len=6)


# --- per-token losses ----------------------------------------------------------------------


def test_k3_kl() -> None:
    logp = torch.log(torch.tensor([0.5, 0.5, 0.25]))
    ref = torch.log(torch.tensor([0.5, 0.25, 0.5]))
    # equal: 0; ref - logp = ln 0.5: 0.5 + ln 2 - 1 = 0.1931472; ref - logp = ln 2: 2 - ln 2 - 1
    close(k3_kl(logp, ref), [0.0, 0.5 + LN2 - 1.0, K3_LN2])
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_clipped_surrogate_four_regimes() -> None:
    # ratios (1.5, 0.5, 1.1) per row; A = +2 on row 0, -2 on row 1; eps 0.2 -> clip range [0.8, 1.2]
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])).requires_grad_()
    loss, clipped = clipped_surrogate(logp, torch.zeros(2, 3), torch.tensor([2.0, -2.0]), eps=0.2)
    # A>0, r=1.5: min(3.0, 1.2*2=2.4) = 2.4 (clipped) | A>0, r=0.5: min(1.0, 0.8*2=1.6) = 1.0
    # A>0, r=1.1: inside, 2.2
    # A<0, r=1.5: min(-3.0, -2.4) = -3.0             | A<0, r=0.5: min(-1.0, -1.6) = -1.6 (clipped)
    # A<0, r=1.1: inside, -2.2
    close(loss, [[-2.4, -1.0, -2.2], [3.0, 1.6, 2.2]], atol=1e-5)
    assert clipped.tolist() == [[True, False, False], [False, True, False]]
    # clipped tokens get no gradient; the others get -A * r
    loss.sum().backward()
    close(logp.grad, [[0.0, -1.0, -2.2], [3.0, 0.0, 2.2]], atol=1e-5)


# --- the GRPO loss -------------------------------------------------------------------------


def example() -> dict:
    """2 x 6: row 0 said Yes (image1 0:2, judge 2:4, final = image1, 4:6 pad),
    row 1 said No (image1 0:2, judge 2:3, image2 3:5, 5 pad).

    old_logp = 0. logp = 0 except row 0 pos 0 = ln 1.5 (ratio 1.5); ref = logp except row 1
    pos 3 = ln 2 (k3 = 2 - ln 2 - 1). Pad positions hold NaN: they must never be read.
    """
    segments = segment_masks(
        torch.tensor([[0, 2], [0, 2]]),
        torch.tensor([[2, 4], [2, 3]]),
        torch.tensor([[0, 0], [3, 5]]),
        torch.tensor([True, False]),
        total_len=6,
    )
    logp = torch.zeros(2, 6)
    logp[0, 0] = LN15
    ref = logp.clone()
    ref[1, 3] = LN2
    old = torch.zeros(2, 6)
    for t in (logp, ref, old):
        t[0, 4:] = NAN
        t[1, 5] = NAN
    advantages = {
        "image1": torch.tensor([1.0, -1.0]),
        "judge": torch.tensor([0.5, -0.5]),
        "final": torch.tensor([2.0, -2.0]),
    }
    return {"logp": logp, "old": old, "ref": ref, "segments": segments, "advantages": advantages}


# image1: r0p0 r=1.5 A=1 -> -1.2 (clipped); r0p1 -1; r1p0 +1; r1p1 +1 -> -0.2 / 4 = -0.05
L_IMAGE1 = -0.05
# judge: r0p2 -0.5, r0p3 -0.5, r1p2 +0.5 -> -0.5 / 3
L_JUDGE = -0.5 / 3
# final: r0p0 r=1.5 A=2 -> -2.4 (clipped); r0p1 -2; r1p3 +2 + 0.1 * K3_LN2; r1p4 +2
#   -> (-0.4 + 0.1 * 0.3068528) / 4 = -0.0923287
L_FINAL = (-0.4 + 0.1 * K3_LN2) / 4


def test_grpo_loss_hand_value_and_stats() -> None:
    ex = example()
    loss, stats = grpo_loss(
        ex["logp"], ex["old"], ex["ref"], ex["segments"], ex["advantages"], SegmentWeights(), beta=0.1
    )
    # equal weights: (-0.05 - 0.1666667 - 0.0923287) / 3 = -0.1029985
    close(loss, (L_IMAGE1 + L_JUDGE + L_FINAL) / 3)
    close(stats["loss/image1"], L_IMAGE1)
    close(stats["loss/judge"], L_JUDGE)
    close(stats["loss/final"], L_FINAL)
    close(stats["loss"], loss.detach())
    # KL over the union of segment tokens: 4 on row 0 + 5 on row 1 = 9, one of them K3_LN2
    close(stats["kl"], K3_LN2 / 9)
    # clipped terms: image1 1 + final 1 over terms 4 + 3 + 4 = 11
    close(stats["clip_frac"], 2 / 11)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_grpo_loss_weights() -> None:
    ex = example()
    args = (ex["logp"], ex["old"], ex["ref"], ex["segments"], ex["advantages"])
    loss, _ = grpo_loss(*args, {"image1": 1.0, "judge": 1.0, "final": 2.0}, beta=0.1)
    # (-0.05 - 0.1666667 + 2 * -0.0923287) / 4 = -0.1003310
    close(loss, (L_IMAGE1 + L_JUDGE + 2 * L_FINAL) / 4)
    only_final, _ = grpo_loss(*args, SegmentWeights(image1=0.0, judge=0.0), beta=0.1)
    close(only_final, L_FINAL)
    # scaling every weight changes nothing
    scaled, _ = grpo_loss(*args, SegmentWeights(3.0, 3.0, 3.0), beta=0.1)
    close(scaled, (L_IMAGE1 + L_JUDGE + L_FINAL) / 3)


def test_grpo_loss_empty_segment() -> None:
    ex = example()
    segments = {**ex["segments"], "judge": torch.zeros(2, 6, dtype=torch.bool)}
    logp = ex["logp"].requires_grad_()
    loss, stats = grpo_loss(logp, ex["old"], ex["ref"], segments, ex["advantages"], SegmentWeights(), beta=0.1)
    # the empty segment contributes 0 and still counts in the weight sum
    close(stats["loss/judge"], 0.0)
    close(loss, (L_IMAGE1 + L_FINAL) / 3)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    nothing = {s: torch.zeros(2, 6, dtype=torch.bool) for s in segments}
    loss, stats = grpo_loss(logp, ex["old"], ex["ref"], nothing, ex["advantages"], SegmentWeights(), beta=0.1)
    assert loss.item() == 0.0 and stats["kl"].item() == 0.0 and stats["clip_frac"].item() == 0.0


def test_grpo_loss_gradients_reach_logp_only() -> None:
    ex = example()
    logp = ex["logp"].requires_grad_()
    old = ex["old"].requires_grad_()
    ref = ex["ref"].requires_grad_()
    adv = {s: a.clone().requires_grad_() for s, a in ex["advantages"].items()}
    loss, _ = grpo_loss(logp, old, ref, ex["segments"], adv, SegmentWeights(), beta=0.1)
    loss.backward()
    assert old.grad is None and ref.grad is None
    assert all(a.grad is None for a in adv.values())
    g = logp.grad
    assert torch.isfinite(g).all()
    # pad positions are never read
    assert torch.equal(g[0, 4:], torch.zeros(2)) and g[1, 5] == 0
    # r0p0 is clipped in both image1 and final: no gradient
    assert g[0, 0] == 0
    # r0p1 (image1 and final, r=1): d/dlogp of -r*A is -A; (-1/4 + -2/4) / 3 = -0.25
    close(g[0, 1], -0.25)
    # r1p3 (final, A=-2, k3 with d = ref - logp = ln 2): (2 + 0.1 * (1 - exp(ln 2))) / 4 / 3
    close(g[1, 3], (2.0 + 0.1 * (1.0 - 2.0)) / 12)


def test_grpo_loss_bad_input() -> None:
    ex = example()
    args = (ex["logp"], ex["old"], ex["ref"], ex["segments"])
    with pytest.raises(ValueError, match="name different segments"):
        grpo_loss(*args, {"image1": torch.zeros(2)}, SegmentWeights(), beta=0.1)
    with pytest.raises(ValueError, match="no weight"):
        grpo_loss(*args, ex["advantages"], {"image1": 1.0}, beta=0.1)
    with pytest.raises(ValueError, match="positive sum"):
        grpo_loss(*args, ex["advantages"], SegmentWeights(0.0, 0.0, 0.0), beta=0.1)


def ragged_judge() -> dict:
    """3 rollouts, judgement lengths 1, 2, 4 (T = 4, the rest padding, NaN).

    logp = old = 0 (ratio 1, inside the clip: per-token loss -A), ref = 0 except row 2 pos 1 =
    ln 2 (k3 = K3_LN2, d k3 / d logp = 1 - exp(ln 2) = -1). A = (1, -2, 0.5), beta 0.1.
    """
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    logp = torch.where(mask, 0.0, NAN)
    ref = logp.clone()
    ref[2, 1] = LN2
    return {
        "logp": logp,
        "old": logp.clone(),
        "ref": ref,
        "segments": {"judge": mask},
        "advantages": {"judge": torch.tensor([1.0, -2.0, 0.5])},
    }


def test_sequence_reduction_by_hand_against_token_reduction() -> None:
    """The released loss ((l * mask).sum(1) / mask.sum(1)).mean() (grpo_trainer_t2iv1.py:655) vs TRL's token mean."""
    ex = ragged_judge()
    # per-token loss l = -A + 0.1 * k3: row 0 (-1); row 1 (2, 2); row 2 (-0.5, -0.5 + 0.1 K3_LN2, -0.5, -0.5)
    # sequence: (-1 / 1 + 4 / 2 + (-2 + 0.1 K3_LN2) / 4) / 3 = (0.5 + 0.025 K3_LN2) / 3 = 0.1692238
    # token: (-1 + 4 - 2 + 0.1 K3_LN2) / 7 = (1 + 0.1 K3_LN2) / 7 = 0.1472407
    expected = {"sequence": (0.5 + 0.025 * K3_LN2) / 3, "token": (1.0 + 0.1 * K3_LN2) / 7}
    # d loss / d logp = (-A + 0.1 (1 - exp(ref - logp))) / divisor: 0.1 * (1 - 2) = -0.1 at row 2 pos 1
    # sequence: divisor n_i * 3 rollouts; token: divisor 7 tokens
    grads = {
        "sequence": [[-1 / 3, 0, 0, 0], [2 / 6, 2 / 6, 0, 0], [-0.5 / 12, -0.6 / 12, -0.5 / 12, -0.5 / 12]],
        "token": [[-1 / 7, 0, 0, 0], [2 / 7, 2 / 7, 0, 0], [-0.5 / 7, -0.6 / 7, -0.5 / 7, -0.5 / 7]],
    }
    for reduction in ("sequence", "token"):
        logp = ex["logp"].clone().requires_grad_()
        loss, stats = grpo_loss(
            logp, ex["old"], ex["ref"], ex["segments"], ex["advantages"], {"judge": 1.0}, 0.1, reduction=reduction
        )
        close(loss, expected[reduction])
        close(stats["loss/judge"], expected[reduction])
        # stats that do not depend on the reduction: mean k3 over the 7 tokens, no clipped term
        close(stats["kl"], K3_LN2 / 7)
        close(stats["clip_frac"], 0.0)
        loss.backward()
        close(logp.grad, grads[reduction])


def test_fixed_length_segments_reduce_alike() -> None:
    """On example(): image segments have 2 tokens per row, so only the judgement (2 vs 1 tokens) differs."""
    ex = example()
    args = (ex["logp"], ex["old"], ex["ref"], ex["segments"], ex["advantages"], SegmentWeights())
    _, stats = grpo_loss(*args, beta=0.1, reduction="sequence")
    close(stats["loss/image1"], L_IMAGE1)
    close(stats["loss/final"], L_FINAL)
    # judge: row 0 (-0.5 - 0.5) / 2 = -0.5, row 1 0.5 / 1 -> (-0.5 + 0.5) / 2 = 0
    close(stats["loss/judge"], 0.0)
    with pytest.raises(ValueError, match="reduction"):
        grpo_loss(*args, beta=0.1, reduction="row")


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_micro_batches_with_global_counts_sum_to_the_whole_batch_loss(reduction):
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(4, 6, generator=g)
    old = logp + 0.1 * torch.randn(4, 6, generator=g)
    ref = logp + 0.1 * torch.randn(4, 6, generator=g)
    segments = {
        "image1": torch.zeros(4, 6, dtype=torch.bool).index_fill_(1, torch.tensor([0, 1, 2]), True),
        "judge": torch.zeros(4, 6, dtype=torch.bool).index_fill_(1, torch.tensor([3]), True),
        "final": torch.zeros(4, 6, dtype=torch.bool).index_fill_(1, torch.tensor([4, 5]), True),
    }
    segments["final"][0] = False  # rows differ in their token counts; row 0 has no final token
    segments["judge"][2, 4] = segments["judge"][3, 4:] = True  # ragged judgements: 1, 1, 2, 3 tokens
    adv = {s: torch.randn(4, generator=g) for s in segments}
    weights = {"image1": 1.0, "judge": 0.5, "final": 2.0}
    whole, _ = grpo_loss(logp, old, ref, segments, adv, weights, beta=0.05, reduction=reduction)
    tokens = {s: float(m.sum()) for s, m in segments.items()}
    sequences = {s: float(m.any(1).sum()) for s, m in segments.items()}
    assert sequences == {"image1": 4.0, "judge": 4.0, "final": 3.0}
    parts = [
        grpo_loss(
            logp[r],
            old[r],
            ref[r],
            {s: m[r] for s, m in segments.items()},
            {s: a[r] for s, a in adv.items()},
            weights,
            beta=0.05,
            token_counts=tokens,
            reduction=reduction,
            sequence_counts=sequences,
        )[0]
        for r in (slice(0, 1), slice(1, 4))
    ]
    torch.testing.assert_close(parts[0] + parts[1], whole)
