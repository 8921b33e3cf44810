"""The SFT sequences of Janus-Pro-R1: one builder per task, in the released code's format.

Templates (docs/paper.md, 'Janus-Pro sequence format'; `{...}` are filled in, `[gen:N]` is N
generation-path positions (VQ codes -> gen_embed -> gen_aligner), `[und:M]` M
understanding-path positions (`<image_placeholder>` ids whose embeddings become the
image's SigLIP + aligner features)):

- Task I `t2i`:    <BOS><|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>[gen:N target]<end_of_image>
- Task II `judge`: <BOS><|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>[und:M]<end_of_image>
                   \\nLet me think Does this image match the prompt...{reason}<EOS>
- Task III `regen`: <BOS><|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>[gen:N bad]<end_of_image>
                   \\nLet me think Does this image match the prompt...{evaluation}<EOS>
                   \\nNext, I will draw a new image<begin_of_image>[gen:N good target]<end_of_image>
- edit `edit`:     <BOS><|User|>: <begin_of_image>[gen:N source]<end_of_image>{instruction} Please generate an image.
                   \\n\\n<|Assistant|>:<begin_of_image>[gen:N edited target]<end_of_image>
                   (the released editing code's; docs/edit.md. Its CFG twin / caption dropout pads the
                   instruction's tokens only, always: `janus_data.generators.janus_edit.edit_prompt_ids`.)
- `edit_judge`:    the edit prompt, <begin_of_image>[und:M edited]<end_of_image>
                   \\nLet me think Does this edit follow the instruction and keep the rest of the image...{reason}<EOS>
- `edit_regen`:    the edit prompt, <begin_of_image>[gen:N bad edit]<end_of_image>\\nLet me think Does this edit...
                   {evaluation}<EOS>\\nNext, I will draw a new image<begin_of_image>[gen:N good target]<end_of_image>
                   (the edit versions of Tasks II and III: the same prompt as `edit`, the same triggers
                   but the question, the same losses as judge and regen.)

Losses (targets are stored already shifted: the label at position p is what the hidden
state at p must predict, so no shift happens later):
- t2i: the N image codes, each through the generation head from the previous position (the
  first from the `<begin_of_image>` position). No text loss.
- judge: the answer text and EOS through lm_head; the first answer token (Yes/No) has
  weight `answer_weight` (0.8), every later token incl. EOS `reason_weight` (0.2) (if a
  tokenizer splits the Yes/No word, all of its tokens get `answer_weight`).
- regen: the good image's N codes only. The "No. ..." evaluation is context, not a target
  (the released code has no text loss in Task III); `regen_text_loss=True` adds it with the
  judge weights. The bad image's codes are context (no loss).

Caption dropout (Tasks I and III, probability `caption_dropout`, drawn from the caller's
`random.Random`): the CFG rows of docs/paper.md ('Classifier-free guidance and sampling') pad
every prompt token but BOS and `<begin_of_image>`, in regeneration only the first prompt (not
the evaluation text), and the released SFT code drops exactly that span (`input_ids[1:-1] =
pad` on `<BOS>...<begin_of_image>`) in both tasks. So the default `dropout_scope="turn"` pads
the whole chat turn between BOS and the first `<begin_of_image>` (scaffolding included), which
is what the unconditional row of the generation loop (`janus_loop.unconditional_ids`) sees at
inference. `dropout_scope="caption"` pads only the tokens that overlap the caption's
characters and keeps the scaffolding.

Representation (`Sample`): per-position numpy arrays of length L (input_ids, text_labels,
text_weights, image_labels; -100 = no target) plus the image spans (start, payload). It pads
into (B, T) tensors by `janus_train.losses.collate`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from janus_data.generators.janus import generation_prompt
from janus_data.generators.janus_edit import edit_prompt_ids
from janus_data.janus_format import ALL_TASKS, BOI, EOI, IMAGE_TOKEN

IGNORE = -100

# The chat turn around the caption, derived from the one template the generator uses.
CHAT_PREFIX, CHAT_SUFFIX = generation_prompt("\x00").split("\x00")  # "<|User|>: ", "\n\n<|Assistant|>:"
JUDGE_TRIGGER = "\nLet me think Does this image match the prompt..."  # after <end_of_image>
REGEN_TRIGGER = "\nNext, I will draw a new image"  # after <EOS>, before <begin_of_image>
# An edit's self-evaluation asks both of the judge's questions at once (docs/edit.md, "Edit SFT samples").
EDIT_JUDGE_TRIGGER = "\nLet me think Does this edit follow the instruction and keep the rest of the image..."

ANSWER_WORD = re.compile(r"\s*(Yes|No)\b", re.IGNORECASE)  # the answer a reason starts with
DropoutScope = Literal["turn", "caption"]


@dataclass
class Sample:
    """One SFT sequence.

    Per position p in [0, L):
    - input_ids[p]: the token id; image positions hold the `<image_placeholder>` id (their
      embeddings are replaced, see gen_images / und_images).
    - text_labels[p]: the text token the hidden state at p predicts through lm_head, or -100.
    - text_weights[p]: its loss weight (0 where text_labels is -100).
    - image_labels[p]: the VQ code the hidden state at p predicts through the generation
      head, or -100.
    gen_images: (start, codes int64 (N,)) spans embedded through the generation path.
    und_images: (start, PIL image or (3, H, W) pixel tensor) spans of M positions read
      through the understanding path (SigLIP + aligner).
    """

    task: str
    input_ids: np.ndarray
    text_labels: np.ndarray
    text_weights: np.ndarray
    image_labels: np.ndarray
    gen_images: list[tuple[int, np.ndarray]] = field(default_factory=list)
    und_images: list[tuple[int, Any]] = field(default_factory=list)
    caption_dropped: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def text_targets(self) -> list[tuple[int, int, float]]:
        """(position, token id, weight) of every text target."""
        pos = np.flatnonzero(self.text_labels != IGNORE)
        return [(int(p), int(self.text_labels[p]), float(self.text_weights[p])) for p in pos]

    @property
    def image_targets(self) -> list[tuple[int, int]]:
        """(position, code) of every image target."""
        pos = np.flatnonzero(self.image_labels != IGNORE)
        return [(int(p), int(self.image_labels[p])) for p in pos]


class _Seq:
    """Accumulates segments of a sequence and its targets."""

    def __init__(self, image_id: int):
        self.image_id = image_id
        self.ids: list[int] = []
        self.text_labels: dict[int, tuple[int, float]] = {}
        self.image_labels: dict[int, int] = {}
        self.gen: list[tuple[int, np.ndarray]] = []
        self.und: list[tuple[int, Any]] = []

    def text(self, ids: list[int], weights: list[float] | None = None) -> None:
        """Append text ids; with weights, each token is a target predicted from the position before it."""
        start = len(self.ids)
        self.ids.extend(ids)
        if weights is not None:
            for i, (tok, w) in enumerate(zip(ids, weights, strict=True)):
                self.text_labels[start + i - 1] = (tok, w)

    def gen_image(self, codes: np.ndarray, target: bool) -> None:
        start = len(self.ids)
        self.ids.extend([self.image_id] * len(codes))
        self.gen.append((start, codes))
        if target:
            for i, code in enumerate(codes.tolist()):
                self.image_labels[start + i - 1] = code

    def und_image(self, image: Any, num_tokens: int) -> None:
        self.und.append((len(self.ids), image))
        self.ids.extend([self.image_id] * num_tokens)

    def build(self, task: str, dropped: bool) -> Sample:
        n = len(self.ids)
        text_labels = np.full(n, IGNORE, dtype=np.int64)
        text_weights = np.zeros(n, dtype=np.float32)
        image_labels = np.full(n, IGNORE, dtype=np.int64)
        for p, (tok, w) in self.text_labels.items():
            text_labels[p], text_weights[p] = tok, w
        for p, code in self.image_labels.items():
            image_labels[p] = code
        return Sample(
            task=task,
            input_ids=np.asarray(self.ids, dtype=np.int64),
            text_labels=text_labels,
            text_weights=text_weights,
            image_labels=image_labels,
            gen_images=self.gen,
            und_images=self.und,
            caption_dropped=dropped,
        )


class SequenceBuilder:
    """Builds the three SFT tasks' `Sample`s from prompts, images, codes and reasons."""

    def __init__(
        self,
        tokenizer,
        num_und_tokens: int,
        num_gen_tokens: int | None = None,
        *,
        answer_weight: float = 0.8,
        reason_weight: float = 0.2,
        caption_dropout: float = 0.1,
        dropout_scope: DropoutScope = "turn",
        regen_text_loss: bool = False,
    ):
        """`num_und_tokens`: positions of an understanding image (config.vision_config.num_image_tokens);
        `num_gen_tokens`: codes per generated image (vq grid squared), checked when given."""
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        if dropout_scope not in ("turn", "caption"):
            raise ValueError(f"dropout_scope must be 'turn' or 'caption', got {dropout_scope!r}")
        self.tokenizer = tokenizer
        self.num_und_tokens = num_und_tokens
        self.num_gen_tokens = num_gen_tokens
        self.answer_weight = answer_weight
        self.reason_weight = reason_weight
        self.caption_dropout = caption_dropout
        self.dropout_scope = dropout_scope
        self.regen_text_loss = regen_text_loss
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        self.boi_id = self._special(BOI)
        self.eoi_id = self._special(EOI)
        self.image_id = self._special(IMAGE_TOKEN)
        if None in (self.bos_id, self.eos_id, self.pad_id):
            raise ValueError("the tokenizer lacks a BOS, EOS or pad token")
        self._judge_trigger = self._encode(JUDGE_TRIGGER)
        self._regen_trigger = self._encode(REGEN_TRIGGER)
        self._edit_judge_trigger = self._encode(EDIT_JUDGE_TRIGGER)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> SequenceBuilder:
        """Tokenizer and image-token counts from a transformers Janus checkpoint directory."""
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(tokenizer, config.vision_config.num_image_tokens, config.vq_config.num_patches**2, **kwargs)

    def _special(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer lacks {token}")
        return tid

    def _encode(self, text: str) -> list[int]:
        # split_special_tokens: text that spells a control token ("<begin_of_image>") stays text.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    def _codes(self, codes, what: str) -> np.ndarray:
        codes = np.asarray(codes).reshape(-1).astype(np.int64)
        if self.num_gen_tokens is not None and len(codes) != self.num_gen_tokens:
            raise ValueError(f"{what} has {len(codes)} codes, the model takes {self.num_gen_tokens}")
        if len(codes) == 0 or codes.min() < 0:
            raise ValueError(f"{what} codes must be a non-empty array of non-negative ids")
        return codes

    def _drop(self, rng: random.Random | None, drop: bool | None = None) -> bool:
        """One draw per sample when an rng is given (so the stream does not depend on the probability);
        `drop` forces the choice (GRPO's unconditional rows)."""
        if drop is not None:
            return drop
        if rng is None:
            return False
        return rng.random() < self.caption_dropout

    def _prompt(self, seq: _Seq, prompt: str, drop: bool) -> None:
        """<BOS> + chat turn (optionally padded) + <begin_of_image>."""
        text = generation_prompt(prompt)
        enc = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        ids = list(enc.input_ids)
        if drop:
            if self.dropout_scope == "turn":
                ids = [self.pad_id] * len(ids)
            else:
                lo, hi = len(CHAT_PREFIX), len(CHAT_PREFIX) + len(prompt)
                ids = [
                    self.pad_id if s < hi and e > lo else t for t, (s, e) in zip(ids, enc.offset_mapping, strict=True)
                ]
        seq.text([self.bos_id, *ids, self.boi_id])

    def _answer(self, seq: _Seq, reason: str | list[int], loss: bool) -> None:
        """The evaluation text + <EOS>; the Yes/No word weighted answer_weight, the rest reason_weight.

        The Yes/No word is one token in Janus-Pro's tokenizer; where a tokenizer splits it (the
        tiny one splits "No"), every token of the word carries answer_weight. `reason` may be
        token ids (a GRPO rollout's own tokens, ending in <EOS> or cut at the length bound): they
        are used as they are, never re-tokenised.
        """
        if not isinstance(reason, str):
            ids = [int(t) for t in reason]
            weights = [self.answer_weight] + [self.reason_weight] * (len(ids) - 1)
            seq.text(ids, weights if loss else None)
            return
        enc = self.tokenizer(reason, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        ids = [*enc.input_ids, self.eos_id]
        match = ANSWER_WORD.match(reason)
        end = match.end(1) if match else 0
        weights = [
            self.answer_weight if i == 0 or start < end else self.reason_weight
            for i, (start, _) in enumerate(enc.offset_mapping)
        ]
        seq.text(ids, [*weights, self.reason_weight] if loss else None)

    def _edit_prompt(self, seq: _Seq, instruction: str, source, drop: bool) -> None:
        """The edit prompt up to the edited image's <begin_of_image>: the source's codes are context."""
        before, after = edit_prompt_ids(self.tokenizer, instruction, drop)
        seq.text(before)
        seq.gen_image(self._codes(source, "edit source image"), target=False)
        seq.text(after)

    def _head(self, prompt: str, source, drop: bool) -> _Seq:
        """A new sequence holding the prompt up to <begin_of_image>: the text-to-image turn, or with
        `source` codes the edit prompt."""
        seq = _Seq(self.image_id)
        if source is None:
            self._prompt(seq, prompt, drop)
        else:
            self._edit_prompt(seq, prompt, source, drop)
        return seq

    def _evaluated(self, seq: _Seq, trigger: list[int], reason, loss: bool) -> None:
        """<end_of_image>, the self-evaluation question and (when given) the answer."""
        seq.text([self.eoi_id, *trigger])
        if reason is not None:
            self._answer(seq, reason, loss=loss)

    def _generated(self, seq: _Seq, codes, what: str) -> None:
        seq.gen_image(self._codes(codes, what), target=True)
        seq.text([self.eoi_id])

    def t2i(
        self,
        prompt: str,
        codes=None,
        rng: random.Random | None = None,
        *,
        drop: bool | None = None,
        source=None,
    ) -> Sample:
        """Task I. `codes`: the target image's VQ codes; `rng` decides caption dropout (None: never),
        `drop` forces it. Without codes: the prefix the generation loop continues (up to <begin_of_image>).
        With `source` (an edit's source codes) `prompt` is the instruction: the `edit` sequence."""
        drop = self._drop(rng, drop)
        seq = self._head(prompt, source, drop)
        if codes is not None:
            self._generated(seq, codes, "t2i image" if source is None else "edited image")
        return seq.build("t2i" if source is None else "edit", drop)

    def judge(self, prompt: str, image: Any, reason: str | list[int] | None, *, source=None) -> Sample:
        """Task II. `image`: PIL image or (3, H, W) pixels; `reason` starts with "Yes." or "No." (text,
        or a rollout's token ids). Without a reason: the prefix the model answers from. With `source`:
        the `edit_judge` sequence (`prompt` is the instruction)."""
        task = "judge" if source is None else "edit_judge"
        if (isinstance(reason, str) and not reason.strip()) or (reason is not None and len(reason) == 0):
            raise ValueError(f"{task} sample has an empty reason")
        seq = self._head(prompt, source, drop=False)
        seq.und_image(image, self.num_und_tokens)
        self._evaluated(seq, self._trigger(source), reason, loss=True)
        return seq.build(task, False)

    def regen(
        self,
        prompt: str,
        bad_codes,
        evaluation: str | list[int],
        good_codes=None,
        rng: random.Random | None = None,
        *,
        drop: bool | None = None,
        source=None,
    ) -> Sample:
        """Task III. The bad image (codes, context), its "No. ..." evaluation (text or token ids),
        then the good image (target). Without good codes: the prefix up to the second <begin_of_image>.
        With `source`: the `edit_regen` sequence (`prompt` is the instruction)."""
        task = "regen" if source is None else "edit_regen"
        bad = self._codes(bad_codes, f"{task} bad image")
        drop = self._drop(rng, drop)
        seq = self._head(prompt, source, drop)
        seq.gen_image(bad, target=False)
        self._evaluated(seq, self._trigger(source), evaluation, loss=self.regen_text_loss)
        seq.text([*self._regen_trigger, self.boi_id])
        if good_codes is not None:
            self._generated(seq, good_codes, f"{task} good image")
        return seq.build(task, drop)

    def _trigger(self, source) -> list[int]:
        return self._judge_trigger if source is None else self._edit_judge_trigger

    def edit(
        self,
        instruction: str,
        source_codes,
        edited_codes=None,
        rng: random.Random | None = None,
        *,
        drop: bool | None = None,
    ) -> Sample:
        """Image editing: the source image (codes, context), the instruction, then the edited image (target,
        loss on its N codes). Without edited codes: the prefix the generation loop continues."""
        return self.t2i(instruction, edited_codes, rng, drop=drop, source=self._source(source_codes))

    def edit_judge(self, instruction: str, source_codes, image: Any, reason: str | list[int] | None) -> Sample:
        """Edit self-evaluation (Task II of edits): the edit prompt, the edited image through the
        understanding path, the question and `reason`. Without a reason: the prefix the model answers from."""
        return self.judge(instruction, image, reason, source=self._source(source_codes))

    def edit_regen(
        self,
        instruction: str,
        source_codes,
        bad_codes,
        evaluation: str | list[int],
        good_codes=None,
        rng: random.Random | None = None,
        *,
        drop: bool | None = None,
    ) -> Sample:
        """Edit regeneration (Task III of edits): the edit prompt, the bad edit (codes, context), its
        evaluation, then the good edit (target). Without good codes: the prefix up to its <begin_of_image>."""
        source = self._source(source_codes)
        return self.regen(instruction, bad_codes, evaluation, good_codes, rng, drop=drop, source=source)

    def _source(self, codes) -> np.ndarray:
        if codes is None:
            raise ValueError("an edit sequence needs the source image's codes")
        return self._codes(codes, "edit source image")

    def from_record(self, sample: dict[str, Any], rng: random.Random | None = None) -> Sample:
        """A decoded shard sample (`janus_data.wds.decode_sample`) -> its task's Sample."""
        rec = sample["json"]
        task = rec["task"]
        if task == "t2i":
            return self.t2i(rec["prompt"], sample["image.npy"], rng)
        if task == "judge":
            return self.judge(rec["prompt"], _image(sample, "image"), rec["reason"])
        if task == "regen":
            return self.regen(rec["prompt"], sample["bad.npy"], rec["reason"], sample["good.npy"], rng)
        if task == "edit":
            return self.edit(rec["instruction"], sample["source.npy"], sample["image.npy"], rng)
        if task == "edit_judge":
            return self.edit_judge(rec["instruction"], sample["source.npy"], _image(sample, "image"), rec["reason"])
        if task == "edit_regen":
            source, bad, good = sample["source.npy"], sample["bad.npy"], sample["good.npy"]
            return self.edit_regen(rec["instruction"], source, bad, rec["reason"], good, rng)
        raise ValueError(f"unknown SFT task {task!r} (expected one of {', '.join(ALL_TASKS)})")


IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")  # as synth stored the bytes (docs/filter.md)


def _image(sample: dict[str, Any], stem: str) -> Any:
    for ext in IMAGE_EXTENSIONS:
        if f"{stem}.{ext}" in sample:
            return sample[f"{stem}.{ext}"]
    raise KeyError(f"sample {sample.get('__key__', '?')} has no {stem} image ({', '.join(IMAGE_EXTENSIONS)})")


def render(sample: Sample, tokenizer) -> str:
    """The sequence as text: image spans as `<image:gen:N>` / `<image:und:M>`, specials spelled out."""
    ids = sample.input_ids.tolist()
    spans = {start: ("gen", len(codes)) for start, codes in sample.gen_images}
    for start, _ in sample.und_images:
        end = start
        while end < len(ids) and ids[end] == ids[start]:
            end += 1
        spans[start] = ("und", end - start)
    out: list[str] = []
    text: list[int] = []
    p = 0
    while p < len(ids):
        if p in spans:
            if text:
                out.append(tokenizer.decode(text, skip_special_tokens=False, clean_up_tokenization_spaces=False))
                text = []
            kind, n = spans[p]
            out.append(f"<image:{kind}:{n}>")
            p += n
        else:
            text.append(ids[p])
            p += 1
    if text:
        out.append(tokenizer.decode(text, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return "".join(out)
