"""Typed configs: presets load, unknown keys fail, overrides apply, docs stay in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from janus_data.config import load_config, preset_names, split_counts, to_dict, with_overrides
from janus_data.config_doc import render
from janus_data.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_round_trips(name):
    cfg = load_config(name)
    assert with_overrides(cfg, {}) == cfg
    assert load_config(name, to_dict(cfg)) == cfg


def test_presets_hold_the_paper_values():
    assert set(preset_names()) >= {"tiny", "paper"}
    paper = load_config("paper").synth
    assert paper.images_per_prompt == 18 and split_counts(paper) == {"flux": 9, "janus": 9}
    assert paper.image_size == 384 and paper.janus.cfg_weight == 5.0 and paper.janus.temperature == 1.0
    assert paper.janus.model == "deepseek-community/Janus-Pro-7B"
    assert paper.flux.model == "black-forest-labs/FLUX.1-dev"
    assert load_config("tiny").synth.janus.model == "tiny:janus"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"synth": {"bogus": 1}}, "unknown config key 'synth.bogus'"),
        ({"nope": {}}, "unknown config key 'nope'"),
        ({"synth": {"janus": {"cfg": 5}}}, "synth.janus.cfg"),
        ({"synth": {"images_per_prompt": "many"}}, "must be int"),
        ({"synth": {"images_per_prompt": 0}}, "images_per_prompt"),
        ({"synth": {"image_format": "gif"}}, "must be one of"),
        ({"synth": {"janus": {"top_p": 0}}}, "top_p"),
        ({"synth": {"generators": ["flux", "dalle"]}}, "generators"),
    ],
)
def test_bad_values_are_config_errors(overrides, needle):
    with pytest.raises(ConfigError, match=None) as info:
        load_config("tiny", overrides)
    assert needle in str(info.value)


def test_yaml_can_start_from_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: tiny\nsynth:\n  images_per_prompt: 4\n")
    cfg = load_config(str(path))
    assert cfg.synth.images_per_prompt == 4 and cfg.synth.janus.model == "tiny:janus"


def test_split_counts_round_the_flux_share():
    cfg = load_config("tiny", {"synth": {"images_per_prompt": 5, "flux_share": 0.3}}).synth
    assert split_counts(cfg) == {"flux": 2, "janus": 3}
    only = load_config("tiny", {"synth": {"generators": ["janus"]}}).synth
    assert split_counts(only) == {"janus": 18}


def test_configuration_doc_is_generated_from_the_code():
    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "run: python -m janus_data.config_doc > docs/configuration.md"
    )


def test_every_configuration_table_row_has_the_header_s_cells():
    """A bare `|` in a cell (a `str | None` type, a docstring's `1/|o_i|`) would add a column."""
    rows: list[tuple[int, str]] = []
    for n, line in enumerate((REPO / "docs" / "configuration.md").read_text().splitlines(), start=1):
        if line.startswith("|"):
            rows.append((n, line))
        elif rows:
            _check_table(rows)
            rows = []
    _check_table(rows)


def _check_table(rows: list[tuple[int, str]]) -> None:
    if not rows:
        return
    cells = {n: len(re.split(r"(?<!\\)\|", line)) - 2 for n, line in rows}
    header = cells[rows[0][0]]
    assert header >= 3 and all(c == header for c in cells.values()), f"rows and their cell counts: {cells}"
