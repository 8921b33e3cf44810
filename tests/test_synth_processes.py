"""Real processes: SIGKILL mid-run then rerun, and two ranks side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import kill_at
import polars as pl
import pytest
from procs import HANG_S

from janus_data.models import tiny_model_path

pytestmark = pytest.mark.slow  # real processes, each loading the tiny models

REPO = Path(__file__).resolve().parent.parent


def synth_cmd(run: Path, prompts: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "cli.py"),
        "data",
        "synth",
        "--run",
        str(run),
        "--prompts",
        str(prompts),
        "--config",
        str(config),
        "--no-progress",
        *extra,
    ]


def batch_one_config(tmp_path: Path) -> Path:
    path = tmp_path / "batch1.yaml"
    path.write_text("preset: tiny\nsynth:\n  janus:\n    batch_size: 1\n  flux:\n    batch_size: 1\n")
    return path


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"a photo of {i} red cubes"}) + "\n" for i in range(n)))
    return path


def manifest(run: Path) -> pl.DataFrame:
    return pl.scan_parquet(str(run / "manifests/images/**/*.parquet")).collect()


def test_sigkill_mid_batch_then_rerun_is_complete_without_duplicates(tmp_path, janus_cache):
    """SIGKILL as the third batch (one image each) is about to publish its manifest part: its bytes
    are already in the shard, its part is a temp file. The rerun repairs, regenerates, doubles nothing."""
    tiny_model_path("janus"), tiny_model_path("flux")  # built here, not in the child
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    run = tmp_path / "run"
    cfg = batch_one_config(tmp_path)
    argv = synth_cmd(run, prompts, cfg)[2:]  # the janus arguments, without python and cli.py
    killed = subprocess.run(
        kill_at.command("*/manifests/images/*/part-*.parquet", 3, "before", *argv),
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = manifest(run)
    assert partial.height == 2  # two batches of one image published, the third not
    assert len(list(run.rglob(".part-*.tmp"))) == 1  # the third part, written but never renamed
    (shard,) = set(partial["shard"])
    end = int((partial["offset"] + partial["length"]).max())
    assert (run / shard).stat().st_size > end + 512  # the third image's bytes: an unreferenced tail
    res = subprocess.run(synth_cmd(run, prompts, cfg), capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr
    df = manifest(run)
    assert df.height == 18 * 4 and df["image_id"].n_unique() == df.height
    assert not list(run.rglob("*.tmp"))
    for path in sorted(run.glob("images/*/*/shard-*.tar")):  # repaired and sealed: every member referenced
        with tarfile.open(path) as tar:
            members = sorted(m.name.split(".")[0] for m in tar.getmembers())
        rel = str(path.relative_to(run))
        assert members == sorted(df.filter(pl.col("shard") == rel)["image_id"]), rel


def test_two_rank_processes_match_one_process(tmp_path, janus_cache):
    tiny_model_path("janus"), tiny_model_path("flux")
    prompts = write_prompts(tmp_path / "p.jsonl", 5)
    cfg, opts = batch_one_config(tmp_path), ["--images-per-prompt", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(synth_cmd(one, prompts, cfg, *opts), check=True, capture_output=True, timeout=HANG_S)
    procs = [
        subprocess.Popen(
            synth_cmd(two, prompts, cfg, *opts),
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"},
            stderr=subprocess.PIPE,
        )
        for r in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=HANG_S) == 0, p.stderr.read().decode()
    a, b = manifest(one).sort("image_id"), manifest(two).sort("image_id")
    assert a["image_id"].to_list() == b["image_id"].to_list()
    assert set(b["rank"]) == {0, 1}
    assert a["sha256"].to_list() == b["sha256"].to_list()  # batch size 1: the same pixels
