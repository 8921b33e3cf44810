"""The judge in process: a transformers InternVL checkpoint scoring (prompt, image) pairs in batches."""

from __future__ import annotations

import io

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

from janus_data.errors import ModelError
from janus_data.judge.decode import RaggedBatch, greedy
from janus_data.judge.scoring import NO_WORDS, YES_WORDS, answer_of
from janus_data.judge.templates import IMAGE_TAG, consistency_question, reason_question
from janus_data.judge.types import JudgeResult
from janus_data.models import loading, resolve_model


def load_internvl(ref: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """Load a transformers-format InternVL, its tokenizer and image processor, or raise ModelError."""
    path = resolve_model(ref)
    hint = "use a transformers-format InternVL checkpoint (an OpenGVLab/*-hf repo, safetensors)"
    with loading("InternVL judge", ref, hint):
        model = InternVLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer, image_processor


def single_token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """Ids of each word and its leading-space variant, where that spelling is one token."""
    ids = set()
    for word in words:
        for text in (word, f" {word}"):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
    return sorted(ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists.

    >>> common_prefix([1, 2, 3], [1, 2, 4, 5])
    2
    """
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class HFJudge:
    """InternVL as the judge: S from the full first-token softmax, and a greedy short reason."""

    def __init__(
        self,
        model_ref: str,
        device: torch.device,
        dtype: torch.dtype,
        max_tiles: int = 12,
        reason_tokens: int = 64,
        trust_remote_code: bool = False,
        loaded: tuple | None = None,
    ):
        """Load `model_ref` (or take `loaded` = (model, tokenizer, image_processor) as is).

        Images are cut into at most `max_tiles` 448 px tiles plus a thumbnail; `reason_tokens`
        bounds the reason (0: no reason, S only).
        """
        self.model_id = model_ref
        self.device = device
        self.dtype = dtype
        self.max_tiles = max_tiles
        self.reason_tokens = reason_tokens
        if loaded is None:
            loaded = load_internvl(model_ref, device, dtype, trust_remote_code)
        self.model, self.tokenizer, self.image_processor = loaded
        tok = self.tokenizer
        self.image_seq_length = int(self.model.config.image_seq_length)
        self.start_image = getattr(tok, "start_image_token", None) or "<img>"
        self.end_image = getattr(tok, "end_image_token", None) or "</img>"
        self.context_id = int(self.model.config.image_token_id)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.yes_ids = single_token_ids(tok, YES_WORDS)
        self.no_ids = single_token_ids(tok, NO_WORDS)
        if not self.yes_ids or not self.no_ids or set(self.yes_ids) & set(self.no_ids) or self.pad_id is None:
            raise ModelError(
                f"tokenizer of '{model_ref}' has no single-token yes/no answers or no pad/eos token",
                hint="use the checkpoint's own tokenizer",
            )
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.stop_ids = {int(e) for e in eos if e is not None} | {int(tok.eos_token_id)}

    def question_ids(self, question: str, n_tiles: int) -> list[int]:
        """Chat-templated ids of one question, its image tag expanded to the image's tokens."""
        tok = self.tokenizer
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        at = text.find(question)
        if at < 0:
            raise ModelError(
                f"the chat template of '{self.model_id}' rewrites the user text", hint="use the checkpoint's tokenizer"
            )
        head, rest, tail = text[:at], question[len(IMAGE_TAG) :], text[at + len(question) :]
        image = [
            tok.convert_tokens_to_ids(self.start_image),
            *[self.context_id] * (self.image_seq_length * n_tiles),
            tok.convert_tokens_to_ids(self.end_image),
        ]
        # The prompt is text: one spelling "<IMG_CONTEXT>" must not add an image token.
        body = tok.encode(rest, add_special_tokens=False, split_special_tokens=True)
        return [
            *tok.encode(head, add_special_tokens=False),
            *image,
            *body,
            *tok.encode(tail, add_special_tokens=False),
        ]

    def preprocess(self, images: list[Image.Image]) -> tuple[torch.Tensor, list[int]]:
        """(sum tiles, 3, 448, 448) pixel values and the tile count of each image."""
        processed = self.image_processor(
            images=[im.convert("RGB") for im in images],
            crop_to_patches=True,
            min_patches=1,
            max_patches=self.max_tiles,
            return_tensors="pt",
        )
        return processed["pixel_values"], [int(n) for n in processed["num_patches"]]

    def batch(self) -> RaggedBatch:
        """An empty ragged batch on this judge's model."""
        return RaggedBatch(self.model, self.pad_id, self.device)

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs of the block that holds the images' tokens."""
        return {"pixel_values": pixels.to(self.device, self.dtype)}

    def text_of(self, ids: list[int]) -> tuple[str, str]:
        """Decoded answer up to its first stop id, and the finish reason ('stop' or 'length')."""
        for n, token in enumerate(ids):
            if token in self.stop_ids:
                return self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), "stop"
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip(), "length"

    def yes_share(self, logits: torch.Tensor) -> list[float | None]:
        """S of each row of first-token logits (B, V): the yes share of the yes/no mass of the full softmax."""
        probs = logits.double().softmax(-1)
        yes = probs[:, self.yes_ids].sum(-1)
        total = yes + probs[:, self.no_ids].sum(-1)
        return [float(y / t) if t > 0 and torch.isfinite(t) else None for y, t in zip(yes, total, strict=True)]

    @torch.inference_mode()
    def score(
        self, prompts: list[str], images: list[Image.Image | bytes], shared_prefill: bool = True
    ) -> list[JudgeResult]:
        """One JudgeResult per (prompt, image), all pairs in one batch; images as PIL or encoded bytes.

        The consistency question (S) and the reason question differ only after the image, so
        the image's tokens are prefilled once and both questions continue from that cache.
        `shared_prefill=False` runs them as two separate passes (the reference of that path).
        """
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if not prompts:
            return []
        images = [Image.open(io.BytesIO(im)) if isinstance(im, bytes) else im for im in images]
        pixels, tiles = self.preprocess(images)
        s_rows = [self.question_ids(consistency_question(p), n) for p, n in zip(prompts, tiles, strict=True)]
        r_rows = [self.question_ids(reason_question(p), n) for p, n in zip(prompts, tiles, strict=True)]
        reasons = [""] * len(prompts)
        batch = self.batch()
        if self.reason_tokens <= 0:
            scores = self.yes_share(batch.append(s_rows, **self.pixel_inputs(pixels)))
        elif shared_prefill:
            # Each suffix keeps at least one token, so both branches end on a token of their own.
            cut = [min(common_prefix(s, r), len(s) - 1, len(r) - 1) for s, r in zip(s_rows, r_rows, strict=True)]
            batch.append([s[:k] for s, k in zip(s_rows, cut, strict=True)], **self.pixel_inputs(pixels))
            prefix = batch.mark()
            scores = self.yes_share(batch.append([s[k:] for s, k in zip(s_rows, cut, strict=True)]))
            batch.rewind(prefix)
            first = batch.append([r[k:] for r, k in zip(r_rows, cut, strict=True)])
            reasons = self._reasons(batch, first)
        else:
            scores = self.yes_share(batch.append(s_rows, **self.pixel_inputs(pixels)))
            batch = self.batch()
            reasons = self._reasons(batch, batch.append(r_rows, **self.pixel_inputs(pixels)))
        return [
            JudgeResult(score=s, answer=None if s is None else answer_of(s), reason=r, flagged=s is None)
            for s, r in zip(scores, reasons, strict=True)
        ]

    def _reasons(self, batch: RaggedBatch, first: torch.Tensor) -> list[str]:
        rows = first.shape[0]
        new = batch.decode(first, [self.reason_tokens] * rows, [self.stop_ids] * rows, greedy)
        return [self.text_of(ids)[0] for ids in new]
