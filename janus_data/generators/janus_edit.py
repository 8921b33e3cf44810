"""Janus-Pro as an image editor: the source image's VQ codes in the prompt, the edit drawn by the image loop.

The edit prompt (docs/edit.md, 'Drawing edits'), as the released code builds it
(`janus-sft/datasets/editing_dataset.py`, `janus-rl/src/open_r1/grpo_trainer_editing.py`):

    <BOS><|User|>: <begin_of_image>[gen:N source]<end_of_image>{instruction} Please generate an image.\\n\\n<|Assistant|>:<begin_of_image>

`[gen:N source]` is the source image's N VQ codes on the generation path (gen_embed ->
gen_aligner), as Task III's bad image; the edited image's N tokens follow the last
`<begin_of_image>`. The released code tokenizes the three text pieces apart (the head with
BOS, the instruction, the tail) and its unconditional CFG row pads the instruction's tokens
only: BOS, the chat scaffolding and the source image stay, so the guidance is
`uncond + w (cond - uncond)` between "this image, edited as told" and "this image".

Sources are shaped as the released code shapes them before the VQ model: shortest side
scaled to the model's image size, then centre-cropped (`center_crop`, guided-diffusion's
rule). The judge's "original" there is the same crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import JanusForConditionalGeneration

from janus_data.config import JanusGenConfig
from janus_data.generators.janus import JanusGenerator
from janus_data.generators.janus_loop import decode_image_tokens, reference_image_loop
from janus_data.janus_format import BOI, EOI, IMAGE_TOKEN
from janus_data.padding import left_pad
from janus_data.vq import VQEncoder

EDIT_HEAD = "<|User|>: "  # between BOS and the source image's <begin_of_image>
EDIT_TAIL = " Please generate an image.\n\n<|Assistant|>:"  # after the instruction, before <begin_of_image>


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB, shortest side scaled to `size` (halved with a box filter while it is at least 2x, then bicubic),
    then the centre `size` x `size` square."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _token_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer lacks {token}")
    return tid


def edit_prompt_ids(tokenizer, instruction: str, drop: bool = False) -> tuple[list[int], list[int]]:
    """The edit prompt's ids on either side of the N source positions:
    ([BOS, <|User|>: , <begin_of_image>], [<end_of_image>, instruction, tail, <begin_of_image>]).

    `drop` pads the instruction's tokens (the unconditional CFG row, and caption dropout).
    """
    if not instruction.strip():
        raise ValueError("an edit needs a non-empty instruction")

    def encode(text: str) -> list[int]:
        # split_special_tokens: an instruction that spells "<begin_of_image>" stays text.
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    instr = encode(instruction)
    if drop:
        instr = [tokenizer.pad_token_id] * len(instr)
    boi = _token_id(tokenizer, BOI)
    before = [tokenizer.bos_token_id, *encode(EDIT_HEAD), boi]
    after = [_token_id(tokenizer, EOI), *instr, *encode(EDIT_TAIL), boi]
    return before, after


def edit_cfg_inputs(
    model: JanusForConditionalGeneration, tokenizer, source_codes: torch.Tensor, instructions: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CFG row pairs of B edits as embeddings: (B, N) source codes -> (2B, L, D) embeds, (2B, L) mask,
    (2B, L) bool source positions.

    Rows 0..B-1 are conditional, B..2B-1 their twins with the instruction padded (the fast loop's
    layout, `janus_loop.cfg_inputs`); rows are left-padded. The source positions of both rows hold
    the generation embedding of the source codes.
    """
    batch, n = source_codes.shape
    if batch != len(instructions):
        raise ValueError(f"got {batch} sources and {len(instructions)} instructions")
    image_id = _token_id(tokenizer, IMAGE_TOKEN)
    rows, starts = [], []
    for drop in (False, True):
        for instruction in instructions:
            before, after = edit_prompt_ids(tokenizer, instruction, drop)
            rows.append([*before, *[image_id] * n, *after])
            starts.append(len(before))
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    source = torch.zeros(ids.shape, dtype=torch.bool)
    for r, (row, start) in enumerate(zip(rows, starts, strict=True)):
        offset = ids.shape[1] - len(row) + start
        source[r, offset : offset + n] = True
    ids, mask, source = ids.to(device), mask.to(device), source.to(device)
    embeds = model.get_input_embeddings()(ids)
    codes = torch.cat([source_codes, source_codes]).to(device=device, dtype=torch.long)
    gen = model.prepare_embeddings_for_image_generation(codes.reshape(-1))
    embeds = embeds.masked_scatter(source[..., None], gen.to(embeds.dtype))
    return embeds, mask, source


@dataclass
class EditDraw:
    """B drawn edits: the images, their (B, N) int32 codes, the (B, N) int32 codes of their sources and the
    sources as the model saw them (centre-cropped to its image size: the judge's 'original')."""

    images: list[Image.Image]
    codes: np.ndarray
    source_codes: np.ndarray
    sources: list[Image.Image]


class JanusEditor:
    """Janus-Pro instruction edits through the project's image loop; an edit depends only on its source,
    instruction and seed (counter-based noise), never on its batch."""

    name = "janus"

    def __init__(
        self,
        cfg: JanusGenConfig,
        device: torch.device,
        dtype: torch.dtype,
        trust_remote_code: bool = False,
        loaded: tuple[JanusForConditionalGeneration, Any] | None = None,
    ):
        """Load cfg.model (the sampling settings are synth.janus's), or wrap a built (model, tokenizer) pair."""
        self.gen = JanusGenerator(cfg, device, dtype, trust_remote_code, loaded)
        self.cfg = cfg
        self.model_id = cfg.model
        self.device = device
        self.model, self.tokenizer = self.gen.model, self.gen.tokenizer
        self.vq = VQEncoder.from_module(self.model.model.vqmodel, self.model.config.vq_config, model_id=cfg.model)
        self.image_size = self.vq.image_size
        self.num_image_tokens = self.vq.num_tokens

    def prepare_sources(self, sources: list[Image.Image]) -> list[Image.Image]:
        """Each source centre-cropped to the model's image size, as the VQ model and the judge see it; a source
        repeated in the list (an edit's N candidates) is cropped once and shared."""
        crops = {id(s): center_crop(s, self.image_size) for s in {id(s): s for s in sources}.values()}
        return [crops[id(s)] for s in sources]

    def encode_sources(self, sources: list[Image.Image]) -> np.ndarray:
        """B prepared sources -> (B, N) int32 VQ codes; a source repeated in the list is encoded once."""
        unique = {id(s): s for s in sources}
        codes = dict(zip(unique, self.vq.encode(list(unique.values())), strict=True))
        return np.stack([codes[id(s)] for s in sources]) if sources else np.zeros((0, self.num_image_tokens), np.int32)

    @torch.inference_mode()
    def generate_tokens(
        self, source_codes, instructions: list[str], seeds: list[int], want_logprobs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N) source codes, B instructions and seeds -> (B, N) edited image tokens (and (B, N) logprobs)."""
        codes = torch.as_tensor(np.asarray(source_codes), dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.num_image_tokens:
            raise ValueError(f"source codes must have shape (B, {self.num_image_tokens}), got {tuple(codes.shape)}")
        if len(seeds) != len(instructions):
            raise ValueError(f"got {len(instructions)} instructions and {len(seeds)} seeds")
        embeds, mask, _ = edit_cfg_inputs(self.model, self.tokenizer, codes, instructions)
        loop = self.gen.loop or partial(reference_image_loop, self.model)
        seeds_t = torch.tensor(seeds, dtype=torch.int64)
        return loop(embeds, mask, seeds_t, self.gen.sampler, self.num_image_tokens, want_logprobs)

    def draw(self, sources: list[Image.Image], instructions: list[str], seeds: list[int]) -> EditDraw:
        """One edit per (source, instruction, seed): N candidates of one edit are its source N times."""
        if not len(sources) == len(instructions) == len(seeds):
            raise ValueError(f"got {len(sources)} sources, {len(instructions)} instructions and {len(seeds)} seeds")
        prepared = self.prepare_sources(sources)
        source_codes = self.encode_sources(prepared)
        tokens, _ = self.generate_tokens(source_codes, instructions, seeds)
        pixels = decode_image_tokens(self.model, tokens).cpu().numpy()
        images = [Image.fromarray(a) for a in pixels]
        return EditDraw(images, tokens.cpu().numpy().astype(np.int32), source_codes, prepared)

    def generate(self, sources: list[Image.Image], instructions: list[str], seeds: list[int]) -> list[Image.Image]:
        """One RGB edit per (source, instruction, seed) at the model's native size (the editors' protocol)."""
        return self.draw(sources, instructions, seeds).images

    def params(self) -> dict[str, Any]:
        """Generation params recorded in the edit manifest."""
        return {**self.gen.params(), "num_image_tokens": self.num_image_tokens, "source_fit": "center_crop"}
