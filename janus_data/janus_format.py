"""Janus-Pro-R1's sequence format as constants: Janus-Pro's special tokens and chat roles, the SFT tasks.

Spelled exactly as deepseek-ai/Janus-Pro-7B's tokenizer and chat template have them (the
fullwidth bars and the lower one-eighth blocks are part of the tokens). No imports: the tiny
model, the generator, the SFT sequences, the filter and the report all read them here, polars
and torch not needed.
"""

from __future__ import annotations

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE_TOKEN, BOI, EOI]
# The chat turn's roles (plain text to the tokenizer, not special tokens): "<|User|>: {prompt}\n\n<|Assistant|>:".
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"

# The SFT sub-tasks (text -> image, self-evaluation, regeneration), in the order every mix and table lists them.
TASKS = ("t2i", "judge", "regen")
# The image-editing SFT sub-tasks (edit generation, edit self-evaluation, edit regeneration; docs/edit.md).
EDIT_TASKS = ("edit", "edit_judge", "edit_regen")
ALL_TASKS = TASKS + EDIT_TASKS
