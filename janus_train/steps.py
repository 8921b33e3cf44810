"""One SFT micro-step: decoded samples -> Janus sequences -> per-sample losses -> gradients.

The loss is computed inside `LossModule.forward`, so under DistributedDataParallel the whole
computation goes through the wrapper (its gradient hooks and unused-parameter search see it).
"""

from __future__ import annotations

import contextlib
import random

import torch

from janus_data.config import SFTConfig
from janus_train.losses import collate, per_sample_losses
from janus_train.sequences import SequenceBuilder


class LossModule(torch.nn.Module):
    """Wraps the Janus model so that DDP's forward is the loss computation."""

    def __init__(self, model, image_processor, text_reduction: str):
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.text_reduction = text_reduction

    def forward(self, batch):
        return per_sample_losses(self.model, batch, self.image_processor, self.text_reduction)


class SFTStep:
    """Builds samples and runs forward + backward for one micro-batch."""

    def __init__(self, model, tokenizer, image_processor, cfg: SFTConfig, device: torch.device, ddp: bool):
        self.device = device
        self.cfg = cfg
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
        self.module = LossModule(model, image_processor, cfg.text_reduction)
        self.wrapped = self.module
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            # A batch without Task II leaves the understanding aligner unused.
            self.wrapped = DistributedDataParallel(self.module, device_ids=ids, find_unused_parameters=True)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        )

    def forward(self, samples: list[tuple[str, dict]], rngs: list[random.Random], sync: bool):
        """Per-sample losses (B,) of the decoded samples and their tasks; call `backward` next."""
        built = [self.builder.from_record(sample, rng) for (_, sample), rng in zip(samples, rngs, strict=True)]
        batch = collate(built, self.pad_id, self.image_processor).to(self.device)
        self._context = contextlib.nullcontext() if sync or self.wrapped is self.module else self.wrapped.no_sync()
        self._context.__enter__()
        with self.autocast:
            losses = self.wrapped(batch)
        return losses.float(), batch.tasks

    def backward(self, loss: torch.Tensor) -> None:
        try:
            loss.backward()
        finally:
            self._context.__exit__(None, None, None)
