"""The edit stages (#18): `janus data synth --task edit` and `janus data score --task edit` on the tiny models.

Counts, ids and seeds of the candidate edits, the prepared sources, resume (a rerun draws nothing and
loads no model; a deleted part is redrawn alone, byte for byte), S_flw / S_psv / R rows, error rows
judged again, and the CLI: bad input in one line before the heavy imports, the two commands end to end.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from test_cli_fast import janus, one_line_error
from typer.testing import CliRunner

from cli import app
from janus_data.config import load_config
from janus_data.dist import Shard
from janus_data.edit_score import run_edit_score
from janus_data.edit_synth import run_edit_synth
from janus_data.generators.janus_edit import center_crop
from janus_data.judge.types import EditJudgeResult, JudgeResult
from janus_data.manifest import part_files
from janus_data.seeds import derive_seed
from janus_data.storage import read_image_bytes

SIZES = [(64, 64), (80, 48), (48, 96)]  # a square, a wide and a tall source
EDITS = [
    {"source_image": "s0.png", "instruction": "make it blue", "id": "e0"},
    {"source_image": "s1.png", "instruction": "add a small hat", "reference_image": "s0.png"},
    {"source_image": "s2.png", "instruction": "remove the tree", "tags": ["remove"]},
]
PER_SOURCE = 4  # the tiny preset's edit.images_per_source: 2 kontext + 2 janus
BATCH_TOLERANCE = 2  # uint8 levels, batched vs alone: float rounding of batched kernels (docs/synth.md)


def write_edits(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(SIZES):
        pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"s{i}.png")
    path = root / "edits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EDITS))
    return path


def frame(run: Path, kind: str) -> pl.DataFrame:
    return pl.read_parquet([str(p) for p in part_files(run, kind)])


def no_model():
    raise AssertionError("a model was loaded")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    run = root / "run"
    cfg = load_config("tiny")
    synth = run_edit_synth(run, cfg, write_edits(root / "src"), progress=False)
    score = run_edit_score(run, cfg, progress=False)
    return root, run, synth, score


def test_synth_draws_images_per_source_split_between_the_editors(full_run):
    _, run, result, _ = full_run
    df = frame(run, "edit_images")
    edits = frame(run, "edits")
    assert edits.height == len(EDITS) and result.n_prompts == len(EDITS)
    assert df.height == PER_SOURCE * len(EDITS) == result.generated
    per = df.group_by("prompt_id", "generator").len()
    assert per.height == 2 * len(EDITS) and set(per["len"]) == {PER_SOURCE // 2}
    assert set(df["prompt_id"]) == set(edits["edit_id"])
    for row in df.iter_rows(named=True):
        gen, i, eid = row["generator"], row["index"], row["prompt_id"]
        assert row["image_id"] == f"{eid}-{gen}-{i:03d}"
        assert row["seed"] == derive_seed(0, eid, gen, i)
        assert row["shard"].startswith(f"images/edit-{gen}/rank00000/")
        data = read_image_bytes(run, row["shard"], row["offset"], row["length"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert Image.open(io.BytesIO(data)).size == (64, 64) == (row["width"], row["height"])
    assert not part_files(run, "images")  # the text-to-image manifest is untouched


def test_the_prepared_sources_are_the_editors_centre_crops(full_run):
    root, run, _, _ = full_run
    edits = frame(run, "edits").sort("source_id", nulls_last=True)
    for row in edits.iter_rows(named=True):
        assert row["source_path"] == f"edit_sources/{row['edit_id']}.png"
        i = [e.get("id") for e in EDITS].index(row["source_id"]) if row["source_id"] else None
        stored = Image.open(run / row["source_path"])
        assert stored.size == (64, 64)
        if i is not None:
            expected = center_crop(Image.open(root / "src" / EDITS[i]["source_image"]), 64)
            assert np.array_equal(np.asarray(stored), np.asarray(expected))
    refs = edits.filter(pl.col("reference_path").is_not_null())
    assert refs.height == 1 and (run / refs["reference_path"][0]).is_file()
    assert edits.filter(pl.col("instruction") == "remove the tree")["tags"].to_list() == [["remove"]]


def test_a_rerun_draws_nothing_and_loads_no_model(full_run):
    _, run, _, _ = full_run
    before = sorted(p.stat().st_size for p in run.glob("images/edit-*/*/*.tar"))
    again = run_edit_synth(run, load_config("tiny"), progress=False, factories={"kontext": no_model, "janus": no_model})
    assert again.generated == 0 and all(g.existing == g.planned for g in again.generators.values())
    assert sorted(p.stat().st_size for p in run.glob("images/edit-*/*/*.tar")) == before


def test_a_deleted_part_is_redrawn_alone_with_the_same_bytes(full_run, tmp_path):
    _, source_run, _, _ = full_run
    run = shutil.copytree(source_run, tmp_path / "run")
    before = frame(run, "edit_images")
    (part,) = part_files(run, "edit_images/kontext")
    gone = set(pl.read_parquet(part)["image_id"])
    part.unlink()  # its bytes stay in the shard, unreferenced: the next start cuts them off
    result = run_edit_synth(run, load_config("tiny"), progress=False)
    assert result.generators["kontext"].generated == len(gone) and result.generators["janus"].generated == 0
    assert result.shards_repaired == 1
    after = frame(run, "edit_images")
    assert after.height == before.height and after["image_id"].n_unique() == after.height
    same = before.select("image_id", "sha256").sort("image_id")
    assert after.select("image_id", "sha256").sort("image_id").equals(same)


def test_two_ranks_together_draw_and_judge_what_one_does(full_run, tmp_path):
    """`--rank r --world-size 2`: each rank owns its edits (int(edit_id) % 2), writes its own shards,
    and the two ranks' rows are the one-rank run's rows, byte for byte and score for score."""
    root, single, _, _ = full_run
    run, cfg = tmp_path / "run", load_config("tiny")
    for rank in (0, 1):
        run_edit_synth(run, cfg, root / "src" / "edits.jsonl", Shard(rank, 2), progress=False)
    for rank in (0, 1):
        run_edit_score(run, cfg, Shard(rank, 2), progress=False)
    images = frame(run, "edit_images")
    owner = images.select("image_id", pl.col("shard").str.extract(r"/rank(\d+)/").cast(pl.Int64).alias("rank"))
    ids = images["image_id"].str.split("-").list.first().map_elements(lambda e: int(e, 16) % 2, return_dtype=pl.Int64)
    assert owner["rank"].to_list() == ids.to_list() and set(owner["rank"]) == {0, 1}
    one = frame(single, "edit_images").sort("image_id")
    images = images.sort("image_id")
    assert images["image_id"].to_list() == one["image_id"].to_list()
    for mine_row, one_row in zip(images.iter_rows(named=True), one.iter_rows(named=True), strict=True):
        # the same seed per candidate: equal up to batched kernels' rounding (other batches per rank)
        a, b = (pixels_of(r, row) for r, row in ((run, mine_row), (single, one_row)))
        assert np.abs(a - b).max() <= BATCH_TOLERANCE, mine_row["image_id"]
    mine, theirs = (frame(r, "edit_scores").sort("image_id") for r in (run, single))
    assert mine["image_id"].to_list() == theirs["image_id"].to_list() and mine["status"].to_list() == (
        theirs["status"].to_list()
    )


def pixels_of(run: Path, row: dict) -> np.ndarray:
    data = read_image_bytes(run, row["shard"], row["offset"], row["length"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_score_gives_every_edit_s_flw_s_psv_and_r(full_run):
    _, run, synth, result = full_run
    df = frame(run, "edit_scores")
    assert df.height == synth.generated == result.written and set(df["status"]) == {"ok"}
    assert df["score"].to_list() == df["score_flw"].to_list()  # `score` is S_flw, for the t2i readers
    for row in df.iter_rows(named=True):
        assert 0 <= row["score_flw"] <= 1 and 0 <= row["score_psv"] <= 1
        assert row["reward"] == pytest.approx(1.0 * row["score_flw"] + 0.25 * row["score_psv"])
        assert row["reason"] == row["reason_flw"] and isinstance(row["reason_psv"], str)
    assert set(result.by_generator["generator"]) == {"janus", "kontext"}


class FixedJudge:
    """S_flw 0.8 and S_psv 0.4 for every edit; counts what it judged."""

    model_id = "fixed"

    def __init__(self):
        self.judged = 0

    def score_edits(self, instructions, originals, edited):
        assert len(instructions) == len(originals) == len(edited)
        for original in originals:
            Image.open(io.BytesIO(original)).load()  # the prepared source, as bytes
        self.judged += len(instructions)
        side = lambda s: JudgeResult(s, "yes" if s >= 0.5 else "no", f"S={s}", False)  # noqa: E731
        return [EditJudgeResult(side(0.8), side(0.4)) for _ in instructions]


def test_weights_are_settings_and_error_rows_are_judged_again(full_run, tmp_path):
    _, source_run, _, _ = full_run
    run = shutil.copytree(source_run, tmp_path / "run")
    shutil.rmtree(run / "manifests/edit_scores")
    cfg = load_config("tiny", {"edit": {"reward_flw": 2.0, "reward_psv": 0.5}})
    eid = frame(run, "edits")["edit_id"][0]
    original = run / f"edit_sources/{eid}.png"
    kept = original.read_bytes()
    original.write_bytes(b"not a png")
    judge = FixedJudge()
    first = run_edit_score(run, cfg, progress=False, judge=judge)
    df = frame(run, "edit_scores")
    bad = df.filter(pl.col("prompt_id") == eid)
    assert first.errors == bad.height == PER_SOURCE and set(bad["status"]) == {"error"}
    assert bad["error"][0].startswith("original undecodable") and bad["reward"].is_null().all()
    good = df.filter(pl.col("prompt_id") != eid)
    assert judge.judged == good.height and good["reward"].to_list() == pytest.approx(
        [2.0 * 0.8 + 0.5 * 0.4] * good.height
    )
    original.write_bytes(kept)
    second = run_edit_score(run, cfg, progress=False, judge=judge)
    assert second.retried == PER_SOURCE and second.written == PER_SOURCE and judge.judged == df.height
    df = frame(run, "edit_scores")
    assert df.height == df["image_id"].n_unique() and set(df["status"]) == {"ok"}
    third = run_edit_score(run, cfg, progress=False, judge=judge)
    assert third.written == 0 and judge.judged == df.height


# ---------------------------------------------------------------- the CLI


def test_bad_edit_sources_fail_in_one_line_before_the_heavy_imports(tmp_path):
    src = write_edits(tmp_path / "src")
    code, err, heavy = janus(
        "data", "synth", "--task", "edit", "--edits", tmp_path / "no.jsonl", "--run", tmp_path / "r"
    )
    assert code == 2 and heavy == []
    one_line_error(err, "edit source not found")
    (src.parent / "s1.png").unlink()
    code, err, heavy = janus("data", "synth", "--task", "edit", "--edits", src, "--run", tmp_path / "r")
    assert code == 2 and heavy == []
    one_line_error(err, "line 2", "source_image s1.png not found")
    (src.parent / "s1.png").write_text("not an image")
    code, err, heavy = janus(
        "data", "synth", "--task", "edit", "--edits", src, "--run", tmp_path / "r", "--config", "tiny"
    )
    assert code == 2 and not {"torch", "transformers", "diffusers"} & set(heavy)
    one_line_error(err, "line 2", "source_image cannot be decoded")
    code, err, heavy = janus("data", "score", "--task", "edit", "--run", tmp_path / "r")
    assert code == 2 and heavy == []
    one_line_error(err, "no edit image manifest")
    code, err, _ = janus("data", "synth", "--edits", src, "--run", tmp_path / "r")
    one_line_error(err, "--task edit")


def test_the_cli_runs_both_edit_stages_end_to_end(tmp_path):
    src = write_edits(tmp_path / "src")
    run = tmp_path / "run"

    def cli(*args):
        res = CliRunner().invoke(app, ["data", *map(str, args), "--run", str(run), "--no-progress"])
        assert res.exit_code == 0, res.output
        return res.output

    out = cli("synth", "--task", "edit", "--edits", src, "--config", "tiny")
    assert "3 edits in run" in out and "12/12 images complete" in out
    out = cli("score", "--task", "edit", "--config", "tiny")
    assert "mean S_flw" in out and "12 rows written" in out
    assert frame(run, "edit_scores").height == 12
    assert "nothing to do" in cli("synth", "--task", "edit", "--config", "tiny")
    assert "nothing to do" in cli("score", "--task", "edit")


def test_the_edit_split_and_its_checks():
    from janus_data.config import EditConfig, edit_split_counts
    from janus_data.errors import ConfigError

    assert edit_split_counts(EditConfig()) == {"kontext": 4, "janus": 4}
    assert edit_split_counts(EditConfig(images_per_source=5, kontext_share=0.2)) == {"kontext": 1, "janus": 4}
    assert edit_split_counts(EditConfig(images_per_source=3, generators=("janus",))) == {"janus": 3}
    for bad in ({"generators": ["flux"]}, {"generators": []}, {"kontext_share": 1.5}, {"images_per_source": 0}):
        with pytest.raises(ConfigError):
            load_config("tiny", {"edit": bad})
