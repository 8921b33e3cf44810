"""`janus data filter`: every sample obeys its task's rule; shards are deterministic, resumable, readable."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import webdataset
from PIL import Image
from procs import HANG_S

from janus_data.config import load_config, with_overrides
from janus_data.errors import RunDirError
from janus_data.filter import FilterError, run_filter
from janus_data.score import run_score
from janus_data.synth import run_synth
from janus_data.vq import VQEncoder
from janus_data.wds import decode_sample, iter_samples, list_shards

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red cube on a table", "a yellow taxi", "a lighthouse at night", "two dogs in the snow"]
THRESHOLD = 0.6
CAPS = {"t2i_per_prompt": 2, "judge_per_prompt": 3, "regen_per_prompt": 2}


def cfg(**filter_overrides):
    filt = {"threshold": THRESHOLD, "shard_bytes": 65536, "vq_batch_size": 4, **CAPS, **filter_overrides}
    return with_overrides(load_config("tiny"), {"synth": {"images_per_prompt": 8}, "filter": filt})


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, janus_cache) -> Path:
    """A synthesized and scored tiny run: 4 prompts x 8 images."""
    root = tmp_path_factory.mktemp("filter")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run_synth(root / "run", cfg(), prompts, progress=False)
    run_score(root / "run", cfg(), progress=False)
    return root / "run"


@pytest.fixture
def run(scored_run, tmp_path) -> Path:
    return Path(shutil.copytree(scored_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def built(scored_run, tmp_path_factory):
    run = Path(shutil.copytree(scored_run, tmp_path_factory.mktemp("built") / "run"))
    result = run_filter(run, cfg(), progress=False)
    return run, result


def scores_of(run: Path) -> dict[str, dict]:
    df = pl.scan_parquet(str(run / "manifests/scores/**/*.parquet")).collect()
    return {r["image_id"]: r for r in df.iter_rows(named=True)}


def images_of(run: Path) -> dict[str, dict]:
    df = pl.scan_parquet(str(run / "manifests/images/**/*.parquet")).collect()
    return {r["image_id"]: r for r in df.iter_rows(named=True)}


def labelled(score_row: dict, threshold: float = THRESHOLD) -> str | None:
    """The 'agree' label of a score row, from S and the first word of its reason (the rule, restated)."""
    words = re.findall(r"\w+", score_row["reason"] or "")
    answer = words[0].lower() if words else ("yes" if score_row["score"] >= threshold else "no")
    good = score_row["score"] >= threshold
    return "Yes" if good and answer == "yes" else "No" if not good and answer == "no" else None


def assert_reason_is_the_judges(rec: dict, judged: str) -> None:
    """The target reason is the judge's own, its first word's case normalised: never the opposite answer."""
    opposite = {"Yes": "No", "No": "Yes"}[rec["label"]]
    first = re.findall(r"\w+", rec["reason"])[0]
    assert first == rec["label"] and first.lower() != opposite.lower(), rec
    assert rec["reason"].lower() == judged.lstrip(" .,!?*-").lower() or (not judged and rec["reason"] == first + ".")


def task_samples(run: Path, task: str) -> list[dict]:
    return [decode_sample(s) for s in iter_samples(list_shards(run / "sft" / task))]


def shard_hashes(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "sft").rglob("*.tar"))
    }


def test_pool_has_good_and_bad_images(scored_run):
    s = [r["score"] for r in scores_of(scored_run).values()]
    assert any(x >= THRESHOLD for x in s) and any(x < THRESHOLD for x in s)


def test_t2i_samples_obey_the_rule(built):
    run, result = built
    scores, images = scores_of(run), images_of(run)
    samples = task_samples(run, "t2i")
    assert len(samples) == result.tasks["t2i"].samples > 0
    per_prompt = Counter()
    for s in samples:
        rec = s["json"]
        (image_id,) = rec["image_ids"]
        assert rec["task"] == "t2i" and rec["prompt_id"] == images[image_id]["prompt_id"]
        assert labelled(scores[image_id]) == "Yes" and rec["scores"] == [scores[image_id]["score"]]
        assert set(s) >= {"json", "image.png", "image.npy"}
        assert s["image.npy"].shape == (16,) and s["image.npy"].dtype == np.int32
        per_prompt[rec["prompt_id"]] += 1
    assert max(per_prompt.values()) <= CAPS["t2i_per_prompt"]
    # every good image (S >= threshold, the reason answers yes) of a prompt with fewer than the cap is used
    goods = Counter(images[i]["prompt_id"] for i, r in scores.items() if labelled(r) == "Yes")
    assert all(per_prompt[p] == min(n, CAPS["t2i_per_prompt"]) for p, n in goods.items())


def test_judge_samples_are_balanced_and_labelled(built):
    run, result = built
    scores = scores_of(run)
    samples = task_samples(run, "judge")
    labels = Counter(s["json"]["label"] for s in samples)
    assert labels["Yes"] == labels["No"] > 0 and len(samples) == result.tasks["judge"].samples
    for s in samples:
        rec = s["json"]
        (image_id,) = rec["image_ids"]
        assert rec["label"] == labelled(scores[image_id])  # 'agree': S and the judge's own answer agree
        assert_reason_is_the_judges(rec, scores[image_id]["reason"])
        assert set(s) == {"__key__", "__shard__", "json", "image.png"}  # no codes: read through SigLIP


def test_regen_pairs_share_a_prompt_and_order(built):
    run, result = built
    scores, images = scores_of(run), images_of(run)
    samples = task_samples(run, "regen")
    assert len(samples) == result.tasks["regen"].samples > 0
    for s in samples:
        rec = s["json"]
        bad, good = rec["image_ids"]
        assert images[bad]["prompt_id"] == images[good]["prompt_id"] == rec["prompt_id"]
        s_bad, s_good = scores[bad]["score"], scores[good]["score"]
        assert s_bad < THRESHOLD <= s_good and s_good > s_bad and rec["scores"] == [s_bad, s_good]
        assert labelled(scores[bad]) == "No" and labelled(scores[good]) == "Yes"
        assert rec["label"] == "No"
        assert_reason_is_the_judges(rec, scores[bad]["reason"])
        assert s["bad.npy"].shape == s["good.npy"].shape == (16,)
    per_prompt = Counter(s["json"]["prompt_id"] for s in samples)
    assert max(per_prompt.values()) <= CAPS["regen_per_prompt"]


def test_vq_codes_equal_encoding_the_stored_image_again(built):
    """Every image's codes are VQ(stored image): for a Janus image VQ(decode(its sampled codes)), as SFT sees it."""
    run, _ = built
    vq = VQEncoder("tiny:janus", torch.device("cpu"), torch.float32)
    for task, roles in (("t2i", ("image",)), ("regen", ("bad", "good"))):
        for s in task_samples(run, task):
            for role in roles:
                again = vq.encode([s[f"{role}.png"]])[0]
                assert np.array_equal(again, s[f"{role}.npy"]), (task, s["__key__"], role)
    # Janus bad images are regeneration contexts too (the released code's key mismatch drops them all).
    contexts = Counter(s["json"]["generators"][0] for s in task_samples(run, "regen"))
    assert contexts["janus"] > 0, contexts


def test_image_bytes_are_the_stored_bytes(built):
    run, _ = built
    images = images_of(run)
    for raw in iter_samples(list_shards(run / "sft" / "regen")):
        bad, good = json.loads(raw["json"])["image_ids"]
        assert hashlib.sha256(raw["bad.png"]).hexdigest() == images[bad]["sha256"]
        assert hashlib.sha256(raw["good.png"]).hexdigest() == images[good]["sha256"]


def test_samples_manifest_points_at_the_right_shards(built):
    run, result = built
    df = pl.read_parquet(run / "manifests/samples/samples.parquet")
    assert df.height == sum(t.samples for t in result.tasks.values()) and df["key"].n_unique() == df.height
    where = {}
    for task in ("t2i", "judge", "regen"):
        for s in iter_samples(list_shards(run / "sft" / task)):
            where[s["__key__"]] = f"sft/{task}/{s['__shard__']}"
    assert dict(zip(df["key"], df["shard"], strict=True)) == where
    assert result.tasks["t2i"].shards >= 2  # small shard_bytes: several shards per task


def test_readable_by_webdataset_and_hf_datasets(built):
    import datasets

    run, result = built
    urls = [str(p) for p in list_shards(run / "sft" / "regen")]
    ds = webdataset.WebDataset(urls, shardshuffle=False)
    keys = [sample["__key__"] for sample in ds]
    assert len(keys) == result.tasks["regen"].samples
    # One load per task: datasets infers one column set per call, and each task has its own.
    columns = {"t2i": {"json", "image.png", "image.npy"}, "judge": {"json", "image.png"}}
    columns["regen"] = {"json", "bad.png", "bad.npy", "good.png", "good.npy"}
    for task, expected in columns.items():
        files = [str(p) for p in list_shards(run / "sft" / task)]
        loaded = datasets.load_dataset("webdataset", data_files={"train": files}, split="train")
        assert len(loaded) == result.tasks[task].samples
        assert expected <= set(loaded.column_names)
        row = loaded[0]
        assert row["json"]["task"] == task
        assert isinstance(row["bad.png" if task == "regen" else "image.png"], Image.Image)


def test_rerun_does_nothing_and_changed_threshold_rebuilds(run):
    first = run_filter(run, cfg(), progress=False)
    before = shard_hashes(run)
    again = run_filter(run, cfg(), progress=False)
    assert first.rebuilt and not again.rebuilt
    assert shard_hashes(run) == before
    changed = run_filter(run, cfg(threshold=0.7), progress=False)
    assert changed.rebuilt
    for s in task_samples(run, "t2i"):
        assert s["json"]["threshold"] == 0.7 and s["json"]["scores"][0] >= 0.7
    assert not list(run.glob("sft.*"))  # no build or old directories left


def test_same_inputs_give_byte_identical_shards(built, run):
    built_run, _ = built
    run_filter(run, cfg(), progress=False)
    assert shard_hashes(run) == shard_hashes(built_run)
    a = pl.read_parquet(run / "manifests/samples/samples.parquet")
    b = pl.read_parquet(built_run / "manifests/samples/samples.parquet")
    assert a.equals(b)


class Boom(Exception):
    """The simulated kill of a filter build."""


def dying_encoder(at: int):
    """An encoder factory for `run_filter`: the tiny VQ, whose `at`-th encode call raises Boom (a kill mid-build)."""
    real = VQEncoder("tiny:janus", torch.device("cpu"), torch.float32)

    class DiesMidway:
        model_id = real.model_id
        calls = 0

        def encode(self, images):
            DiesMidway.calls += 1
            if DiesMidway.calls == at:
                raise Boom
            return real.encode(images)

    return DiesMidway


def test_killed_run_resumes_to_identical_shards(built, run):
    built_run, _ = built
    with pytest.raises(Boom):
        run_filter(run, cfg(), progress=False, encoder=dying_encoder(4))
    assert not (run / "sft").exists() and list(run.glob("sft.build-*"))
    result = run_filter(run, cfg(), progress=False)
    assert result.rebuilt
    assert shard_hashes(run) == shard_hashes(built_run)


def test_no_score_manifest_is_a_clear_error(tmp_path, scored_run):
    run = Path(shutil.copytree(scored_run, tmp_path / "run"))
    shutil.rmtree(run / "manifests" / "scores")
    with pytest.raises(RunDirError, match="no scores manifest"):
        run_filter(run, cfg(), progress=False)


def test_no_passing_image_is_a_clear_error(run):
    with pytest.raises(FilterError, match=r"no sample at threshold 1\.0"):
        run_filter(run, cfg(threshold=1.0), progress=False)
    assert not (run / "sft").exists()


@pytest.mark.slow
def test_cli_filter_and_bad_threshold(run):
    base = [sys.executable, str(REPO / "cli.py"), "data", "filter", "--run", str(run), "--no-progress"]
    bad = subprocess.run([*base, "--threshold", "1.5"], capture_output=True, text=True, timeout=HANG_S)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "threshold" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    ok = subprocess.run([*base, "--threshold", str(THRESHOLD)], capture_output=True, text=True, timeout=HANG_S)
    assert ok.returncode == 0, ok.stderr
    assert "self-evaluation" in ok.stderr and "runs dry" in ok.stderr
    assert "error" not in ok.stderr


def test_error_and_flagged_rows_are_excluded_and_counted(run):
    parts = sorted((run / "manifests" / "scores").rglob("*.parquet"))
    df = pl.read_parquet(parts[0])
    bad_ids = df["image_id"].head(3).to_list()
    df = df.with_columns(
        pl.when(pl.col("image_id") == bad_ids[0])
        .then(pl.lit("error"))
        .when(pl.col("image_id").is_in(bad_ids[1:]))
        .then(pl.lit("flagged"))
        .otherwise(pl.col("status"))
        .alias("status")
    )
    df.write_parquet(parts[0])
    result = run_filter(run, cfg(), progress=False)
    assert result.excluded == {"error": 1, "flagged": 2}
    used = {i for task in ("t2i", "judge", "regen") for s in task_samples(run, task) for i in s["json"]["image_ids"]}
    assert not used & set(bad_ids)


def test_lost_samples_manifest_is_rewritten_without_rebuilding(run):
    """Killed between the shard swap and the manifest write: a rerun writes the manifest only."""
    run_filter(run, cfg(), progress=False)
    manifest = run / "manifests/samples/samples.parquet"
    expected = pl.read_parquet(manifest)
    before = shard_hashes(run)
    manifest.unlink()
    again = run_filter(run, cfg(), progress=False)
    assert not again.rebuilt and shard_hashes(run) == before
    assert pl.read_parquet(manifest).equals(expected)
