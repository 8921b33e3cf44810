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
from janus_data.judge.scoring import edit_reward
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

        def ask(rows: list[int]) -> list[tuple[float | None, str | None]]:
            results = self.judge.score([prompts[i] for i in rows], [images[i] for i in rows])
            return [(r.score, r.error) for r in results]

        return [float(s) for s in self._retried(len(images), ask, "images")]

    def score_edits(
        self,
        instructions: list[str],
        sources: list[np.ndarray],
        pixels: list[np.ndarray],
        tokens: list[torch.Tensor],
        source_tokens: list[np.ndarray],
    ) -> tuple[list[float], list[float]]:
        """(S_flw, S_psv) of each edit: the judge's two questions with the original (`sources`, (H, W, 3)
        uint8) and the edited image (`pixels`) in one prompt, retried like `score`."""
        originals = [Image.fromarray(p) for p in sources]
        edited = [Image.fromarray(p) for p in pixels]

        def ask(rows: list[int]) -> list[tuple[tuple[float, float] | None, str | None]]:
            results = self.judge.score_edits(
                [instructions[i] for i in rows], [originals[i] for i in rows], [edited[i] for i in rows]
            )
            out = []
            for r in results:
                both = None if r.s_flw is None or r.s_psv is None else (float(r.s_flw), float(r.s_psv))
                out.append((both, r.error))
            return out

        pairs = self._retried(len(edited), ask, "edits")
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _retried(self, n: int, ask, what: str) -> list:
        """Values for rows 0..n-1 from `ask(rows) -> [(value or None, error)]`; rows without a value are
        asked again, up to `retries` times with backoff; then the step fails with one line."""
        values: list = [None] * n
        todo = list(range(n))
        last = ""
        for attempt in range(self.retries):
            try:
                answers = ask(todo)
            except JanusError as err:  # the client already retried; try the whole lot again
                last = one_line(err)
                answers = []
            for i, (value, error) in zip(todo, answers, strict=False):
                if value is not None and error is None:
                    values[i] = value
                else:
                    last = error or "no yes/no token among the judge's answers (flagged)"
            todo = [i for i in todo if values[i] is None]
            if not todo:
                return values
            if attempt + 1 < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise RewardError(
            f"the judge scored {n - len(todo)} of {n} {what} after {self.retries} tries "
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

    def score_edits(self, instructions, sources, pixels, tokens, source_tokens) -> tuple[list[float], list[float]]:
        """Synthetic (S_flw, S_psv): the share of the edit's codes in `target`, and the share of its
        positions whose code equals the source's (an edit that changes nothing preserves everything)."""
        flw = self.score(instructions, pixels, tokens)
        psv = [
            float((t.cpu() == torch.as_tensor(s)).float().mean()) for t, s in zip(tokens, source_tokens, strict=True)
        ]
        return flw, psv


def rollout_rewards(
    s1: torch.Tensor, s2: torch.Tensor, said_yes: torch.Tensor, scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per-segment rewards: image1 <- R1 = S(image 1), judge <- R2 = 1 - |S1 / scale - selfcheck|,
    final <- R3 = S(final).

    For edits S is the combined R = w_flw * S_flw + w_psv * S_psv and `scale` = w_flw + w_psv, so the
    self-check compares the model's Yes/No with R on the [0, 1] scale of a probability.
    """
    if scale <= 0:
        raise ValueError(f"the reward scale must be > 0, got {scale}")
    return {
        "image1": consistency_reward(s1),
        "judge": selfcheck_reward(s1 / scale, said_yes),
        "final": final_reward(s1, s2, said_yes),
    }


def combined_edit_reward(s_flw: torch.Tensor, s_psv: torch.Tensor, w_flw: float, w_psv: float) -> torch.Tensor:
    """R = w_flw * S_flw + w_psv * S_psv per edit (the paper's R_flw + 0.25 R_psv by default).

    >>> combined_edit_reward(torch.tensor([0.8, 0.2]), torch.tensor([0.4, 1.0]), 1.0, 0.25)
    tensor([0.9000, 0.4500])
    """
    values = [edit_reward(f, p, w_flw, w_psv) for f, p in zip(s_flw.tolist(), s_psv.tolist(), strict=True)]
    return torch.tensor(values, dtype=torch.float32)
