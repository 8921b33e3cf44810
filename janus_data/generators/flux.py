"""FLUX as an image generator: diffusers' FluxPipeline, one CPU generator per image.

Speed settings (`synth.flux.*`, all off by default; docs/kernels.md, "FLUX"), each from diffusers
or PyTorch:

- `fuse_qkv`: every attention's q, k and v projections as one GEMM (diffusers'
  `fuse_qkv_projections`). The same weights, concatenated: only float rounding changes.
- `compile`: `torch.compile` of the transformer's repeated blocks (regional compilation, so the
  57 blocks of FLUX.1-dev compile as two); the first call at a new size or batch pays the compile.
- `channels_last_vae`: the VAE's convolutions in channels-last layout (cuDNN's fast path).
- `sdpa_backend`: force one of PyTorch's attention kernels ('auto' lets PyTorch choose).

Images of one call are grouped by size, so a call with mixed sizes makes one pipeline call per
size. The FLUX.1-schnell preset (4 steps, no guidance) is a cost choice: docs/kernels.md.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from diffusers import FluxPipeline
from PIL import Image

from janus_data.config import FluxGenConfig
from janus_data.config_stages import DiffusersSpeedConfig
from janus_data.models import loading, resolve_model
from janus_data.progress import quiet_diffusers

SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


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


def load_sped_up(load: Callable[[], Any], cfg: DiffusersSpeedConfig) -> Any:
    """Refuse a bad `cfg.sdpa_backend` name before loading, then `load()` the pipeline with cfg's speed settings."""
    sdpa_context(cfg.sdpa_backend)  # refuse a bad name now, not at the first batch
    return speed_up(load(), fuse_qkv=cfg.fuse_qkv, compile=cfg.compile, channels_last_vae=cfg.channels_last_vae)


def speed_up(
    pipe: FluxPipeline, *, fuse_qkv: bool = False, compile: bool = False, channels_last_vae: bool = False
) -> FluxPipeline:
    """Apply the speed settings to a loaded pipeline, in place; returns it."""
    if fuse_qkv:
        pipe.transformer.fuse_qkv_projections()
    if channels_last_vae:
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        if getattr(pipe.transformer, "_repeated_blocks", None) and hasattr(pipe.transformer, "compile_repeated_blocks"):
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
        else:
            pipe.transformer.compile(fullgraph=True)
    return pipe


def sdpa_context(backend: str):
    """A context that pins PyTorch's attention kernel ('auto': no pin)."""
    if backend not in SDPA_BACKENDS:
        raise ValueError(f"sdpa_backend must be one of {', '.join(SDPA_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
    return sdpa_kernel(getattr(SDPBackend, names[backend]))


class FluxGenerator:
    """FLUX text-to-image; each image depends only on its prompt and seed, not its batch."""

    name = "flux"

    def __init__(self, cfg: FluxGenConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.cfg = cfg
        self.model_id = cfg.model
        self.device = device
        self.sdpa_backend = cfg.sdpa_backend
        self.pipe = load_sped_up(lambda: load_flux(cfg.model, device, dtype), cfg)

    def generate(
        self, prompts: list[str], seeds: list[int], sizes: list[tuple[int, int]] | None = None
    ) -> list[Image.Image]:
        """One RGB image per prompt, at cfg.width x cfg.height or at its (height, width) in `sizes`."""
        if len(prompts) != len(seeds) or (sizes is not None and len(sizes) != len(prompts)):
            raise ValueError(f"got {len(prompts)} prompts, {len(seeds)} seeds and {len(sizes or seeds)} sizes")
        sizes = sizes or [(self.cfg.height, self.cfg.width)] * len(prompts)
        images: list[Image.Image | None] = [None] * len(prompts)
        for size in dict.fromkeys(sizes):  # one pipeline call per size, in first-seen order
            idx = [i for i, s in enumerate(sizes) if s == size]
            for i, image in zip(
                idx, self._draw([prompts[i] for i in idx], [seeds[i] for i in idx], *size), strict=True
            ):
                images[i] = image
        return images

    def _draw(self, prompts: list[str], seeds: list[int], height: int, width: int) -> list[Image.Image]:
        # A list of generators makes FluxPipeline draw each image's initial noise from its own
        # generator (diffusers' randn_tensor). CPU generators give the same noise on any device.
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        cfg = self.cfg
        with torch.inference_mode(), sdpa_context(self.sdpa_backend):
            out = self.pipe(
                prompt=list(prompts),
                height=height,
                width=width,
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
