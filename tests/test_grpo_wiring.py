"""GRPO wiring: each reward and each segment weight reaches its own segment (values, not shapes).

test_grpo_math.py checks the math of each piece; these check that the trainer hands R1, R2, R3
and rl.weight_image1 / weight_judge / weight_final to the right segments, a swap there trains
without any error.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoImageProcessor, JanusForConditionalGeneration

from janus_data.config import load_config, with_overrides
from janus_data.generators.sampling import SamplerParams
from janus_train.core import Distributed, set_trainable
from janus_train.grpo import GRPOStep
from janus_train.rewards import rollout_rewards
from janus_train.rollout import RolloutEngine, RolloutParams
from janus_train.sequences import SequenceBuilder

NAN = float("nan")


def test_rollout_rewards_per_segment_by_hand():
    """A Yes row and two No rows, S(image 1) and S(image 2) all distinct."""
    s1 = torch.tensor([0.9, 0.3, 0.6])
    s2 = torch.tensor([NAN, 0.7, 0.2])  # no image 2 on the Yes row
    said_yes = torch.tensor([True, False, False])
    rewards = rollout_rewards(s1, s2, said_yes)
    assert sorted(rewards) == ["final", "image1", "judge"]
    expected = {
        "image1": [0.9, 0.3, 0.6],  # R1 = S(image 1)
        "judge": [0.9, 0.7, 0.4],  # R2 = 1 - |S(image 1) - selfcheck|: 1 - |0.9 - 1|, 1 - |0.3 - 0|, 1 - |0.6 - 0|
        "final": [0.9, 0.7, 0.2],  # R3 = S(final image): image 1 on the Yes row, image 2 on the No rows
    }
    for segment, values in expected.items():
        torch.testing.assert_close(rewards[segment], torch.tensor(values), rtol=0, atol=1e-6, msg=segment)


def rl_config(**rl):
    return with_overrides(load_config("tiny"), {"rl": {"group_size": 4, **rl}}).rl


@pytest.fixture(scope="module")
def setup(tiny_janus):
    """The tiny policy's builder and processor, and 8 rollouts (2 prompts x 4) it drew."""
    builder = SequenceBuilder.from_pretrained(str(tiny_janus))
    processor = AutoImageProcessor.from_pretrained(tiny_janus)
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus).eval()
    rl = rl_config()
    image = SamplerParams(rl.cfg_weight, rl.temperature, rl.top_k, rl.top_p)
    engine = RolloutEngine(model, builder, processor, RolloutParams(image, rl.text_temperature, 6, rl.regen_context))
    ro = engine.run(["a red cube"] * 4 + ["two birds on a tree"] * 4, list(range(60, 68)))
    assert 0 < int(ro.said_yes.sum()) < len(ro)  # both branches: the final segment is image 1 on some rows only
    return builder, processor, ro


# A constant advantage per segment. At the policy that drew the rollouts the ratio is 1 and the
# reference (the same weights) gives a KL of 0, so each segment's loss is -A_s whatever its tokens.
ADVANTAGE = {"image1": 1.0, "judge": 2.0, "final": 4.0}


@pytest.mark.parametrize(
    "weights, loss",
    [
        ((1.0, 0.0, 0.0), -1.0),
        ((0.0, 1.0, 0.0), -2.0),
        ((0.0, 0.0, 1.0), -4.0),
        ((1.0, 2.0, 4.0), -3.0),  # -(1 x 1 + 2 x 2 + 4 x 4) / 7
    ],
    ids=["image1", "judge", "final", "1-2-4"],
)
def test_segment_weights_reach_their_own_segments(tiny_janus, setup, weights, loss):
    """The step's loss is -sum_s w_s A_s / sum_s w_s through the real GRPOStep; a weight on no text
    segment leaves lm_head without gradient, one on no image segment the generation head."""
    builder, processor, ro = setup
    policy = JanusForConditionalGeneration.from_pretrained(tiny_janus)
    set_trainable(policy)
    reference = JanusForConditionalGeneration.from_pretrained(tiny_janus).eval().requires_grad_(False)
    w_image1, w_judge, w_final = weights
    rl = rl_config(weight_image1=w_image1, weight_judge=w_judge, weight_final=w_final, micro_batch=len(ro))
    step = GRPOStep(policy, reference, builder, processor, None, rl, Distributed())
    advantages = {s: torch.full((len(ro),), a) for s, a in ADVANTAGE.items()}
    sums = step.backward(ro, advantages)
    assert sums["loss"] == pytest.approx(loss, rel=1e-3)  # ratio 1 up to the sampler's rounding (2e-4)

    def moved(grads) -> bool:
        return any(g is not None and bool(g.abs().sum() > 0) for g in grads)

    text = [p.grad for p in policy.lm_head.parameters()]
    image = [p.grad for p in policy.model.generation_head.parameters()]
    assert moved(text) == (w_judge > 0)
    assert moved(image) == (w_image1 + w_final > 0)
