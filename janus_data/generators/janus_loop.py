"""The project's Janus-Pro image generation loop (reference semantics of PAPER.md).

Each image is two rows: conditional, and unconditional with every prompt token but BOS
and <begin_of_image> replaced by pad. Per step the generation head gives both rows'
logits, the sampler mixes them (CFG) and draws one token, and that token's generation
embedding feeds both rows. The sampling step is one function (`get_sampler`), which the
fused kernel of issue #6 replaces on CUDA.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, JanusForConditionalGeneration

from janus_data.generators.sampling import SamplerParams, get_sampler


def unconditional_ids(input_ids: torch.Tensor, bos_id: int, boi_id: int, pad_id: int) -> torch.Tensor:
    """Pad every token except BOS and <begin_of_image>: (B, L) -> (B, L)."""
    keep = (input_ids == bos_id) | (input_ids == boi_id)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: (B, L) 0/1 mask -> (B, L) positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def generate_image_tokens(
    model: JanusForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    seeds: torch.Tensor,
    params: SamplerParams,
    num_image_tokens: int,
    *,
    bos_id: int,
    boi_id: int,
    pad_id: int,
    want_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generate image tokens for left-padded prompts ending in <begin_of_image>.

    (B, L) ids and mask, (B,) int64 seeds -> (B, N) tokens and optionally (B, N) logprobs.
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    sampler = get_sampler(device)
    ids = torch.cat([input_ids, unconditional_ids(input_ids, bos_id, boi_id, pad_id)])
    mask = torch.cat([attention_mask, attention_mask]).long()
    positions = position_ids_from_mask(mask)
    lm = model.model.language_model
    cache = DynamicCache(config=lm.config)
    embeds = model.get_input_embeddings()(ids)
    tokens = torch.empty(batch, num_image_tokens, dtype=torch.long, device=device)
    logprobs = torch.empty(batch, num_image_tokens, dtype=torch.float32, device=device) if want_logprobs else None
    seeds = seeds.to(device)
    ones = torch.ones(2 * batch, 1, dtype=mask.dtype, device=device)
    for step in range(num_image_tokens):
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        logits = model.model.generation_head(out.last_hidden_state[:, -1])
        next_tok, logp = sampler(logits[:batch], logits[batch:], seeds, step, params, want_logprobs)
        tokens[:, step] = next_tok
        if logprobs is not None:
            logprobs[:, step] = logp
        if step + 1 == num_image_tokens:
            break
        embeds = model.prepare_embeddings_for_image_generation(torch.cat([next_tok, next_tok])[:, None])
        mask = torch.cat([mask, ones], dim=1)
        positions = positions[:, -1:] + 1
    return tokens, logprobs


@torch.inference_mode()
def decode_image_tokens(model: JanusForConditionalGeneration, tokens: torch.Tensor) -> torch.Tensor:
    """VQ-decode image tokens to uint8 pixels as the reference code does: (B, N) -> (B, H, W, 3)."""
    pixels = model.decode_image_tokens(tokens).float()
    return ((pixels + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)
