"""Rank and world size of a stage process: flags, else torchrun, else SLURM, else 0 of 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

from janus_data.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """This process's slice of the work."""

    rank: int = 0
    world_size: int = 1


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def resolve_shard(rank: int | None = None, world_size: int | None = None) -> Shard:
    """Explicit flags win; then RANK/WORLD_SIZE (torchrun); then SLURM_PROCID/SLURM_NTASKS."""
    if rank is None:
        rank = _env_int("RANK", "SLURM_PROCID")
    if world_size is None:
        world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}", hint="pass 0 <= --rank < --world-size")
    return Shard(rank, world_size)


def local_device_index() -> int:
    """GPU index for this process: LOCAL_RANK (torchrun) or SLURM_LOCALID, else 0."""
    return _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
