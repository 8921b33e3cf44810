"""Cross-field checks of a whole run config, all in one place."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from janus_data.config_edit import EDIT_GENERATORS
from janus_data.config_eval import EVAL_CHECKPOINTS
from janus_data.config_stages import GENERATORS
from janus_data.errors import ConfigError
from janus_data.judge.scoring import MAX_TOP_LOGPROBS

if TYPE_CHECKING:
    from janus_data.config import JanusRunConfig
    from janus_data.config_train import RLConfig, SFTConfig

_GENERATOR_LIST = f"[{', '.join(GENERATORS)}]"  # as messages write it: [flux, janus]


def validate(cfg: JanusRunConfig) -> None:
    """Cross-field checks, all in one place."""
    s = cfg.synth
    if s.images_per_prompt < 1:
        raise ConfigError("synth.images_per_prompt must be >= 1")
    if not 0.0 <= s.flux_share <= 1.0:
        raise ConfigError(f"synth.flux_share must lie in [0, 1], got {s.flux_share}")
    if s.image_size < 8:
        raise ConfigError(f"synth.image_size must be >= 8, got {s.image_size}")
    unknown = [g for g in s.generators if g not in GENERATORS]
    if unknown or not s.generators:
        raise ConfigError(f"synth.generators must be a non-empty subset of {_GENERATOR_LIST}, got {list(s.generators)}")
    if s.janus.batch_size < 1 or s.flux.batch_size < 1:
        raise ConfigError("synth.janus.batch_size and synth.flux.batch_size must be >= 1")
    if s.janus.temperature < 0:
        raise ConfigError("synth.janus.temperature must be >= 0 (0 = greedy)")
    if not 0.0 < s.janus.top_p <= 1.0:
        raise ConfigError(f"synth.janus.top_p must lie in (0, 1], got {s.janus.top_p}")
    if s.janus.compile and s.janus.decoder == "modules":
        raise ConfigError(
            "synth.janus.compile needs the fused decoder", hint="set synth.janus.decoder to auto or fused"
        )
    if s.janus.top_k < 0:
        raise ConfigError("synth.janus.top_k must be >= 0 (0 = off)")
    if s.flux.height % 16 or s.flux.width % 16:
        raise ConfigError("synth.flux.height and width must be multiples of 16")
    if s.shard_images < 1:
        raise ConfigError("synth.shard_images must be >= 1")
    if not 1 <= s.jpeg_quality <= 100:
        raise ConfigError("synth.jpeg_quality must lie in [1, 100]")
    j = cfg.score
    if j.batch_size < 1 or j.concurrency < 1 or j.retries < 1 or j.max_tiles < 1:
        raise ConfigError("score.batch_size, concurrency, retries and max_tiles must be >= 1")
    if j.reason_tokens < 0:
        raise ConfigError("score.reason_tokens must be >= 0 (0 = no reason)")
    if not 1 <= j.top_logprobs <= MAX_TOP_LOGPROBS:
        raise ConfigError(
            f"score.top_logprobs must lie in [1, {MAX_TOP_LOGPROBS}] (LMDeploy's limit), got {j.top_logprobs}"
        )
    if j.timeout_s <= 0 or j.backoff_s < 0:
        raise ConfigError("score.timeout_s must be > 0 and score.backoff_s >= 0")
    if j.backend == "hf" and not j.model:
        raise ConfigError("score.model must name a checkpoint when score.backend is hf", hint="e.g. tiny:internvl")
    if j.backend == "lmdeploy" and not j.endpoints:
        raise ConfigError("score.endpoints is empty", hint="pass --endpoint http://HOST:23333")
    f = cfg.filter
    if not 0.0 <= f.threshold <= 1.0:
        raise ConfigError(f"filter.threshold must lie in [0, 1], got {f.threshold}", hint="the paper uses 0.8")
    if min(f.t2i_per_prompt, f.judge_per_prompt, f.regen_per_prompt) < 0:
        raise ConfigError("filter.*_per_prompt must be >= 0 (0 = no cap)")
    if len(f.mix) != 3 or min(f.mix) < 0 or sum(f.mix) <= 0:
        raise ConfigError(f"filter.mix must be three non-negative weights (Task I, II, III), got {list(f.mix)}")
    for name in ("target_generators", "judge_generators", "context_generators"):
        gens = getattr(f, name)
        if not gens or any(g not in GENERATORS for g in gens):
            raise ConfigError(f"filter.{name} must be a non-empty subset of {_GENERATOR_LIST}, got {list(gens)}")
    if f.shard_bytes < 1 << 16 or f.vq_batch_size < 1:
        raise ConfigError("filter.shard_bytes must be >= 65536 and filter.vq_batch_size >= 1")
    t = cfg.sft
    if not t.lr > 0:
        raise ConfigError(f"sft.lr must be > 0, got {t.lr}", hint="the paper uses 2e-5")
    if min(t.max_steps, t.batch_size, t.grad_accum, t.save_every, t.keep_last, t.log_every) < 1:
        raise ConfigError("sft.max_steps, batch_size, grad_accum, save_every, keep_last and log_every must be >= 1")
    if len(t.mix) != 3 or min(t.mix) < 0 or sum(t.mix) <= 0:
        raise ConfigError(f"sft.mix must be three non-negative weights (Task I, II, III), got {list(t.mix)}")
    _validate_sft_edits(t)
    if not (0 <= t.caption_dropout <= 1 and t.answer_weight >= 0 and t.reason_weight >= 0):
        raise ConfigError("sft.caption_dropout must lie in [0, 1] and the loss weights be >= 0")
    if t.warmup_steps < 0 or t.grad_clip < 0 or not 0 <= t.min_lr_ratio <= 1 or len(t.betas) != 2:
        raise ConfigError("sft.warmup_steps and grad_clip must be >= 0, min_lr_ratio in [0, 1], betas two values")
    r = cfg.rl
    if not r.lr > 0:
        raise ConfigError(f"rl.lr must be > 0, got {r.lr}", hint="the released code uses 3e-7")
    counts = (r.max_steps, r.prompts_per_step, r.group_size, r.micro_batch, r.save_every, r.keep_last, r.log_every)
    if min(counts) < 1 or r.judge_retries < 1:
        raise ConfigError(
            "rl.max_steps, prompts_per_step, group_size, micro_batch, save_every, keep_last, "
            "log_every and judge_retries must be >= 1"
        )
    if r.group_size < 2:
        raise ConfigError("rl.group_size must be >= 2: a group of one has no advantage", hint="the paper uses 7")
    if r.temperature <= 0 or r.text_temperature <= 0:
        raise ConfigError("rl.temperature and rl.text_temperature must be > 0 (rollouts sample)")
    if not 0.0 < r.top_p <= 1.0 or r.top_k < 0 or r.reason_tokens < 1:
        raise ConfigError("rl.top_p must lie in (0, 1], rl.top_k >= 0 and rl.reason_tokens >= 1")
    weights = (r.weight_image1, r.weight_judge, r.weight_final)
    if min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(f"rl segment weights must be >= 0 with a positive sum, got {list(weights)}")
    if r.beta < 0 or not 0 < r.clip_eps < 1 or r.grad_clip < 0 or r.warmup_steps < 0:
        raise ConfigError("rl.beta, grad_clip and warmup_steps must be >= 0 and rl.clip_eps in (0, 1)")
    if not 0 <= r.min_lr_ratio <= 1 or not 0 <= r.reward_ema < 1 or r.refresh_lr_factor <= 0 or len(r.betas) != 2:
        raise ConfigError("rl.min_lr_ratio in [0, 1], reward_ema in [0, 1), refresh_lr_factor > 0, betas two values")
    if r.ref_refresh_every < 0 or r.ref_refresh_drop < 0:
        raise ConfigError("rl.ref_refresh_every and rl.ref_refresh_drop must be >= 0 (0 = off)")
    check_rl_logps(r)
    if r.schedule == "released" and not (
        r.warmup_steps <= r.convert_step and 0 <= r.min_lr_ratio <= 1 and 0 <= r.convert_lr_ratio <= 1
    ):
        raise ConfigError(
            "rl.schedule 'released' needs warmup_steps <= convert_step and convert_lr_ratio in [0, 1]",
            hint="the released code: warmup_steps 5, convert_step 30, convert_lr_ratio 1/3",
        )
    _validate_eval(cfg)
    d = cfg.edit
    if d.reward_flw < 0 or d.reward_psv < 0 or d.reward_flw + d.reward_psv <= 0:
        raise ConfigError(
            "edit.reward_flw and reward_psv must be >= 0 with a positive sum", hint="the paper: 1.0 and 0.25"
        )
    bad = [g for g in d.generators if g not in EDIT_GENERATORS]
    if bad or not d.generators or len(set(d.generators)) != len(d.generators):
        raise ConfigError(
            f"edit.generators must be distinct names from {list(EDIT_GENERATORS)}, got {list(d.generators)}"
        )
    if d.threshold is not None and not 0.0 <= d.threshold <= 1.0:
        raise ConfigError(f"edit.threshold must lie in [0, 1] (or be null: filter.threshold), got {d.threshold}")
    for name in ("target_generators", "judge_generators", "context_generators"):
        gens = getattr(d, name)
        if not gens or any(g not in EDIT_GENERATORS for g in gens):
            raise ConfigError(f"edit.{name} must be a non-empty subset of {list(EDIT_GENERATORS)}, got {list(gens)}")
    share = cfg.rl.edit_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ConfigError(
            f"rl.edit_share must lie in [0, 1], got {share!r}", hint="0: text-to-image steps only, 1: edit steps only"
        )
    if d.images_per_source < 1 or not 0.0 <= d.kontext_share <= 1.0:
        raise ConfigError("edit.images_per_source must be >= 1 and edit.kontext_share in [0, 1]")
    k = d.kontext
    if min(k.num_inference_steps, k.max_sequence_length, k.batch_size) < 1 or k.max_area < 256:
        raise ConfigError(
            "edit.kontext.num_inference_steps, max_sequence_length and batch_size must be >= 1, max_area >= 256"
        )


def _validate_sft_edits(t: SFTConfig) -> None:
    """sft.edit_share and sft.edit_mix: the share of draws from the edit tasks and their ratio."""
    share = t.edit_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ConfigError(
            f"sft.edit_share must lie in [0, 1], got {share!r}", hint="0: text-to-image only, 1: edits only"
        )
    mix = list(t.edit_mix)
    finite = all(not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w) for w in mix)
    if len(mix) != 3 or not finite or min(mix) < 0:
        raise ConfigError(f"sft.edit_mix must be three finite weights >= 0 (edit, edit_judge, edit_regen), got {mix}")
    if share > 0 and sum(mix) <= 0:
        raise ConfigError(
            f"sft.edit_mix must have a positive sum when sft.edit_share > 0, got {mix}", hint="e.g. 0.2, 0.3, 0.5"
        )


def check_rl_logps(r: RLConfig) -> None:
    """The answer's training log-prob must be over the distribution the ratio's old log-probs are over."""
    if r.answer_logp == "full" and r.image_logp != "cfg_divided":
        # 'sampled' takes the ratio's old log-probs from the rollout, which drew the answer from the
        # two-way softmax: a full-vocabulary new log-prob over it would be no ratio of one distribution.
        raise ConfigError(
            "rl.answer_logp 'full' needs rl.image_logp 'cfg_divided' (old log-probs = the policy's own, ratio 1)",
            hint="use answer_logp: two_way with image_logp: sampled, or both released settings",
        )


def _validate_eval(cfg: JanusRunConfig) -> None:
    e = cfg.eval
    bad = [c for c in e.checkpoints if c not in EVAL_CHECKPOINTS]
    if bad or not e.checkpoints:
        raise ConfigError(
            f"eval.checkpoints must be a non-empty subset of {list(EVAL_CHECKPOINTS)}, got {list(e.checkpoints)}"
        )
    if min(e.images_per_prompt, e.rounds, e.reason_tokens, e.max_objects, e.detector_batch_size) < 1:
        raise ConfigError(
            "eval.images_per_prompt, rounds, reason_tokens, max_objects and detector_batch_size must be >= 1"
        )
    if e.text_temperature < 0:
        raise ConfigError("eval.text_temperature must be >= 0 (0 = greedy)")
    if not (0 <= e.threshold < 1 and 0 <= e.counting_threshold < 1 and 0 <= e.position_threshold < 1):
        raise ConfigError(
            "eval.threshold, counting_threshold and position_threshold must lie in [0, 1)",
            hint="GenEval uses 0.3, 0.9 and 0.1",
        )
