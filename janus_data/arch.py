"""Real Janus-Pro architectures (1B, 7B) as configs, for random-weight benchmarks: no download."""

from __future__ import annotations

from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

# Shapes of deepseek-community/Janus-Pro-{1B,7B}: DeepSeek-LLM text towers, SigLIP-L/16 at
# 384 px (576 image tokens), the 16384-code VQ tokenizer with 8-dim codes.
_TEXT = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30, "num_attention_heads": 32},
}


def janus_pro_config(size: str = "7b", vocab_size: int = 102400, image_token_id: int = 100581) -> JanusConfig:
    """A JanusConfig with Janus-Pro-{size}'s real dimensions."""
    if size not in _TEXT:
        raise ValueError(f"size must be one of {sorted(_TEXT)}")
    t = _TEXT[size]
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
