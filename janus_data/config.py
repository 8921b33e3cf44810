"""Typed, frozen configs: the truth. YAML presets and CLI flags only override them.

A preset is a YAML serialisation of `JanusRunConfig`; unknown keys are errors, and every
cross-field check lives in `validate`. The sections live in `config_stages` (data stages),
`config_train` (trainers), `config_eval` (evaluation) and `config_edit` (image editing), the YAML plumbing in `config_load`, the checks in `config_validate`;
import them all from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from janus_data.config_edit import EDIT_GENERATORS, EditConfig, KontextGenConfig, edit_split_counts
from janus_data.config_eval import EVAL_CHECKPOINTS, EvalConfig
from janus_data.config_load import (
    DEMO_EDITS,
    DEMO_PROMPTS,
    GENEVAL_DEMO,
    PRESET_DIR,
    deep_merge,
    demo_prompts_path,
    from_dict,
    preset_names,
    read_yaml,
    resolve_presets,
    to_dict,
)
from janus_data.config_stages import (
    GENERATORS,
    FilterConfig,
    FluxGenConfig,
    JanusGenConfig,
    PipelineConfig,
    RuntimeConfig,
    ScoreConfig,
    SynthConfig,
    split_counts,
)
from janus_data.config_train import RLConfig, SFTConfig
from janus_data.config_validate import check_rl_logps, validate
from janus_data.errors import ConfigError


@dataclass(frozen=True)
class JanusRunConfig:
    """One run of the pipeline: every stage's settings."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    edit: EditConfig = field(default_factory=EditConfig)


def load_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> JanusRunConfig:
    """Resolve a preset name or YAML path (default: 'paper'), apply overrides, validate.

    A YAML file may start from a preset with a top-level `preset: NAME` key (`official` itself
    starts from `paper`).
    """
    source = source or "paper"
    path = Path(source)
    if not path.suffix and not path.exists():
        if source not in preset_names():
            raise ConfigError(f"unknown preset '{source}'", hint=f"presets: {', '.join(preset_names())}")
        path = PRESET_DIR / f"{source}.yaml"
    data = deep_merge(resolve_presets(path), overrides or {})
    cfg = from_dict(JanusRunConfig, data)
    validate(cfg)
    return cfg


def with_overrides(cfg: JanusRunConfig, overrides: dict[str, Any]) -> JanusRunConfig:
    """Apply nested overrides to a resolved config and validate again."""
    cfg = from_dict(JanusRunConfig, deep_merge(to_dict(cfg), overrides))
    validate(cfg)
    return cfg


__all__ = [
    "DEMO_EDITS",
    "DEMO_PROMPTS",
    "EDIT_GENERATORS",
    "EVAL_CHECKPOINTS",
    "GENERATORS",
    "GENEVAL_DEMO",
    "PRESET_DIR",
    "EditConfig",
    "EvalConfig",
    "FilterConfig",
    "FluxGenConfig",
    "JanusGenConfig",
    "JanusRunConfig",
    "KontextGenConfig",
    "PipelineConfig",
    "RLConfig",
    "RuntimeConfig",
    "SFTConfig",
    "ScoreConfig",
    "SynthConfig",
    "check_rl_logps",
    "deep_merge",
    "demo_prompts_path",
    "edit_split_counts",
    "from_dict",
    "load_config",
    "preset_names",
    "read_yaml",
    "resolve_presets",
    "split_counts",
    "to_dict",
    "validate",
    "with_overrides",
]
