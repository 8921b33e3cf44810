"""The built wheel stands alone: presets, demo prompts and every other package file ship inside it.

Builds the wheel from a copy of the checkout (offline: no build isolation, no index), installs it
into a folder, and runs Python from a directory outside the checkout with only that folder in
front of the path, so nothing can be read from the checkout by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PRESETS = ("official", "paper", "tiny")
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache", "tests"
)

# Run by the installed wheel's Python, from outside the checkout; argv[1] is the install folder.
CHECK = """
import json, sys
from pathlib import Path

import cli
import janus_data
from janus_data.config import DEMO_EDITS, demo_prompts_path, load_config, preset_names
from janus_data.edit_sources import load_edits
from janus_data.prompts import load_prompts

site = Path(sys.argv[1]).resolve()
for module in (janus_data, cli):
    assert site in Path(module.__file__).resolve().parents, f"{module.__name__} from {module.__file__}"
configs = {name: load_config(name) for name in ("paper", "official", "tiny")}
Path("mine.yaml").write_text("preset: official\\nsynth:\\n  images_per_prompt: 4\\n")
mine = load_config("mine.yaml")
prompts = demo_prompts_path()  # what `janus demo` runs on, with load_config("tiny")
_, stats = load_prompts(prompts)
_, edit_stats = load_edits(demo_prompts_path(DEMO_EDITS))  # the demo's edits, their images beside them
print(json.dumps({
    "edits": [edit_stats.unique, edit_stats.with_reference],
    "presets": preset_names(),
    "prompts_file": str(prompts.resolve()),
    "prompts": stats.unique,
    "tiny_device": configs["tiny"].runtime.device,
    "mine_images": mine.synth.images_per_prompt,
    "mine_from_official": mine.rl == configs["official"].rl,
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout (a build never writes into the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root, src]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = root.glob("janus_r1-*.whl")
    return path


def test_wheel_holds_every_package_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"janus_data/presets/{name}.yaml" for name in PRESETS} <= names
    assert {"janus_data/assets/demo_prompts.jsonl", "cli.py"} <= names
    # Any data file added under the packages later must be matched by pyproject's package-data.
    shipped = [
        p.relative_to(REPO).as_posix()
        for package in ("janus_data", "janus_train")
        for p in (REPO / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    assert sorted(set(shipped) - names) == []


def test_installed_wheel_runs_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site, wheel]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # PYTHONPATH is searched before the venv's editable finder (appended to sys.meta_path): the install wins.
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK, site], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["presets"] == list(PRESETS)
    assert Path(result["prompts_file"]).is_relative_to(site.resolve())
    assert result["prompts"] == 8
    assert result["edits"] == [4, 4]  # four sources, each with its reference edit
    assert result["tiny_device"] == "cpu"
    assert result["mine_images"] == 4 and result["mine_from_official"]
