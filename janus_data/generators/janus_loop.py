"""The project's Janus-Pro image generation loop (docs/paper.md, 'Classifier-free guidance and sampling').

Each image is two rows: conditional, and unconditional with every prompt token but BOS
and <begin_of_image> replaced by pad. Per step the generation head gives both rows'
logits, the sampler mixes them (CFG) and draws one token, and that token's generation
embedding feeds both rows. The sampling step is one function (`get_sampler`): the fused
kernel on CUDA, the torch reference elsewhere.

This is the plain loop (transformers' DynamicCache, one model call per step): the oracle that
`fast_loop.ImageTokenLoop`, the loop synth and GRPO run, must match token for token.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, JanusForConditionalGeneration

from janus_data.generators.sampling import SamplerParams, get_sampler
from janus_data.models import cache_keyword, cache_not_written


def unconditional_ids(input_ids: torch.Tensor, bos_id: int, boi_id: int, pad_id: int) -> torch.Tensor:
    """Pad every token except BOS and <begin_of_image>: (B, L) -> (B, L)."""
    keep = (input_ids == bos_id) | (input_ids == boi_id)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: (B, L) 0/1 mask -> (B, L) positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def cfg_inputs(
    model: JanusForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    bos_id: int,
    boi_id: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CFG pair of rows as embeddings: (B, L) ids and mask -> (2B, L, D) embeds, (2B, L) mask.

    Rows 0..B-1 are conditional, rows B..2B-1 the unconditional twins (prompt padded, BOS and
    <begin_of_image> kept). Both loops take this form, so callers with other contexts (the GRPO
    regeneration turn, where image 1 enters through the generation path) build their own.
    """
    ids = torch.cat([input_ids, unconditional_ids(input_ids, bos_id, boi_id, pad_id)])
    return model.get_input_embeddings()(ids), torch.cat([attention_mask, attention_mask]).long()


@torch.inference_mode()
def reference_image_loop(
    model: JanusForConditionalGeneration,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    seeds: torch.Tensor,
    params: SamplerParams,
    num_image_tokens: int,
    want_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw image tokens for CFG row pairs with a DynamicCache: the oracle of the fast loop.

    (2B, L, D) embeds and (2B, L) left-padded mask from `cfg_inputs`, (B,) int64 seeds ->
    (B, N) tokens and optionally (B, N) logprobs.
    """
    batch = embeds.shape[0] // 2
    device = embeds.device
    sampler = get_sampler(device)
    mask = mask.long()
    positions = position_ids_from_mask(mask)
    lm = model.model.language_model
    cache = DynamicCache(config=lm.config)
    cache_kw = cache_keyword(lm)
    tokens = torch.empty(batch, num_image_tokens, dtype=torch.long, device=device)
    logprobs = torch.empty(batch, num_image_tokens, dtype=torch.float32, device=device) if want_logprobs else None
    seeds = seeds.to(device)
    ones = torch.ones(2 * batch, 1, dtype=mask.dtype, device=device)
    for step in range(num_image_tokens):
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache})
        if step == 0 and cache.get_seq_length() == 0:
            raise cache_not_written("the language model", cache_kw)
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
