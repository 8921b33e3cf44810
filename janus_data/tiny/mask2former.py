"""A tiny COCO instance-segmentation Mask2Former (GenEval's detector) built from Mask2FormerConfig + SwinConfig.

Keeps what `janus_eval.detect` depends on from facebook/mask2former-swin-small-coco-instance: a Swin
backbone, 100 queries, the 80 COCO thing classes with the id2label names transformers' conversion
gives them (huggingface/label-files coco-detection-mmdet-id2label.json: 'mouse', 'remote',
'keyboard' where GenEval writes 'computer mouse', 'tv remote', 'computer keyboard'), an 81st
no-object logit, and a Mask2FormerImageProcessor config (ImageNet mean/std, 800/1333 resize).
The Swin patches are 16 px instead of 4, so GenEval's 800 px test scale costs milliseconds on CPU.
The class head and the mask embedder are scaled up, so a random model still makes a few
detections above GenEval's 0.3 threshold and every rule runs in the tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessorPil,
    SwinConfig,
)

# transformers' names for COCO's 80 thing classes, in COCO order (label id = index).
COCO_ID2LABEL = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Weight scales of the class head and of the mask embedder's last layer: peaked class probabilities
# and confident masks, so scores spread over [0, 1] instead of sitting near 1/81 x 0.5.
CLASS_STD = 0.5
MASK_GAIN = 8.0


def tiny_mask2former_config() -> Mask2FormerConfig:
    """The tiny model's config: a 4-stage Swin (16 px patches) and a 2-layer decoder, 100 queries, 80 classes."""
    backbone = SwinConfig(
        patch_size=16,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    id2label = dict(enumerate(COCO_ID2LABEL))
    return Mask2FormerConfig(
        backbone_config=backbone,
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=100,
    )


def build_tiny_mask2former(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny random COCO instance Mask2Former."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(tiny_mask2former_config()).eval()
    with torch.no_grad():
        model.class_predictor.weight.normal_(0.0, CLASS_STD)
        model.class_predictor.bias.zero_()
        last = model.model.transformer_module.decoder.mask_predictor.mask_embedder.layers[-1].layers[0]
        last.weight.mul_(MASK_GAIN)
    model.save_pretrained(out_dir, safe_serialization=True)
    Mask2FormerImageProcessorPil(
        size={"shortest_edge": 800, "longest_edge": 1333},
        size_divisor=32,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        ignore_index=255,
        num_labels=len(COCO_ID2LABEL),
    ).save_pretrained(out_dir)
    return out_dir
