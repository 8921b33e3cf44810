"""The image-editing section (docs/edit.md): edit sources, the diffusion editor, the edit reward.

Frozen dataclasses with a docstring under each field (rendered into docs/configuration.md by
`janus_data.config_doc`); `janus_data.config` re-exports every name. Janus-Pro edits sample with
`synth.janus`'s settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from janus_data.config_stages import DiffusersSpeedConfig


@dataclass(frozen=True)
class KontextGenConfig(DiffusersSpeedConfig):
    """FLUX.1 Kontext instruction edits through diffusers' FluxKontextPipeline."""

    model: str = "black-forest-labs/FLUX.1-Kontext-dev"
    """Checkpoint: a local diffusers directory, a hub id, or 'tiny:kontext'."""
    num_inference_steps: int = 28
    """Denoising steps."""
    guidance_scale: float = 2.5
    """Kontext's distilled guidance (the value of diffusers' Kontext example)."""
    max_sequence_length: int = 512
    """T5 instruction length."""
    max_area: int = 1024 * 1024
    """Pixels of an edit when auto_resize is off (the source's aspect ratio is kept)."""
    auto_resize: bool = True
    """Draw at the Kontext training resolution nearest the source's aspect ratio."""
    batch_size: int = 4
    """Edits per pipeline call."""


@dataclass(frozen=True)
class EditConfig:
    """Instruction-based image editing: sources, candidate edits, the judge's edit reward."""

    images_per_source: int = 8
    """Candidate edits per edit source (`janus data synth --task edit`), split between the generators by kontext_share."""
    kontext_share: float = 0.5
    """Share of a source's candidates drawn by FLUX.1 Kontext (round(n * share)); Janus-Pro draws the rest."""
    generators: tuple[str, ...] = ("kontext", "janus")
    """Editors that draw candidates: 'kontext', 'janus' or both (one alone draws all images_per_source)."""
    reward_flw: float = 1.0
    """Weight of R_flw (the judge's 'follows the instruction' yes-probability) in the edit reward R; the paper's 1.0."""
    reward_psv: float = 0.25
    """Weight of R_psv (the judge's 'unrelated area preserved' yes-probability) in R; the paper's 0.25."""
    threshold: float | None = None
    """q = R / (reward_flw + reward_psv) at or above which a candidate edit is good (`janus data filter
    --task edit`); null: filter.threshold. The paper gives none for edits."""
    skip_bad_images: bool = False
    """Drop edit-source rows whose images cannot be read, counting them, instead of stopping at the first."""
    target_generators: tuple[str, ...] = ("kontext", "janus")
    """Editors whose candidates may be edit SFT targets (`edit` samples, `edit_regen` good images)."""
    judge_generators: tuple[str, ...] = ("kontext", "janus")
    """Editors whose candidates may be `edit_judge` (edit self-evaluation) samples."""
    context_generators: tuple[str, ...] = ("kontext", "janus")
    """Editors whose candidates may be `edit_regen`'s bad (context) edit."""
    reference_samples: bool = True
    """Add every edit source's reference image (when it has one) as one more `edit` sample (unscored)."""
    kontext: KontextGenConfig = field(default_factory=KontextGenConfig)


EDIT_GENERATORS = ("kontext", "janus")


def edit_split_counts(cfg: EditConfig) -> dict[str, int]:
    """Candidate edits per source for each enabled editor: kontext gets round(n * kontext_share).

    >>> edit_split_counts(EditConfig(images_per_source=8, kontext_share=0.25))
    {'kontext': 2, 'janus': 6}
    """
    n = cfg.images_per_source
    if len(set(cfg.generators)) == 1:
        return {cfg.generators[0]: n}
    n_kontext = round(n * cfg.kontext_share)
    return {"kontext": n_kontext, "janus": n - n_kontext}
