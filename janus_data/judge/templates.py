"""The judge's prompt templates: the only place their wording lives.

The image tag is `<image>` because that is InternVL's chat convention (its original `chat()` and
LMDeploy both take `<image>` in the user text); each backend replaces the tag with the image's
tokens, `<img>` + `<IMG_CONTEXT>` x (256 x tiles) + `</img>` for the in-process one.

Over the OpenAI protocol the image travels as its own message part, so the text part is the
question after its leading `<image>\\n`; LMDeploy's InternVL template then puts
`<img>...</img>\\n` back in front of it, which rebuilds the same token sequence.
"""

from __future__ import annotations

IMAGE_TAG = "<image>"
_IMAGE_LEAD = f"{IMAGE_TAG}\n"


def consistency_question(prompt: str) -> str:
    """The yes/no question whose first answer token gives S (docs/paper.md, 'The judge and S')."""
    return f'{IMAGE_TAG}\n Does this image match the description "{prompt}", please directly respond with yes or no.'


def reason_question(prompt: str) -> str:
    """The question whose free answer is the short reason kept for Task-II and Task-III."""
    return (
        f'{IMAGE_TAG}\n Does this image match the description "{prompt}"? Answer starting with Yes or No, '
        "then briefly explain why in one sentence."
    )


def text_after_image(question: str) -> str:
    """The question's text part for a chat message whose image is a separate part.

    >>> text_after_image(consistency_question("a cat"))[:20]
    ' Does this image mat'
    """
    if not question.startswith(_IMAGE_LEAD):
        raise ValueError("judge questions start with the image tag and a newline")
    return question[len(_IMAGE_LEAD) :]


def with_image_first(text: str) -> str:
    """The question a chat message's (image, text) parts stand for: the inverse of text_after_image.

    >>> q = reason_question("a dog"); with_image_first(text_after_image(q)) == q
    True
    """
    return text if text.startswith(_IMAGE_LEAD) else _IMAGE_LEAD + text
