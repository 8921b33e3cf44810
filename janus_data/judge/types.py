"""Records shared by the judge backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class JudgeResult:
    """One judged (prompt, image): S in [0, 1], its yes/no answer at 0.5, the reason text.

    `flagged` marks a pair whose S could not be read (no yes/no token visible); then `score`
    and `answer` are None rather than guessed. `error` is set (and S is None) when the judge
    refused this one pair, e.g. a server that cannot decode its image; the rest of the batch
    still counts.
    """

    score: float | None
    answer: str | None
    reason: str
    flagged: bool
    error: str | None = None


@dataclass(frozen=True)
class Answer:
    """One greedy chat answer of a judge model, as the OpenAI protocol reports it.

    `top` lists the first generated token's most likely candidates as (token text, log-prob),
    best first; it is empty unless top log-probabilities were asked for.
    """

    text: str
    top: list[tuple[str, float]]
    prompt_tokens: int
    completion_tokens: int
    finish: str


class Judge(Protocol):
    """What a stage needs of a judge backend (HFJudge in process, ServerJudge over HTTP)."""

    @property
    def model_id(self) -> str: ...

    def score(self, prompts: list[str], images: list[Image.Image | bytes]) -> list[JudgeResult]: ...
