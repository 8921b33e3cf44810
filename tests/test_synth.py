"""The synth stage in process: counts, files, seeds, resume, sharding across ranks."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from janus_data.config import load_config
from janus_data.dist import Shard
from janus_data.manifest import part_files
from janus_data.storage import read_image_bytes
from janus_data.synth import run_synth

PROMPTS = [
    {"id": "p0", "prompt": "a photo of two red apples", "tags": ["counting"]},
    {"id": "p1", "prompt": "a blue bicycle left of a hydrant"},
    {"id": "p2", "prompt": "three cats on a sofa"},
]


def write_prompts(path: Path, rows=PROMPTS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny(**synth):
    return load_config("tiny", {"synth": synth})


def images(run: Path) -> pl.DataFrame:
    return pl.scan_parquet(str(run / "manifests/images/**/*.parquet")).collect()


def pixels(run: Path, row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(read_image_bytes(run, row["shard"], row["offset"], row["length"]))))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, janus_cache):
    root = tmp_path_factory.mktemp("synth")
    run = root / "run"
    result = run_synth(run, load_config("tiny"), write_prompts(root / "p.jsonl"), progress=False)
    return run, result


def test_eighteen_images_per_prompt_nine_per_generator(full_run):
    run, result = full_run
    df = images(run)
    assert df.height == 18 * len(PROMPTS)
    per = df.group_by("prompt_id", "generator").len()
    assert per.height == 2 * len(PROMPTS) and set(per["len"]) == {9}
    assert df["image_id"].n_unique() == df.height
    assert df["seed"].n_unique() == df.height
    assert result.generated == df.height


def test_every_image_opens_at_the_configured_size_and_matches_its_hash(full_run):
    run, _ = full_run
    for row in images(run).iter_rows(named=True):
        data = read_image_bytes(run, row["shard"], row["offset"], row["length"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.size == (64, 64) == (row["width"], row["height"])


def test_shards_are_plain_tars_named_by_image_id(full_run):
    run, _ = full_run
    df = images(run)
    shard_members_match_manifest(run)
    assert df["shard"].n_unique() == 2 * 1  # 27 images per generator fit one 32-image shard
    assert all(m == f"{i}.png" for i, m in zip(df["image_id"], df["member"], strict=True))
    assert all("." not in i for i in df["image_id"])


def test_manifest_is_read_by_polars_and_pandas(full_run):
    run, _ = full_run
    lazy = pl.scan_parquet(str(run / "manifests/images/**/*.parquet"))
    assert lazy.select(pl.len()).collect().item() == 18 * len(PROMPTS)
    pd = pytest.importorskip("pandas")
    frame = pd.concat(pd.read_parquet(p) for p in part_files(run, "images"))
    assert len(frame) == 18 * len(PROMPTS)
    prompts = pl.read_parquet(run / "manifests/prompts/prompts.parquet")
    assert prompts.height == len(PROMPTS) and set(df_ids := images(run)["prompt_id"]) == set(prompts["prompt_id"])
    assert df_ids.n_unique() == len(PROMPTS)


def test_rerun_does_nothing_and_loads_no_model(full_run):
    run, _ = full_run

    def refuse():
        raise AssertionError("a model was loaded on a complete run")

    result = run_synth(run, load_config("tiny"), progress=False, factories={"flux": refuse, "janus": refuse})
    assert result.generated == 0
    assert all(g.existing == g.planned == 9 * len(PROMPTS) for g in result.generators.values())


def shard_members_match_manifest(run: Path) -> None:
    df = images(run)
    on_disk = sorted(p.relative_to(run).as_posix() for p in (run / "images").rglob("*.tar"))
    assert on_disk == sorted(df["shard"].unique())
    for shard, group in df.group_by("shard"):
        with tarfile.open(run / shard[0]) as tar:
            assert sorted(tar.getnames()) == sorted(group["member"].to_list())


def test_a_kill_mid_batch_is_repaired_and_regenerated_identically(tmp_path, janus_cache):
    run = tmp_path / "run"
    cfg = tiny(images_per_prompt=4, shard_images=4, janus={"batch_size": 2}, flux={"batch_size": 2})
    run_synth(run, cfg, write_prompts(tmp_path / "p.jsonl"), progress=False)
    before = images(run).sort("image_id")
    assert before["shard"].n_unique() > 2  # rolled over to new shards
    # A kill after a batch's bytes were fsynced but before its manifest part appeared: the
    # newest part of each generator is lost and its shard ends with unreferenced bytes.
    for gen in ("flux", "janus"):
        newest = max(part_files(run, f"images/{gen}"), key=lambda p: p.stat().st_mtime_ns)
        newest.unlink()
    with open(sorted((run / "images" / "janus").rglob("*.tar"))[-1], "ab") as fh:
        fh.write(b"half a member")
    result = run_synth(run, cfg, progress=False)
    assert result.shards_repaired == 2 and result.generated == 4
    after = images(run).sort("image_id")
    assert after["image_id"].to_list() == before["image_id"].to_list()
    assert after["sha256"].to_list() == before["sha256"].to_list()
    shard_members_match_manifest(run)


def test_two_ranks_equal_one_process_at_batch_one(tmp_path, janus_cache):
    prompts = write_prompts(tmp_path / "p.jsonl")
    cfg = tiny(images_per_prompt=4, janus={"batch_size": 1}, flux={"batch_size": 1})
    one, two = tmp_path / "one", tmp_path / "two"
    run_synth(one, cfg, prompts, progress=False)
    for rank in (0, 1):
        run_synth(two, cfg, prompts, Shard(rank, 2), progress=False)
    a, b = images(one).sort("image_id"), images(two).sort("image_id")
    assert a["image_id"].to_list() == b["image_id"].to_list()
    assert a["sha256"].to_list() == b["sha256"].to_list()
    assert set(b["rank"]) == {0, 1}


def test_larger_batches_change_pixels_by_at_most_rounding(tmp_path, janus_cache):
    """Batched float maths may move a pixel by an 8-bit step; Janus tokens are batch-invariant."""
    prompts = write_prompts(tmp_path / "p.jsonl")
    small = tiny(images_per_prompt=4, janus={"batch_size": 1}, flux={"batch_size": 1})
    big = tiny(images_per_prompt=4, janus={"batch_size": 6}, flux={"batch_size": 6})
    run_synth(tmp_path / "b1", small, prompts, progress=False)
    run_synth(tmp_path / "b6", big, prompts, progress=False)
    a = {r["image_id"]: r for r in images(tmp_path / "b1").iter_rows(named=True)}
    for row in images(tmp_path / "b6").iter_rows(named=True):
        diff = np.abs(
            pixels(tmp_path / "b6", row).astype(int) - pixels(tmp_path / "b1", a[row["image_id"]]).astype(int)
        )
        assert diff.max() <= 2, (row["image_id"], diff.max())


def test_sealed_shards_stream_through_webdataset(full_run):
    wds = pytest.importorskip("webdataset")
    run, _ = full_run
    df = images(run)
    urls = [str(run / s) for s in sorted(df["shard"].unique())]
    keys = [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(keys) == sorted(df["image_id"].to_list())


def test_contact_sheet_has_a_row_per_prompt(full_run, tmp_path):
    from janus_data.contact import contact_sheet

    run, _ = full_run
    sheet = Image.open(contact_sheet(run, tmp_path / "sheet.png", thumb=32, label=10))
    assert sheet.size == (18 * 32, len(PROMPTS) * (32 + 10))
