"""The judge in process: a transformers InternVL checkpoint scoring (prompt, image) pairs and edits in batches."""

from __future__ import annotations

import io

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

from janus_data.errors import ModelError
from janus_data.judge.decode import RaggedBatch, greedy
from janus_data.judge.scoring import NO_WORDS, YES_WORDS, answer_of
from janus_data.judge.templates import (
    IMAGE_TAG,
    consistency_question,
    edit_question,
    edit_reason_question,
    reason_question,
)
from janus_data.judge.types import EditJudgeResult, JudgeResult, open_edit_pair
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

    def question_ids(self, question: str, n_tiles: int | list[int]) -> list[int]:
        """Chat-templated ids of one question, its first image tag(s) expanded to the images' tokens.

        `n_tiles` is the tile count of each image, in order (an int for one image); tags after
        them (a prompt that spells `<image>`) stay text.
        """
        tiles = [n_tiles] if isinstance(n_tiles, int) else list(n_tiles)
        return self.prompt_ids(question.split(IMAGE_TAG, len(tiles)), tiles)

    def prompt_ids(self, texts: list[str], tiles: list[int]) -> list[int]:
        """Chat-templated ids of a user turn texts[0], image 0, texts[1], ..., image n-1, texts[n].

        Each image is `<img>` + `<IMG_CONTEXT>` x (image_seq_length x its tiles) + `</img>`, filled
        in order as InternVLProcessor and InternVL's own chat() fill `<image>` tags.
        """
        if len(texts) != len(tiles) + 1:
            raise ValueError(f"{len(tiles)} images need {len(tiles) + 1} text segments, got {len(texts)}")
        tok = self.tokenizer
        content = IMAGE_TAG.join(texts)
        text = tok.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        at = text.find(content)
        if at < 0:
            raise ModelError(
                f"the chat template of '{self.model_id}' rewrites the user text", hint="use the checkpoint's tokenizer"
            )
        start, end = tok.convert_tokens_to_ids(self.start_image), tok.convert_tokens_to_ids(self.end_image)
        ids = tok.encode(text[:at], add_special_tokens=False)
        for i, segment in enumerate(texts):
            if i:
                ids += [start, *[self.context_id] * (self.image_seq_length * tiles[i - 1]), end]
            # The prompt is text: one spelling "<IMG_CONTEXT>" must not add an image token.
            ids += tok.encode(segment, add_special_tokens=False, split_special_tokens=True)
        return ids + tok.encode(text[at + len(content) :], add_special_tokens=False)

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

    @torch.inference_mode()
    def score_edits(
        self,
        instructions: list[str],
        originals: list[Image.Image | bytes],
        edited: list[Image.Image | bytes],
        shared_prefill: bool = True,
    ) -> list[EditJudgeResult]:
        """One EditJudgeResult (S_flw, S_psv, their reasons) per (instruction, original, edited), one batch.

        Both images go into one prompt, original first (templates.edit_question). The four
        questions of an edit (two S, two reasons) differ only after the instruction, so the
        images are prefilled once, the cache is duplicated for the two questions, and each
        question's tail continues from it. A pair whose image cannot be decoded gets an error
        result; the others are judged. `shared_prefill=False` runs separate passes (the reference).
        """
        if not len(instructions) == len(originals) == len(edited):
            raise ValueError(f"{len(instructions)} instructions, {len(originals)} originals, {len(edited)} edited")
        results: list[EditJudgeResult | None] = [None] * len(instructions)
        images: list[Image.Image] = []
        for i, pair in enumerate(zip(originals, edited, strict=True)):
            try:
                images += open_edit_pair(*pair)
            except ValueError as err:
                results[i] = EditJudgeResult.failed(str(err))
        ok = [i for i, r in enumerate(results) if r is None]
        if ok:
            judged = self._judge_edits([instructions[i] for i in ok], images, shared_prefill)
            for i, result in zip(ok, judged, strict=True):
                results[i] = result
        return results

    def _judge_edits(self, instructions: list[str], images: list[Image.Image], shared: bool) -> list[EditJudgeResult]:
        """`images` = [original 0, edited 0, original 1, ...]; rows are every flw question, then every psv one."""
        n = len(instructions)
        pixels, tiles = self.preprocess(images)
        pair_tiles = [tiles[2 * k : 2 * k + 2] for k in range(n)]
        pairs = list(zip(instructions, pair_tiles, strict=True))
        s_rows = [self.question_ids(edit_question(q, t), pt) for q in ("flw", "psv") for t, pt in pairs]
        r_rows = [self.question_ids(edit_reason_question(q, t), pt) for q in ("flw", "psv") for t, pt in pairs]
        reasons = [""] * (2 * n)
        batch = self.batch()
        if shared:
            groups = [
                [s_rows[k], s_rows[n + k]] + ([r_rows[k], r_rows[n + k]] if self.reason_tokens > 0 else [])
                for k in range(n)
            ]
            # Each tail keeps at least one token, so every question ends on a token of its own.
            cut = [min(*(common_prefix(g[0], h) for h in g[1:]), *(len(h) - 1 for h in g)) for g in groups]
            batch.append([s_rows[k][: cut[k]] for k in range(n)], **self.pixel_inputs(pixels))
            batch.select(list(range(n)) * 2)  # one copy of each edit's cache per question kind
            prefix = batch.mark()
            scores = self.yes_share(batch.append([row[cut[j % n] :] for j, row in enumerate(s_rows)]))
            if self.reason_tokens > 0:
                batch.rewind(prefix)
                reasons = self._reasons(batch, batch.append([row[cut[j % n] :] for j, row in enumerate(r_rows)]))
        else:
            both = self.pixel_inputs(torch.cat([pixels, pixels]))
            scores = self.yes_share(batch.append(s_rows, **both))
            if self.reason_tokens > 0:
                batch = self.batch()
                reasons = self._reasons(batch, batch.append(r_rows, **both))
        sides = [
            JudgeResult(score=s, answer=None if s is None else answer_of(s), reason=r, flagged=s is None)
            for s, r in zip(scores, reasons, strict=True)
        ]
        return [EditJudgeResult(following=sides[k], preserving=sides[n + k]) for k in range(n)]
