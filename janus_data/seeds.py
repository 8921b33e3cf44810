"""Deterministic per-image seeds and ids."""

from __future__ import annotations

import hashlib


def derive_seed(global_seed: int, prompt_id: str, generator: str, index: int) -> int:
    """A 63-bit seed from (global seed, prompt_id, generator, index), stable across runs and ranks."""
    digest = hashlib.blake2b(f"{global_seed}:{prompt_id}:{generator}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def image_id_for(prompt_id: str, generator: str, index: int) -> str:
    """Image id: '<prompt_id>-<generator>-<index>' (no dots, so it is a valid WebDataset key)."""
    return f"{prompt_id}-{generator}-{index:03d}"


def shard_of(prompt_id: str, world_size: int) -> int:
    """The rank that owns a prompt: stable when prompts are added, disjoint across ranks."""
    return int(prompt_id[:15], 16) % world_size if world_size > 1 else 0
