"""FLUX.1 Kontext as an image editor: diffusers' FluxKontextPipeline, one CPU generator per edit.

Kontext encodes the source image with the VAE (its latent mode: no randomness) and feeds those
latents to the transformer beside the noisy latents of the edit, so the only random numbers
of an edit are its initial noise, drawn from its own `torch.Generator(seed)`: an edit depends
on its source, instruction and seed, not on its batch (float rounding aside, docs/synth.md).

Sizes. The pipeline conditions every image of a call at the size of the first and rescales
the output to `max_area`, so this editor decides each edit's size itself and makes one
pipeline call per size:
- `auto_resize` (the pipeline's default): the Kontext training resolution nearest the source's
  aspect ratio (diffusers' `PREFERRED_KONTEXT_RESOLUTIONS`, 1024 x 1024 for a square);
- otherwise the source's aspect ratio at `max_area` pixels;
both rounded down to the latent packing multiple (16 px for FLUX, 4 for the tiny one). The
source is resized there (the pipeline's own resize, Lanczos) and the edit is drawn at the same
size, so it keeps the source's framing; synth resizes it to `image_size` when stored.
The settings are read by name from `cfg` (docs/edit.md): model, num_inference_steps,
guidance_scale, max_sequence_length, max_area, auto_resize, and FLUX's speed settings.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from janus_data.config import KontextGenConfig
from janus_data.generators.flux import load_sped_up, sdpa_context
from janus_data.models import loading, resolve_model
from janus_data.progress import quiet_diffusers

DEFAULT_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"


def load_kontext(ref: str, device: torch.device, dtype: torch.dtype) -> FluxKontextPipeline:
    """Load a diffusers-format FLUX.1 Kontext checkpoint onto `device`, or raise ModelError."""
    path = resolve_model(ref)
    quiet_diffusers()
    hint = f"use a diffusers-format Kontext checkpoint such as {DEFAULT_MODEL} (safetensors)"
    with loading("FLUX.1 Kontext", ref, hint), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*use `dtype` instead.*", category=FutureWarning)
        pipe = FluxKontextPipeline.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edit_size(source: tuple[int, int], *, auto_resize: bool, max_area: int, multiple: int) -> tuple[int, int]:
    """(width, height) of a source -> the (height, width) its edit is drawn at (module docstring)."""
    width, height = source
    if auto_resize:
        _, width, height = min((abs(width / height - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    else:
        scale = math.sqrt(max_area / (width * height))
        width, height = round(width * scale), round(height * scale)
    return max(height // multiple * multiple, multiple), max(width // multiple * multiple, multiple)


class KontextEditor:
    """FLUX.1 Kontext instruction edits: one CPU generator per edit, one pipeline call per size."""

    name = "kontext"

    def __init__(self, cfg: KontextGenConfig, device: torch.device, dtype: torch.dtype) -> None:
        """Load cfg.model with its speed settings (`edit.kontext`)."""
        self.cfg = cfg
        self.model_id = cfg.model
        self.device = device
        self.sdpa_backend = cfg.sdpa_backend
        self.pipe = load_sped_up(lambda: load_kontext(cfg.model, device, dtype), cfg)
        self.multiple = self.pipe.vae_scale_factor * 2  # VAE downsampling x 2x2 latent packing

    def size_for(self, source: Image.Image) -> tuple[int, int]:
        """The (height, width) the edit of `source` is drawn at."""
        return edit_size(
            source.size, auto_resize=self.cfg.auto_resize, max_area=self.cfg.max_area, multiple=self.multiple
        )

    def generate(self, sources: list[Image.Image], instructions: list[str], seeds: list[int]) -> list[Image.Image]:
        """One RGB edit per (source, instruction, seed), at `size_for(source)`."""
        if not len(sources) == len(instructions) == len(seeds):
            raise ValueError(f"got {len(sources)} sources, {len(instructions)} instructions and {len(seeds)} seeds")
        sizes = [self.size_for(s) for s in sources]
        images: list[Image.Image | None] = [None] * len(sources)
        for size in dict.fromkeys(sizes):  # one pipeline call per size, in first-seen order
            idx = [i for i, s in enumerate(sizes) if s == size]
            pixels = self.draw_pixels(
                [sources[i] for i in idx], [instructions[i] for i in idx], [seeds[i] for i in idx], *size
            )
            for i, image in zip(idx, self.pipe.numpy_to_pil(pixels), strict=True):
                images[i] = image
        return images

    def draw_pixels(
        self, sources: list[Image.Image], instructions: list[str], seeds: list[int], height: int, width: int
    ) -> np.ndarray:
        """Edits of one size before rounding: (B, height, width, 3) float32 in [0, 1] (what `generate` rounds
        to uint8, as the pipeline's own 'pil' output does)."""
        # One CPU generator per edit: the pipeline draws each edit's initial noise from its own
        # generator (diffusers' randn_tensor with a list), the same on any device.
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        resized = [self.pipe.image_processor.resize(s.convert("RGB"), height, width) for s in sources]
        cfg = self.cfg
        with torch.inference_mode(), sdpa_context(self.sdpa_backend):
            out = self.pipe(
                image=resized,
                prompt=list(instructions),
                height=height,
                width=width,
                max_area=height * width,  # keeps (height, width): the pipeline rescales to this area
                _auto_resize=False,  # the size is chosen above, per source, not from the batch's first image
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                max_sequence_length=cfg.max_sequence_length,
                generator=generators,
                output_type="np",
            )
        return out.images

    def params(self) -> dict[str, Any]:
        """Generation params recorded in the edit manifest."""
        cfg = self.cfg
        return {
            "num_inference_steps": cfg.num_inference_steps,
            "guidance_scale": cfg.guidance_scale,
            "max_sequence_length": cfg.max_sequence_length,
            "max_area": cfg.max_area,
            "auto_resize": cfg.auto_resize,
        }
