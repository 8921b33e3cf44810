"""FLUX as an image generator: diffusers' FluxPipeline, one CPU generator per image."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from diffusers import FluxPipeline
from PIL import Image

from janus_data.config import FluxGenConfig
from janus_data.models import loading, resolve_model
from janus_data.progress import quiet_diffusers


def load_flux(ref: str, device: torch.device, dtype: torch.dtype) -> FluxPipeline:
    """Load a diffusers-format FLUX checkpoint onto `device`, or raise ModelError."""
    path = resolve_model(ref)
    quiet_diffusers()
    hint = "use a diffusers-format checkpoint such as black-forest-labs/FLUX.1-dev (safetensors)"
    with loading("FLUX", ref, hint), warnings.catch_warnings():
        # diffusers >= 0.36 prefers `dtype=`; `torch_dtype=` works on every supported version.
        warnings.filterwarnings("ignore", message=".*use `dtype` instead.*", category=FutureWarning)
        pipe = FluxPipeline.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FluxGenerator:
    """FLUX text-to-image; each image depends only on its prompt and seed, not its batch."""

    name = "flux"

    def __init__(self, cfg: FluxGenConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.cfg = cfg
        self.model_id = cfg.model
        self.device = device
        self.pipe = load_flux(cfg.model, device, dtype)

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        """One RGB image per prompt at cfg.width x cfg.height."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            return []
        # A list of generators makes FluxPipeline draw each image's initial noise from its own
        # generator (diffusers' randn_tensor). CPU generators give the same noise on any device.
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        cfg = self.cfg
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(prompts),
                height=cfg.height,
                width=cfg.width,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                max_sequence_length=cfg.max_sequence_length,
                generator=generators,
                output_type="pil",
            )
        return [im if im.mode == "RGB" else im.convert("RGB") for im in out.images]

    def params(self) -> dict[str, Any]:
        """Generation params recorded in the image manifest."""
        return {
            "num_inference_steps": self.cfg.num_inference_steps,
            "guidance_scale": self.cfg.guidance_scale,
            "height": self.cfg.height,
            "width": self.cfg.width,
            "max_sequence_length": self.cfg.max_sequence_length,
        }
