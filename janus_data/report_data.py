"""What the run report reads: every manifest, state and metrics file of a run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from janus_data.checks import require_report_inputs
from janus_data.filter import samples_path
from janus_data.manifest import IMAGES_KIND, SCORES_KIND, scan_manifest
from janus_data.prompts import read_prompts_manifest
from janus_data.rundir import CKPT_DIRS, CONFIG_FILE, METRICS, SFT_DIR, STATE_FILE, read_metrics
from janus_data.score import SCORE_SCHEMA
from janus_data.synth import IMAGE_SCHEMA


@dataclass
class RunData:
    """Everything the report reads from a run directory."""

    run_dir: Path
    prompts: pl.DataFrame
    images: pl.DataFrame
    scores: pl.DataFrame  # every score row (ok, flagged, error)
    samples: pl.DataFrame | None
    sft_state: dict | None
    metrics: dict[str, list[dict]]  # "sft" / "rl" -> one dict per logged step
    steps: dict[str, int]  # "sft" / "rl" -> latest step logged or checkpointed
    config: dict
    config_text: str

    @property
    def ok(self) -> pl.DataFrame:
        return self.scores.filter(pl.col("status") == "ok")

    def cfg(self, section: str, key: str, default=None):
        value = self.config.get(section)
        return value.get(key, default) if isinstance(value, dict) else default

    def command(self, stage: str) -> str:
        return f"janus {stage} --run {self.run_dir}"


# ---------------------------------------------------------------- reading the run


def _latest_step(root: Path, metrics: list[dict]) -> int:
    """The later of the last logged step and the newest complete checkpoint (step-N/trainer_state.json)."""
    done = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / "trainer_state.json").is_file()]
    return max([*(int(p.name[5:]) for p in done), *(m["step"] for m in metrics)], default=0)


def load_run(run_dir: Path) -> tuple[RunData, list[str]]:
    """Read every manifest, state and metrics file of a run, and notes on what could not be read."""
    run_dir = Path(run_dir)
    require_report_inputs(run_dir)  # text-to-image candidates or candidate edits
    notes = []
    config_path = run_dir / CONFIG_FILE
    config_text = config_path.read_text() if config_path.is_file() else ""
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        config = {}
        notes.append(f"config: {CONFIG_FILE} is not valid YAML")
    try:
        sft_state = json.loads((run_dir / SFT_DIR / STATE_FILE).read_text())
    except (OSError, ValueError):
        sft_state = None
    spath = samples_path(run_dir)
    metrics = {k: read_metrics(run_dir / d / METRICS) for k, d in CKPT_DIRS.items()}
    data = RunData(
        run_dir=run_dir,
        prompts=read_prompts_manifest(run_dir),
        images=scan_manifest(run_dir, IMAGES_KIND, IMAGE_SCHEMA).collect(),
        scores=scan_manifest(run_dir, SCORES_KIND, SCORE_SCHEMA).collect(),
        samples=pl.read_parquet(spath) if spath.is_file() else None,
        sft_state=sft_state if isinstance(sft_state, dict) else None,
        metrics=metrics,
        steps={k: _latest_step(run_dir / d, metrics[k]) for k, d in CKPT_DIRS.items()},
        config=config if isinstance(config, dict) else {},
        config_text=config_text,
    )
    return data, notes
