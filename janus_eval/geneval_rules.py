"""GenEval's rules as pure functions: a metadata line plus the detected objects give a verdict and a reason.

Written from djghosh13/geneval (`evaluation/evaluate_images.py`, `evaluation/summary_scores.py`):

- a detection counts when its score is strictly above the threshold: 0.3, or 0.9 for prompts tagged
  `counting`; per class the best `max_objects` (16) are kept, best first; GenEval's optional
  box NMS is off by default (`max_overlap` 1.0), so none is applied here;
- `include` clauses are ANDed and `exclude` clauses ORed; an include clause `{class, count}` needs at
  least `count` objects of the class and looks only at the best `count` of them; an exclude clause
  `{class, count}` fails when `count` or more are detected (a counting prompt "three cups" carries
  include count 3 and exclude count 4, so it needs exactly three);
- a colour clause needs each of those `count` objects classified as its colour (CLIP, see
  `janus_eval.detect.ColorClassifier`); it is checked only when the count is met;
- a position clause `[relation, k]` is checked only when the clause's count and colour held, against
  the objects matched by include clause k, which must have held itself; every (object, target) pair
  must stand in the relation (`relative_position`);
- per-tag accuracy is the mean over that tag's images, and the overall score the mean of the tag means.

Only the standard library here: the CLI validates metadata with it before any heavy import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from janus_data.errors import PromptError

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COUNTING_TAG = "counting"
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
# GenEval's 80 object names (evaluation/object_names.txt): the COCO thing classes in COCO's order,
# with GenEval's spelling for three of them ('computer mouse', 'tv remote', 'computer keyboard').
CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# Below this, a margin-reduced offset counts as no offset at all (GenEval's 1e-3).
_NO_OFFSET = 1e-3
_EXAMPLE = 'e.g. {"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}], "prompt": "a photo of three cups"}'


@dataclass(frozen=True)
class Detection:
    """One detected object: its box (x1, y1, x2, y2; x2, y2 exclusive), score, mask (H, W) bool or None."""

    box: tuple[float, float, float, float]
    score: float
    mask: Any = None


@dataclass(frozen=True)
class Clause:
    """One include or exclude requirement of a GenEval metadata line."""

    cls: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None
    """(relation, index of the include clause whose objects are the target)."""


@dataclass(frozen=True)
class GenEvalSpec:
    """A parsed GenEval metadata line."""

    tag: str
    prompt: str
    include: tuple[Clause, ...]
    exclude: tuple[Clause, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """GenEval's answer for one image: correct, and why not (one reason per failed clause, newline-joined)."""

    correct: bool
    reason: str


def parse_spec(line: str | Mapping[str, Any], where: str = "metadata") -> GenEvalSpec:
    """A GenEval metadata line (JSON text or dict) as a GenEvalSpec, or a PromptError naming `where`."""
    if isinstance(line, str):
        try:
            line = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptError(f"{where} is not valid JSON ({err.msg})", hint=_EXAMPLE) from None
    if not isinstance(line, Mapping):
        raise PromptError(f"{where} is not a JSON object", hint=_EXAMPLE)
    tag = line.get("tag")
    if tag not in TAGS:
        raise PromptError(f"{where} has tag {tag!r}, not a GenEval tag", hint=f"use one of {', '.join(TAGS)}")
    prompt = line.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"{where} has no 'prompt' string", hint=_EXAMPLE)
    raw_include = line.get("include")
    if not isinstance(raw_include, list) or not raw_include:
        raise PromptError(f"{where} has no 'include' clauses", hint=_EXAMPLE)
    include = tuple(_clause(c, where, "include", i) for i, c in enumerate(raw_include))
    raw_exclude = line.get("exclude", [])
    if not isinstance(raw_exclude, list):
        raise PromptError(f"{where} has an 'exclude' that is not a list", hint=_EXAMPLE)
    exclude = tuple(_clause(c, where, "exclude", i) for i, c in enumerate(raw_exclude))
    return GenEvalSpec(tag=tag, prompt=prompt, include=include, exclude=exclude)


def check_geneval_file(path: str | Path) -> int:
    """Raise the PromptError of the first line that is not valid GenEval metadata; return the number of lines.

    Reads the file with the prompt loader's checks first (missing file, bad JSON, no prompt: each
    error names its line), then each line as GenEval's: tag one of the 6, a non-empty include with
    known classes and counts, colours and positions as GenEval writes them. Two lines must not share
    a prompt (prompts are keyed by their text). No heavy import.
    """
    from janus_data.prompts import check_prompt_file, normalise_prompt

    check_prompt_file(path)
    if Path(path).suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise PromptError(f"{path} is not a JSON Lines file", hint="pass GenEval's evaluation_metadata.jsonl")
    seen: dict[str, int] = {}
    n = 0
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        spec = parse_spec(line, where=f"{path}: line {number}")
        key = normalise_prompt(spec.prompt)
        if key in seen:
            raise PromptError(f"{path}: line {number} repeats the prompt of line {seen[key]}", hint="keep one of them")
        seen[key] = number
        n += 1
    return n


def _clause(raw: Any, where: str, kind: str, index: int) -> Clause:
    at = f"{where}, {kind} clause {index + 1}"
    if not isinstance(raw, Mapping):
        raise PromptError(f"{at} is not an object", hint=_EXAMPLE)
    cls, count = raw.get("class"), raw.get("count")
    if cls not in CLASSES:
        raise PromptError(f"{at} names class {cls!r}, not one of GenEval's 80", hint="spell it as object_names.txt")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise PromptError(f"{at} needs a 'count' of at least 1", hint=_EXAMPLE)
    color = raw.get("color")
    if color is not None and (kind == "exclude" or color not in COLORS):
        raise PromptError(f"{at} has colour {color!r}", hint=f"include clauses may use {', '.join(COLORS)}")
    position = raw.get("position")
    if position is not None:
        ok = kind == "include" and isinstance(position, list) and len(position) == 2
        ok = ok and position[0] in RELATIONS and type(position[1]) is int and 0 <= position[1] < index
        if not ok:
            raise PromptError(
                f"{at} has position {position!r}",
                hint=f"write [relation, k]: relation one of {', '.join(RELATIONS)}, k an earlier include clause",
            )
        position = (position[0], position[1])
    return Clause(cls=cls, count=count, color=color, position=position)


def threshold_for(spec: GenEvalSpec, threshold: float, counting_threshold: float) -> float:
    """The detection threshold GenEval uses for this prompt: the stricter one for tag 'counting'."""
    return counting_threshold if spec.tag == COUNTING_TAG else threshold


def select_objects(
    candidates: Mapping[str, Sequence[Detection]], threshold: float, max_objects: int
) -> dict[str, list[Detection]]:
    """Per class, the detections scoring above `threshold`, best first, at most `max_objects`.

    >>> d = [Detection((0, 0, 1, 1), s) for s in (0.2, 0.9, 0.31, 0.3)]
    >>> [x.score for x in select_objects({"cup": d}, 0.3, 16)["cup"]]
    [0.9, 0.31]
    """
    kept = {}
    for cls, dets in candidates.items():
        above = sorted((d for d in dets if d.score > threshold), key=lambda d: -d.score)[:max_objects]
        if above:
            kept[cls] = above
    return kept


def relative_position(box_a: Sequence[float], box_b: Sequence[float], margin: float) -> set[str]:
    """Where A stands relative to B: a subset of RELATIONS (GenEval's rule, image y grows downwards).

    The centre offset A - B is shrunk on each axis by `margin` x (A's size + B's size) on that axis,
    towards zero; if both shrunk components are ~0 the answer is empty. Otherwise the shrunk offset is
    divided by the length of the unshrunk one, and a component below -0.5 / above 0.5 gives
    'left of' / 'right of' (x) and 'above' / 'below' (y).

    >>> sorted(relative_position((0, 0, 10, 10), (20, 0, 30, 10), 0.1))
    ['left of']
    """
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    dx, dy = ax - bx, ay - by
    wa, ha = abs(box_a[2] - box_a[0]), abs(box_a[3] - box_a[1])
    wb, hb = abs(box_b[2] - box_b[0]), abs(box_b[3] - box_b[1])
    rx = math.copysign(max(abs(dx) - margin * (wa + wb), 0.0), dx)
    ry = math.copysign(max(abs(dy) - margin * (ha + hb), 0.0), dy)
    if abs(rx) < _NO_OFFSET and abs(ry) < _NO_OFFSET:
        return set()
    norm = math.hypot(dx, dy)
    ux, uy = rx / norm, ry / norm
    found = set()
    if ux < -0.5:
        found.add("left of")
    if ux > 0.5:
        found.add("right of")
    if uy < -0.5:
        found.add("above")
    if uy > 0.5:
        found.add("below")
    return found


def color_needs(spec: GenEvalSpec, objects: Mapping[str, Sequence[Detection]]) -> dict[str, int]:
    """How many of each class's best objects need a colour for `evaluate`: colour clauses whose count is met."""
    needs: dict[str, int] = {}
    for clause in spec.include:
        if clause.color is not None and len(objects.get(clause.cls, ())) >= clause.count:
            needs[clause.cls] = max(needs.get(clause.cls, 0), clause.count)
    return needs


def evaluate(
    spec: GenEvalSpec,
    objects: Mapping[str, Sequence[Detection]],
    colors: Mapping[str, Sequence[str]] | None = None,
    position_threshold: float = 0.1,
) -> Verdict:
    """GenEval's verdict on one image from its kept objects (`select_objects`) and their colours.

    `colors[cls][i]` is the colour of `objects[cls][i]`, given for the first `color_needs(...)[cls]` objects.
    """
    colors = colors or {}
    reasons: list[str] = []
    groups: list[Sequence[Detection] | None] = []  # per include clause: its objects if it held
    for clause in spec.include:
        found = list(objects.get(clause.cls, ()))[: clause.count]
        failure = _include_failure(clause, found, colors, groups, position_threshold)
        if failure:
            reasons.append(failure)
        groups.append(None if failure else found)
    for clause in spec.exclude:
        n = len(objects.get(clause.cls, ()))
        if n >= clause.count:
            reasons.append(f"expected {clause.cls}<{clause.count}, found {n}")
    return Verdict(correct=not reasons, reason="\n".join(reasons))


def _include_failure(
    clause: Clause,
    found: list[Detection],
    colors: Mapping[str, Sequence[str]],
    groups: list[Sequence[Detection] | None],
    margin: float,
) -> str:
    """Why one include clause fails ('' when it holds), checked in GenEval's order: count, colour, position."""
    if len(found) < clause.count:
        return f"expected {clause.cls}>={clause.count}, found {len(found)}"
    if clause.color is not None:
        got = list(colors.get(clause.cls, ()))[: clause.count]
        if len(got) < clause.count:
            raise ValueError(f"colours of {clause.count} {clause.cls} objects are needed, {len(got)} given")
        n_right = got.count(clause.color)
        if n_right < clause.count:
            seen = ", ".join(f"{got.count(c)} {c}" for c in COLORS if c in got)
            return f"expected {clause.color} {clause.cls}>={clause.count}, found {n_right} {clause.color}; and {seen}"
    if clause.position is not None:
        relation, k = clause.position
        targets = groups[k]
        if targets is None:
            return f"no target for {clause.cls} to be {relation}"
        for obj in found:
            for target in targets:
                seen_rel = relative_position(obj.box, target.box, margin)
                if relation not in seen_rel:
                    where = " and ".join(r for r in RELATIONS if r in seen_rel) or "no clear position"
                    return f"expected {clause.cls} {relation} target, found {where}"
    return ""


def tag_accuracies(rows: Sequence[tuple[str, bool]]) -> dict[str, tuple[int, float]]:
    """(n_images, accuracy) per tag, in TAGS order, plus 'overall' = mean of the tag means (GenEval's score).

    >>> tag_accuracies([("colors", True), ("colors", False), ("counting", True)])["overall"]
    (3, 0.75)
    """
    by_tag: dict[str, list[bool]] = {}
    for tag, correct in rows:
        by_tag.setdefault(tag, []).append(bool(correct))
    out = {t: (len(by_tag[t]), sum(by_tag[t]) / len(by_tag[t])) for t in (*TAGS, *sorted(by_tag)) if t in by_tag}
    if out:
        out["overall"] = (len(rows), sum(acc for _, acc in out.values()) / len(out))
    return out
