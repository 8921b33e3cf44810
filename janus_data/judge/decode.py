"""Ragged batches through a transformers causal LM on one KV cache: prefill, extend, rewind, decode.

Rows of different lengths are left-padded inside every block they append, so a row may have
padding in the middle of its sequence. The 2D attention mask hides those slots as keys and
each row's positions count only its real tokens, so every row computes exactly what it would
alone. That lets two questions about one image share the image's prefill: append the common
prefix once, append one suffix, rewind to the prefix, append the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from janus_data.models import cache_keyword

# Picks the next token of each live row from its logits: (step from 0, (A, V) logits, the A rows'
# indices in the original batch) -> (A,) token ids.
Chooser = Callable[[int, torch.Tensor, list[int]], torch.Tensor]


@dataclass(frozen=True)
class Mark:
    """Where a RaggedBatch stood: its length and each row's next position."""

    length: int
    next_pos: torch.Tensor


class RaggedBatch:
    """B rows on one DynamicCache: a (B, T) mask over every slot and each row's next position."""

    def __init__(self, model, pad_id: int, device: torch.device):
        self.model = model
        self.pad_id = pad_id
        self.device = device
        self.cache = DynamicCache(config=model.config.get_text_config())
        self.cache_kw = cache_keyword(model)
        self.mask: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def mark(self) -> Mark:
        return Mark(self.length, self.next_pos.clone())

    def rewind(self, mark: Mark) -> None:
        """Drop every slot appended after `mark` (cache, mask and positions)."""
        if self.length > mark.length:
            self.cache.crop(mark.length - self.length)  # a negative count: the same meaning in every 5.x
        self.mask = self.mask[:, : mark.length]
        self.next_pos = mark.next_pos.clone()

    @torch.inference_mode()
    def append(self, rows: list[list[int]], **model_inputs) -> torch.Tensor:
        """Append one block (each row's ids, left-padded to the longest); (B, V) logits after each row's last id."""
        if any(not r for r in rows):
            raise ValueError("every row must append at least one token")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        block = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            block[i, width - len(row) :] = 1
        ids, block = ids.to(self.device), block.to(self.device)
        start = torch.zeros(len(rows), dtype=torch.long, device=self.device) if self.next_pos is None else self.next_pos
        # Real tokens count on from the row's next position; pad slots repeat it (hidden as keys anyway).
        positions = start[:, None] + (block.cumsum(-1) - 1).clamp(min=0)
        self.mask = block if self.mask is None else torch.cat([self.mask, block], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            logits_to_keep=1,
            **{self.cache_kw: self.cache},
            **model_inputs,
        )
        self.next_pos = start + block.sum(-1)
        logits = out.logits[:, -1]
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up to fp32, fp64 stays

    def select(self, rows: list[int]) -> None:
        """Keep only the current batch's `rows` (in that order): cache, mask and positions."""
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]

    def decode(
        self, logits: torch.Tensor, max_new_tokens: list[int], stop_ids: list[set[int]], choose: Chooser
    ) -> list[list[int]]:
        """Generate from `logits` (B, V) until each row meets one of its stop ids or its budget; new ids per row.

        A row's list ends with its stop id when it stopped. Finished rows leave the batch, so
        a short answer does not ride along with a long one.
        """
        out: list[list[int]] = [[] for _ in max_new_tokens]
        alive = [i for i, n in enumerate(max_new_tokens) if n > 0]
        if len(alive) < len(out):
            self.select(alive)
            logits = logits[alive]
        step = 0
        while alive:
            tokens = choose(step, logits, alive).tolist()
            keep = []
            for k, (i, token) in enumerate(zip(alive, tokens, strict=True)):
                out[i].append(int(token))
                if int(token) not in stop_ids[i] and len(out[i]) < max_new_tokens[i]:
                    keep.append(k)
            step += 1
            if not keep:
                break
            if len(keep) < len(alive):
                self.select(keep)  # positions in the current batch
                alive, tokens = [alive[k] for k in keep], [tokens[k] for k in keep]
            logits = self.append([[t] for t in tokens])
        return out


def greedy(step: int, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The argmax of each row: (B, V) -> (B,)."""
    return logits.argmax(-1)
