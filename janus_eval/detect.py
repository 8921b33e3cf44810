"""GenEval's detector and colour classifier through transformers, with mmdetection's instance semantics.

GenEval (djghosh13/geneval, evaluation/evaluate_images.py) runs mmdetection 2.x's Mask2Former
(Swin-S, COCO instance) and open_clip's ViT-L/14. Here the detector is any COCO instance
checkpoint of transformers' Mask2FormerForUniversalSegmentation and the classifier transformers'
CLIPModel; around them this module redoes what mmdetection does, not what transformers'
`Mask2FormerImageProcessor.post_process_instance_segmentation` does (that one resizes mask
logits to a fixed 384 x 384 ignoring the padding, binarises there, upsamples the binary masks with
nearest, keeps num_queries pairs and thresholds scores with >=):

- input: mmdet's test pipeline of the Swin-S config: keep-ratio rescale so the image fits
  (1333, 800) (mmcv `rescale_size`: factor min(1333 / long side, 800 / short side), sizes rounded
  half up), bilinear, normalised with the checkpoint's mean and std, zero-padded to a multiple of 32;
- output (mmdet `MaskFormerFusionHead.instance_postprocess`, after `Mask2FormerHead.simple_test`):
  softmax over the classes without the last (no-object) one, the top 100 (query, class) pairs
  over all queries and classes; the query's mask logits upsampled bilinearly to the padded
  input, cropped to the resized image, upsampled bilinearly to the image; mask = logit > 0
  (sigmoid > 0.5); score = class probability x mean sigmoid inside the mask; box = the mask's
  extent (mmdet `mask2bbox`: x1, y1, x_max + 1, y_max + 1; all zeros for an empty mask);
- colour (GenEval `ImageCrops` + clip_benchmark's zero-shot classifier): the image composited on
  #999999 grey through the object's mask, cropped to its box; text weights per class: for each of
  GenEval's 10 colours the 3 templates, each embedding L2-normalised, averaged, normalised again;
  the colour is the argmax of (normalised image embedding) . weights.

Both models run in float32, as GenEval's do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from janus_data.errors import ModelError
from janus_data.models import loading, resolve_model
from janus_eval.geneval_rules import CLASSES, COLORS, Detection, select_objects

TEST_SCALE = (1333, 800)  # mmdet's img_scale: (long edge, short edge) bounds
SIZE_DIVISOR = 32
MAX_PER_IMAGE = 100  # mmdet test_cfg.max_per_image
GREY = (153, 153, 153)  # GenEval's crop background, "#999"
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
# Detector label names that GenEval spells differently, keyed as `_label_key` writes them.
LABEL_ALIASES = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
    "tvmonitor": "tv",
    "television": "tv",
    "sofa": "couch",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "hairdryer": "hair drier",
    "doughnut": "donut",
    "cellphone": "cell phone",
    "mobilephone": "cell phone",
}


def _label_key(name: str) -> str:
    """A label name reduced to lower-case letters and digits: 'Dining_Table', 'diningtable' -> 'diningtable'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def geneval_label_map(id2label: Mapping[int, str], ref: str = "detector") -> dict[int, str]:
    """Detector label id -> GenEval class name, by meaning; every GenEval class must be covered once.

    Labels that are no GenEval class (a panoptic checkpoint's stuff classes) are left out, so
    they never count, as mmdet drops non-thing labels.
    """
    by_key = {_label_key(c): c for c in CLASSES}
    by_key |= {k: v for k, v in LABEL_ALIASES.items()}
    mapping = {}
    for i, name in id2label.items():
        target = by_key.get(_label_key(str(name)))
        if target is not None:
            mapping[int(i)] = target
    counts: dict[str, int] = {}
    for target in mapping.values():
        counts[target] = counts.get(target, 0) + 1
    missing = [c for c in CLASSES if c not in counts]
    twice = [c for c, n in counts.items() if n > 1]
    if missing or twice:
        what = f"lacks {', '.join(missing[:5])}" if missing else f"names {', '.join(twice[:5])} twice"
        raise ModelError(
            f"detector {ref} is not a COCO instance model: its id2label {what}",
            hint="use a COCO instance-segmentation Mask2Former (facebook/mask2former-swin-small-coco-instance)",
        )
    return mapping


def rescale_size(height: int, width: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the (height, width) that fits `scale` = (long, short) bounds.

    >>> rescale_size(384, 384), rescale_size(480, 640), rescale_size(100, 1000)
    ((800, 800), (800, 1067), (133, 1333))
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): F.interpolate's 1-D linear resize (align_corners=False) as a matrix."""
    eye = torch.eye(n_in).unsqueeze(1)  # n_in unit vectors, (n_in, 1, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False).squeeze(1).T


def upsample_mask_logits(
    logits: torch.Tensor, input_hw: tuple[int, int], resized_hw: tuple[int, int], image_hw: tuple[int, int]
) -> torch.Tensor:
    """(Q, h, w) mask logits -> (Q, H, W) at the image size, as mmdet does it.

    Bilinear to the padded input size, crop to the resized image, bilinear to the image size:
    separable and linear, so computed as one matrix per axis (rows, then columns).
    """
    h, w = logits.shape[-2:]
    ry = _interp_matrix(resized_hw[0], image_hw[0]) @ _interp_matrix(h, input_hw[0])[: resized_hw[0]]
    rx = _interp_matrix(resized_hw[1], image_hw[1]) @ _interp_matrix(w, input_hw[1])[: resized_hw[1]]
    ry, rx = ry.to(logits.device), rx.to(logits.device)
    return torch.einsum("Hh,qhw,Ww->qHW", ry, logits.float(), rx)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float boxes (x1, y1, x_max + 1, y_max + 1); zeros for an empty mask (mmdet mask2bbox)."""
    n, height, width = masks.shape
    xs, ys = masks.any(1), masks.any(2)  # (N, W), (N, H)
    ix = torch.arange(width, device=masks.device)
    iy = torch.arange(height, device=masks.device)
    x1 = torch.where(xs, ix, width).min(1).values
    x2 = torch.where(xs, ix, -1).max(1).values + 1
    y1 = torch.where(ys, iy, height).min(1).values
    y2 = torch.where(ys, iy, -1).max(1).values + 1
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(xs.any(1, keepdim=True), boxes, torch.zeros_like(boxes)) if n else boxes


@dataclass(frozen=True)
class Instances:
    """One image's mmdet-style instances: labels (N,), scores (N,), boxes (N, 4), masks (N, H, W) bool."""

    labels: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def mmdet_instances(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    input_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    image_hw: tuple[int, int],
    max_per_image: int = MAX_PER_IMAGE,
) -> Instances:
    """mmdet's MaskFormerFusionHead.instance_postprocess on one image: class_logits (Q, C + 1), mask_logits (Q, h, w)."""
    probs = class_logits.float().softmax(-1)[:, :-1]  # the last class is "no object"
    n_classes = probs.shape[1]
    scores, flat = probs.flatten().topk(min(max_per_image, probs.numel()))
    labels, queries = flat % n_classes, flat // n_classes
    logits = upsample_mask_logits(mask_logits[queries], input_hw, resized_hw, image_hw)
    masks = logits > 0
    inside = masks.flatten(1).float()
    mask_scores = (logits.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    return Instances(labels=labels, scores=scores * mask_scores, boxes=mask_boxes(masks), masks=masks)


def objects_by_class(
    instances: Instances, label_map: Mapping[int, str], threshold: float, max_objects: int
) -> dict[str, list[Detection]]:
    """GenEval's kept objects of one image (`select_objects`), each with its mask as a (H, W) bool array."""
    candidates: dict[str, list[Detection]] = {}
    labels, scores, boxes = instances.labels.tolist(), instances.scores.tolist(), instances.boxes.tolist()
    for i, (label, score, box) in enumerate(zip(labels, scores, boxes, strict=True)):
        cls = label_map.get(label)
        if cls is not None and score > threshold:  # `mask` holds the instance's index until it is kept
            candidates.setdefault(cls, []).append(Detection(tuple(box), score, i))
    kept = select_objects(candidates, threshold, max_objects)
    return {
        cls: [Detection(d.box, d.score, instances.masks[d.mask].cpu().numpy()) for d in dets]
        for cls, dets in kept.items()
    }


def masked_crop(image: Image.Image, box: Sequence[float], mask: np.ndarray | None) -> Image.Image:
    """GenEval's colour crop: `image` through `mask` (H, W) bool onto #999999 grey, cropped to `box`."""
    image = image.convert("RGB")
    if mask is not None:
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask {mask.shape} does not match image {image.height}x{image.width}")
        image = Image.composite(image, Image.new("RGB", image.size, GREY), Image.fromarray(mask.astype(bool)))
    return image.crop(tuple(round(v) for v in box[:4]))


def load_image(path) -> Image.Image:
    """An image as GenEval opens it: EXIF orientation applied, RGB."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


class Detector:
    """A COCO instance Mask2Former: images -> mmdet-style Instances, batched."""

    def __init__(self, ref: str, device: torch.device, batch_size: int = 8) -> None:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        path = resolve_model(ref)
        hint = "use a transformers COCO instance Mask2Former (facebook/mask2former-swin-small-coco-instance)"
        with loading("detector", ref, hint):
            model = Mask2FormerForUniversalSegmentation.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
            processor = AutoImageProcessor.from_pretrained(path)
        self.model = model.to(device).eval()
        self.device, self.batch_size = device, max(1, batch_size)
        self.label_map = geneval_label_map(model.config.id2label, ref)
        scale = float(getattr(processor, "rescale_factor", 1 / 255))
        mean, std = processor.image_mean, processor.image_std
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) / scale
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1) / scale

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[Instances]:
        """Instances of each image, in order (`batch_size` images per forward)."""
        out: list[Instances] = []
        for start in range(0, len(images), self.batch_size):
            out += self._batch(images[start : start + self.batch_size])
        return out

    def _batch(self, images: Sequence[Image.Image]) -> list[Instances]:
        sizes = [(im.height, im.width) for im in images]
        resized = [rescale_size(h, w) for h, w in sizes]
        pad_h = max(math.ceil(h / SIZE_DIVISOR) * SIZE_DIVISOR for h, _ in resized)
        pad_w = max(math.ceil(w / SIZE_DIVISOR) * SIZE_DIVISOR for _, w in resized)
        batch = torch.zeros(len(images), 3, pad_h, pad_w, device=self.device)
        for i, (im, (h, w)) in enumerate(zip(images, resized, strict=True)):
            pixels = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)).to(self.device)
            pixels = F.interpolate(pixels.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)
            pixels = pixels.round().clamp(0, 255)  # cv2 resizes uint8 to uint8
            batch[i, :, :h, :w] = ((pixels - self._mean) / self._std)[0]
        outputs = self.model(pixel_values=batch)
        return [
            mmdet_instances(cls, masks, (pad_h, pad_w), rs, hw)
            for cls, masks, rs, hw in zip(
                outputs.class_queries_logits, outputs.masks_queries_logits, resized, sizes, strict=True
            )
        ]


class ColorClassifier:
    """CLIP zero-shot over GenEval's 10 colours with its 3 templates, one text classifier per object class."""

    def __init__(self, ref: str, device: torch.device, batch_size: int = 16) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

        path = resolve_model(ref)
        hint = "use a transformers CLIP checkpoint (openai/clip-vit-large-patch14)"
        with loading("CLIP", ref, hint):
            model = CLIPModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            # PIL resizing, as open_clip's transforms do on GenEval's PIL crops.
            self.processor = CLIPImageProcessorPil.from_pretrained(path)
        self.model = model.to(device).eval()
        self.device, self.batch_size = device, max(1, batch_size)
        self._weights: dict[str, torch.Tensor] = {}

    @staticmethod
    def prompts(cls: str) -> list[list[str]]:
        """The classifier's texts for object class `cls`: per colour, one per template."""
        return [[t.format(c=color, cls=cls) for t in COLOR_TEMPLATES] for color in COLORS]

    @torch.no_grad()
    def weights(self, cls: str) -> torch.Tensor:
        """(10, D) unit text embeddings of class `cls`, one per colour (template-averaged, cached)."""
        if cls not in self._weights:
            texts = [t for per_color in self.prompts(cls) for t in per_color]
            tokens = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            emb = _features(self.model.get_text_features(**tokens))
            emb = F.normalize(emb, dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(1)
            self._weights[cls] = F.normalize(emb, dim=-1)
        return self._weights[cls]

    @torch.no_grad()
    def classify(self, crops: Sequence[Image.Image], classes: Sequence[str]) -> list[str]:
        """The colour of each crop, `classes[i]` naming crop i's object class."""
        out: list[str] = []
        for start in range(0, len(crops), self.batch_size):
            part, names = crops[start : start + self.batch_size], classes[start : start + self.batch_size]
            pixels = self.processor(images=list(part), return_tensors="pt")["pixel_values"].to(self.device)
            feats = F.normalize(_features(self.model.get_image_features(pixel_values=pixels)), dim=-1)
            for feat, cls in zip(feats, names, strict=True):
                out.append(COLORS[int((self.weights(cls) @ feat).argmax())])
        return out


def _features(output) -> torch.Tensor:
    """CLIP's projected embeddings: a tensor (older transformers) or the output's pooler_output (5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
