"""Scoring a generations manifest with GenEval's rules (hand-made images and detections), the tiny
detector and CLIP on real files, and `janus eval geneval` end to end on tiny:janus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from test_cli_fast import janus, one_line_error

from janus_data.config import load_config
from janus_data.errors import PromptError
from janus_data.eval_results import GENEVAL_INTROSPECT, GENEVAL_SUMMARY
from janus_data.manifest import manifest_dir, part_files, write_parquet_atomic
from janus_eval.detect import Instances, mask_boxes
from janus_eval.gen_manifest import GENERATIONS_SCHEMA as GEN_SCHEMA
from janus_eval.geneval import GENEVAL_SCHEMA, INTROSPECT_SCHEMA, SUMMARY_SCHEMA, Scorers, score_generations
from janus_eval.geneval_rules import CLASSES, TAGS

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "janus_data" / "assets" / "geneval_demo.jsonl"
RED, BLUE = (255, 0, 0), (0, 0, 255)
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}
TWO_APPLES = {
    "tag": "counting",
    "include": [{"class": "apple", "count": 2}],
    "exclude": [{"class": "apple", "count": 3}],
    "prompt": "a photo of two apples",
}
# (prompt, sample, round, final, answer, what the image shows) -> GenEval's verdict
CHAINS = [
    ("car", 0, 0, False, "No", [("car", BLUE)]),  # blue car: wrong; the model said No, so it redrew
    ("car", 0, 1, True, "Yes", [("car", RED)]),  # red car: right
    ("car", 1, 0, True, "Yes", [("car", RED)]),  # right at once
    ("apples", 0, 0, True, "Yes", [("apple", RED)] * 3),  # three apples for "two": wrong, the model said Yes
    ("apples", 1, 0, False, "No", [("apple", RED)] * 2),  # two apples: right, but the model said No
    ("apples", 1, 1, True, "Yes", [("apple", RED)] * 2),  # still right
]
EXPECTED = [False, True, True, False, True, True]


def write_generations(out: Path, chains=CHAINS, metadata: dict | None = None) -> None:
    """A hand-made OUT: one 40x80 PNG per image (objects as coloured 8x8 squares in a row) and its manifest."""
    meta = {"car": RED_CAR, "apples": TWO_APPLES}
    rows = []
    for prompt, sample, rnd, final, answer, objects in chains:
        line = metadata or meta[prompt]
        gen_id = f"{prompt}-{sample}-r{rnd}"
        pixels = np.full((40, 80, 3), 255, dtype=np.uint8)
        for k, (_, colour) in enumerate(objects):
            pixels[10:18, 10 + 12 * k : 18 + 12 * k] = colour
        (out / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out / "images" / f"{gen_id}.png")
        rows.append(
            {
                "gen_id": gen_id,
                "checkpoint": "tiny:janus",
                "label": "tiny_janus",
                "prompt_id": prompt,
                "prompt": line["prompt"],
                "tags": [line["tag"]],
                "metadata": json.dumps(line),
                "sample": sample,
                "round": rnd,
                "seed": 0,
                "image_path": f"images/{gen_id}.png",
                "answer": answer,
                "reason": None,
                "final": final,
                "context_gen_id": f"{prompt}-{sample}-r{rnd - 1}" if rnd else None,
            }
        )
    frame = pl.DataFrame(rows, schema=GEN_SCHEMA)
    write_parquet_atomic(frame, manifest_dir(out, "generations") / "part-0.parquet")


class SquareDetector:
    """Finds the coloured squares `write_generations` draws: one is a car, several are apples."""

    label_map: ClassVar[dict[int, str]] = dict(enumerate(CLASSES))

    def detect(self, images):
        out = []
        for image in images:
            pixels = np.asarray(image)
            squares = [k for k in range(6) if (pixels[14, 14 + 12 * k] != 255).any()]
            masks = torch.zeros(len(squares), *pixels.shape[:2], dtype=torch.bool)
            for i, k in enumerate(squares):
                masks[i, 10:18, 10 + 12 * k : 18 + 12 * k] = True
            names = ["car" if len(squares) == 1 else "apple"] * len(squares)
            labels = torch.tensor([CLASSES.index(n) for n in names], dtype=torch.long)
            out.append(Instances(labels, torch.full((len(squares),), 0.95), mask_boxes(masks), masks))
        return out


class CentreColour:
    """CLIP stand-in: the colour of the crop's centre pixel (the masked object, not the grey around it)."""

    def __init__(self) -> None:
        self.crops: list[Image.Image] = []

    def classify(self, crops, classes):
        self.crops += crops
        names = {RED: "red", BLUE: "blue"}
        return [names.get(tuple(np.asarray(c)[c.height // 2, c.width // 2]), "white") for c in crops]


class FakeScorers(Scorers):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._detector, self._clip = SquareDetector(), CentreColour()


@pytest.fixture
def cfg():
    return load_config("tiny", {})


def test_verdicts_summary_and_aha_table_from_a_hand_made_manifest(tmp_path, cfg):
    write_generations(tmp_path)
    scorers = FakeScorers(cfg)
    result = score_generations(tmp_path, cfg, scorers=scorers, progress=False)
    assert (result.planned, result.existing, result.written) == (6, 0, 6)
    rows = pl.read_parquet(part_files(tmp_path, "geneval")).sort("prompt_id", "sample", "round")
    assert rows.schema == pl.Schema(GENEVAL_SCHEMA)
    by_id = dict(zip(rows["gen_id"], rows["correct"], strict=True))
    assert [by_id[f"{p}-{s}-r{r}"] for p, s, r, *_ in CHAINS] == EXPECTED
    reasons = dict(zip(rows["gen_id"], rows["reason"], strict=True))
    assert reasons["car-0-r0"] == "expected red car>=1, found 0 red; and 1 blue"
    assert reasons["apples-0-r0"] == "expected apple<3, found 3" and reasons["car-0-r1"] == ""
    assert all(c.size == (8, 8) for c in scorers.clip.crops)  # the car's box, composited on grey
    summary = pl.read_parquet(tmp_path / GENEVAL_SUMMARY)
    assert summary.schema == pl.Schema(SUMMARY_SCHEMA)
    acc = {(r["image"], r["tag"]): (r["n_images"], r["accuracy"]) for r in summary.iter_rows(named=True)}
    # first images: car [wrong, right], apples [wrong, right]; final: car [right, right], apples [wrong, right]
    assert acc[("first", "colors")] == (2, 0.5) and acc[("first", "counting")] == (2, 0.5)
    assert acc[("final", "colors")] == (2, 1.0) and acc[("final", "counting")] == (2, 0.5)
    assert acc[("first", "overall")] == (4, 0.5) and acc[("final", "overall")] == (4, 0.75)
    aha = pl.read_parquet(tmp_path / GENEVAL_INTROSPECT)
    assert aha.schema == pl.Schema(INTROSPECT_SCHEMA)
    assert aha.row(0, named=True) == {
        "label": "tiny_janus",
        "first_overall": 0.5,
        "final_overall": 0.75,
        "aha_gain": 0.25,
        "regeneration_rate": 0.5,  # 2 of 4 chains were redrawn
        "agreement": pytest.approx(4 / 6),  # Yes == correct on 4 of the 6 self-evaluated images
        "n_evaluated": 6,
    }


def test_rerun_scores_only_missing_images_and_loads_nothing_when_done(tmp_path, cfg):
    write_generations(tmp_path)
    score_generations(tmp_path, cfg, scorers=FakeScorers(cfg), progress=False)
    again = Scorers(cfg)  # real models: loading one would fail the assertion below
    result = score_generations(tmp_path, cfg, scorers=again, progress=False)
    assert (result.existing, result.written) == (6, 0) and again._detector is None and again._clip is None
    parts = part_files(tmp_path, "geneval")
    parts[0].unlink()  # e.g. a killed run: that batch has no verdicts
    scorers = FakeScorers(cfg)
    result = score_generations(tmp_path, cfg, scorers=scorers, progress=False)
    assert 0 < result.written < 6 and result.existing + result.written == 6
    rows = pl.read_parquet(part_files(tmp_path, "geneval"))
    assert rows.height == 6 and rows["gen_id"].n_unique() == 6


def test_without_introspection_first_equals_final_and_no_aha_table(tmp_path, cfg):
    chains = [(p, s, 0, True, None, objs) for p, s, r, _, _, objs in CHAINS if r == 0]
    write_generations(tmp_path, chains)
    result = score_generations(tmp_path, cfg, scorers=FakeScorers(cfg), progress=False)
    assert result.introspect is None and not (tmp_path / GENEVAL_INTROSPECT).exists()
    first = result.summary.filter(image="first").drop("image")
    assert first.equals(result.summary.filter(image="final").drop("image"))


def test_prompts_without_geneval_metadata_are_refused(tmp_path, cfg):
    write_generations(tmp_path, CHAINS[:1], metadata={"prompt": "a red car", "tag": "colors"})
    with pytest.raises(PromptError, match="no 'include'"):
        score_generations(tmp_path, cfg, scorers=FakeScorers(cfg), progress=False)


def test_tiny_detector_and_clip_score_real_files(tmp_path, cfg):
    """The real loading path: the tiny Mask2Former (its heads scaled up, it finds objects in noise) and tiny CLIP.

    Which classes a random detector finds depends on how transformers initialises it (it changed
    between releases), so the prompts name the classes it finds in these images."""
    from janus_eval.detect import load_image, objects_by_class

    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noise)
    scorers = Scorers(cfg)
    detector = scorers.detector
    found = objects_by_class(
        detector.detect([load_image(noise)])[0], detector.label_map, cfg.eval.threshold, cfg.eval.max_objects
    )
    assert found, "the tiny detector finds some object above the threshold in noise"
    first, *rest = sorted(found, key=lambda c: -found[c][0].score)
    second = rest[0] if rest else first
    coloured = {"tag": "colors", "include": [{"class": first, "count": 1, "color": "red"}], "prompt": f"a red {first}"}
    position = {
        "tag": "position",
        "include": [{"class": second, "count": 1}, {"class": first, "count": 1, "position": ["left of", 0]}],
        "prompt": f"a {first} left of a {second}",
    }
    for name, line in (("coloured", coloured), ("position", position)):
        out = tmp_path / name
        write_generations(out, [("x", s, 0, True, None, []) for s in range(2)], metadata=line)
        for png in (out / "images").iterdir():
            png.write_bytes(noise.read_bytes())
    results = [score_generations(tmp_path / n, cfg, scorers=scorers, progress=False) for n in ("coloured", "position")]
    assert [r.written for r in results] == [2, 2]
    assert scorers._clip is not None  # the object was found, so its colour was asked
    for r in results:
        assert set(r.summary["tag"]) == {r.summary["tag"][0], "overall"}


# ------------------------------------------------------------------ the command


def test_cli_refuses_bad_metadata_before_heavy_imports(tmp_path):
    bad = tmp_path / "meta.jsonl"
    lines = [json.dumps(RED_CAR), json.dumps({**TWO_APPLES, "tag": "count"})]
    bad.write_text("\n".join(lines) + "\n")
    code, err, heavy = janus("eval", "geneval", "--checkpoint", "base", "--prompts", bad, "--out", tmp_path / "o")
    assert code == 2 and heavy == []
    one_line_error(err, "line 2", "'count'")


@pytest.mark.slow
def test_cli_end_to_end_on_tiny_janus_with_the_demo_prompts(tmp_path):
    args = ["eval", "geneval", "--checkpoint", "tiny:janus", "--prompts", DEMO, "--out", tmp_path, "--config", "tiny"]
    code, err, _ = janus(*args)
    assert code == 0, err
    assert "GenEval: tiny_janus" in err and "overall" in err
    summary = pl.read_parquet(tmp_path / "tiny_janus" / GENEVAL_SUMMARY)
    final = summary.filter(image="final")
    assert final["tag"].to_list() == [*TAGS, "overall"]
    assert final["n_images"].to_list() == [4] * 6 + [24]  # 2 prompts per tag, 2 images each (tiny preset)
    code, err, _ = janus(*args)
    assert code == 0 and "0 images scored, 24 already scored" in err


@pytest.mark.slow
def test_run_geneval_with_introspection_on_tiny_janus(tmp_path):
    from janus_eval.geneval import run_geneval

    meta = tmp_path / "three.jsonl"
    meta.write_text("".join(line + "\n" for line in DEMO.read_text().splitlines()[4:7]))
    cfg = load_config("tiny", {"eval": {"introspect": True, "rounds": 1}})
    run = run_geneval(["tiny:janus"], meta, tmp_path / "out", cfg, progress=False)
    (result,) = run.results
    gens = pl.read_parquet(part_files(tmp_path / "out" / "tiny_janus", "generations"))
    assert result.planned == gens.height >= 6 and gens["answer"].is_not_null().all()
    aha = result.introspect.row(0, named=True)
    assert aha["n_evaluated"] == gens.height and 0 <= aha["agreement"] <= 1
    redrawn = gens.filter(pl.col("round") > 0).height / 6
    assert aha["regeneration_rate"] == pytest.approx(redrawn)
    assert set(run.table("tiny_janus").columns) == {"tag", "first", "final", "n_images"}
