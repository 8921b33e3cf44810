"""Both trainers under torchrun: the DDP / FSDP2 wrapping, gradient sync and clipping, whole states.

The loss is computed inside a module's forward (`sft_step.LossModule`, `grpo.GRPOLossModule`),
so under a parallel wrapper the whole computation goes through it:
- DDP: DistributedDataParallel around that module (a batch without some task leaves a head
  unused, hence find_unused_parameters);
- FSDP2: `fully_shard` on every decoder layer, then on that module as the root unit (its
  forward gathers what no layer unit holds: embeddings, heads, vision, VQ), with the
  precision's policy (`core.Precision.fsdp_policy`: low-precision compute, fp32 gradient
  reduction). Full (unsharded) model and optimizer states are gathered for checkpoints, so a
  checkpoint is the same whatever the parallelism, and a run can resume under another one.
Both average gradients over processes, like one process with the global batch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from janus_train.core import Precision


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


def wrap_parallel(module: torch.nn.Module, model, parallel: str | None, precision: Precision) -> torch.nn.Module:
    """`module` (whose forward computes the loss of `model`) under DDP, FSDP2 or as is."""
    if parallel is None:
        return module
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [precision.device.index] if precision.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        policy = precision.fsdp_policy()
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
