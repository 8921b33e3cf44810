"""GenEval's rules on hand-made detections: each test states the verdict GenEval gives and why.

Boxes are (x1, y1, x2, y2) in pixels, y downwards; scores are the detector's; colours are given as
CLIP would return them. The rules are those of djghosh13/geneval evaluation/evaluate_images.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from janus_data.errors import PromptError
from janus_eval.geneval_rules import (
    CLASSES,
    COLORS,
    TAGS,
    Detection,
    check_geneval_file,
    color_needs,
    evaluate,
    parse_spec,
    relative_position,
    select_objects,
    tag_accuracies,
    threshold_for,
)

DEMO = Path(__file__).resolve().parent.parent / "janus_data" / "assets" / "geneval_demo.jsonl"


def det(x1: float, y1: float, x2: float, y2: float, score: float = 0.95) -> Detection:
    return Detection((x1, y1, x2, y2), score)


def spec(tag: str, include: list[dict], exclude: list[dict] | None = None, prompt: str = "a photo"):
    line = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        line["exclude"] = exclude
    return parse_spec(json.dumps(line))


def kept(spec_, candidates: dict[str, list[Detection]]) -> dict[str, list[Detection]]:
    """The objects GenEval keeps for this prompt: thresholds 0.3 / 0.9 (counting), at most 16 per class."""
    return select_objects(candidates, threshold_for(spec_, 0.3, 0.9), 16)


# ------------------------------------------------------------------ single object


def test_single_object_present_is_correct():
    s = spec("single_object", [{"class": "dog", "count": 1}])
    verdict = evaluate(s, kept(s, {"dog": [det(0, 0, 10, 10, 0.6)]}))
    assert verdict.correct and verdict.reason == ""


def test_single_object_missing_is_wrong():
    s = spec("single_object", [{"class": "dog", "count": 1}])
    verdict = evaluate(s, kept(s, {"cat": [det(0, 0, 10, 10)]}))
    assert not verdict.correct and verdict.reason == "expected dog>=1, found 0"


def test_a_score_must_be_strictly_above_the_threshold():
    """GenEval keeps score > 0.3: a dog at exactly 0.3 is not seen, so 'a photo of a dog' is wrong."""
    s = spec("single_object", [{"class": "dog", "count": 1}])
    assert not evaluate(s, kept(s, {"dog": [det(0, 0, 10, 10, 0.3)]})).correct
    assert evaluate(s, kept(s, {"dog": [det(0, 0, 10, 10, 0.3001)]})).correct


def test_at_most_16_objects_per_class_best_first():
    dogs = [det(i, 0, i + 1, 1, 0.31 + i / 100) for i in range(20)]
    chosen = select_objects({"dog": dogs}, 0.3, 16)["dog"]
    assert len(chosen) == 16 and [d.score for d in chosen] == sorted((d.score for d in dogs), reverse=True)[:16]


# ------------------------------------------------------------------ two objects


def test_two_objects_both_present_is_correct():
    s = spec("two_object", [{"class": "cat", "count": 1}, {"class": "laptop", "count": 1}])
    assert evaluate(s, kept(s, {"cat": [det(0, 0, 5, 5)], "laptop": [det(5, 5, 9, 9)]})).correct


def test_two_objects_one_missing_is_wrong_and_says_which():
    s = spec("two_object", [{"class": "cat", "count": 1}, {"class": "laptop", "count": 1}])
    verdict = evaluate(s, kept(s, {"cat": [det(0, 0, 5, 5)], "laptop": [det(5, 5, 9, 9, 0.2)]}))
    assert not verdict.correct and verdict.reason == "expected laptop>=1, found 0"


# ------------------------------------------------------------------ counting

THREE_CUPS = {"include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}]}


@pytest.mark.parametrize(
    ("n_cups", "correct", "reason"),
    [
        (3, True, ""),  # exactly three: include holds, exclude (>= 4) does not fire
        (2, False, "expected cup>=3, found 2"),
        (4, False, "expected cup<4, found 4"),  # "three" means exactly three
    ],
)
def test_counting_needs_exactly_n(n_cups, correct, reason):
    s = spec("counting", **THREE_CUPS)
    cups = [det(10 * i, 0, 10 * i + 8, 8, 0.95) for i in range(n_cups)]
    verdict = evaluate(s, kept(s, {"cup": cups}))
    assert (verdict.correct, verdict.reason) == (correct, reason)


def test_counting_uses_the_stricter_threshold():
    """Three cups, one at 0.85: for a counting prompt only scores > 0.9 count, so two cups: wrong.

    The same detections under a two_object prompt (threshold 0.3) would see all three.
    """
    cups = [det(0, 0, 8, 8, 0.97), det(10, 0, 18, 8, 0.93), det(20, 0, 28, 8, 0.85)]
    counting = spec("counting", **THREE_CUPS)
    assert threshold_for(counting, 0.3, 0.9) == 0.9
    verdict = evaluate(counting, kept(counting, {"cup": cups}))
    assert not verdict.correct and verdict.reason == "expected cup>=3, found 2"
    loose = spec("two_object", [{"class": "cup", "count": 3}, {"class": "bowl", "count": 1}])
    assert threshold_for(loose, 0.3, 0.9) == 0.3 and len(kept(loose, {"cup": cups})["cup"]) == 3


def test_exclude_counts_every_kept_object():
    """Exclusion looks at all kept objects (up to 16), not just the `count` best."""
    s = spec("counting", [{"class": "kite", "count": 2}], [{"class": "kite", "count": 3}])
    kites = [det(10 * i, 0, 10 * i + 5, 5) for i in range(5)]
    assert evaluate(s, kept(s, {"kite": kites})).reason == "expected kite<3, found 5"


# ------------------------------------------------------------------ colours


def test_colour_right_is_correct_and_wrong_says_what_was_seen():
    s = spec("colors", [{"class": "car", "count": 1, "color": "yellow"}])
    objects = kept(s, {"car": [det(0, 0, 9, 9)]})
    assert color_needs(s, objects) == {"car": 1}
    assert evaluate(s, objects, {"car": ["yellow"]}).correct
    verdict = evaluate(s, objects, {"car": ["blue"]})
    assert not verdict.correct and verdict.reason == "expected yellow car>=1, found 0 yellow; and 1 blue"


def test_colour_is_judged_on_the_best_objects_only():
    """Two cars, the best-scoring one blue, the other yellow: 'a yellow car' (count 1) looks at the best only: wrong."""
    s = spec("colors", [{"class": "car", "count": 1, "color": "yellow"}])
    objects = kept(s, {"car": [det(0, 0, 9, 9, 0.5), det(20, 0, 29, 9, 0.9)]})
    assert objects["car"][0].score == 0.9  # best first
    assert not evaluate(s, objects, {"car": ["blue"]}).correct


def test_colour_is_not_asked_when_the_object_is_missing():
    s = spec("colors", [{"class": "car", "count": 1, "color": "yellow"}])
    assert color_needs(s, {}) == {}
    assert evaluate(s, {}).reason == "expected car>=1, found 0"


# ------------------------------------------------------------------ position


def left_of_a_cat(dog_box, margin: float = 0.1):
    """'a photo of a dog left of a cat': the cat is clause 0, the dog must be left of it."""
    s = spec("position", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}])
    objects = kept(s, {"cat": [det(50, 0, 60, 10)], "dog": [det(*dog_box)]})
    return evaluate(s, objects, position_threshold=margin)


def test_position_clear_is_correct():
    assert left_of_a_cat((0, 0, 10, 10)).correct


def test_position_wrong_side_is_wrong():
    verdict = left_of_a_cat((100, 0, 110, 10))
    assert not verdict.correct and verdict.reason == "expected dog left of target, found right of"


def test_position_margin():
    """Centres 4 px apart, boxes 10 px wide: the margin 0.1 x (10 + 10) = 2 px leaves 2 px of a 4 px offset,
    0.5 of its length, not more than 0.5: no relation, wrong. 5 px apart leaves 3 / 5 = 0.6: left of, correct.
    Without a margin 4 px is enough."""
    assert sorted(relative_position((46, 0, 56, 10), (50, 0, 60, 10), 0.1)) == []
    assert not left_of_a_cat((46, 0, 56, 10)).correct
    assert left_of_a_cat((45, 0, 55, 10)).correct
    assert left_of_a_cat((46, 0, 56, 10), margin=0.0).correct


def test_position_diagonal_and_vertical():
    assert relative_position((0, 0, 10, 10), (100, 100, 110, 110), 0.1) == {"left of", "above"}
    assert relative_position((0, 100, 10, 110), (0, 0, 10, 10), 0.1) == {"below"}
    assert relative_position((0, 0, 10, 10), (1, 1, 11, 11), 0.1) == set()  # overlapping: within the margin


def test_position_without_a_target_is_wrong():
    s = spec("position", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}])
    verdict = evaluate(s, kept(s, {"dog": [det(0, 0, 10, 10)]}))
    assert not verdict.correct
    assert verdict.reason == "expected cat>=1, found 0\nno target for dog to be left of"


def test_position_holds_against_every_target_object():
    """Two targets (count 2), the dog left of one and right of the other: wrong."""
    s = spec("position", [{"class": "cat", "count": 2}, {"class": "dog", "count": 1, "position": ["left of", 0]}])
    cats = [det(50, 0, 60, 10), det(0, 0, 10, 10, 0.9)]
    assert not evaluate(s, kept(s, {"cat": cats, "dog": [det(25, 0, 35, 10)]})).correct
    assert evaluate(s, kept(s, {"cat": [*cats[:1], det(70, 0, 80, 10)], "dog": [det(25, 0, 35, 10)]})).correct


# ------------------------------------------------------------------ colour attribution

RED_BUS_GREEN_BENCH = [{"class": "bus", "count": 1, "color": "red"}, {"class": "bench", "count": 1, "color": "green"}]


def test_color_attr_both_right_is_correct():
    s = spec("color_attr", RED_BUS_GREEN_BENCH)
    objects = kept(s, {"bus": [det(0, 0, 9, 9)], "bench": [det(20, 0, 29, 9)]})
    assert color_needs(s, objects) == {"bus": 1, "bench": 1}
    assert evaluate(s, objects, {"bus": ["red"], "bench": ["green"]}).correct


def test_color_attr_swapped_colours_is_wrong_on_both_clauses():
    s = spec("color_attr", RED_BUS_GREEN_BENCH)
    objects = kept(s, {"bus": [det(0, 0, 9, 9)], "bench": [det(20, 0, 29, 9)]})
    verdict = evaluate(s, objects, {"bus": ["green"], "bench": ["red"]})
    assert not verdict.correct and verdict.reason.splitlines() == [
        "expected red bus>=1, found 0 red; and 1 green",
        "expected green bench>=1, found 0 green; and 1 red",
    ]


# ------------------------------------------------------------------ scores and metadata


def test_overall_is_the_mean_of_the_tag_means():
    """GenEval's overall score averages the tag accuracies, not the images: (1/4 + 1) / 2."""
    rows = [("colors", True), ("colors", False), ("colors", False), ("colors", False), ("counting", True)]
    acc = tag_accuracies(rows)
    assert acc["colors"] == (4, 0.25) and acc["counting"] == (1, 1.0) and acc["overall"] == (5, 0.625)
    assert list(acc) == ["counting", "colors", "overall"]  # GenEval's tag order, overall last


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ({"tag": "shapes", "include": [{"class": "dog", "count": 1}], "prompt": "p"}, "not a GenEval tag"),
        ({"tag": "colors", "include": [], "prompt": "p"}, "no 'include'"),
        ({"tag": "colors", "include": [{"class": "unicorn", "count": 1}], "prompt": "p"}, "unicorn"),
        ({"tag": "colors", "include": [{"class": "dog"}], "prompt": "p"}, "'count'"),
        ({"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "teal"}], "prompt": "p"}, "teal"),
        (
            {"tag": "position", "include": [{"class": "dog", "count": 1, "position": ["left of", 0]}], "prompt": "p"},
            "position",
        ),
    ],
)
def test_bad_metadata_lines_are_one_line_errors(line, needle):
    with pytest.raises(PromptError, match=needle):
        parse_spec(json.dumps(line), where="x.jsonl: line 3")


def test_metadata_file_errors_name_the_line(tmp_path):
    good = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    bad = {"tag": "single_object", "include": [{"class": "dragon", "count": 1}], "prompt": "a photo of a dragon"}
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(PromptError, match=r"line 3, include clause 1 names class .dragon."):
        check_geneval_file(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(PromptError, match="line 2 repeats the prompt of line 1"):
        check_geneval_file(path)


def test_demo_prompt_set_is_valid_geneval_covering_every_tag():
    assert check_geneval_file(DEMO) == 12
    lines = [parse_spec(line) for line in DEMO.read_text().splitlines()]
    assert {s.tag for s in lines} == set(TAGS)
    assert all(c.cls in CLASSES and (c.color is None or c.color in COLORS) for s in lines for c in s.include)
