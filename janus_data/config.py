"""Typed, frozen configs: the truth. YAML presets and CLI flags only override them.

A preset is a YAML serialisation of `JanusRunConfig`; unknown keys are errors, and every
cross-field check lives in `validate`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from janus_data.errors import ConfigError, one_line

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Shipped as package data, read through importlib.resources: an installed wheel has no checkout to look in.
PRESET_DIR = resources.files("janus_data") / "presets"
DEMO_PROMPTS = resources.files("janus_data") / "assets" / "demo_prompts.jsonl"


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how models run."""

    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    dtype: str = "auto"
    """'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16' or 'float16'."""
    trust_remote_code: bool = False
    """Allow checkpoints that ship their own modelling code. Off unless you trust the source."""


@dataclass(frozen=True)
class JanusGenConfig:
    """Janus-Pro image generation (reference semantics: PAPER.md, 'sequence format')."""

    model: str = "deepseek-community/Janus-Pro-7B"
    """Checkpoint: a local directory saved with save_pretrained, a hub id, or 'tiny:janus'."""
    cfg_weight: float = 5.0
    """Classifier-free guidance w: logits = uncond + w * (cond - uncond)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_k: int = 0
    """Keep the k most likely image tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    batch_size: int = 16
    """Images per forward batch (each image is a conditional and an unconditional row)."""
    loop: Literal["fast", "reference"] = "fast"
    """'fast': static KV cache, no host syncs, CUDA graph on a GPU; 'reference': the plain loop (same tokens)."""
    cuda_graph: bool = True
    """On CUDA, capture the fast loop's decode step once per batch shape and replay it."""


@dataclass(frozen=True)
class FluxGenConfig:
    """FLUX text-to-image through diffusers' FluxPipeline."""

    model: str = "black-forest-labs/FLUX.1-dev"
    """Checkpoint: a local diffusers directory, a hub id, or 'tiny:flux'."""
    height: int = 1024
    """Generation height in pixels (resized to synth.image_size when stored)."""
    width: int = 1024
    """Generation width in pixels."""
    num_inference_steps: int = 28
    """Denoising steps."""
    guidance_scale: float = 3.5
    """FLUX.1-dev distilled guidance."""
    max_sequence_length: int = 512
    """T5 prompt length."""
    batch_size: int = 4
    """Images per pipeline call."""


@dataclass(frozen=True)
class SynthConfig:
    """`janus data synth`: candidate images per prompt from FLUX and Janus-Pro."""

    images_per_prompt: int = 18
    """Candidates per prompt, split between the generators by flux_share."""
    flux_share: float = 0.5
    """Share of each prompt's candidates drawn by FLUX (rounded to the nearest image)."""
    image_size: int = 384
    """Stored image size in pixels (square); Janus-Pro's native size is 384."""
    image_format: Literal["png", "jpeg", "webp"] = "png"
    """Encoding of the stored image bytes."""
    jpeg_quality: int = 95
    """Quality for jpeg and webp."""
    shard_images: int = 1000
    """Images per tar shard before a new shard starts (~300 MB of 384 px PNGs)."""
    seed: int = 0
    """Global seed: every image's seed derives from (seed, prompt_id, generator, index)."""
    generators: tuple[str, ...] = ("flux", "janus")
    """Generators to run, in order."""
    janus: JanusGenConfig = field(default_factory=JanusGenConfig)
    flux: FluxGenConfig = field(default_factory=FluxGenConfig)


@dataclass(frozen=True)
class ScoreConfig:
    """`janus data score`: the InternVL judge's consistency score S and reason for every image."""

    backend: Literal["hf", "lmdeploy"] = "lmdeploy"
    """'lmdeploy': OpenAI-compatible judge servers (lmdeploy serve api_server, janus serve judge);
    'hf': a transformers-format InternVL checkpoint in this process."""
    model: str | None = "OpenGVLab/InternVL2_5-26B"
    """hf: the checkpoint (local directory, hub id of an -hf repo, or 'tiny:internvl'). lmdeploy:
    the served model name, or null to take the first name the server lists."""
    endpoints: tuple[str, ...] = ("http://127.0.0.1:23333",)
    """lmdeploy: base URLs of the judge servers; requests are spread over all of them."""
    batch_size: int = 1024
    """Images per batch and manifest part. hf: one forward batch. lmdeploy: the requests kept in
    flight are drawn from it, so make it several times concurrency x endpoints: the servers
    only drain at a batch's end."""
    concurrency: int = 64
    """lmdeploy: requests in flight per endpoint (keeps the server's continuous batching full)."""
    max_tiles: int = 12
    """hf: dynamic 448 px tiles per image, plus a thumbnail when there is more than one."""
    reason_tokens: int = 64
    """Most tokens of the short reason (0: S only, no reason)."""
    top_logprobs: int = 20
    """lmdeploy: first-token candidates S is read from (LMDeploy allows at most 20)."""
    timeout_s: float = 120.0
    """lmdeploy: seconds to wait on one request before it counts as failed."""
    retries: int = 5
    """lmdeploy: tries per request (connection errors, timeouts, 408, 429, 5xx) before the batch fails."""
    backoff_s: float = 1.0
    """lmdeploy: first retry delay; it doubles per try (with jitter) up to 30 s."""
    api_key_env: str = "JANUS_JUDGE_API_KEY"
    """lmdeploy: environment variable holding the servers' API key (never written anywhere)."""
    retry_errors: bool = True
    """A rerun judges again the images this rank left with an error row (a refused request, an
    unreadable image); false keeps error rows as final."""


@dataclass(frozen=True)
class FilterConfig:
    """`janus data filter`: the three SFT sub-tasks from the scored pool, as WebDataset shards."""

    threshold: float = 0.8
    """S at or above which an image is good (the paper's 0.8; the released SFT code used 0.7)."""
    seed: int = 0
    """Seed of the choice among candidates (and of the order samples are written in)."""
    choice: Literal["random", "best"] = "random"
    """How candidates are picked per prompt: 'random' (seeded) or 'best' (highest S for good
    images, lowest S for bad ones)."""
    t2i_per_prompt: int = 4
    """Task-I: at most this many (prompt, good image) samples per prompt (0: all)."""
    judge_per_prompt: int = 4
    """Task-II: at most this many good and this many bad images per prompt before the global
    yes/no balance (0: all)."""
    regen_per_prompt: int = 4
    """Task-III: at most this many (bad image -> good image) pairs per prompt (0: one per bad image)."""
    judge_labels: Literal["agree", "answer"] = "agree"
    """How an image's Yes/No label follows S and the judge's own answer (the first word of its
    reason). 'agree': only images where both agree (S >= threshold and Yes -> Yes; S < threshold
    and No -> No). 'answer' (the released code): any No answer is a No, a Yes answer needs
    S >= threshold, S < threshold with Yes is dropped. Either way no target reason contradicts
    its label; the same rule picks Task III's bad images (they need a No). A reason that starts
    with neither word is dropped; an empty one (reason_tokens 0) takes S's side."""
    target_generators: tuple[str, ...] = ("flux", "janus")
    """Generators whose images may be Task I targets and Task III good images (released: flux)."""
    judge_generators: tuple[str, ...] = ("flux", "janus")
    """Generators whose images may be Task II samples (released: flux)."""
    context_generators: tuple[str, ...] = ("flux", "janus")
    """Generators whose images may be Task III's bad (context) image (released: flux and janus)."""
    mix: tuple[float, ...] = (0.2, 0.3, 0.5)
    """Task I : II : III sampling ratio of SFT (the paper's 0.2:0.3:0.5; released code 10:10:15);
    the summary says how far that mix can go before a task runs dry."""
    shard_bytes: int = 1 << 30
    """Largest WebDataset shard in bytes (a bigger single sample gets a shard of its own)."""
    vq_batch_size: int = 64
    """Images per batch through the Janus VQ encoder."""


@dataclass(frozen=True)
class SFTConfig:
    """`janus train sft`: mixed sub-task SFT of Janus-Pro on the filter's shards (PAPER.md, 'SFT')."""

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


@dataclass(frozen=True)
class RLConfig:
    """`janus train rl`: GRPO with introspective rollouts and dual-layer rewards (PAPER.md, 'GRPO')."""

    model: str | None = None
    """Policy to start from (`--init`); null: the run's latest SFT checkpoint, else synth.janus.model."""
    prompts: str | None = None
    """Prompt file for RL (txt / jsonl / csv / parquet / HF dataset dir); null: the run's prompts."""
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


@dataclass(frozen=True)
class PipelineConfig:
    """`janus run`: where the chained stages read their prompts and write their run."""

    run_dir: str | None = None
    """Run directory (`--run` overrides)."""
    prompts: str | None = None
    """Prompt file for synth (`--prompts` overrides); null: the run's existing prompts."""


@dataclass(frozen=True)
class JanusRunConfig:
    """One run of the pipeline: every stage's settings."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{path or 'root'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'",
            hint=f"valid keys under '{path or 'root'}': {', '.join(sorted(known))}",
        )
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{path}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(item, v, path) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"config key '{path}' must be {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), for YAML."""
    out = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return fix(out)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path | Traversable) -> dict[str, Any]:
    """Read a YAML mapping (a file, or a shipped preset), with one-line errors for a missing or malformed file."""
    if isinstance(path, str):
        path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="pass an existing YAML file or a preset name")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name.removesuffix(".yaml") for p in PRESET_DIR.iterdir() if p.name.endswith(".yaml"))


def demo_prompts_path() -> Path:
    """The prompt file `janus demo` runs on, shipped in the package, as a path on disk."""
    if not isinstance(DEMO_PROMPTS, Path):  # e.g. imported from a zip archive: no file to hand to readers
        raise ConfigError(
            f"the bundled demo prompts are not a file on disk ({DEMO_PROMPTS})",
            hint="install janus-r1 as a directory (pip install), not as a zip archive",
        )
    return DEMO_PROMPTS


def resolve_presets(path: Path | Traversable, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML file's mapping over the chain of presets it starts from (`preset: NAME`, which may have its own)."""
    data = read_yaml(path)
    base = data.pop("preset", None)
    if base is None:
        return data
    if base not in preset_names():
        raise ConfigError(f"{path}: unknown base preset '{base}'", hint=f"presets: {', '.join(preset_names())}")
    if base in seen:
        raise ConfigError(f"{path}: presets start from each other in a cycle ({' -> '.join([*seen, base])})")
    return deep_merge(resolve_presets(PRESET_DIR / f"{base}.yaml", (*seen, base)), data)


def load_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> JanusRunConfig:
    """Resolve a preset name or YAML path (default: 'paper'), apply overrides, validate.

    A YAML file may start from a preset with a top-level `preset: NAME` key (`official` itself
    starts from `paper`).
    """
    source = source or "paper"
    path = Path(source)
    if not path.suffix and not path.exists():
        if source not in preset_names():
            raise ConfigError(f"unknown preset '{source}'", hint=f"presets: {', '.join(preset_names())}")
        path = PRESET_DIR / f"{source}.yaml"
    data = deep_merge(resolve_presets(path), overrides or {})
    cfg = from_dict(JanusRunConfig, data)
    validate(cfg)
    return cfg


def with_overrides(cfg: JanusRunConfig, overrides: dict[str, Any]) -> JanusRunConfig:
    """Apply nested overrides to a resolved config and validate again."""
    cfg = from_dict(JanusRunConfig, deep_merge(to_dict(cfg), overrides))
    validate(cfg)
    return cfg


def validate(cfg: JanusRunConfig) -> None:
    """Cross-field checks, all in one place."""
    s = cfg.synth
    if s.images_per_prompt < 1:
        raise ConfigError("synth.images_per_prompt must be >= 1")
    if not 0.0 <= s.flux_share <= 1.0:
        raise ConfigError(f"synth.flux_share must lie in [0, 1], got {s.flux_share}")
    if s.image_size < 8:
        raise ConfigError(f"synth.image_size must be >= 8, got {s.image_size}")
    unknown = [g for g in s.generators if g not in ("flux", "janus")]
    if unknown or not s.generators:
        raise ConfigError(f"synth.generators must be a non-empty subset of [flux, janus], got {list(s.generators)}")
    if s.janus.batch_size < 1 or s.flux.batch_size < 1:
        raise ConfigError("synth.janus.batch_size and synth.flux.batch_size must be >= 1")
    if s.janus.temperature < 0:
        raise ConfigError("synth.janus.temperature must be >= 0 (0 = greedy)")
    if not 0.0 < s.janus.top_p <= 1.0:
        raise ConfigError(f"synth.janus.top_p must lie in (0, 1], got {s.janus.top_p}")
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
    if not 1 <= j.top_logprobs <= 20:
        raise ConfigError(f"score.top_logprobs must lie in [1, 20] (LMDeploy's limit), got {j.top_logprobs}")
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
        if not gens or any(g not in ("flux", "janus") for g in gens):
            raise ConfigError(f"filter.{name} must be a non-empty subset of [flux, janus], got {list(gens)}")
    if f.shard_bytes < 1 << 16 or f.vq_batch_size < 1:
        raise ConfigError("filter.shard_bytes must be >= 65536 and filter.vq_batch_size >= 1")
    t = cfg.sft
    if not t.lr > 0:
        raise ConfigError(f"sft.lr must be > 0, got {t.lr}", hint="the paper uses 2e-5")
    if min(t.max_steps, t.batch_size, t.grad_accum, t.save_every, t.keep_last, t.log_every) < 1:
        raise ConfigError("sft.max_steps, batch_size, grad_accum, save_every, keep_last and log_every must be >= 1")
    if len(t.mix) != 3 or min(t.mix) < 0 or sum(t.mix) <= 0:
        raise ConfigError(f"sft.mix must be three non-negative weights (Task I, II, III), got {list(t.mix)}")
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


def split_counts(cfg: SynthConfig) -> dict[str, int]:
    """Images per prompt for each enabled generator: flux gets round(n * flux_share)."""
    n = cfg.images_per_prompt
    if len(set(cfg.generators)) == 1:
        return {cfg.generators[0]: n}
    n_flux = round(n * cfg.flux_share)
    return {"flux": n_flux, "janus": n - n_flux}


__all__ = [
    "FilterConfig",
    "FluxGenConfig",
    "JanusGenConfig",
    "JanusRunConfig",
    "RuntimeConfig",
    "SFTConfig",
    "ScoreConfig",
    "SynthConfig",
    "from_dict",
    "load_config",
    "split_counts",
    "to_dict",
    "validate",
    "with_overrides",
]


def check_rl_logps(r: RLConfig) -> None:
    """The answer's training log-prob must be over the distribution the ratio's old log-probs are over."""
    if r.answer_logp == "full" and r.image_logp != "cfg_divided":
        # 'sampled' takes the ratio's old log-probs from the rollout, which drew the answer from the
        # two-way softmax: a full-vocabulary new log-prob over it would be no ratio of one distribution.
        raise ConfigError(
            "rl.answer_logp 'full' needs rl.image_logp 'cfg_divided' (old log-probs = the policy's own, ratio 1)",
            hint="use answer_logp: two_way with image_logp: sampled, or both released settings",
        )
