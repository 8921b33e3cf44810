"""GenEval's detector and colour classifier: mmdet's post-processing on hand-made logits, the label
mapping, the grey-composite crop, and the tiny Mask2Former and CLIP through the real loading path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from janus_data.errors import ModelError
from janus_data.tiny.mask2former import COCO_ID2LABEL
from janus_eval.detect import (
    COLOR_TEMPLATES,
    GREY,
    ColorClassifier,
    Detector,
    Instances,
    geneval_label_map,
    mask_boxes,
    masked_crop,
    mmdet_instances,
    objects_by_class,
    rescale_size,
    upsample_mask_logits,
)
from janus_eval.geneval_rules import CLASSES, COLORS

CPU = torch.device("cpu")


# ------------------------------------------------------------------ mmdet's instance post-processing


def test_instances_score_is_class_prob_times_mean_mask_prob_and_box_is_the_masks():
    """Two classes + no-object. Query 0 is mostly class 0 over a 2x3 block, query 1 mostly 'no object'
    with no positive pixel, query 2 mostly class 1 on one pixel. Identity geometry (all 4x5), so every
    (query, class) pair is an instance: score = P(class) (no-object dropped from the classes, not
    from the softmax) x mean sigmoid inside the mask; box = the mask's extent, end-exclusive."""
    class_logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 6.0], [0.0, 3.0, 1.0]])
    masks = torch.full((3, 4, 5), -2.0)
    masks[0, 1:3, 1:4] = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    masks[2, 3, 4] = 0.5
    inst = mmdet_instances(class_logits, masks, (4, 5), (4, 5), (4, 5), max_per_image=6)
    probs = class_logits.softmax(-1)
    mask_prob = [torch.tensor([1.0, 2.0, 3.0]).sigmoid().mean(), torch.tensor(0.0), torch.tensor(0.5).sigmoid()]
    box = [[1.0, 1.0, 4.0, 3.0], [0.0, 0.0, 0.0, 0.0], [4.0, 3.0, 5.0, 4.0]]
    expected = sorted(((c, float(probs[q, c] * mask_prob[q]), box[q]) for q in range(3) for c in range(2)), key=_order)
    got = sorted(zip(inst.labels.tolist(), inst.scores.tolist(), inst.boxes.tolist(), strict=True), key=_order)
    assert [(c, b) for c, _, b in got] == [(c, b) for c, _, b in expected]
    assert [s for _, s, _ in got] == pytest.approx([s for _, s, _ in expected], abs=1e-6)
    assert set(inst.labels.tolist()) == {0, 1}  # never the no-object class
    assert inst.masks.dtype == torch.bool and inst.masks.shape == (6, 4, 5)


def _order(item: tuple) -> tuple:
    label, score, box = item
    return -round(score, 6), label, box


def test_top_k_pairs_across_queries_and_classes():
    """mmdet keeps the best max_per_image (query, class) pairs: one query may give two instances."""
    class_logits = torch.tensor([[5.0, 4.9, -9.0], [0.0, 0.0, 0.0]])
    masks = torch.ones(2, 2, 2)
    inst = mmdet_instances(class_logits, masks, (2, 2), (2, 2), (2, 2), max_per_image=2)
    probs = class_logits.softmax(-1)[0, :2] * torch.tensor(1.0).sigmoid()  # query 0, mask all ones
    assert sorted(zip(inst.labels.tolist(), inst.scores.tolist(), strict=True)) == [
        (0, pytest.approx(float(probs[0]))),
        (1, pytest.approx(float(probs[1]))),
    ]


def test_mask_logits_upsampled_like_mmdet():
    """Bilinear to the padded input, crop to the resized image, bilinear to the image: one linear map."""
    torch.manual_seed(0)
    logits = torch.randn(5, 8, 12)
    input_hw, resized_hw, image_hw = (32, 48), (30, 45), (61, 90)
    step = F.interpolate(logits[None], size=input_hw, mode="bilinear", align_corners=False)
    step = step[..., : resized_hw[0], : resized_hw[1]]
    step = F.interpolate(step, size=image_hw, mode="bilinear", align_corners=False)[0]
    got = upsample_mask_logits(logits, input_hw, resized_hw, image_hw)
    assert got.shape == (5, *image_hw) and torch.allclose(got, step, atol=1e-5)


def test_mask_boxes():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 2, 3] = True
    masks[1, 1:4, 0:6] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 4, 3], [0, 1, 6, 4], [0, 0, 0, 0]]


def test_rescale_size_follows_mmcv():
    """mmcv: factor = min(1333 / long, 800 / short), sides rounded half up."""
    for h, w in [(384, 384), (1024, 1024), (480, 640), (100, 1000), (64, 48)]:
        f = min(1333 / max(h, w), 800 / min(h, w))
        assert rescale_size(h, w) == (int(h * f + 0.5), int(w * f + 0.5))
    assert rescale_size(384, 384) == (800, 800)


def test_objects_by_class_thresholds_and_maps_labels():
    labels = torch.tensor([0, 0, 64, 64])  # person, person, mouse
    scores = torch.tensor([0.9, 0.2, 0.5, 0.31])
    boxes = torch.tensor([[0, 0, 2, 2], [1, 1, 2, 2], [0, 0, 1, 1], [1, 0, 2, 1]], dtype=torch.float)
    masks = torch.zeros(4, 3, 3, dtype=torch.bool)
    masks[2, 0, 0] = True
    inst = Instances(labels, scores, boxes, masks)
    objects = objects_by_class(inst, geneval_label_map(dict(enumerate(COCO_ID2LABEL))), 0.3, 16)
    assert sorted(objects) == ["computer mouse", "person"]
    assert [d.score for d in objects["computer mouse"]] == pytest.approx([0.5, 0.31])
    mouse = objects["computer mouse"][0]
    assert mouse.box == (0.0, 0.0, 1.0, 1.0) and mouse.mask.dtype == bool and mouse.mask[0, 0]


# ------------------------------------------------------------------ labels


def test_label_map_covers_all_80_geneval_classes_from_the_tiny_detectors_id2label(tiny_mask2former):
    id2label = json.loads((tiny_mask2former / "config.json").read_text())["id2label"]
    mapping = geneval_label_map({int(k): v for k, v in id2label.items()})
    assert sorted(mapping.values()) == sorted(CLASSES) and len(mapping) == 80
    for hf, ours in (("mouse", "computer mouse"), ("remote", "tv remote"), ("keyboard", "computer keyboard")):
        assert mapping[COCO_ID2LABEL.index(hf)] == ours
    # same ids as GenEval's own class order: both follow COCO's category order
    assert [mapping[i] for i in range(80)] == list(CLASSES)


def test_label_map_by_meaning_for_other_spellings():
    voc_style = {i: n for i, n in enumerate(CLASSES)}
    voc_style |= {57: "sofa", 58: "pottedplant", 60: "diningtable", 62: "tvmonitor", 3: "motorbike", 4: "aeroplane"}
    assert [geneval_label_map(voc_style)[i] for i in range(80)] == list(CLASSES)
    panoptic = {**dict(enumerate(COCO_ID2LABEL)), 80: "banner", 81: "wall-other-merged"}
    assert len(geneval_label_map(panoptic)) == 80  # stuff classes are left out


def test_label_map_rejects_a_detector_missing_a_class():
    with pytest.raises(ModelError, match="lacks toothbrush"):
        geneval_label_map(dict(enumerate(COCO_ID2LABEL[:79])), "my-detector")


# ------------------------------------------------------------------ colour crop and CLIP


def test_masked_crop_composites_on_grey_then_crops_to_the_box():
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[..., 0] = 200  # a red image
    mask = np.zeros((6, 8), dtype=bool)
    mask[2:4, 3:5] = True  # the object: 2x2
    crop = np.asarray(masked_crop(Image.fromarray(pixels), (2, 1, 6, 5), mask))
    assert crop.shape == (4, 4, 3)  # box x 2..6, y 1..5 (exclusive ends)
    inside = crop[1:3, 1:3]
    assert (inside == (200, 0, 0)).all()
    outside = np.ones((4, 4), dtype=bool)
    outside[1:3, 1:3] = False
    assert (crop[outside] == GREY).all()
    # without a mask, only the crop
    assert (np.asarray(masked_crop(Image.fromarray(pixels), (0, 0, 2, 2), None)) == (200, 0, 0)).all()


def test_color_classifier_returns_one_of_the_10_colours(tiny_clip):
    clf = ColorClassifier("tiny:clip", CPU, batch_size=2)
    prompts = clf.prompts("dog")
    assert len(prompts) == 10 and prompts[0] == [t.format(c="red", cls="dog") for t in COLOR_TEMPLATES]
    assert prompts[0] == ["a photo of a red dog", "a photo of a red-colored dog", "a photo of a red object"]
    weights = clf.weights("dog")
    assert weights.shape[0] == 10 and torch.allclose(weights.norm(dim=-1), torch.ones(10), atol=1e-5)
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((7, 9), (30, 12), (5, 5))]
    colours = clf.classify(crops, ["dog", "car", "dog"])
    assert len(colours) == 3 and set(colours) <= set(COLORS)
    assert colours == [clf.classify([c], [n])[0] for c, n in zip(crops, ["dog", "car", "dog"], strict=True)]


# ------------------------------------------------------------------ the tiny detector


def test_tiny_detector_masks_at_image_size_and_batched_equals_unbatched(tiny_mask2former):
    detector = Detector("tiny:mask2former", CPU, batch_size=2)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)) for _ in range(2)]
    both = detector.detect(images)
    alone = detector.detect(images[:1])[0]
    assert both[0].masks.shape == (100, 48, 80)
    assert torch.allclose(both[0].scores, alone.scores, atol=1e-5)
    assert torch.equal(both[0].labels, alone.labels)
    scores = both[0].scores
    assert bool(((scores >= 0) & (scores <= 1)).all()) and math.isfinite(float(scores.sum()))
    boxes = both[0].boxes
    assert bool((boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 48).all())
    assert len(detector.label_map) == 80


def test_tiny_builds_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    from janus_data.tiny.clip import build_tiny_clip
    from janus_data.tiny.mask2former import build_tiny_mask2former

    for build in (build_tiny_mask2former, build_tiny_clip):
        a, b = build(tmp_path / f"{build.__name__}-a"), build(tmp_path / f"{build.__name__}-b")
        ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        assert (a / "preprocessor_config.json").exists()


@pytest.fixture(scope="module")
def tiny_mask2former(janus_cache):
    from janus_data.models import tiny_model_path

    return tiny_model_path("mask2former")


@pytest.fixture(scope="module")
def tiny_clip(janus_cache):
    from janus_data.models import tiny_model_path

    return tiny_model_path("clip")
