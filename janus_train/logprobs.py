"""Per-token log-probs of GRPO rollouts under a policy, and the segment masks over them (docs/paper.md, 'GRPO').

Log-probs in the loss (`rl.image_logp`):
- image tokens, 'sampled' (default): log softmax of the CFG logits after top-k, temperature and
  top-p, the very distribution the rollout drew from; the ratio's old log-probs are the
  rollout's own. 'cfg_divided': the released code's log softmax(CFG logits / w); the old
  log-probs are then the policy's own, detached, so the ratio is 1 at the update, as in the
  released code (one update per rollout batch);
- the answer token (`rl.answer_logp`): 'two_way' = log softmax over the two words' first tokens
  (the forced answer's distribution); 'full' = log softmax(lm_head / text temperature) over the
  whole vocabulary, as the released code trains it (janus-rl/src/open_r1/grpo_trainer_t2iv1.py:
  366-395; needs 'cfg_divided', whose ratio is 1). Reason tokens: log softmax(lm_head / text
  temperature). Tokens forced after the answer's first token (a split "No") belong to no segment,
  nor does the reason's <EOS> with `rl.judge_eos` False.
- image 2 is conditioned on `Rollouts.context1`, the very codes the rollout's prefix held
  (`rl.regen_context`).
"""

from __future__ import annotations

import torch
from PIL import Image

from janus_data.config import RLConfig
from janus_data.generators.sampling import SamplerParams, cfg_logits, masked_scaled_logits
from janus_train.grpo_math import segment_masks
from janus_train.losses import collate, hidden_states
from janus_train.rollout import Rollouts, answer_words, closed
from janus_train.sequences import IGNORE, SequenceBuilder


def image_logprobs(cond: torch.Tensor, uncond: torch.Tensor, tokens: torch.Tensor, cfg: RLConfig) -> torch.Tensor:
    """Log-prob of each image token under `cfg.image_logp`: (R, N, V) x2, (R, N) -> (R, N)."""
    rows, n, vocab = cond.shape
    logits = cfg_logits(cond.reshape(-1, vocab), uncond.reshape(-1, vocab), cfg.cfg_weight)
    flat = tokens.reshape(-1, 1)
    if cfg.image_logp == "cfg_divided":
        scaled = logits / cfg.cfg_weight
    else:
        params = SamplerParams(cfg.cfg_weight, cfg.temperature, cfg.top_k, cfg.top_p)
        masked = masked_scaled_logits(logits, params)
        # The sampled token is in the kept set by construction; keep it even if this forward's
        # rounding puts it a hair outside (a -inf log-prob would poison the step).
        keep = torch.isfinite(masked).scatter(-1, flat, True)
        scaled = torch.where(keep, logits / cfg.temperature, float("-inf"))
    return torch.log_softmax(scaled, dim=-1).gather(-1, flat).reshape(rows, n)


def two_way_logprobs(scaled: torch.Tensor, targets: torch.Tensor, builder: SequenceBuilder) -> torch.Tensor:
    """Log-prob of each target under the softmax over the first tokens of Yes and No: (K, V), (K,) -> (K,).

    The forced answer's own distribution (rows whose target is neither word get No's; only the
    answer position is read).
    """
    yes, no = answer_words(builder)
    pair = torch.tensor([yes[0], no[0]], device=scaled.device)
    two_way = torch.log_softmax(scaled[:, pair], dim=-1)
    return torch.where(targets == pair[0], two_way[:, 0], two_way[:, 1])


def _image_targets(model, samples, builder, n: int, image_processor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation-head logits at the image targets of 2R samples (R cond, then R uncond): (R, N, V) x2."""
    device = next(model.parameters()).device
    batch = collate(samples, builder.pad_id, image_processor).to(device)
    hidden = hidden_states(model, batch, image_processor)
    logits = model.model.generation_head(hidden[batch.image_labels != IGNORE]).float()
    logits = logits.reshape(len(samples), n, -1)
    half = len(samples) // 2
    return logits[:half], logits[half:]


def rollout_logprobs(
    model,
    builder: SequenceBuilder,
    image_processor,
    ro: Rollouts,
    rows: list[int],
    cfg: RLConfig,
    lockstep: bool = False,
) -> torch.Tensor:
    """The (R, T) grid of per-token log-probs of rollouts `rows` under `model`, T = N + J + N.

    Columns: image 1's N codes, the evaluation's J tokens (J = the longest among `rows`, padded
    with 0), image 2's N codes (0 on rows that said Yes). See `segments_for` for the masks.
    `lockstep`: always run the image-2 forward, even without a No row (FSDP needs the same
    forwards on every process).
    """
    device = next(model.parameters()).device
    n = ro.image1.shape[1]
    width = max(len(ro.judge_ids[r]) for r in rows)
    grid = torch.zeros(len(rows), 2 * n + width, device=device)
    prompts = [ro.prompts[r] for r in rows]
    tok1 = ro.image1[rows].to(device)
    # image 1: Task-I sequences and their unconditional twins (the turn padded)
    samples = [
        builder.t2i(prompts[i], tok1[i].cpu().numpy(), drop=d, source=ro.source(r))
        for d in (False, True)
        for i, r in enumerate(rows)
    ]
    cond, uncond = _image_targets(model, samples, builder, n, image_processor)
    grid[:, :n] = image_logprobs(cond, uncond, tok1, cfg)
    # the evaluation: Task-II sequences (image 1 through the understanding path)
    samples = [
        builder.judge(ro.prompts[r], Image.fromarray(ro.pixels1[r]), ro.judge_ids[r], source=ro.source(r)) for r in rows
    ]
    batch = collate(samples, builder.pad_id, image_processor).to(device)
    hidden = hidden_states(model, batch, image_processor)
    scaled = model.lm_head(hidden[batch.text_labels != IGNORE]).float() / cfg.text_temperature
    targets = batch.text_labels[batch.text_labels != IGNORE]
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    answer_logp = logp if cfg.answer_logp == "full" else two_way_logprobs(scaled, targets, builder)
    start = 0
    for i, r in enumerate(rows):
        k = len(ro.judge_ids[r])
        grid[i, n] = answer_logp[start]
        grid[i, n + 1 : n + k] = logp[start + 1 : start + k]
        start += k
    # image 2: Task-III sequences of the rows that said No, and their twins (the first turn padded)
    redo = [i for i, r in enumerate(rows) if not bool(ro.said_yes[r])]
    if redo or lockstep:
        # Under FSDP every process must run the same forwards (each one gathers the shards): with
        # no No row, row 0 stands in and its zero-weighted logits join the graph, changing nothing.
        picks = redo or [0]
        context = ro.context1[rows] if redo else tok1  # the codes the rollout's prefix held
        samples = [
            builder.regen(
                prompts[i],
                context[i].cpu().numpy(),
                closed(ro.judge_ids[rows[i]], builder.eos_id),
                (ro.image2[rows[i]] if redo else tok1[i]).cpu().numpy(),
                drop=d,
                source=ro.source(rows[i]),
            )
            for d in (False, True)
            for i in picks
        ]
        cond, uncond = _image_targets(model, samples, builder, n, image_processor)
        if redo:
            grid[redo, n + width :] = image_logprobs(cond, uncond, ro.image2[[rows[i] for i in redo]].to(device), cfg)
        else:
            grid = grid + 0.0 * (cond.sum() + uncond.sum())
    return grid


def segments_for(
    ro: Rollouts, rows: list[int], device, eos_id: int | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The three segment masks over `rollout_logprobs`' grid, and the behaviour log-probs on it.

    image1 = image 1's codes; judge = the evaluation's sampled tokens (forced ones excluded, and
    the closing <EOS> when `eos_id` is given: rl.judge_eos False, as the released
    janus-rl/src/open_r1/llama.py:222-224); final = image 1's codes on rows that said Yes, image
    2's on the others.
    """
    n = ro.image1.shape[1]
    width = max(len(ro.judge_ids[r]) for r in rows)
    total = 2 * n + width
    said_yes = ro.said_yes[rows].to(device)
    lens = torch.tensor([len(ro.judge_ids[r]) for r in rows], device=device)
    span = lambda a, b: torch.stack([a, b], dim=1)  # noqa: E731
    zeros = torch.zeros(len(rows), dtype=torch.long, device=device)
    masks = segment_masks(
        span(zeros, zeros + n), span(zeros + n, n + lens), span(zeros + n + width, zeros + total), said_yes, total
    )
    behaviour = torch.zeros(len(rows), total, device=device)
    behaviour[:, :n] = ro.image1_logp[rows].to(device)
    behaviour[:, n + width :] = ro.image2_logp[rows].to(device)
    for i, r in enumerate(rows):
        behaviour[i, n : n + len(ro.judge_logp[r])] = torch.tensor(ro.judge_logp[r], device=device)
    forced = torch.isnan(behaviour)
    masks["judge"] = masks["judge"] & ~forced
    for i, r in enumerate(rows):
        ids = ro.judge_ids[r]
        if eos_id is not None and ids and ids[-1] == eos_id:
            masks["judge"][i, n + len(ids) - 1] = False  # still context for image 2, without a loss
    return masks, torch.nan_to_num(behaviour, nan=0.0)
