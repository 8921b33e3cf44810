"""Records shared by the judge backends."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeResult:
    """One judged (prompt, image): S in [0, 1], its yes/no answer at 0.5, the reason text.

    `flagged` marks a pair whose S could not be read (no yes/no token visible); then `score`
    and `answer` are None rather than guessed.
    """

    score: float | None
    answer: str | None
    reason: str
    flagged: bool
