"""The data stages' config sections: runtime, pipeline, synth (with its generators), score and filter.

Frozen dataclasses with a docstring under each field: `janus_data.config_doc` renders them into
docs/configuration.md. `janus_data.config` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from janus_data.judge.serve import API_KEY_ENV

GENERATORS = ("flux", "janus")  # every generator synth can run


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
class PipelineConfig:
    """`janus run`: where the chained stages read their prompts and write their run."""

    run_dir: str | None = None
    """Run directory (`--run` overrides)."""
    prompts: str | None = None
    """Prompt file for synth (`--prompts` overrides); null: the run's existing prompts."""
    edits: str | None = None
    """Edit source (docs/edit.md; `--edits` overrides): synth, score and filter then also run on edits
    (`--task edit`), for SFT's sft.edit_share and GRPO's rl.edit_share; null: text-to-image only."""


@dataclass(frozen=True)
class JanusGenConfig:
    """Janus-Pro image generation (reference semantics: docs/paper.md, 'Janus-Pro sequence format')."""

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
    decoder: Literal["auto", "fused", "modules"] = "auto"
    """'auto': the fused decoder (one QKV and one gate/up GEMM per layer) on CUDA where the layers allow it, transformers' layers elsewhere; 'fused': always (an error for unsupported layers); 'modules': transformers' decoder layers."""
    compile: bool = False
    """torch.compile the fused decoder's per-layer regions for the decode steps; the first batch of each size pays the compile."""


@dataclass(frozen=True)
class DiffusersSpeedConfig:
    """Speed settings of a diffusers FLUX pipeline (`janus_data.generators.flux.speed_up`), all off by default."""

    fuse_qkv: bool = False
    """Fuse each attention's q, k, v projections into one GEMM (diffusers' fuse_qkv_projections)."""
    compile: bool = False
    """torch.compile the transformer's repeated blocks (the first call at a new size pays the compile)."""
    channels_last_vae: bool = False
    """Run the VAE's convolutions in channels-last layout."""
    sdpa_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    """PyTorch attention kernel to force ('auto': PyTorch chooses)."""


@dataclass(frozen=True)
class FluxGenConfig(DiffusersSpeedConfig):
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
    generators: tuple[str, ...] = GENERATORS
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
    api_key_env: str = API_KEY_ENV
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
    target_generators: tuple[str, ...] = GENERATORS
    """Generators whose images may be Task I targets and Task III good images (released: flux)."""
    judge_generators: tuple[str, ...] = GENERATORS
    """Generators whose images may be Task II samples (released: flux)."""
    context_generators: tuple[str, ...] = GENERATORS
    """Generators whose images may be Task III's bad (context) image (released: flux and janus)."""
    mix: tuple[float, ...] = (0.2, 0.3, 0.5)
    """Task I : II : III sampling ratio of SFT (the paper's 0.2:0.3:0.5; released code 10:10:15);
    the summary says how far that mix can go before a task runs dry."""
    shard_bytes: int = 1 << 30
    """Largest WebDataset shard in bytes (a bigger single sample gets a shard of its own)."""
    vq_batch_size: int = 64
    """Images per batch through the Janus VQ encoder."""


def split_counts(cfg: SynthConfig) -> dict[str, int]:
    """Images per prompt for each enabled generator: flux gets round(n * flux_share)."""
    n = cfg.images_per_prompt
    if len(set(cfg.generators)) == 1:
        return {cfg.generators[0]: n}
    n_flux = round(n * cfg.flux_share)
    return {"flux": n_flux, "janus": n - n_flux}
