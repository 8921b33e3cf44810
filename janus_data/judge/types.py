"""Records shared by the judge backends."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Protocol

from PIL import Image, UnidentifiedImageError


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


def open_image(image: Image.Image | bytes) -> Image.Image:
    """The image fully decoded (PIL or encoded bytes): a truncated or corrupt one raises here, not inside a batch."""
    image = Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else image
    image.load()
    return image


def open_edit_pair(original: Image.Image | bytes, edited: Image.Image | bytes) -> list[Image.Image]:
    """[original, edited] decoded; ValueError 'cannot read the edited image: ...' naming the one that fails."""
    decoded = []
    for name, image in (("original", original), ("edited", edited)):
        try:
            decoded.append(open_image(image))
        except UnidentifiedImageError:
            raise ValueError(f"cannot read the {name} image: not an image format PIL can decode") from None
        except Exception as err:  # OSError (truncated), SyntaxError, ValueError, DecompressionBombError...
            message = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(f"cannot read the {name} image: {message}") from None
    return decoded


@dataclass(frozen=True)
class EditJudgeResult:
    """One judged edit (instruction, original, edited): S_flw and S_psv, each a JudgeResult with its reason.

    `following` answers R_flw's question and `preserving` R_psv's (judge/templates.py), with the
    same yes/no semantics as S. `error` is set when the pair could not be judged at all (an
    unreadable image): then both sides carry it and no score.
    """

    following: JudgeResult
    preserving: JudgeResult

    @property
    def s_flw(self) -> float | None:
        return self.following.score

    @property
    def s_psv(self) -> float | None:
        return self.preserving.score

    @property
    def error(self) -> str | None:
        return self.following.error or self.preserving.error

    @property
    def status(self) -> str:
        """'error' if either side was refused, else 'flagged' if either has no S, else 'ok' (as a score row's)."""
        if self.error:
            return "error"
        return "flagged" if self.following.flagged or self.preserving.flagged else "ok"

    @classmethod
    def failed(cls, error: str) -> EditJudgeResult:
        """A pair that could not be judged: no scores, `error` on both sides."""
        side = JudgeResult(None, None, "", False, error=error)
        return cls(side, side)


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


class EditJudge(Protocol):
    """What the edit stages need of a judge backend: S_flw and S_psv of (instruction, original, edited)."""

    @property
    def model_id(self) -> str: ...

    def score_edits(
        self,
        instructions: list[str],
        originals: list[Image.Image | bytes],
        edited: list[Image.Image | bytes],
    ) -> list[EditJudgeResult]: ...
