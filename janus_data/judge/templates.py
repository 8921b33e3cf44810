"""The judge's prompt templates: the only place their wording lives.

The image tag is `<image>` because that is InternVL's chat convention (its original `chat()` and
LMDeploy both take `<image>` in the user text); each backend replaces the tag with the image's
tokens, `<img>` + `<IMG_CONTEXT>` x (256 x tiles) + `</img>` for the in-process one.
"""

from __future__ import annotations

IMAGE_TAG = "<image>"


def consistency_question(prompt: str) -> str:
    """The yes/no question whose first answer token gives S (PAPER.md, Data pipeline)."""
    return f'{IMAGE_TAG}\n Does this image match the description "{prompt}", please directly respond with yes or no.'


def reason_question(prompt: str) -> str:
    """The question whose free answer is the short reason kept for Task-II and Task-III."""
    return (
        f'{IMAGE_TAG}\n Does this image match the description "{prompt}"? Answer starting with Yes or No, '
        "then briefly explain why in one sentence."
    )
