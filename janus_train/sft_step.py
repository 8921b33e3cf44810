"""One SFT micro-step: decoded samples -> Janus sequences -> losses -> gradients.

`sft.loss_reduction` picks the losses: 'sample' gives each sample's loss over its own targets
(B,); 'batch' (the released code, modeling_vlm.py:294-305) gives each task's token-level
loss pooled over the micro-batch and their sample-share-weighted "total" (losses.forward_losses).
The loss is computed inside `LossModule.forward`, so DDP and FSDP2 (`parallel.wrap_parallel`)
wrap the whole computation.
"""

from __future__ import annotations

import contextlib
import random

import torch

from janus_data.config import SFTConfig
from janus_train.core import Precision
from janus_train.losses import collate, forward_losses, per_sample_losses
from janus_train.parallel import gradient_sync, touch_trainable_heads, wrap_parallel
from janus_train.sequences import SequenceBuilder


class LossModule(torch.nn.Module):
    """Wraps the Janus model so that DDP's forward is the loss computation."""

    def __init__(self, model, image_processor, text_reduction: str, loss_reduction: str = "sample"):
        super().__init__()
        if loss_reduction not in ("sample", "batch"):
            raise ValueError(f"loss_reduction must be 'sample' or 'batch', got {loss_reduction!r}")
        self.model = model
        self.image_processor = image_processor
        self.text_reduction = text_reduction
        self.loss_reduction = loss_reduction

    def forward(self, batch):
        """Per-sample losses (B,) ('sample'), or {task: loss, "total": loss} of the micro-batch ('batch')."""
        if self.loss_reduction == "batch":
            losses = forward_losses(self.model, batch, self.image_processor, self.text_reduction)
            return {**losses, "total": losses["total"] + touch_trainable_heads(self.model)}
        losses = per_sample_losses(self.model, batch, self.image_processor, self.text_reduction)
        return losses + touch_trainable_heads(self.model)


class SFTStep:
    """Builds samples and runs forward + backward for one micro-batch, under DDP, FSDP2 or neither.

    `precision`: the dtype policy (default: runtime.dtype 'auto' on `device`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        cfg: SFTConfig,
        device: torch.device,
        parallel: str | None = None,
        precision: Precision | None = None,
    ):
        self.device = device
        self.cfg = cfg
        self.parallel = parallel
        self.precision = precision or Precision.resolve(device)
        self.builder = SequenceBuilder(
            tokenizer,
            int(model.config.vision_config.num_image_tokens),
            int(model.config.vq_config.num_patches) ** 2,
            answer_weight=cfg.answer_weight,
            reason_weight=cfg.reason_weight,
            caption_dropout=cfg.caption_dropout,
        )
        self.pad_id = tokenizer.pad_token_id
        self.image_processor = image_processor
        self.module = LossModule(model, image_processor, cfg.text_reduction, cfg.loss_reduction)
        self.wrapped = wrap_parallel(self.module, model, parallel, self.precision)
        self._context = contextlib.nullcontext()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates (sharded tensors under FSDP)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def forward(self, samples: list[tuple[str, dict]], rngs: list[random.Random], sync: bool):
        """The decoded samples' losses (LossModule.forward, in fp32) and their tasks; call `backward` next.

        `sync=False` (all but the last micro-batch of a step) skips the gradient reduction.
        """
        built = [self.builder.from_record(sample, rng) for (_, sample), rng in zip(samples, rngs, strict=True)]
        batch = collate(built, self.pad_id, self.image_processor).to(self.device)
        self._context = gradient_sync(self.wrapped, self.parallel, sync)
        self._context.__enter__()
        with self.precision.autocast(self.parallel):
            losses = self.wrapped(batch)
        if isinstance(losses, dict):
            return {name: value.float() for name, value in losses.items()}, batch.tasks
        return losses.float(), batch.tasks

    def backward(self, loss: torch.Tensor) -> None:
        try:
            loss.backward()
        finally:
            self._context.__exit__(None, None, None)
            self._context = contextlib.nullcontext()
