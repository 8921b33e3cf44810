"""The run directory: where each stage's outputs live, and the resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from janus_data.config import JanusRunConfig, load_config, to_dict
from janus_data.manifest import atomic_write

CONFIG_FILE = "config.yaml"
# Where the trainers write checkpoints and their metrics.jsonl (janus_train.sft / janus_train.grpo).
CKPT_DIRS = {"sft": "checkpoints/sft", "rl": "checkpoints/rl"}
METRICS = "metrics.jsonl"


def save_run_config(run_dir: Path, cfg: JanusRunConfig) -> Path:
    """Write the resolved config as run_dir/config.yaml (atomically)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return atomic_write(Path(run_dir) / CONFIG_FILE, lambda fh: fh.write(text.encode()))


def rank_dir(rank: int) -> str:
    """Per-rank subdirectory name, so ranks never write the same file."""
    return f"rank{rank:05d}"


def load_run_config(run_dir: Path, source: str | None, overrides: dict[str, Any]) -> JanusRunConfig:
    """The config a later stage runs with: `source` if given, else the run's own config.yaml, else 'paper'."""
    if source is None:
        saved = Path(run_dir) / CONFIG_FILE
        source = str(saved) if saved.is_file() else "paper"
    return load_config(source, overrides)
