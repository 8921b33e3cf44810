"""The fast Janus-Pro image-token loop: static KV cache, no host syncs, optional CUDA graph.

Same semantics as `janus_loop.reference_image_loop` (its oracle): CFG row pairs, the sampled
token's generation embedding feeds both rows, counter-based seeds. What changes is how the
steps run:

- The key/value cache of every layer is one preallocated tensor, (2B rows, heads, slots,
  head_dim) per layer, written in place at a slot index that lives on the device.
- Attention reads a window of the first slots, rounded up to a multiple of `window_multiple`
  (32): a step pays for the context it has, not the whole buffer. The mask over that window
  (prompt padding, written slots) is kept on the device and updated in place each step.
- The step counter, the positions and the next token are device tensors updated in place, and
  the sampler (the fused kernel on CUDA) reads the step from the device. Nothing in the step
  loop reads a value back to the host.
- So on CUDA the whole decode step (embed -> layers -> head -> sample -> write) is captured
  as a CUDA graph, once per window (576 tokens: 18 graphs sharing one memory pool), and
  replayed. Buffers and graphs persist across calls of the same shape (prompt lengths are
  left-padded up to a multiple of `pad_multiple`), so a synth run captures once per batch shape.

- On CUDA the decoder layers run fused (`fused_decoder.FusedDecoder`: one QKV and one gate/up
  GEMM per layer from weights concatenated once, the additive mask built once per step, residual
  + RMSNorm together, optionally a regional `torch.compile`). Elsewhere, and for layers it does
  not reproduce, the loop drives transformers' own decoder layers, the way the model's forward
  does, minus the per-step mask construction and cache bookkeeping. Either way it uses the
  model's own rotary embedding, norm, generation head and embeddings.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
from transformers import JanusForConditionalGeneration

from janus_data.config import JanusGenConfig
from janus_data.generators.fused_decoder import FusedDecoder, additive_mask, unsupported_reason
from janus_data.generators.janus_loop import position_ids_from_mask
from janus_data.generators.sampling import Sampler, SamplerParams, get_sampler
from janus_data.models import cache_keyword, cache_not_written


class StaticKV:
    """Preallocated keys and values for every layer, written at a device-side slot.

    Duck-types the one method transformers' attention layers call (`update`). The slot
    advances once per model step (`advance`), after all layers have written. The buffers are
    allocated at the first write, in the dtype the layers produce (bf16 under autocast).
    """

    def __init__(self, num_layers: int, rows: int, kv_heads: int, slots: int, head_dim: int, device):
        self.shape = (num_layers, rows, kv_heads, slots, head_dim)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.slot = torch.zeros((), dtype=torch.long, device=device)
        self.window = slots  # attention reads slots [0, window): a host-side int, fixed per captured graph
        self._offsets = torch.arange(slots, device=device)
        self.written: set[int] = set()  # layers that called `update` (host-side: checked after the prefill)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write (rows, kv_heads, n, head_dim) at slots [slot, slot + n); return the layer's first `window` slots."""
        if self.keys is None or self.keys.dtype != key.dtype:
            self.keys = torch.zeros(self.shape, dtype=key.dtype, device=key.device)
            self.values = torch.zeros(self.shape, dtype=value.dtype, device=value.device)
        self.written.add(layer_idx)
        where = self._offsets[: key.shape[2]] + self.slot
        self.keys[layer_idx].index_copy_(2, where, key)
        self.values[layer_idx].index_copy_(2, where, value)
        return self.keys[layer_idx, :, :, : self.window], self.values[layer_idx, :, :, : self.window]

    def advance(self, n: int) -> None:
        self.slot.add_(n)


@dataclass
class _Buffers:
    """Everything one batch shape needs, allocated once and reused (graph replays read these)."""

    cache: StaticKV
    prompt_mask: torch.Tensor  # (2B, 1, 1, S) bool: the prompt's real tokens
    slot_ids: torch.Tensor  # (1, 1, 1, S) slot index, to unmask slots as they are written
    positions: torch.Tensor  # (2B, 1) next position per row
    seeds: torch.Tensor  # (B,)
    step: torch.Tensor  # () the step the next decode samples
    token: torch.Tensor  # (B,) the last sampled token
    tokens: torch.Tensor  # (B, N)
    logprobs: torch.Tensor  # (B, N)
    graphs: dict = field(default_factory=dict)  # (window, want_logprobs, params) -> CUDAGraph


def _pad_left(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad (R, L, D) embeds and (R, L) mask with masked zeros to `length` positions."""
    extra = length - embeds.shape[1]
    if extra == 0:
        return embeds, mask
    embeds = torch.cat([embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2]), embeds], dim=1)
    return embeds, torch.cat([mask.new_zeros(mask.shape[0], extra), mask], dim=1)


class ImageTokenLoop:
    """Draws Janus-Pro image tokens for batches of CFG row pairs; the one loop synth and GRPO use.

    `cuda_graph=None` captures the decode step on CUDA and runs it eagerly elsewhere. `fused=None`
    runs the fused decoder on CUDA where the layers allow it, transformers' layers elsewhere;
    `fused=True` insists (an error for layers it does not support). `compile=True` (needs the
    fused decoder) compiles its per-layer regions for the decode steps.

    The fused decoder keeps its own copy of the QKV and gate/up weights (Janus-Pro-7B in bf16:
    8.4 GB), refreshed in place at each call when a source weight changed.
    """

    def __init__(
        self,
        model: JanusForConditionalGeneration,
        *,
        cuda_graph: bool | None = None,
        pad_multiple: int | None = None,
        window_multiple: int = 32,
        sampler: Sampler | None = None,
        fused: bool | None = None,
        compile: bool = False,
    ):
        self.model = model
        self.lm = model.model.language_model
        self.head = model.model.generation_head
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.use_graph = on_cuda if cuda_graph is None else (cuda_graph and on_cuda)
        self.pad_multiple = pad_multiple or (64 if self.use_graph else 1)
        self.window_multiple = window_multiple
        self.sampler = sampler or get_sampler(self.device)
        self._buffers: dict[tuple, _Buffers] = {}
        attn = getattr(self.lm.config, "_attn_implementation", "sdpa") or "sdpa"
        if attn not in ("sdpa", "eager"):
            raise ValueError(
                f"the fast loop supports sdpa and eager attention, not {attn!r}; load with attn_implementation='sdpa'"
            )
        self._bool_mask = attn == "sdpa"
        self._cache_kw = cache_keyword(self.lm.layers[0])
        if fused is None:
            fused = on_cuda and unsupported_reason(self.lm) is None
        if compile and not fused:
            raise ValueError("compile=True compiles the fused decoder's layers: it needs fused=True")
        self.decoder = FusedDecoder(self.lm, compile=compile) if fused else None

    # -- the model step, shared by prefill and decode -------------------------------------------------
    def _attention_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self._bool_mask:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def _forward(self, embeds: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor, buf: _Buffers):
        """Run the decoder on (2B, q, D) at the current slot; return generation logits of the last position."""
        rope = self.lm.rotary_emb(embeds, position_ids=positions)
        if self.decoder is not None:
            dev = embeds.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else embeds.dtype
            hidden = self.decoder.forward(embeds, additive_mask(allowed, dtype), *rope, buf.cache)
            buf.cache.advance(embeds.shape[1])
            return self.head(hidden[:, -1])
        mask = self._attention_mask(allowed, embeds.dtype)
        hidden = embeds
        for layer in self.lm.layers[: self.lm.config.num_hidden_layers]:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                position_embeddings=rope,
                **{self._cache_kw: buf.cache},
            )
        buf.cache.advance(embeds.shape[1])
        return self.head(self.lm.norm(hidden[:, -1]))

    def _sample(self, logits: torch.Tensor, buf: _Buffers, want_logprobs: bool, params: SamplerParams) -> None:
        batch = buf.seeds.shape[0]
        token, logp = self.sampler(logits[:batch], logits[batch:], buf.seeds, buf.step, params, want_logprobs)
        buf.token.copy_(token)
        where = buf.step.view(1)
        buf.tokens.index_copy_(1, where, token[:, None])
        if want_logprobs:
            buf.logprobs.index_copy_(1, where, logp[:, None])
        buf.step.add_(1)

    def _decode(self, buf: _Buffers, want_logprobs: bool, params: SamplerParams) -> None:
        """One step: embed the last token for both rows, run the layers at the next slot, sample."""
        embeds = self.model.prepare_embeddings_for_image_generation(torch.cat([buf.token, buf.token])[:, None])
        buf.prompt_mask |= buf.slot_ids == buf.cache.slot  # the slot written now stays visible
        logits = self._forward(embeds, buf.prompt_mask[..., : buf.cache.window], buf.positions, buf)
        buf.positions.add_(1)
        self._sample(logits, buf, want_logprobs, params)

    # -- buffers and graphs ---------------------------------------------------------------------------
    def _get_buffers(self, rows: int, length: int, num_tokens: int, dtype: torch.dtype) -> _Buffers:
        # Autocast changes the cache's dtype (allocated at the first write): part of the key.
        key = (rows, length, num_tokens, dtype, torch.is_autocast_enabled(self.device.type))
        if key not in self._buffers:
            self._buffers.clear()  # one shape at a time: the KV cache is the big allocation
            cfg = self.lm.config
            heads = cfg.num_attention_heads
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            # Whole windows: the last one's mask rows stay aligned for SDPA's fused kernels.
            slots = -(-(length + num_tokens) // self.window_multiple) * self.window_multiple
            kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
            dev = self.device
            batch = rows // 2
            self._buffers[key] = _Buffers(
                cache=StaticKV(cfg.num_hidden_layers, rows, kv_heads, slots, head_dim, dev),
                prompt_mask=torch.zeros(rows, 1, 1, slots, dtype=torch.bool, device=dev),
                slot_ids=torch.arange(slots, device=dev).view(1, 1, 1, slots),
                positions=torch.zeros(rows, 1, dtype=torch.long, device=dev),
                seeds=torch.zeros(batch, dtype=torch.long, device=dev),
                step=torch.zeros((), dtype=torch.long, device=dev),
                token=torch.zeros(batch, dtype=torch.long, device=dev),
                tokens=torch.zeros(batch, num_tokens, dtype=torch.long, device=dev),
                logprobs=torch.zeros(batch, num_tokens, dtype=torch.float32, device=dev),
            )
        return self._buffers[key]

    def _capture(self, buf: _Buffers, want_logprobs: bool, params: SamplerParams, pool):
        """Record one decode step (at the current window) as a CUDA graph. The warm-up runs it for real,
        so the state it advances is saved and restored. Graphs of one buffer set share a memory pool:
        they never run concurrently."""
        state = (buf.cache.slot, buf.positions, buf.step, buf.token, buf.prompt_mask)
        saved = [t.clone() for t in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._decode(buf, want_logprobs, params)  # compiles kernels, settles allocations
        torch.cuda.current_stream().wait_stream(stream)
        for live, before in zip(state, saved, strict=True):
            live.copy_(before)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self._decode(buf, want_logprobs, params)
        # Capture records without running; the state is still the restored one.
        return graph

    # -- the API ----------------------------------------------------------------------------------------
    def __call__(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        seeds: torch.Tensor,
        params: SamplerParams,
        num_tokens: int,
        want_logprobs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(2B, L, D) CFG row-pair embeds and (2B, L) left-padded mask (`janus_loop.cfg_inputs`),
        (B,) int64 seeds -> (B, N) tokens and optionally (B, N) float32 logprobs.

        Under the caller's autocast, weight casts are not cached while graphs are in use: the
        cache dies with the caller's autocast context, and a captured graph would go on reading
        the freed copies. Each step then casts the weights it reads, inside the graph.
        """
        dev = self.device.type
        autocast = contextlib.nullcontext()
        if self.use_graph and torch.is_autocast_enabled(dev) and torch.is_autocast_cache_enabled():
            autocast = torch.autocast(dev, dtype=torch.get_autocast_dtype(dev), cache_enabled=False)
        with autocast, torch.inference_mode():
            if self.decoder is not None and self.decoder.refresh():
                self._buffers.clear()  # weights moved to a new dtype or device: graphs read the old ones
            return self._run(embeds, mask, seeds, params, num_tokens, want_logprobs)

    def _run(self, embeds, mask, seeds, params: SamplerParams, num_tokens: int, want_logprobs: bool):
        rows, length, _ = embeds.shape
        if rows % 2 or mask.shape != (rows, length) or seeds.shape != (rows // 2,):
            raise ValueError(
                f"expected (2B, L, D) embeds, (2B, L) mask and (B,) seeds, got {tuple(embeds.shape)}, "
                f"{tuple(mask.shape)}, {tuple(seeds.shape)}"
            )
        padded = -(-length // self.pad_multiple) * self.pad_multiple
        embeds, mask = _pad_left(embeds, mask.to(self.device).long(), padded)
        buf = self._get_buffers(rows, padded, num_tokens, embeds.dtype)
        real = mask.bool()
        # Prefill: causal over the prompt, never a padded key; a padded query sees itself (finite, unused).
        allowed = torch.ones(padded, padded, dtype=torch.bool, device=self.device).tril() & real[:, None, None, :]
        allowed |= torch.eye(padded, dtype=torch.bool, device=self.device)
        buf.cache.slot.zero_()
        buf.cache.window = padded
        buf.step.zero_()
        buf.seeds.copy_(seeds)
        buf.prompt_mask.zero_()
        buf.prompt_mask[..., :padded] = real[:, None, None, :]
        positions = position_ids_from_mask(mask)
        buf.cache.written.clear()
        logits = self._forward(embeds, allowed, positions, buf)
        if len(buf.cache.written) < self.lm.config.num_hidden_layers:
            # A layer that ignores the cache it is handed (a renamed argument) keeps no keys: every later token
            # would attend to nothing but itself, and the images would be silent noise.
            raise cache_not_written(
                f"{self.lm.config.num_hidden_layers - len(buf.cache.written)} decoder layer(s)", self._cache_kw
            )
        buf.positions.copy_(positions[:, -1:] + 1)
        self._sample(logits, buf, want_logprobs, params)
        slots = buf.slot_ids.shape[-1]
        for step in range(1, num_tokens):
            # Decode step `step` writes slot padded + step - 1; attend over a window rounded up to
            # `window_multiple` slots, so unwritten slots cost little and graphs stay few.
            buf.cache.window = min(slots, -(-(padded + step) // self.window_multiple) * self.window_multiple)
            if not self.use_graph:
                self._decode(buf, want_logprobs, params)
                continue
            key = (buf.cache.window, want_logprobs, params)
            if key not in buf.graphs:
                pool = next(iter(buf.graphs.values())).pool() if buf.graphs else None
                try:
                    buf.graphs[key] = self._capture(buf, want_logprobs, params, pool)
                except RuntimeError as err:  # e.g. an attention backend that syncs: same loop, no graph
                    warnings.warn(
                        f"CUDA graph capture failed, running the fast loop without graphs: {err}", stacklevel=2
                    )
                    self.use_graph = False
                    self._decode(buf, want_logprobs, params)
                    continue
            buf.graphs[key].replay()
        tokens = buf.tokens.clone()
        return tokens, (buf.logprobs.clone() if want_logprobs else None)


DECODERS = {"auto": None, "fused": True, "modules": False}  # synth.janus.decoder -> ImageTokenLoop(fused=)


def loop_from_config(model: JanusForConditionalGeneration, cfg: JanusGenConfig) -> ImageTokenLoop:
    """The fast loop with `synth.janus`'s settings: CUDA graphs, the decoder, regional compile."""
    return ImageTokenLoop(model, cuda_graph=cfg.cuda_graph, fused=DECODERS[cfg.decoder], compile=cfg.compile)
