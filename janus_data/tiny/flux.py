"""A tiny FLUX.1 built from diffusers' and transformers' real component classes.

Same layout as black-forest-labs/FLUX.1-dev (model_index.json with scheduler, vae, text_encoder +
CLIPTokenizer, text_encoder_2 + T5Tokenizer, transformer), shrunk so 64x64 px images take well
under a second on CPU. The VAE downsamples twice less than the real one (vae_scale_factor 2
instead of 8), so height and width need only be multiples of 4 here.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5Tokenizer

from janus_data.tiny.clip_tokenizer import CLIP_MAX_LENGTH, printable_corpus, train_clip_tokenizer

# T5's special tokens, spelled and ordered as in google/t5-v1_1-xxl (FLUX's `tokenizer_2`).
T5_PAD = "<pad>"
T5_EOS = "</s>"
T5_UNK = "<unk>"

TEXT_DIM = 32  # hidden size of both tiny text encoders
LATENT_CHANNELS = 4  # real FLUX VAE: 16


def _train_t5_tokenizer() -> T5Tokenizer:
    """A Unigram model with T5's <pad>=0, </s>=1, <unk>=2, wrapped in transformers' T5Tokenizer.

    The pieces are the corpus words (as word starts, '▁word', and as continuations) plus every
    printable ASCII character, scored by log relative frequency: a proper unigram LM, built
    directly because tokenizers' UnigramTrainer shrinks a corpus this small to mostly characters.
    """
    counts: Counter[str] = Counter()
    for line in printable_corpus():
        for piece in re.findall(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]", line):
            counts[f"▁{piece}"] += 1
            counts[piece] += 1
    counts.update(["▁", *string.printable.strip()])
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), *((p, math.log(n / total)) for p, n in ranked)]
    # No <extra_id_N> sentinels: FLUX never uses them and they only widen the embedding.
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def build_tiny_flux(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny random FLUX.1 pipeline."""
    out_dir = Path(out_dir)
    tokenizer = train_clip_tokenizer()
    tokenizer_2 = _train_t5_tokenizer()

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,  # latents are packed in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=True,  # FLUX.1-dev is guidance-distilled
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )

    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=TEXT_DIM,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()

    torch.manual_seed(seed + 2)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's encoder
            is_encoder_decoder=False,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    ).eval()

    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),  # two blocks: vae_scale_factor 2
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.3611,  # FLUX.1's VAE latent statistics
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )

    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
