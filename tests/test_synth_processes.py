"""Real processes: SIGKILL mid-run then rerun, and two ranks side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from janus_data.models import tiny_model_path

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


def test_sigkill_then_rerun_is_complete_without_duplicates(tmp_path, janus_cache):
    tiny_model_path("janus"), tiny_model_path("flux")  # build before timing anything
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    run = tmp_path / "run"
    cfg = batch_one_config(tmp_path)
    proc = subprocess.Popen(synth_cmd(run, prompts, cfg), stderr=subprocess.PIPE)
    parts_dir = run / "manifests" / "images"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if parts_dir.exists() and len(list(parts_dir.rglob("*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = manifest(run).height if parts_dir.exists() else 0
    res = subprocess.run(synth_cmd(run, prompts, cfg), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    df = manifest(run)
    assert df.height == 18 * 4 and df["image_id"].n_unique() == df.height
    assert killed and 0 < partial < df.height, (killed, partial)
    assert not list(run.rglob("*.tmp"))


def test_two_rank_processes_match_one_process(tmp_path, janus_cache):
    tiny_model_path("janus"), tiny_model_path("flux")
    prompts = write_prompts(tmp_path / "p.jsonl", 5)
    cfg, opts = batch_one_config(tmp_path), ["--images-per-prompt", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(synth_cmd(one, prompts, cfg, *opts), check=True, capture_output=True, timeout=300)
    procs = [
        subprocess.Popen(
            synth_cmd(two, prompts, cfg, *opts),
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"},
            stderr=subprocess.PIPE,
        )
        for r in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    a, b = manifest(one).sort("image_id"), manifest(two).sort("image_id")
    assert a["image_id"].to_list() == b["image_id"].to_list()
    assert set(b["rank"]) == {0, 1}
    assert a["sha256"].to_list() == b["sha256"].to_list()  # batch size 1: the same pixels
