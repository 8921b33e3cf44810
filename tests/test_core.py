"""The trainers' shared core: the dtype policy (runtime.dtype), the optimizer and schedules it builds."""

from __future__ import annotations

import pytest
import torch

from janus_data.config import load_config, with_overrides
from janus_data.errors import ConfigError
from janus_train.core import Precision, build_optimizer
from janus_train.grpo import RefState
from janus_train.optim import rl_lr_lambda, sft_lr_lambda

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a device name only: nothing runs on it


def test_auto_is_bf16_on_gpu_and_fp32_on_cpu():
    """What the trainers did before runtime.dtype reached them: bf16 autocast and FSDP2 cast on GPU, fp32 on CPU."""
    gpu, cpu = Precision.resolve(CUDA), Precision.resolve(CPU)
    assert (gpu.compute, cpu.compute) == (torch.bfloat16, torch.float32)
    policy = gpu.fsdp_policy()
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert cpu.fsdp_policy() is None
    assert (gpu.rollout_dtype("auto"), cpu.rollout_dtype("auto")) == (torch.bfloat16, torch.float32)
    assert cpu.rollout_dtype("bfloat16") == torch.bfloat16 and gpu.rollout_dtype("float32") == torch.float32
    with cpu.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with Precision.resolve(CPU, "bfloat16").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with Precision.resolve(CPU, "bfloat16").autocast("fsdp"):  # FSDP2's policy casts the parameters itself
        assert not torch.is_autocast_enabled("cpu")


def test_fp32_on_gpu_and_no_fp16():
    fp32 = Precision.resolve(CUDA, "float32")
    assert fp32.compute == torch.float32 and fp32.fsdp_policy() is None and fp32.rollout_dtype("auto") == torch.float32
    with pytest.raises(ConfigError, match="float16"):
        Precision.resolve(CUDA, "float16")


def test_build_optimizer_installs_each_trainers_schedule():
    cfg = with_overrides(load_config("tiny"), {"sft": {"max_steps": 10, "warmup_steps": 2}})
    weight = torch.nn.Parameter(torch.ones(2))
    for section, schedule in ((cfg.sft, sft_lr_lambda(cfg.sft)), (cfg.rl, rl_lr_lambda(cfg.rl, RefState()))):
        optimizer, scheduler = build_optimizer([weight], section, schedule)
        group = optimizer.param_groups[0]
        assert (group["betas"], group["eps"], group["weight_decay"]) == (
            tuple(section.betas),
            section.eps,
            0.0 + section.weight_decay,
        )
        assert group["lr"] == pytest.approx(section.lr * schedule(0))
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(section.lr * schedule(1))
