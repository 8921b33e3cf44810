"""An offline-trained tokenizer in CLIP's layout (openai/clip-vit-large-patch14's vocabulary order and
special tokens): FLUX's `tokenizer` and GenEval's CLIP in the tiny models."""

from __future__ import annotations

import itertools
import string
from collections import Counter

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

from janus_data.tiny.tokenizer import BASE_CORPUS

# CLIP's special tokens, spelled as in openai/clip-vit-large-patch14 (FLUX's `tokenizer`).
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77  # CLIP's context length; FluxPipeline pads CLIP prompts to it


def printable_corpus() -> list[str]:
    """The tiny tokenizers' corpus: every printable ASCII character once, so no prompt character maps to <unk>."""
    return [*BASE_CORPUS, " ".join(string.ascii_letters + string.digits + string.punctuation)] * 4


def train_clip_tokenizer(vocab_size: int = 1024) -> CLIPTokenizer:
    """A byte-level BPE in CLIP's layout, trained offline, as transformers' CLIPTokenizer.

    Vocabulary as openai/clip-vit-large-patch14 orders it: the 256 byte symbols, the same with
    the '</w>' end-of-word suffix, one token per merge, then <|startoftext|>, <|endoftext|>.
    The merges are learned here in plain Python with ties broken by the pair itself, because
    tokenizers' BpeTrainer with an end-of-word suffix numbers the suffixed symbols in hash
    order and so breaks ties differently from run to run.
    """
    clip = CLIPTokenizer()  # an empty vocabulary; only its normalizer and pre-tokenizer are used
    backend = clip.backend_tokenizer
    words: Counter[tuple[str, ...]] = Counter()
    for line in printable_corpus():
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(line)):
            words[(*word[:-1], word[-1] + "</w>")] += 1
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # code-point order is GPT-2's byte order
    vocab = [*alphabet, *(c + "</w>" for c in alphabet)]
    merges: list[tuple[str, str]] = []
    while len(vocab) + 2 < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        words = Counter({_merge(word, best): n for word, n in words.items()})
    vocab += [CLIP_BOS, CLIP_EOS]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,
        model_max_length=CLIP_MAX_LENGTH,
    )


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
