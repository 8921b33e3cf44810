"""The judge in process: a transformers InternVL checkpoint scoring (prompt, image) pairs in batches."""

from __future__ import annotations

import io

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

from janus_data.errors import ModelError
from janus_data.judge.scoring import NO_WORDS, YES_WORDS, answer_of
from janus_data.judge.templates import IMAGE_TAG, consistency_question, reason_question
from janus_data.judge.types import Answer, JudgeResult
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
        """Left-padded batch: (B, L) ids and mask, (sum tiles, 3, 448, 448) pixels."""
        ids, mask = left_pad([self._ids(q, n) for q, n in zip(questions, tiles, strict=True)], self.pad_id)
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "pixel_values": pixels.to(self.device, self.dtype),
        }

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

    def _generate(
        self, questions: list[str], pixels: torch.Tensor, tiles: list[int], max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Greedy answers: (B, V) first-token log-probabilities, (B, T) new ids, prompt lengths."""
        inputs = self._inputs(questions, pixels, tiles)
        # generate derives positions from the mask itself (cache-aware), so left padding is safe.
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        first = out.logits[0].float().log_softmax(-1)
        new = out.sequences[:, inputs["input_ids"].shape[1] :]
        return first, new, inputs["attention_mask"].sum(-1).tolist()

    def _text(self, ids: torch.Tensor) -> tuple[str, int, str]:
        """Decoded answer up to its first stop token, its token count and finish reason."""
        ids = ids.tolist()
        for n, token in enumerate(ids):
            if token in self.stop_ids:
                return self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), n + 1, "stop"
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids), "length"

    def token_text(self, token_id: int) -> str:
        """A token as the text it decodes to (what OpenAI-style logprobs list)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    @torch.inference_mode()
    def chat(
        self, questions: list[str], images: list[Image.Image], max_new_tokens: int, top_logprobs: int = 0
    ) -> list[Answer]:
        """Answer each question (its `<image>` tag standing for its image) greedily, with first-token top-k."""
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions but {len(images)} images")
        if not questions:
            return []
        pixels, tiles = self.preprocess(images)
        first, new, prompt_lens = self._generate(questions, pixels, tiles, max(1, max_new_tokens))
        answers = []
        top_values, top_ids = first.topk(min(top_logprobs, first.shape[-1]), dim=-1) if top_logprobs else (None, None)
        for row in range(len(questions)):
            text, n_new, finish = self._text(new[row])
            top = []
            if top_ids is not None:
                top = [
                    (self.token_text(int(t)), float(v))
                    for t, v in zip(top_ids[row].tolist(), top_values[row].tolist(), strict=True)
                ]
            answers.append(
                Answer(text=text, top=top, prompt_tokens=int(prompt_lens[row]), completion_tokens=n_new, finish=finish)
            )
        return answers

    @torch.inference_mode()
    def score(self, prompts: list[str], images: list[Image.Image | bytes]) -> list[JudgeResult]:
        """One JudgeResult per (prompt, image), all pairs in one batch; images as PIL or encoded bytes."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if not prompts:
            return []
        images = [Image.open(io.BytesIO(im)) if isinstance(im, bytes) else im for im in images]
        pixels, tiles = self.preprocess(images)
        first, _, _ = self._generate([consistency_question(p) for p in prompts], pixels, tiles, 1)
        probs = first.exp()
        yes = probs[:, self.yes_ids].sum(-1)
        no = probs[:, self.no_ids].sum(-1)
        total = yes + no
        scores = [float(y / t) if t > 0 and torch.isfinite(t) else None for y, t in zip(yes, total, strict=True)]
        reasons = [""] * len(prompts)
        if self.reason_tokens > 0:
            _, new, _ = self._generate([reason_question(p) for p in prompts], pixels, tiles, self.reason_tokens)
            reasons = [self._text(row)[0] for row in new]
        return [
            JudgeResult(score=s, answer=None if s is None else answer_of(s), reason=r, flagged=s is None)
            for s, r in zip(scores, reasons, strict=True)
        ]
