"""The judge in process: a transformers InternVL checkpoint scoring (prompt, image) pairs in batches."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

from janus_data.errors import ModelError
from janus_data.judge.scoring import NO_WORDS, YES_WORDS, answer_of
from janus_data.judge.templates import IMAGE_TAG, consistency_question, reason_question
from janus_data.judge.types import JudgeResult
from janus_data.models import loading, resolve_model
from janus_data.padding import left_pad


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
    ):
        """Load `model_ref`; images are cut into at most `max_tiles` 448 px tiles plus a thumbnail."""
        self.model_id = model_ref
        self.device = device
        self.dtype = dtype
        self.max_tiles = max_tiles
        self.reason_tokens = reason_tokens
        self.model, self.tokenizer, self.image_processor = load_internvl(model_ref, device, dtype, trust_remote_code)
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

    def _ids(self, question: str, n_tiles: int) -> list[int]:
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

    def _inputs(self, questions: list[str], pixels: torch.Tensor, tiles: list[int]) -> dict[str, torch.Tensor]:
        """Left-padded batch: (B, L) ids and mask, (B, L) positions, (sum tiles, 3, 448, 448) pixels."""
        ids, mask = left_pad([self._ids(q, n) for q, n in zip(questions, tiles, strict=True)], self.pad_id)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "pixel_values": pixels.to(self.device, self.dtype),
        }

    @torch.inference_mode()
    def score(self, prompts: list[str], images: list[Image.Image]) -> list[JudgeResult]:
        """One JudgeResult per (prompt, image), all pairs in one batch."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if not prompts:
            return []
        processed = self.image_processor(
            images=[im.convert("RGB") for im in images],
            crop_to_patches=True,
            min_patches=1,
            max_patches=self.max_tiles,
            return_tensors="pt",
        )
        pixels, tiles = processed["pixel_values"], [int(n) for n in processed["num_patches"]]

        inputs = self._inputs([consistency_question(p) for p in prompts], pixels, tiles)
        logits = self.model(**inputs, logits_to_keep=1).logits[:, -1].float()
        probs = logits.softmax(-1)
        yes = probs[:, self.yes_ids].sum(-1)
        no = probs[:, self.no_ids].sum(-1)
        total = yes + no
        scores = [float(y / t) if t > 0 and torch.isfinite(t) else None for y, t in zip(yes, total, strict=True)]

        inputs = self._inputs([reason_question(p) for p in prompts], pixels, tiles)
        # generate derives positions from the mask itself (cache-aware); passing ours would be stale.
        inputs.pop("position_ids")
        out = self.model.generate(
            **inputs, max_new_tokens=self.reason_tokens, do_sample=False, pad_token_id=self.pad_id
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        reasons = [r.strip() for r in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return [
            JudgeResult(score=s, answer=None if s is None else answer_of(s), reason=r, flagged=s is None)
            for s, r in zip(scores, reasons, strict=True)
        ]
