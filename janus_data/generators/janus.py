"""Janus-Pro as an image generator: load a transformers checkpoint, format prompts, decode."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, JanusForConditionalGeneration

from janus_data.config import JanusGenConfig
from janus_data.errors import ModelError
from janus_data.generators.fast_loop import loop_from_config
from janus_data.generators.janus_loop import cfg_inputs, decode_image_tokens, reference_image_loop
from janus_data.generators.sampling import SamplerParams
from janus_data.janus_format import BOI
from janus_data.models import loading, resolve_model
from janus_data.padding import left_pad


def generation_prompt(prompt: str) -> str:
    """The DeepSeek chat turn Janus-Pro draws from (empty system prompt), before <begin_of_image>."""
    return f"<|User|>: {prompt}\n\n<|Assistant|>:"


def load_janus(ref: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """Load a transformers-format Janus-Pro checkpoint and its tokenizer, or raise ModelError."""
    path = resolve_model(ref)
    hint = "use a transformers-format checkpoint such as deepseek-community/Janus-Pro-7B (safetensors)"
    with loading("Janus-Pro", ref, hint):
        model = JanusForConditionalGeneration.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer


class JanusGenerator:
    """Janus-Pro text-to-image through the project's generation loop."""

    name = "janus"

    def __init__(
        self,
        cfg: JanusGenConfig,
        device: torch.device,
        dtype: torch.dtype,
        trust_remote_code: bool = False,
        loaded: tuple[JanusForConditionalGeneration, Any] | None = None,
    ):
        """Load cfg.model, or wrap an already built (model, tokenizer) pair given as `loaded`."""
        self.cfg = cfg
        self.model_id = cfg.model
        self.device = device
        if loaded is None:
            loaded = load_janus(cfg.model, device, dtype, trust_remote_code)
        self.model, self.tokenizer = loaded
        vision = self.model.config.vision_config
        self.num_image_tokens = vision.num_image_tokens
        self.image_size = vision.image_size
        tok = self.tokenizer
        self.bos_id = tok.bos_token_id
        self.pad_id = tok.pad_token_id
        self.boi_id = tok.convert_tokens_to_ids(BOI)
        if None in (self.bos_id, self.pad_id) or self.boi_id == tok.unk_token_id:
            raise ModelError(
                f"tokenizer of '{cfg.model}' lacks BOS, pad or {BOI}", hint="use the checkpoint's tokenizer"
            )
        self.sampler = SamplerParams(cfg.cfg_weight, cfg.temperature, cfg.top_k, cfg.top_p)
        self.loop = loop_from_config(self.model, cfg) if cfg.loop == "fast" else None

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids ending in <begin_of_image>: B prompts -> (B, L) ids, (B, L) mask."""
        # split_special_tokens: a prompt that spells "<begin_of_image>" stays text, not a control token.
        rows = [
            [*self.tokenizer(generation_prompt(p), split_special_tokens=True).input_ids, self.boi_id] for p in prompts
        ]
        ids, mask = left_pad(rows, self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def generate_tokens(self, prompts: list[str], seeds: list[int], want_logprobs: bool = False):
        """B prompts and seeds -> (B, N) image tokens (and (B, N) logprobs on request)."""
        ids, mask = self.encode_prompts(prompts)
        embeds, mask = cfg_inputs(self.model, ids, mask, bos_id=self.bos_id, boi_id=self.boi_id, pad_id=self.pad_id)
        seeds_t = torch.tensor(seeds, dtype=torch.int64)
        loop = self.loop or partial(reference_image_loop, self.model)
        return loop(embeds, mask, seeds_t, self.sampler, self.num_image_tokens, want_logprobs)

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, N) image tokens -> (B, H, W, 3) uint8."""
        return decode_image_tokens(self.model, tokens).cpu().numpy()

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        """One RGB image per prompt at the model's native size."""
        tokens, _ = self.generate_tokens(prompts, seeds)
        return [Image.fromarray(a) for a in self.decode(tokens)]

    def params(self) -> dict[str, Any]:
        """Generation params recorded in the image manifest."""
        return {
            "cfg_weight": self.cfg.cfg_weight,
            "temperature": self.cfg.temperature,
            "top_k": self.cfg.top_k,
            "top_p": self.cfg.top_p,
            "num_image_tokens": self.num_image_tokens,
        }
