"""Tiny runs the tests build on: prompts through synth, score and filter."""

from __future__ import annotations

import json
from pathlib import Path

from janus_data.config import JanusRunConfig
from janus_data.filter import run_filter
from janus_data.score import run_score
from janus_data.synth import run_synth


def filtered_run(root: Path, cfg: JanusRunConfig, prompts: list[str]) -> Path:
    """`root/run`: `prompts` drawn, scored and filtered under `cfg` (the stages' library calls)."""
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    run = root / "run"
    run_synth(run, cfg, path, progress=False)
    run_score(run, cfg, progress=False)
    run_filter(run, cfg, progress=False)
    return run
