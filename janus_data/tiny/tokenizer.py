"""Offline-trained byte-level BPE tokenizers carrying a model family's real special tokens."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Text the tiny tokenizers learn merges from: the chat scaffolding the project emits plus
# everyday caption words, so tokenised prompts stay short.
BASE_CORPUS = (
    "<|User|>: a photo of a red cube on a blue sphere\n\n<|Assistant|>:",
    "Let me think Does this image match the prompt...",
    "Next, I will draw a new image",
    "Does this image match the description, please directly respond with yes or no.",
    "Yes, the image matches the prompt. No, the image does not match the prompt.",
    "yes Yes YES no No NO",
    "a dog a cat two birds three cars a green apple a yellow banana on the left of the right of",
    "an oil painting of a city at night, a watercolor of mountains, a cartoon of a robot",
    "system user assistant <|im_start|> <|im_end|>",
)


def train_tokenizer(
    special_tokens: list[str],
    corpus: Iterable[str] = BASE_CORPUS,
    vocab_size: int = 512,
    bos_token: str | None = None,
    **special_attrs: str,
) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE and wrap it as a transformers fast tokenizer.

    `special_attrs` name standard and model-specific tokens, e.g. eos_token="...",
    image_token="<image_placeholder>"; every such token must be in `special_tokens`.
    `bos_token`, when given, is prepended to every encoded sequence (as Llama does).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) * 4, trainer)
    if bos_token is not None:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, bos_id)],
        )
    standard = {k: v for k, v in special_attrs.items() if k in {"bos_token", "eos_token", "pad_token", "unk_token"}}
    extra = {k: v for k, v in special_attrs.items() if k not in standard}
    if bos_token is not None:
        standard["bos_token"] = bos_token
    missing = [v for v in [*standard.values(), *extra.values()] if v not in special_tokens]
    if missing:
        raise ValueError(f"special tokens {missing} are not in the trained vocabulary")
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra, **standard)
