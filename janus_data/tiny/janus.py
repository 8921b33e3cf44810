"""A tiny Janus-Pro built from JanusConfig: 64x64 px images, a 4x4 grid of 16 image tokens."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
)

from janus_data.janus_format import BOI, BOS, EOI, EOS, IMAGE_TOKEN, PAD, SPECIAL_TOKENS
from janus_data.tiny.tokenizer import train_tokenizer

IMAGE_SIZE = 64
PATCH_SIZE = 16
CODEBOOK_SIZE = 512
# Wider than the usual 0.02 so random logits are far from uniform and greedy decoding varies.
INIT_STD = 0.2


def build_tiny_janus(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny random Janus-Pro."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(
        SPECIAL_TOKENS,
        vocab_size=512,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        image_token=IMAGE_TOKEN,
        boi_token=BOI,
        eoi_token=EOI,
    )
    hidden = 64
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
    )
    num_patches = IMAGE_SIZE // PATCH_SIZE
    vision = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=hidden,
        depth=2,
        num_image_tokens=num_patches * num_patches,
        initializer_range=INIT_STD,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=CODEBOOK_SIZE,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1, 1, 2, 2, 4],  # four downsamples: 64 px -> 4x4 codes, as 384 -> 24x24
        num_res_blocks=1,
        projection_dim=hidden,
        image_token_embed_dim=hidden,
        num_patches=num_patches,
        initializer_range=INIT_STD,
    )
    config = JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    _set_generation_defaults(model, tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    image_processor = JanusImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=num_patches**2)
    processor.save_pretrained(out_dir)
    return out_dir


def _set_generation_defaults(model: JanusForConditionalGeneration, tokenizer) -> None:
    """Record the ids Janus's image generation needs, as the released checkpoints do."""
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)}
    gen.guidance_scale = 5.0
    gen._from_model_config = False
