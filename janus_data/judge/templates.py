"""The judge's prompt templates: the only place their wording lives.

The image tag is `<image>` because that is InternVL's chat convention (its original `chat()` and
LMDeploy both take `<image>` in the user text); each backend replaces the tag with the image's
tokens, `<img>` + `<IMG_CONTEXT>` x (256 x tiles) + `</img>` for the in-process one.

Over the OpenAI protocol the image travels as its own message part, so the text part is the
question after its leading `<image>\\n`; LMDeploy's InternVL template then puts
`<img>...</img>\\n` back in front of it, which rebuilds the same token sequence.

The edit questions (R_flw, R_psv) hold two images, original first: InternVL's multi-image
convention `Image-1: <image>\\nImage-2: <image>\\n`, the tags filled in order. Over the OpenAI
protocol they become the parts text, image, text, image, text (`message_texts`).
"""

from __future__ import annotations

IMAGE_TAG = "<image>"
_IMAGE_LEAD = f"{IMAGE_TAG}\n"

# The paper's two edit questions (docs/paper.md, 'Image-editing extension'), word for word.
FOLLOWING = "Does the edited image follow the editing instructions?"
PRESERVING = (
    "Does the area of the edited image that is unrelated to the editing instructions remain consistent with the "
    "original image?"
)
EDIT_QUESTIONS = {"flw": FOLLOWING, "psv": PRESERVING}
# The frame around them, as the released code asks its InternVL reward model
# (janus-rl/src/open_r1/internvl_edit.py, InternVLReward.evaluate, and grpo_editing.py).
_EDIT_HEAD = (
    "Please evaluate the following image edit based on the provided instructions:\n\n"
    f"Image-1: {IMAGE_TAG}\nImage-2: {IMAGE_TAG}\n"
    "The first image is the original image and the second image is the edited image\n"
    "Editing Instructions: {instruction}\n"
)


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


def edit_question(kind: str, instruction: str) -> str:
    """The yes/no question on (original, edited) whose first answer token gives S_flw or S_psv.

    `kind` is 'flw' (R_flw, following) or 'psv' (R_psv, preserving). The ending is the released
    in-process reward's (internvl_edit.py): ' Please directly respond with yes or no.'

    >>> edit_question("flw", "make the sky red").splitlines()[-2:]
    ['Editing Instructions: make the sky red', 'Does the edited image follow the editing instructions? Please directly respond with yes or no.']
    """
    return (
        _EDIT_HEAD.format(instruction=instruction) + f"{EDIT_QUESTIONS[kind]} Please directly respond with yes or no."
    )


def edit_reason_question(kind: str, instruction: str) -> str:
    """The question whose free answer is the reason for S_flw or S_psv: the released server reward's ending.

    The released HTTP reward (grpo_editing.py) asks '... respond with yes or no, then give the reason';
    the S question stops at 'yes or no.' so that its first token is the verdict (as for S).
    """
    head = _EDIT_HEAD.format(instruction=instruction)
    return head + f"{EDIT_QUESTIONS[kind]} Please directly respond with yes or no, then give the reason"


def message_texts(question: str, n_images: int) -> list[str]:
    """The n_images + 1 text parts around a question's first `n_images` image tags, for a chat message.

    Each image part renders as `<img>...</img>\\n` in LMDeploy (vl/model/internvl.py, proc_messages),
    so the newline after each tag leaves with it. Empty parts stay empty ('' before a leading image).

    >>> message_texts("<image>\\n Is it red?", 1)
    ['', ' Is it red?']
    >>> message_texts("A: <image>\\nB: <image>\\nSame?", 2)
    ['A: ', 'B: ', 'Same?']
    """
    parts = question.split(IMAGE_TAG, n_images)
    if len(parts) != n_images + 1 or not all(p.startswith("\n") for p in parts[1:]):
        raise ValueError(f"the question needs {n_images} image tag(s), each followed by a newline")
    return [parts[0], *(p[1:] for p in parts[1:])]
