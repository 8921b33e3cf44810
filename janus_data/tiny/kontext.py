"""A tiny FLUX.1 Kontext: the tiny FLUX.1's components under diffusers' FluxKontextPipeline.

FluxKontextPipeline has exactly FluxPipeline's components (scheduler, vae, text_encoder +
CLIPTokenizer, text_encoder_2 + T5Tokenizer, transformer); Kontext feeds the source image's
VAE latents to the same transformer as extra sequence positions, so no component changes
shape. The tiny FLUX is built with the same seed, loaded back and saved again under the
Kontext pipeline class, so `tiny:kontext` loads with `FluxKontextPipeline.from_pretrained`
like black-forest-labs/FLUX.1-Kontext-dev.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffusers import FluxKontextPipeline, FluxPipeline

from janus_data.tiny.flux import build_tiny_flux


def build_tiny_kontext(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny random FLUX.1 Kontext pipeline."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tiny-flux-") as tmp:
        flux = FluxPipeline.from_pretrained(build_tiny_flux(Path(tmp) / "flux", seed=seed), use_safetensors=True)
        FluxKontextPipeline(**flux.components).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
