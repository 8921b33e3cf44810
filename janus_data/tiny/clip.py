"""A tiny CLIP (GenEval's colour classifier) built from CLIPConfig: text and vision towers with projections.

Same layout as openai/clip-vit-large-patch14 as transformers loads it (CLIPModel, a CLIPTokenizer
with <|startoftext|> / <|endoftext|>, a CLIPImageProcessor config with OpenAI's mean and std and a
shortest-edge resize plus centre crop), shrunk to 32 px images. The tokenizer is the one the tiny
FLUX's CLIP text encoder uses, trained offline (`janus_data.tiny.flux`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from janus_data.tiny.clip_tokenizer import CLIP_MAX_LENGTH, train_clip_tokenizer

IMAGE_SIZE = 32
PATCH_SIZE = 8
# OpenAI CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN / STD).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny random CLIP with its tokenizer and processor."""
    out_dir = Path(out_dir)
    tokenizer = train_clip_tokenizer()
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": CLIP_MAX_LENGTH,
            **special,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    ).save_pretrained(out_dir)
    return out_dir
