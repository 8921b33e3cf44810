"""The edit stages SIGKILLed mid-stage (kill_at.py), then rerun to completion (#18): synth, score, filter.

`janus data synth --task edit` is killed just before its third candidate's manifest part is renamed
into place (one candidate a batch): that candidate's bytes are already in its shard, its part is a
temp file. `janus data score --task edit` is killed just after its first part is published. Each
rerun of the same command must finish the stage with every planned row exactly once, and every
shard byte a row names must hash to the row's sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import kill_at
import polars as pl
import pytest
from procs import HANG_S
from test_edit_stages import EDITS, PER_SOURCE, frame, write_edits

from janus_data.models import tiny_model_path
from janus_data.storage import read_image_bytes

pytestmark = pytest.mark.slow  # real processes, each loading the tiny models

REPO = Path(__file__).resolve().parent.parent
PLANNED = PER_SOURCE * len(EDITS)  # 12 candidates: 2 Kontext + 2 Janus-Pro per edit
SCORE_BATCH = 4  # three score parts of four rows


def config(tmp_path: Path) -> Path:
    """tiny, one candidate per synth batch, four edits per score batch."""
    path = tmp_path / "edit-kill.yaml"
    path.write_text(
        "preset: tiny\n"
        "synth:\n  janus:\n    batch_size: 1\n"
        "edit:\n  threshold: 0.4\n  kontext:\n    batch_size: 1\n"
        f"score:\n  batch_size: {SCORE_BATCH}\n"
    )
    return path


def janus_args(stage: str, run: Path, cfg: Path, *extra: str | Path) -> list[str]:
    return ["data", stage, "--task", "edit", "--run", str(run), "--config", str(cfg), "--no-progress", *map(str, extra)]


def run_cli(args: list[str]) -> str:
    """`janus ARGS` to completion; its output with whitespace runs joined (rich wraps lines)."""
    res = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    return " ".join((res.stdout + res.stderr).split())


def killed(pattern: str, count: int, when: str, args: list[str]) -> None:
    res = subprocess.run(kill_at.command(pattern, count, when, *args), capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]


def assert_complete_images(run: Path) -> pl.DataFrame:
    """Every planned candidate once; every row's bytes hash to its sha256; every shard member referenced."""
    df = frame(run, "edit_images")
    assert df.height == PLANNED and df["image_id"].n_unique() == PLANNED
    assert df.group_by("prompt_id").len()["len"].to_list() == [PER_SOURCE] * len(EDITS)
    for row in df.iter_rows(named=True):
        data = read_image_bytes(run, row["shard"], row["offset"], row["length"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"], row["image_id"]
    for path in sorted(run.glob("images/edit-*/*/shard-*.tar")):
        with tarfile.open(path) as tar:
            members = sorted(m.name.split(".")[0] for m in tar.getmembers())
        rel = str(path.relative_to(run))
        assert members == sorted(df.filter(pl.col("shard") == rel)["image_id"]), rel
    assert not list(run.rglob("*.tmp"))
    return df


def test_synth_and_score_edit_killed_mid_stage_then_rerun_complete_once(tmp_path, janus_cache):
    for name in ("janus", "kontext", "internvl"):
        tiny_model_path(name)  # built here, not in the children
    edits = write_edits(tmp_path / "src")
    run = tmp_path / "run"
    cfg = config(tmp_path)
    synth = janus_args("synth", run, cfg, "--edits", edits)

    killed("*/manifests/edit_images/*/part-*.parquet", 3, "before", synth)
    partial = frame(run, "edit_images")
    assert partial.height == 2 and len(list(run.rglob(".part-*.tmp"))) == 1
    (shard,) = set(partial["shard"])
    end = int((partial["offset"] + partial["length"]).max())
    assert (run / shard).stat().st_size > end + 512  # the third candidate's bytes: an unreferenced tail
    run_cli(synth)
    images = assert_complete_images(run)
    assert "nothing to do" in run_cli(janus_args("synth", run, cfg))

    score = janus_args("score", run, cfg)
    killed("*/manifests/edit_scores/*part-*.parquet", 1, "after", score)
    first = frame(run, "edit_scores")
    assert 0 < first.height < PLANNED  # the first part is durable, the stage is not finished
    run_cli(score)
    scores = frame(run, "edit_scores")
    assert scores.height == PLANNED and scores["image_id"].n_unique() == PLANNED
    assert set(scores["image_id"]) == set(images["image_id"]) and set(scores["status"]) == {"ok"}
    kept = scores.join(first.select("image_id", "score_flw"), on="image_id", suffix="_first")
    assert kept.height == first.height and kept["score_flw"].to_list() == kept["score_flw_first"].to_list()
    assert not list(run.rglob("*.tmp"))
    assert "nothing to do" in run_cli(score)

    # filter --task edit: killed once the first task's shards are complete (its progress.json is
    # published), and again just before the finished build replaces sft_edit/; each rerun ends with
    # the bytes of an uninterrupted build.
    clean = Path(shutil.copytree(run, tmp_path / "clean"))
    run_cli(janus_args("filter", clean, cfg))
    filt = janus_args("filter", run, cfg)
    killed("*/sft_edit.build-*/edit/progress.json", 1, "after", filt)
    assert not (run / "sft_edit").exists() and len(list(run.glob("sft_edit.build-*"))) == 1
    killed("*/sft_edit", 1, "before", filt)
    run_cli(filt)
    resumed, uninterrupted = tree_hashes(run / "sft_edit"), tree_hashes(clean / "sft_edit")
    states = [json.loads((r / "sft_edit" / "state.json").read_text()) for r in (run, clean)]
    for state in states:  # what this call wrote differs (the rerun wrote only the rest); the rest is equal
        for task in state["tasks"].values():
            task.pop("written_now")
    assert states[0] == states[1] and resumed.pop("state.json") and uninterrupted.pop("state.json")
    assert resumed == uninterrupted and any(name.endswith(".tar") for name in resumed)
    manifest = "manifests/edit_samples/edit_samples.parquet"
    assert pl.read_parquet(run / manifest).equals(pl.read_parquet(clean / manifest))
    assert not list(run.glob("sft_edit.*")) and not list(run.rglob("*.tmp"))


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }
