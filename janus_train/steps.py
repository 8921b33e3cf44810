"""One SFT micro-step: decoded samples -> Janus sequences -> losses -> gradients.

`sft.loss_reduction` picks the losses: 'sample' gives each sample's loss over its own targets
(B,); 'batch' (the released code, modeling_vlm.py:294-305) gives each task's token-level
loss pooled over the micro-batch and their sample-share-weighted "total" (losses.forward_losses).

The loss is computed inside `LossModule.forward`, so under a parallel wrapper the whole
computation goes through it:
- DDP: DistributedDataParallel around the LossModule (a batch without Task II leaves the
  understanding aligner unused, hence find_unused_parameters);
- FSDP2: `fully_shard` on every decoder layer, then on the LossModule as the root unit (its
  forward gathers what no layer unit holds: embeddings, heads, vision, VQ). bf16 parameters
  for compute and fp32 gradient reduction on GPU; fp32 on CPU. Full (unsharded) model and
  optimizer states are gathered for checkpoints, so a checkpoint is the same whatever the
  parallelism, and a run can resume under another one.
Both average gradients over processes, like one process with the global batch.
"""

from __future__ import annotations

import contextlib
import random

import torch

from janus_data.config import SFTConfig
from janus_train.losses import collate, forward_losses, per_sample_losses
from janus_train.sequences import SequenceBuilder


def touch_trainable_heads(model) -> torch.Tensor:
    """0 x (one element of every trainable parameter outside the decoder layers), to add to a loss.

    A batch without some task leaves heads unused (lm_head and the understanding aligner
    without an evaluation, the generation modules without an image). This zero-weighted touch
    gives them a (zero) gradient on every process, so gradient reductions match across
    processes (FSDP2 and DDP need that). Looked up on every call: FSDP2 swaps parameter
    objects between sharded and unsharded.
    """
    heads = (p for n, p in model.named_parameters() if p.requires_grad and ".layers." not in n)
    return 0.0 * sum(p.reshape(-1)[0] for p in heads)


def wrap_parallel(module: torch.nn.Module, model, parallel: str | None, device: torch.device) -> torch.nn.Module:
    """`module` (whose forward computes the loss of `model`) under DDP, FSDP2 or as is.

    FSDP2: one unit per decoder layer, then `module` as the root unit (its forward gathers what
    no layer unit holds: embeddings, heads, vision, VQ); bf16 compute with fp32 gradient
    reduction on GPU, fp32 on CPU.
    """
    cuda = device.type == "cuda"
    if parallel is None:
        return module
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if cuda else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else None
        kwargs = {"mp_policy": policy} if policy else {}
        for layer in model.model.language_model.layers:
            fully_shard(layer, **kwargs)
        fully_shard(module, **kwargs)
        return module
    raise ValueError(f"parallel must be 'ddp', 'fsdp' or None, got {parallel!r}")


def gradient_sync(wrapped: torch.nn.Module, parallel: str | None, sync: bool):
    """A context for one micro-batch's forward + backward: without `sync`, gradients are not reduced."""
    if parallel == "ddp" and not sync:
        return wrapped.no_sync()
    if parallel == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (0: measure only); returns the norm before clipping (sharded or not)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_model_state(module: torch.nn.Module, parallel: str | None) -> dict | None:
    """The wrapped model's full state dict (gathered on every process) under FSDP; None otherwise."""
    if parallel != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("model."): v for k, v in full.items()}


def full_optimizer_state(module: torch.nn.Module, optimizer) -> dict:
    """The optimizer state keyed by parameter names, whole (gathered under FSDP): one format for
    every parallelism, so a run can resume under another one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, optimizer, options=options)


def load_optimizer_state(module: torch.nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


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
    """Builds samples and runs forward + backward for one micro-batch, under DDP, FSDP2 or neither."""

    def __init__(
        self, model, tokenizer, image_processor, cfg: SFTConfig, device: torch.device, parallel: str | None = None
    ):
        self.device = device
        self.cfg = cfg
        self.parallel = parallel
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
        self.wrapped = wrap_parallel(self.module, model, parallel, device)
        cuda = device.type == "cuda"
        # FSDP2's policy casts parameters itself; otherwise autocast does on GPU.
        use_autocast = cuda and parallel != "fsdp"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
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
        with self.autocast:
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

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return clip_gradients(params, max_norm)

    def full_model_state(self) -> dict | None:
        return full_model_state(self.module, self.parallel)

    def full_optimizer_state(self, optimizer) -> dict:
        return full_optimizer_state(self.module, optimizer)

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        load_optimizer_state(self.module, optimizer, state)
