"""The fast loop's decoder: Llama layers run from fused weights, a few large kernels per layer.

The reference loop calls transformers' decoder layers: seven GEMMs per layer (q, k, v, o, gate,
up, down), rotary embedding applied to q and k apart, each RMSNorm as seven elementwise kernels,
and the attention mask converted in every layer. Nothing in the math needs them apart:

- **QKV and gate/up GEMMs.** One (q + k + v, D) weight and one (gate + up, D) weight per layer,
  concatenated once from the model's own Linear weights (the model is untouched; the copies
  are refreshed in place when a source weight changes, e.g. after a GRPO update).
- **Rotary embedding** on q and k in one pass over the fused projection.
- **Residual + RMSNorm together.** Each layer ends with `h += mlp(...)` and the next layer's
  input norm (the model's final norm after the last layer), `F.rms_norm`; under the optional
  regional `torch.compile` the add and the norm become one kernel.
- **The mask once per step**, additive, in the compute dtype, over a window whose length is a
  multiple of the loop's `window_multiple` (32): SDPA's memory-efficient and cuDNN kernels take
  it as it is.

In fp32 the result equals the reference's up to float rounding (tests/test_fast_loop.py). In bf16,
`F.rms_norm` rounds once where LlamaRMSNorm rounds twice; the GPU tests bound the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Decoder layers whose forward is exactly what `FusedDecoder` computes (Janus-Pro's text tower is LlamaModel).
SUPPORTED_LAYERS = ("LlamaDecoderLayer",)


class UnsupportedLayers(ValueError):
    """The language model's layers are not ones the fused decoder reproduces exactly."""


PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")
PROJECTIONS += ("mlp.up_proj", "mlp.down_proj")


def _hooked(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__)


def unsupported_reason(lm) -> str | None:
    """Why `FusedDecoder` cannot run `lm`'s layers (None when it can)."""
    cfg = lm.config
    layers = lm.layers[: cfg.num_hidden_layers]
    name = type(layers[0]).__name__
    if name not in SUPPORTED_LAYERS:
        return f"decoder layer {name} (supported: {', '.join(SUPPORTED_LAYERS)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (supported: 'silu')"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if type(lm.norm).__name__ != "LlamaRMSNorm":
        return f"final norm {type(lm.norm).__name__} (supported: LlamaRMSNorm)"
    for i, layer in enumerate(layers):
        # Adapters (LoRA wraps the Linear layers) and hooks change what a layer computes: the fused
        # weights would silently leave them out.
        projections = [layer.get_submodule(p) for p in PROJECTIONS]
        if any(type(m) is not torch.nn.Linear for m in projections):
            return f"layer {i}'s projections are not plain Linear layers (an adapter?)"
        if any(_hooked(m) for m in (layer, layer.self_attn, layer.mlp, *projections)):
            return f"layer {i} has forward hooks or a replaced forward"
    return None


@dataclass
class LayerWeights:
    """One layer's weights: the fused ones owned here, the rest the model's own parameters."""

    qkv: torch.Tensor  # (q + k + v, D)
    qkv_bias: torch.Tensor | None
    gate_up: torch.Tensor  # (2 I, D)
    gate_up_bias: torch.Tensor | None
    o: torch.nn.Linear
    down: torch.nn.Linear
    ln_attn: torch.nn.Module  # input_layernorm
    ln_mlp: torch.nn.Module  # post_attention_layernorm


def _sources(layer) -> list[list[torch.Tensor]]:
    """The tensors each fused weight is cut from: [qkv weight parts, qkv bias parts, gate/up, gate/up bias]."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
    gu = [mlp.gate_proj, mlp.up_proj]
    return [
        [m.weight for m in qkv],
        [m.bias for m in qkv] if qkv[0].bias is not None else [],
        [m.weight for m in gu],
        [m.bias for m in gu] if gu[0].bias is not None else [],
    ]


def _version(t: torch.Tensor) -> int:
    # Inference tensors (a model built under inference_mode) keep no version counter: nothing
    # can update them in place outside inference mode either.
    return -1 if t.is_inference() else t._version


def _signature(tensors: list[torch.Tensor]) -> tuple:
    # An in-place update (optimizer step, copy_, load_state_dict) bumps _version; .to() and
    # friends give new storage. Either means the fused copy is stale.
    return tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in tensors)


def _concatenate(group: list[torch.Tensor], into: torch.Tensor | None) -> torch.Tensor | None:
    """`group` stacked along dim 0, written into `into` where it fits (None for an empty group)."""
    if not group:
        return None
    like = group[0]
    if into is None or into.dtype != like.dtype or into.device != like.device:
        into = torch.empty((sum(t.shape[0] for t in group), *like.shape[1:]), dtype=like.dtype, device=like.device)
    return torch.cat([t.detach() for t in group], dim=0, out=into)


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers applies it (rotate-half), on (R, q, heads, hd) with (R, q, 1, hd) cos/sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def project_qkv(normed, qkv, qkv_bias, cos, sin, heads: int, kv_heads: int):
    """(R, q, D) normed hidden -> q (R, heads, q, hd), k and v (R, kv_heads, q, hd), rotary applied."""
    rows, length, _ = normed.shape
    out = F.linear(normed, qkv, qkv_bias).view(rows, length, heads + 2 * kv_heads, -1)
    qk = _rotate(out[:, :, : heads + kv_heads], cos[:, :, None], sin[:, :, None])
    q, k = qk.split((heads, kv_heads), dim=2)
    return q.transpose(1, 2), k.transpose(1, 2), out[:, :, heads + kv_heads :].transpose(1, 2)


def attention_out_mlp(attn, residual, o_w, o_b, ln_w, ln_eps, gate_up, gate_up_bias, down_w, down_b, next_w, next_eps):
    """o-proj, residual, norm, SwiGLU MLP, residual, then the next norm: -> (hidden, next layer's normed input)."""
    rows, _, length, _ = attn.shape
    hidden = residual + F.linear(attn.transpose(1, 2).reshape(rows, length, -1), o_w, o_b)
    x = F.rms_norm(hidden, (hidden.shape[-1],), ln_w, ln_eps)
    gate, up = F.linear(x, gate_up, gate_up_bias).chunk(2, dim=-1)
    hidden = hidden + F.linear(F.silu(gate) * up, down_w, down_b)
    return hidden, F.rms_norm(hidden, (hidden.shape[-1],), next_w, next_eps)


class FusedDecoder:
    """Runs a LlamaModel's decoder layers and final norm from fused weights, writing a `StaticKV`.

    `compile=True` wraps the two per-layer regions around attention (QKV + rotary; o-proj + MLP +
    norms) in `torch.compile` for single-token decode steps; the prefill runs them eagerly.
    """

    def __init__(self, lm, compile: bool = False):
        if reason := unsupported_reason(lm):
            raise UnsupportedLayers(f"the fused decoder does not support {reason}; use fused=False")
        cfg = lm.config
        self.lm = lm
        self.layers = list(lm.layers[: cfg.num_hidden_layers])
        attn = self.layers[0].self_attn
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.weights: list[LayerWeights] = []
        self._signatures: list[tuple] = []
        self.refresh()
        self._project, self._mlp = project_qkv, attention_out_mlp
        if compile:
            self._project = torch.compile(project_qkv, fullgraph=True, dynamic=False)
            self._mlp = torch.compile(attention_out_mlp, fullgraph=True, dynamic=False)

    @torch.no_grad()
    def refresh(self) -> bool:
        """Re-cut the fused weights whose sources changed since the last cut; True if any was reallocated
        (a new dtype or device: graphs captured on the old ones must be dropped). In place otherwise."""
        reallocated = False
        for i, layer in enumerate(self.layers):
            sources = _sources(layer)
            signature = _signature([t for group in sources for t in group])
            if i < len(self._signatures) and self._signatures[i] == signature:
                continue
            old = self.weights[i] if i < len(self.weights) else None
            previous = (old.qkv, old.qkv_bias, old.gate_up, old.gate_up_bias) if old else (None,) * 4
            fused = [_concatenate(group, into) for group, into in zip(sources, previous, strict=True)]
            reallocated |= old is not None and any(f is not p for f, p in zip(fused, previous, strict=True))
            attn, mlp = layer.self_attn, layer.mlp
            weights = LayerWeights(
                *fused, attn.o_proj, mlp.down_proj, layer.input_layernorm, layer.post_attention_layernorm
            )
            if old is None:
                self.weights.append(weights)
                self._signatures.append(signature)
            else:
                self.weights[i], self._signatures[i] = weights, signature
        return reallocated

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, cos, sin, cache, last_only: bool = True):
        """(R, q, D) inputs at the cache's current slot, (R, 1, q, window) additive mask, (R, q, hd) cos/sin
        -> (R, 1 or q, D) hidden states after the final norm (only the last position when `last_only`)."""
        decode = embeds.shape[1] == 1
        project = self._project if decode else project_qkv
        mlp = self._mlp if decode else attention_out_mlp
        last = len(self.weights) - 1
        hidden = embeds
        normed = _rms_norm(embeds, self.weights[0].ln_attn)
        for i, w in enumerate(self.weights):
            q, k, v = project(normed, w.qkv, w.qkv_bias, cos, sin, self.heads, self.kv_heads)
            keys, values = cache.update(k, v, i)
            attn = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
            )
            if i == last and last_only and not decode:
                # Only the last position's logits are used: the final MLP runs on it alone.
                attn, hidden = attn[:, :, -1:], hidden[:, -1:]
            nxt = self.weights[i + 1].ln_attn if i < last else self.lm.norm
            hidden, normed = mlp(
                attn,
                hidden,
                w.o.weight,
                w.o.bias,
                w.ln_mlp.weight,
                w.ln_mlp.variance_epsilon,
                w.gate_up,
                w.gate_up_bias,
                w.down.weight,
                w.down.bias,
                nxt.weight,
                nxt.variance_epsilon,
            )
        return normed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, q, S) bool -> the same shape in `dtype`: 0 where allowed, -inf elsewhere (what SDPA makes of a
    bool mask). Two kernels, no host values: safe inside a CUDA graph."""
    return torch.full(allowed.shape, float("-inf"), dtype=dtype, device=allowed.device).masked_fill_(allowed, 0.0)
