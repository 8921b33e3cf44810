"""The trainers' config sections: `sft` and `rl`.

Frozen dataclasses with a docstring under each field: `janus_data.config_doc` renders them into
docs/configuration.md. `janus_data.config` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from janus_data.janus_format import ALL_TASKS


@dataclass(frozen=True)
class SFTConfig:
    """`janus train sft`: mixed sub-task SFT of Janus-Pro on the filter's shards (docs/paper.md, 'SFT')."""

    model: str | None = None
    """Checkpoint to fine-tune; null: the run's synth.janus.model (whose VQ made the shards' codes)."""
    max_steps: int = 50000
    """Optimizer steps (the paper's 50K)."""
    batch_size: int = 8
    """Samples per step and process, before gradient accumulation (global batch = batch_size x
    grad_accum x processes)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 2e-5
    """Peak learning rate (AdamW)."""
    betas: tuple[float, ...] = (0.9, 0.95)
    eps: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int = 500
    """Linear warm-up steps, then cosine decay to min_lr_ratio x lr at max_steps."""
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    mix: tuple[float, ...] = (0.2, 0.3, 0.5)
    """Task I : II : III draw ratio (paper 0.2:0.3:0.5; released code 10:10:15)."""
    edit_share: float = 0.0
    """Share of SFT draws from the edit tasks (docs/train_sft.md, 'Editing samples'): 0
    text-to-image only, 1 edits only. Task weights: (1 - edit_share) x mix for t2i, judge, regen;
    edit_share x edit_mix for edit, edit_judge, edit_regen."""
    edit_mix: tuple[float, ...] = (0.2, 0.3, 0.5)
    """edit : edit_judge : edit_regen draw ratio within the edit share (shards of `janus data
    filter --task edit`)."""
    caption_dropout: float = 0.1
    """Probability that a Task-I/III caption is replaced by pad tokens (for CFG at inference)."""
    answer_weight: float = 0.8
    """Task II loss weight of the Yes/No token."""
    reason_weight: float = 0.2
    """Task II loss weight of every other answer token."""
    text_reduction: Literal["split", "weighted"] = "split"
    """Task II text loss: 'split' = answer_weight x mean CE of the Yes/No token + reason_weight x
    mean CE of the rest (the released code); 'weighted' = sum(w x CE) / sum(w) over all tokens."""
    loss_reduction: Literal["sample", "batch"] = "sample"
    """'sample': each sample's loss over its own targets, then the mean over the global batch (a
    sample's loss does not depend on its batch). 'batch' (the released code): each task's targets
    pooled token-level over one process's micro-batch, then averaged over micro-steps and
    processes."""
    mix_unit: Literal["sample", "step"] = "sample"
    """'sample': every sample's task is drawn from `mix`; 'step' (the released code): one task per
    optimizer step, for the whole global batch."""
    seed: int = 0
    """Seed of the task mix, the sample order, caption dropout and torch."""
    shuffle_buffer: int = 1000
    """Samples held for shuffling per task stream."""
    save_every: int = 1000
    """Steps between checkpoints (one is always written at the end)."""
    keep_last: int = 3
    """Checkpoints kept (older ones are deleted once a newer one is complete)."""
    log_every: int = 10
    """Steps between metrics lines."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: 'ddp' (a full model per GPU) or 'fsdp' (FSDP2: parameters, gradients and
    optimizer state sharded over the processes, one unit per decoder layer; for models that do
    not fit one GPU)."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the tensorboard package)."""


def sft_task_weights(scfg: SFTConfig) -> dict[str, float]:
    """Each SFT task's draw weight, in ALL_TASKS order: (1 - edit_share) x mix for the text-to-image
    tasks, edit_share x edit_mix for the edit tasks. With edit_share 0 the t2i weights are `mix` itself
    (the same draws as before edits existed); a weight-0 task is never drawn and needs no shards."""
    share = float(scfg.edit_share)
    weights = [(1.0 - share) * float(w) for w in scfg.mix] + [share * float(w) for w in scfg.edit_mix]
    return dict(zip(ALL_TASKS, weights, strict=True))


@dataclass(frozen=True)
class RLConfig:
    """`janus train rl`: GRPO with introspective rollouts and dual-layer rewards (docs/paper.md, 'GRPO')."""

    model: str | None = None
    """Policy to start from (`--init`); null: the run's latest SFT checkpoint, else synth.janus.model."""
    prompts: str | None = None
    """Prompt file for RL (txt / jsonl / csv / parquet / HF dataset dir); null: the run's prompts."""
    edit_share: float = 0.0
    """Share of GRPO steps that are edit steps (introspective edit rollouts rewarded with
    R = edit.reward_flw x S_flw + edit.reward_psv x S_psv); 0: text-to-image only, 1: edits only."""
    edits: str | None = None
    """Edit source for the edit steps (.jsonl / .parquet / .tar / datasets dir, docs/edit.md); null:
    the run's edits (`janus data synth --task edit`)."""
    max_steps: int = 3000
    """Optimizer steps (the paper's 3K)."""
    prompts_per_step: int = 8
    """Prompts per step and process; each gets group_size rollouts."""
    group_size: int = 7
    """Rollouts per prompt, G (paper 7; released code 8)."""
    micro_batch: int = 7
    """Rollouts per forward/backward pass of the update (memory; the loss is the same)."""
    lr: float = 3.0e-7
    """Peak learning rate (AdamW)."""
    betas: tuple[float, ...] = (0.9, 0.999)
    """AdamW betas (TRL's defaults, as the released code)."""
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 5
    """Linear warm-up steps, then `schedule` down to min_lr_ratio x lr at max_steps."""
    schedule: Literal["cosine", "linear", "released"] = "cosine"
    """Decay after warm-up: 'cosine' (paper), 'linear', or 'released': the released code's
    three-piece linear LambdaLR: lr x step / warmup_steps from 0, then linear to
    convert_lr_ratio x lr at convert_step, then linear to min_lr_ratio x lr at max_steps."""
    convert_step: int = 30
    """'released' schedule: the step where the early drop ends."""
    convert_lr_ratio: float = 0.33333333333333333
    """'released' schedule: lr at convert_step, as a share of lr (released: 1e-7 of 3e-7)."""
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    beta: float = 0.05
    """KL coefficient (k3 estimator, to the frozen reference; released code 0.04)."""
    clip_eps: float = 0.2
    """PPO clip range of the probability ratio."""
    weight_image1: float = 1.0
    """Loss weight of the image-1 segment (advantage of R1 = S(image 1))."""
    weight_judge: float = 1.0
    """Loss weight of the judgement segment (advantage of R2 = 1 - |S(image 1) - selfcheck|)."""
    weight_final: float = 2.0
    """Loss weight of the final-image segment (advantage of R3 = S(final)); the paper weighs it
    higher, the released code uses equal weights."""
    loss_reduction: Literal["sequence", "token"] = "sequence"
    """How a segment's per-token losses are reduced: 'sequence' = each rollout's mean over its own
    tokens, then the mean over rollouts (the GRPO paper's 1/G sum 1/|o_i|, and the released code);
    'token' = one mean over all the segment's tokens in the batch (TRL 0.16's default), which
    weighs long reasons more. Image segments are fixed-length, so only the judgement differs."""
    judge_eos: bool = True
    """Whether the reason's <EOS> is in the judgement segment (trained to stop); the released code
    leaves it out."""
    answer_logp: Literal["two_way", "full"] = "two_way"
    """Training log-prob of the forced Yes/No token: 'two_way' = the softmax over the two words it
    was drawn from; 'full' (the released code) = the full-vocabulary softmax."""
    regen_context: Literal["reencoded", "sampled"] = "reencoded"
    """Image 1 in the regeneration turn: 'reencoded' = VQ(decode(codes)), as the released code and
    SFT's Task III see it; 'sampled' = the sampled codes themselves."""
    image_logp: Literal["sampled", "cfg_divided"] = "sampled"
    """Image-token log-prob in the loss. 'sampled': log softmax of the CFG logits after top-k,
    temperature and top-p, the distribution the rollout drew from; the ratio's old log-probs are
    the rollout's. 'cfg_divided': the released code's log softmax((uncond + w (cond - uncond)) / w);
    old log-probs are then the policy's own, detached (ratio 1 at the update)."""
    cfg_weight: float = 5.0
    """Classifier-free guidance w of both images in a rollout."""
    temperature: float = 1.0
    """Image-token sampling temperature (> 0)."""
    top_k: int = 0
    top_p: float = 1.0
    text_temperature: float = 1.0
    """Temperature of the forced Yes/No answer and the reason."""
    reason_tokens: int = 64
    """Most evaluation tokens after the Yes/No word (<EOS> included; released: 79, 80 with the answer)."""
    ref_refresh_every: int = 0
    """Copy the policy into the reference every N steps (0: never)."""
    ref_refresh_drop: float = 0.0
    """Also refresh when the moving-average reward falls this far below its best (0: off)."""
    reward_ema: float = 0.9
    """Smoothing of that moving average (of the mean of R1, R2, R3)."""
    refresh_lr_factor: float = 1.0
    """Multiply the learning rate by this at each refresh (1: keep)."""
    rollout_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights the rollouts run on: 'auto' = a bf16 copy of the policy on CUDA (refreshed after each
    update; half the bytes per decode step of casting the fp32 master weights), the policy itself
    elsewhere."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: 'ddp' (a full policy and AdamW state per GPU) or 'fsdp' (FSDP2: the policy,
    its gradients and optimizer state sharded; rollouts then run on a whole copy of the policy,
    refreshed after each update; for 7B)."""
    judge_retries: int = 3
    """Tries per step for images the judge failed on (after the client's own retries); then the step fails."""
    seed: int = 0
    """Seed of the prompt order and every rollout's sampling."""
    save_every: int = 100
    """Steps between checkpoints (one is always written at the end)."""
    keep_last: int = 3
    log_every: int = 1
    """Steps between metrics lines."""
