"""The evaluation section: `janus generate`, `janus eval geneval|judge` and `janus run`'s eval stage.

Frozen dataclasses with a docstring under each field (rendered into docs/configuration.md by
`janus_data.config_doc`); `janus_data.config` re-exports every name. Image sampling (CFG weight,
temperature, top-k, top-p, batch size, loop) is `synth.janus`'s, so an evaluation draws as synth does.
"""

from __future__ import annotations

from dataclasses import dataclass

# What `janus run`'s eval stage can measure: the base model, the run's latest SFT and GRPO checkpoints.
EVAL_CHECKPOINTS = ("base", "sft", "rl")


@dataclass(frozen=True)
class EvalConfig:
    """Using and measuring checkpoints (docs/evaluation.md)."""

    geneval_prompts: str | None = None
    """GenEval metadata JSONL (one object per line: tag, include, exclude, prompt); set: `janus run` ends with GenEval."""
    judge_prompts: str | None = None
    """Prompt file for `janus eval judge` (JSONL, CSV, Parquet or text; tags kept); set: `janus run` also runs it."""
    checkpoints: tuple[str, ...] = EVAL_CHECKPOINTS
    """Which of the run's checkpoints `janus run` evaluates: 'base', 'sft', 'rl' (missing ones are skipped)."""
    images_per_prompt: int = 4
    """Images drawn per prompt (GenEval: 4)."""
    seed: int = 0
    """Base of the per-image seeds: image k of prompt p draws from derive_seed(seed, prompt id, k)."""
    introspect: bool = False
    """Run the trained chain: image, the model's own Yes/No and reason, a regeneration on No."""
    rounds: int = 1
    """With introspect: most regenerations per image (each after a No on the latest image)."""
    text_temperature: float = 0.0
    """Temperature of the model's Yes/No and reason; 0 = greedy (argmax), the paper's inference setting."""
    reason_tokens: int = 64
    """Most tokens of the model's evaluation after its Yes/No (the reason is cut there)."""
    detector: str = "facebook/mask2former-swin-small-coco-instance"
    """COCO instance-segmentation Mask2Former (transformers); GenEval's is mmdet's Swin-S Mask2Former."""
    clip: str = "openai/clip-vit-large-patch14"
    """CLIP for GenEval's colour check (ViT-L/14, as GenEval)."""
    threshold: float = 0.3
    """GenEval: a detection counts when its score is above this."""
    counting_threshold: float = 0.9
    """GenEval: the stricter threshold for prompts tagged counting."""
    position_threshold: float = 0.1
    """GenEval: the relative margin of the position rule."""
    max_objects: int = 16
    """GenEval: detections kept per class, best first."""
    detector_batch_size: int = 8
    """Images per detector / CLIP forward batch."""
