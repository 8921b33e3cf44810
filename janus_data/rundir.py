"""The run directory: where each stage's outputs live, and the resolved config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from janus_data.config import JanusRunConfig, load_config, to_dict
from janus_data.manifest import atomic_write

CONFIG_FILE = "config.yaml"
# Where the filter writes the SFT shards, and the state file that says they are complete.
SFT_DIR = "sft"
SFT_EDIT_DIR = "sft_edit"  # the edit SFT shards (janus data filter --task edit)
STATE_FILE = "state.json"
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


def read_metrics(path: Path) -> list[dict]:
    """One flat dict per line of a metrics.jsonl ({"loss": {"t2i": x}} -> {"loss/t2i": x}); torn lines skipped."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            nested = {f"{k}/{kk}": vv for k, v in row.items() if isinstance(v, dict) for kk, vv in v.items()}
            rows.append({**row, **nested})
    return rows


def first_latest_table(
    rows: list[dict], keys: dict[str, str], fmt: Callable[[float], str] = "{:.4f}".format
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of each metric at the FIRST and the LATEST logged step that has it.

    The one definition behind `janus train sft|rl`'s summary and the report's tables, so both
    show the same numbers. The header names the first metric's steps; a value logged at another
    step names its own.
    """
    points = {}
    for label, key in keys.items():
        pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            points[label] = (pts[0], pts[-1])
    if not points:
        return ["metric", "first", "latest"], []
    (step0, _), (step1, _) = next(iter(points.values()))

    def cell(step: int, value: float, header_step: int) -> str:
        return fmt(value) if step == header_step else f"{fmt(value)} (step {step})"

    body = [[label, cell(*a, step0), cell(*b, step1)] for label, (a, b) in points.items()]
    return ["metric", f"first (step {step0})", f"latest (step {step1})"], body
