"""Real architectures as configs, for random-weight benchmarks with no download: Janus-Pro and InternVL3."""

from __future__ import annotations

from transformers import (
    InternVLConfig,
    InternVLVisionConfig,
    JanusConfig,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
    Qwen2Config,
)

# Shapes of deepseek-community/Janus-Pro-{1B,7B}: DeepSeek-LLM text towers, SigLIP-L/16 at
# 384 px (576 image tokens), the 16384-code VQ tokenizer with 8-dim codes.
_TEXT = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30, "num_attention_heads": 32},
}


def janus_pro_config(
    size: str = "7b", vocab_size: int = 102400, image_token_id: int = 100581, num_layers: int | None = None
) -> JanusConfig:
    """A JanusConfig with Janus-Pro-{size}'s real dimensions (`num_layers`: fewer decoder layers, for smoke tests)."""
    if size not in _TEXT:
        raise ValueError(f"size must be one of {sorted(_TEXT)}")
    t = dict(_TEXT[size])
    if num_layers is not None:
        t["num_hidden_layers"] = num_layers
    text = LlamaConfig(
        vocab_size=vocab_size,
        num_key_value_heads=t["num_attention_heads"],
        max_position_embeddings=16384,
        rope_theta=10000.0,
        **t,
    )
    vision = JanusVisionConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=384,
        patch_size=16,
        projection_dim=t["hidden_size"],
        num_image_tokens=576,
    )
    vq = JanusVQVAEConfig(projection_dim=t["hidden_size"], image_token_embed_dim=t["hidden_size"])
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=image_token_id)


# Qwen2.5 text towers of OpenGVLab/InternVL3-{1B,2B,8B,14B}-hf; all four see through InternViT-300M.
_INTERNVL_TEXT = {
    "1b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
    "2b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
    },
    "8b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
    },
    "14b": {
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
    },
}


def internvl3_config(size: str = "8b", vocab_size: int = 151674, image_token_id: int = 151667) -> InternVLConfig:
    """An InternVLConfig with InternVL3-{size}-hf's real dimensions (448 px tiles, 256 tokens each)."""
    if size not in _INTERNVL_TEXT:
        raise ValueError(f"size must be one of {sorted(_INTERNVL_TEXT)}")
    text = Qwen2Config(
        vocab_size=vocab_size, max_position_embeddings=32768, rope_theta=1000000.0, **_INTERNVL_TEXT[size]
    )
    vision = InternVLVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=[448, 448],
        patch_size=[14, 14],
    )
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token_id,
        image_seq_length=256,
        downsample_ratio=0.5,
    )


def random_janus_pro(size: str, device, dtype, num_layers: int | None = None):
    """(model, tokenizer): Janus-Pro-{size}'s architecture with random weights, the tiny tokenizer
    (it carries the real special tokens), built directly on `device` in `dtype`."""
    import torch
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    from janus_data.janus_format import BOI, IMAGE_TOKEN
    from janus_data.models import tiny_model_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path("janus"))
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    cfg = janus_pro_config(size, image_token_id=image_token, num_layers=num_layers)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = JanusForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(previous)
    gen = model.generation_config
    gen.bos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    gen.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)}
    return model, tokenizer


def random_internvl(size: str, device, dtype):
    """(model, tokenizer, image processor): InternVL3-{size}'s architecture with random weights, the
    tiny judge's tokenizer and processor, built directly on `device` in `dtype`."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

    from janus_data.models import tiny_model_path

    path = tiny_model_path("internvl")
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path)
    cfg = internvl3_config(size, image_token_id=tokenizer.context_image_token_id)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = InternVLForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer, processor
