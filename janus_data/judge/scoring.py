"""S from the judge's first answer token: pure functions shared by every backend."""

from __future__ import annotations

import math

YES_WORDS = ("yes", "Yes", "YES")
NO_WORDS = ("no", "No", "NO")
MAX_TOP_LOGPROBS = 20  # first-token candidates an OpenAI-style server (LMDeploy too) returns at most
# Byte-level BPE (Qwen2, InternLM2 via GPT-2 style) writes a leading space as 'Ġ'; SentencePiece as '▁'.
_SPACE_MARKERS = "Ġ▁"


def word_of(token: str) -> str:
    """A candidate token with its space markers and whitespace removed.

    >>> word_of("ĠYes"), word_of("▁no"), word_of(" YES ")
    ('Yes', 'no', 'YES')
    """
    return token.strip().lstrip(_SPACE_MARKERS).strip()


def score_from_logprobs(top: dict[str, float]) -> float | None:
    """S = sum p(yes words) / (sum p(yes words) + sum p(no words)) over the first token's top candidates.

    `top` maps candidate token strings to log-probabilities. Markers and whitespace are stripped,
    so ' Yes', 'ĠYes' and '▁Yes' all count as 'Yes'. When only one side is among the candidates
    the other side's mass is below every listed candidate, so S is taken as 1.0 (only yes) or
    0.0 (only no) instead of being invented; when neither side is visible S is None (flagged).

    >>> round(score_from_logprobs({"Yes": math.log(0.6), "No": math.log(0.2), "The": math.log(0.1)}), 6)
    0.75
    >>> round(score_from_logprobs({"Ġyes": math.log(0.3), "▁YES": math.log(0.1), " no": math.log(0.4)}), 6)
    0.5
    >>> score_from_logprobs({"Yes": -0.1, "Sure": -3.0})
    1.0
    >>> score_from_logprobs({"NO": -0.2})
    0.0
    >>> score_from_logprobs({"The": -0.5, "A": -1.0}) is None
    True
    """
    yes = no = 0.0
    seen_yes = seen_no = False
    for token, logprob in top.items():
        word = word_of(token)
        if word in YES_WORDS:
            yes += math.exp(logprob)
            seen_yes = True
        elif word in NO_WORDS:
            no += math.exp(logprob)
            seen_no = True
    if not (seen_yes or seen_no):
        return None
    if not seen_no:
        return 1.0
    if not seen_yes:
        return 0.0
    total = yes + no
    return yes / total if total > 0 else None


def answer_of(score: float) -> str:
    """'yes' when S >= 0.5, else 'no'.

    >>> answer_of(0.5), answer_of(0.49)
    ('yes', 'no')
    """
    return "yes" if score >= 0.5 else "no"


# The paper's edit reward weights (docs/paper.md, 'Image-editing extension'; the released
# recipes/image_editing/grpo.yml: following 1.0, preserving 0.25).
W_FLW = 1.0
W_PSV = 0.25


def edit_reward(s_flw: float | None, s_psv: float | None, w_flw: float = W_FLW, w_psv: float = W_PSV) -> float | None:
    """R = w_flw * S_flw + w_psv * S_psv; None when either score is missing (never guessed).

    >>> edit_reward(0.8, 0.4)
    0.9
    >>> edit_reward(0.5, 1.0, w_flw=2.0, w_psv=0.0), edit_reward(None, 0.3)
    (1.0, None)
    """
    if s_flw is None or s_psv is None:
        return None
    return w_flw * s_flw + w_psv * s_psv
