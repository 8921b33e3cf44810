"""Batching and the SFT loss of the Janus-Pro-R1 tasks (the three text-to-image ones and their edit versions).

`collate` right-pads `Sample`s into a `Batch`; `forward_losses` builds `inputs_embeds`
(text embeddings, understanding features and generation embeddings scattered at their
positions), runs the language model once, and applies lm_head only at text-target
positions and the generation head only at image-target positions.

Reduction (per batch):
- text part of task t: sum(w * CE) / sum(w) over all of t's text targets in the batch
  (`text_reduction="weighted"`, default); `"split"` instead takes, for each distinct weight
  w, w * mean(CE) over the targets of that weight and sums: with weights 0.8 / 0.2 this is
  the released code's 0.8 * mean(CE Yes/No) + 0.2 * mean(CE rest).
- image part of task t: mean CE over all of t's image targets in the batch.
- loss of task t: its text part + its image part (whichever exist; only regen with
  `regen_text_loss` has both).
- total: sum over tasks of (n_t / B) * loss_t, with n_t the samples of task t among the B
  samples. Each sample counts once (a task's weight in the total is its share of the
  batch, i.e. the SFT mix), not by its number of tokens: a 576-token image and a 30-token
  reason weigh the same.

`per_sample_losses` gives the same text and image parts reduced per sample instead
((B,) values independent of the batch's other rows), for trainers that accumulate sums.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from janus_data.generators.janus_loop import position_ids_from_mask
from janus_data.janus_format import ALL_TASKS
from janus_train.sequences import IGNORE, Sample


@dataclass
class Batch:
    """B right-padded samples, length T.

    input_ids, attention_mask, position_ids: (B, T) int64.
    gen_codes: (B, T) int64, the VQ code at generation-path positions, -1 elsewhere.
    und_mask: (B, T) bool, understanding-path positions (row-major order = und_images order).
    und_images: the K understanding images in that order: a (K, 3, H, W) tensor, or a list of
      PIL images / (3, H, W) tensors still to be processed.
    text_labels, image_labels: (B, T) int64 (-100: no target); text_weights: (B, T) float32.
    tasks: the B task names.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    gen_codes: torch.Tensor
    und_mask: torch.Tensor
    und_images: Any
    text_labels: torch.Tensor
    text_weights: torch.Tensor
    image_labels: torch.Tensor
    tasks: list[str]

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on `device`."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return Batch(**moved)


def collate(samples: list[Sample], pad_id: int, image_processor=None, left: bool = False) -> Batch:
    """Right-pad samples to the longest (padding: pad_id, mask 0, no targets); `left` pads on the
    left instead (prefixes a generation loop continues).

    With `image_processor` (the checkpoint's JanusImageProcessor), PIL understanding images
    become pixel values here (in the data loader); otherwise `forward_losses` does it.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    b, t = len(samples), max(len(s) for s in samples)
    input_ids = np.full((b, t), pad_id, dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.int64)
    gen_codes = np.full((b, t), -1, dtype=np.int64)
    und_mask = np.zeros((b, t), dtype=bool)
    text_labels = np.full((b, t), IGNORE, dtype=np.int64)
    text_weights = np.zeros((b, t), dtype=np.float32)
    image_labels = np.full((b, t), IGNORE, dtype=np.int64)
    und_images: list[Any] = []
    for i, s in enumerate(samples):
        n = len(s)
        o = t - n if left else 0  # where the sample starts in its row
        input_ids[i, o : o + n] = s.input_ids
        mask[i, o : o + n] = 1
        text_labels[i, o : o + n] = s.text_labels
        text_weights[i, o : o + n] = s.text_weights
        image_labels[i, o : o + n] = s.image_labels
        for start, codes in s.gen_images:
            gen_codes[i, o + start : o + start + len(codes)] = codes
        # understanding spans: the run of placeholder ids from each start
        for start, image in sorted(s.und_images, key=lambda x: x[0]):
            end = start
            while end < n and s.input_ids[end] == s.input_ids[start]:
                end += 1
            und_mask[i, o + start : o + end] = True
            und_images.append(image)
    attention_mask = torch.from_numpy(mask)
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        gen_codes=torch.from_numpy(gen_codes),
        und_mask=torch.from_numpy(und_mask),
        und_images=_pixels(und_images, image_processor),
        text_labels=torch.from_numpy(text_labels),
        text_weights=torch.from_numpy(text_weights),
        image_labels=torch.from_numpy(image_labels),
        tasks=[s.task for s in samples],
    )


def _pixels(images: Any, image_processor) -> Any:
    """Understanding images -> (K, 3, H, W) pixels when possible, else unchanged."""
    if isinstance(images, torch.Tensor) or not images:
        return images
    if all(isinstance(im, torch.Tensor) for im in images):
        return torch.stack(images)
    if image_processor is None:
        return list(images)
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def batch_embeds(model, batch: Batch, image_processor=None) -> torch.Tensor:
    """Text embeddings with understanding features and generation embeddings scattered in: (B, T, D)."""
    embeds = model.get_input_embeddings()(batch.input_ids)
    if batch.und_mask.any():
        pixels = _pixels(batch.und_images, image_processor)
        if not isinstance(pixels, torch.Tensor):
            raise ValueError("the batch has PIL understanding images: pass the checkpoint's image processor")
        vision_dtype = model.model.vision_model.embeddings.patch_embedding.weight.dtype
        feats = model.model.get_image_features(pixels.to(embeds.device, vision_dtype)).pooler_output
        if feats.shape[0] * feats.shape[1] != int(batch.und_mask.sum()):
            raise ValueError(
                f"{feats.shape[0]} understanding images give {feats.shape[0] * feats.shape[1]} features "
                f"for {int(batch.und_mask.sum())} positions"
            )
        embeds = embeds.masked_scatter(batch.und_mask[..., None], feats.to(embeds.dtype))
    gen_mask = batch.gen_codes >= 0
    if gen_mask.any():
        gen = model.prepare_embeddings_for_image_generation(batch.gen_codes[gen_mask])
        embeds = embeds.masked_scatter(gen_mask[..., None], gen.to(embeds.dtype))
    return embeds


@dataclass
class TargetLosses:
    """Per-target CE of one forward pass: text targets (ce, weight, row) and image targets (ce, row)."""

    text_ce: torch.Tensor
    text_weight: torch.Tensor
    text_row: torch.Tensor
    image_ce: torch.Tensor
    image_row: torch.Tensor


def hidden_states(model, batch: Batch, image_processor=None) -> torch.Tensor:
    """The language model's last hidden states over the whole batch: (B, T, D)."""
    return model.model.language_model(
        inputs_embeds=batch_embeds(model, batch, image_processor),
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state


def target_losses(model, batch: Batch, image_processor=None) -> TargetLosses:
    """One forward; lm_head only at text targets, the generation head only at image targets."""
    hidden = hidden_states(model, batch, image_processor)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None].expand(hidden.shape[:2])
    text_sel = batch.text_labels != IGNORE
    text_logits = model.lm_head(hidden[text_sel]).float()
    image_sel = batch.image_labels != IGNORE
    image_logits = model.model.generation_head(hidden[image_sel]).float()
    return TargetLosses(
        text_ce=F.cross_entropy(text_logits, batch.text_labels[text_sel], reduction="none"),
        text_weight=batch.text_weights[text_sel].float(),
        text_row=rows[text_sel],
        image_ce=F.cross_entropy(image_logits, batch.image_labels[image_sel], reduction="none"),
        image_row=rows[image_sel],
    )


def _group_loss(
    t: TargetLosses, text_sel: torch.Tensor, image_sel: torch.Tensor, reduction: str
) -> torch.Tensor | None:
    """Text part + image part of the selected targets (None when nothing is selected)."""
    parts = []
    if text_sel.any():
        parts.append(_text_loss(t.text_ce[text_sel], t.text_weight[text_sel], reduction))
    if image_sel.any():
        parts.append(t.image_ce[image_sel].mean())
    return torch.stack(parts).sum() if parts else None


def _check_reduction(text_reduction: str) -> None:
    if text_reduction not in ("weighted", "split"):
        raise ValueError(f"text_reduction must be 'weighted' or 'split', got {text_reduction!r}")


def forward_losses(
    model,
    batch: Batch,
    image_processor=None,
    text_reduction: Literal["weighted", "split"] = "weighted",
) -> dict[str, torch.Tensor]:
    """Scalar losses: one per task present in the batch, and "total" (see the module docstring)."""
    _check_reduction(text_reduction)
    t = target_losses(model, batch, image_processor)
    device = t.text_ce.device
    task_of_row = torch.tensor([ALL_TASKS.index(name) for name in batch.tasks], device=device)
    text_task, image_task = task_of_row[t.text_row], task_of_row[t.image_row]
    out: dict[str, torch.Tensor] = {}
    total = torch.zeros((), dtype=torch.float32, device=device)
    for k, name in enumerate(ALL_TASKS):
        n_task = batch.tasks.count(name)
        if n_task == 0:
            continue
        loss = _group_loss(t, text_task == k, image_task == k, text_reduction)
        if loss is None:
            continue
        out[name] = loss
        total = total + loss * (n_task / len(batch.tasks))
    out["total"] = total
    return out


def per_sample_losses(
    model,
    batch: Batch,
    image_processor=None,
    text_reduction: Literal["weighted", "split"] = "weighted",
) -> torch.Tensor:
    """(B,) losses, each sample reduced over its own targets alone (text part + image part).

    For t2i and regen (N image targets each) the task mean of these equals `forward_losses`'
    task loss; for judge each reason is normalised by its own weight sum instead of the
    batch's. Their mean is the per-sample analogue of "total", and a sample's value does not
    depend on what it is batched with (for a trainer that sums over micro-batches and ranks).
    """
    _check_reduction(text_reduction)
    t = target_losses(model, batch, image_processor)
    out = []
    for row in range(len(batch.tasks)):
        loss = _group_loss(t, t.text_row == row, t.image_row == row, text_reduction)
        out.append(loss if loss is not None else t.text_ce.new_zeros(()))
    return torch.stack(out)


def _text_loss(ce: torch.Tensor, w: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "weighted":
        return (ce * w).sum() / w.sum().clamp_min(1e-12)
    loss = ce.new_zeros(())
    for level in torch.unique(w):
        loss = loss + level * ce[w == level].mean()
    return loss
