"""GRPO's rewards: what scores a rollout's images (the InternVL judge, or a synthetic function); R1, R2, R3.

A scorer has a `name` and `score(prompts, pixels, tokens) -> list[float]`: S in [0, 1] per
(prompt, image), `pixels` (H, W, 3) uint8, `tokens` the image's (N,) codes. `JudgeScorer`
wraps any `Judge` (in process, or LMDeploy servers over HTTP) and never invents a score:
images the judge could not score are sent again, and after `retries` tries the step fails
with one line. A group is never silently scored 0. `CodebookShareScorer` is a transparent
synthetic reward (the share of an image's VQ codes in a target subset of the codebook), for
checking that the trainer learns. `rollout_rewards` turns S into each segment's reward.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from janus_data.errors import JanusError, one_line
from janus_train.grpo_math import consistency_reward, final_reward, selfcheck_reward


class RewardError(JanusError):
    """The reward model could not score a step's images."""


class JudgeScorer:
    """S from the InternVL judge's yes-probability, with retries for the images it failed on."""

    def __init__(self, judge, retries: int = 3, backoff_s: float = 1.0):
        self.judge = judge
        self.retries = retries
        self.backoff_s = backoff_s
        model = getattr(judge, "model_id", None) or getattr(judge, "model", None)
        self.name = f"judge:{model if isinstance(model, str) and model else type(judge).__name__}"

    def score(self, prompts: list[str], pixels: list[np.ndarray], tokens: list[torch.Tensor]) -> list[float]:
        images = [Image.fromarray(p) for p in pixels]
        scores: list[float | None] = [None] * len(images)
        todo = list(range(len(images)))
        last = ""
        for attempt in range(self.retries):
            try:
                results = self.judge.score([prompts[i] for i in todo], [images[i] for i in todo])
            except JanusError as err:  # the client already retried; try the whole lot again
                last = one_line(err)
                results = []
            for i, res in zip(todo, results, strict=False):
                if res.score is not None and res.error is None:
                    scores[i] = float(res.score)
                else:
                    last = res.error or "no yes/no token among the judge's answers (flagged)"
            todo = [i for i in todo if scores[i] is None]
            if not todo:
                return [float(s) for s in scores]
            if attempt + 1 < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise RewardError(
            f"the judge scored {len(images) - len(todo)} of {len(images)} images after {self.retries} tries "
            f"(last problem: {last}); a group is never scored with a guess",
            hint="check the judge (score.* settings, the server's log); rerun `janus train rl` to continue",
        )


class CodebookShareScorer:
    """Synthetic S: the share of an image's codes inside `target` (a subset of the VQ codebook).

    A known function of the image tokens, so a test can tell whether GRPO raises it.
    """

    def __init__(self, target: Iterable[int], codebook_size: int):
        self.mask = torch.zeros(codebook_size, dtype=torch.bool)
        self.mask[list(target)] = True
        self.name = f"codebook-share:{int(self.mask.sum())}/{codebook_size}"

    def score(self, prompts: list[str], pixels: list[np.ndarray], tokens: list[torch.Tensor]) -> list[float]:
        return [float(self.mask[t.cpu()].float().mean()) for t in tokens]


def rollout_rewards(s1: torch.Tensor, s2: torch.Tensor, said_yes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-segment rewards: image1 <- R1 = S(image 1), judge <- R2 = 1 - |S1 - selfcheck|, final <- R3 = S(final)."""
    return {
        "image1": consistency_reward(s1),
        "judge": selfcheck_reward(s1, said_yes),
        "final": final_reward(s1, s2, said_yes),
    }
