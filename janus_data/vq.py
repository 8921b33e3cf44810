"""Janus-Pro's VQ tokenizer alone: images <-> the generation path's VQ codes.

`janus data filter` stores each target and regeneration-context image's VQ codes, which
the trainer embeds through gen_embed -> gen_aligner. Only the VQ model is loaded: its
tensors (under `model.vqmodel.`) are read one by one from the checkpoint's safetensors
file(s), so a 7B checkpoint costs its VQ (tens of millions of parameters), not its LLM.

Pixel conventions (as Janus-Pro and transformers' JanusImageProcessor):
- in: RGB, longest side resized to `image_size` (PIL bicubic, each side at least 14 px),
  padded to a centred square with gray (127, 127, 127), then x / 255 scaled to [-1, 1]
  (mean 0.5, std 0.5, as Janus-Pro's preprocessor_config). `fit="stretch"` resizes both
  sides to `image_size` instead (no padding).
- out: `decode_image_tokens`'s: ((x + 1) / 2 * 255) clamped and truncated to uint8.

Quantization: the released Janus VQ (deepseek-ai/Janus `VectorQuantizer`,
codebook_l2_norm=True) picks the code nearest by cosine: latent and codebook rows are
l2-normalized before the argmin, and decoding reads the normalized codebook. transformers'
`JanusVQVAE.encode` (5.24) skips both normalizations, so it picks other codes unless every
codebook row has the same norm; its decode does normalize. `l2_norm=True` (the default)
gives the reference Janus codes, `l2_norm=False` gives `vqmodel.encode`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from janus_data.errors import ModelError, one_line
from janus_data.models import loading, resolve_model

# Where JanusForConditionalGeneration keeps its VQ model; "vqmodel." for a saved JanusModel.
VQ_PREFIXES = ("model.vqmodel.", "vqmodel.")
# Janus-Pro's image_mean (0.5) * 255, truncated as JanusImageProcessor does.
PAD_COLOR = (127, 127, 127)
MIN_SIDE = 14  # JanusImageProcessor's min_size
FITS = ("pad", "stretch")
HINT = "use a transformers-format Janus-Pro checkpoint such as deepseek-community/Janus-Pro-7B (safetensors)"


class VQEncoder:
    """The VQ model of a Janus-Pro checkpoint: PIL images <-> (B, grid * grid) int32 codes."""

    def __init__(
        self,
        model_ref: str,
        device: torch.device,
        dtype: torch.dtype,
        trust_remote_code: bool = False,
        *,
        l2_norm: bool = True,
        fit: str = "pad",
    ):
        """Load only the VQ tensors of checkpoint `model_ref`, or raise ModelError."""
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        self.trust_remote_code = trust_remote_code  # unused: Janus is a native transformers model
        path = resolve_model(model_ref)
        with loading("Janus-Pro VQ", model_ref, HINT):
            vq_config = _load_config(path).vq_config
            vqmodel = _load_vqmodel(path, vq_config, model_ref).to(device=device, dtype=dtype).eval()
        self._attach(vqmodel, vq_config, model_ref, device, dtype, l2_norm, fit)

    @classmethod
    def from_module(
        cls, vqmodel, vq_config, *, l2_norm: bool = True, fit: str = "pad", model_id: str = "module"
    ) -> VQEncoder:
        """An encoder on an already loaded JanusVQVAE (e.g. a policy's `model.model.vqmodel`), shared, not copied.

        Its device and dtype are the module's; GRPO's regeneration context uses it so that the
        rollout copy of the policy encodes with its own weights, and nothing is read from disk.
        """
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        param = next(vqmodel.parameters())
        encoder = cls.__new__(cls)
        encoder.trust_remote_code = False
        encoder._attach(vqmodel, vq_config, model_id, param.device, param.dtype, l2_norm, fit)
        return encoder

    def _attach(self, vqmodel, vq_config, model_id: str, device, dtype, l2_norm: bool, fit: str) -> None:
        """Hold `vqmodel` and the geometry of its vq_config."""
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.l2_norm = l2_norm
        self.fit = fit
        self.vqmodel = vqmodel
        self.grid = int(vq_config.num_patches)
        self.num_tokens = self.grid * self.grid
        self.image_size = self.grid * 2 ** (len(vq_config.channel_multiplier) - 1)
        self.codebook_size = int(vq_config.num_embeddings)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """B images -> (B, 3, image_size, image_size) float32 in [-1, 1]."""
        arrays = [np.asarray(self._fit(img), dtype=np.float32) for img in images]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return (pixels / 255.0 - 0.5) / 0.5

    def _fit(self, image: Image.Image) -> Image.Image:
        """One RGB image of image_size x image_size, as JanusImageProcessor shapes it."""
        image = image.convert("RGB")
        size = self.image_size
        if self.fit == "stretch":
            return image.resize((size, size), Image.Resampling.BICUBIC)
        width, height = image.size
        scale = size / max(width, height)
        new_w, new_h = max(round(width * scale), MIN_SIDE), max(round(height * scale), MIN_SIDE)
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        if new_w == new_h:
            return image
        side = max(new_w, new_h)
        canvas = Image.new("RGB", (side, side), PAD_COLOR)
        canvas.paste(image, ((side - new_w) // 2, (side - new_h) // 2))
        return canvas

    @torch.inference_mode()
    def encode(self, images: list[Image.Image], batch_size: int = 16) -> np.ndarray:
        """B images -> (B, grid * grid) int32 codes, row-major over the grid."""
        out = np.zeros((len(images), self.num_tokens), dtype=np.int32)
        for start in range(0, len(images), batch_size):
            pixels = self.preprocess(images[start : start + batch_size]).to(self.device, self.dtype)
            latents = self.vqmodel.quant_conv(self.vqmodel.encoder(pixels))
            codes = self._quantize(latents)
            out[start : start + len(codes)] = codes.view(len(codes), -1).cpu().numpy()
        return out

    def _quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h * w) nearest codebook indices, in float32."""
        z = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        codebook = self.vqmodel.quantize.embedding.weight.float()
        if self.l2_norm:
            z = torch.nn.functional.normalize(z, p=2, dim=-1)
            codebook = torch.nn.functional.normalize(codebook, p=2, dim=-1)
        # The distance as both Janus and transformers write it: |z|^2 + |e|^2 - 2 z.e
        dist = (z**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * torch.einsum("bd,dn->bn", z, codebook.T)
        return dist.argmin(1).view(latents.shape[0], -1)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray, batch_size: int = 16) -> list[Image.Image]:
        """(B, grid * grid) codes -> B RGB images of image_size, as decode_image_tokens draws them."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.num_tokens:
            raise ValueError(f"codes must have shape (B, {self.num_tokens}), got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        images = []
        for start in range(0, len(codes), batch_size):
            tokens = torch.from_numpy(codes[start : start + batch_size].astype(np.int64)).to(self.device)
            pixels = self.vqmodel.decode(tokens).permute(0, 2, 3, 1).float()
            arrays = ((pixels + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
            images.extend(Image.fromarray(a) for a in arrays)
        return images


def _load_config(path: str):
    """The checkpoint's JanusConfig, or ModelError when it is not a Janus checkpoint."""
    from transformers import JanusConfig

    config = JanusConfig.from_pretrained(path)
    if getattr(config, "model_type", None) != "janus" or getattr(config, "vq_config", None) is None:
        raise ValueError(f"config.json is not a Janus config (model_type {config.model_type!r})")
    return config


def _checkpoint_files(path: str) -> list[str]:
    """Local paths of the checkpoint's safetensors file(s): sharded (index) or single."""
    from transformers.utils import cached_file

    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index is not None:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        shards = sorted({f for k, f in weight_map.items() if k.startswith(VQ_PREFIXES)})
        if not shards:
            raise ValueError("no VQ model tensors (model.vqmodel.*) in model.safetensors.index.json")
        return [cached_file(path, shard) for shard in shards]
    single = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    if single is None:
        raise OSError("no model.safetensors or model.safetensors.index.json (safetensors checkpoints only)")
    return [single]


def _read_vq_tensors(files: list[str]) -> dict[str, torch.Tensor]:
    """The tensors under the VQ prefix (prefix stripped), reading only those from each file."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for prefix in VQ_PREFIXES:
        for file in files:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                    if key.startswith(prefix):
                        tensors[key.removeprefix(prefix)] = handle.get_tensor(key)
        if tensors:
            return tensors
    return tensors


def _load_vqmodel(path: str, vq_config, ref: str):
    """Build JanusVQVAE on the meta device and assign the checkpoint's tensors (strict)."""
    from transformers import JanusVQVAE

    tensors = _read_vq_tensors(_checkpoint_files(path))
    if not tensors:
        raise ValueError("no VQ model tensors (model.vqmodel.*) in the checkpoint")
    with torch.device("meta"):
        vqmodel = JanusVQVAE(vq_config)
    expected = set(vqmodel.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        parts = [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
        ]
        raise ModelError(
            f"cannot load Janus-Pro VQ checkpoint '{ref}': VQ tensors do not match its vq_config: "
            + ", ".join(p for p in parts if p),
            hint=HINT,
        )
    try:
        vqmodel.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:  # shape mismatch
        raise ModelError(f"cannot load Janus-Pro VQ checkpoint '{ref}': {one_line(err)}", hint=HINT) from None
    return vqmodel
