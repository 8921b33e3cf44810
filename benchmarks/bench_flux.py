"""FLUX: the plain diffusers pipeline vs ours (fused QKV, compiled blocks, channels-last VAE, SDPA
backend), s/image on the same seeds, and the quality bound between them.

    python benchmarks/bench_flux.py                                   # CPU: the tiny FLUX, 64 px, 4 steps
    python benchmarks/bench_flux.py --arch dev --size 1024 --steps 28 # a GPU: FLUX.1-dev's architecture, random bf16

`--arch dev` builds FLUX.1-dev's transformer (12B: 19 double + 38 single blocks, 3072 wide) and
VAE with random weights directly on the GPU, and no text encoders: both pipelines get the same
random T5/CLIP prompt embeddings (encoding a prompt is one T5-XXL forward, under 1% of an
image's 28 steps). The quality bound (docs/kernels.md): PSNR >= 30 dB between the two
pipelines' uint8 images, same seeds and dtype. Figures go to `--json`, rewritten as each
measurement lands, so a run stopped by its deadline keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from timing import sync

from janus_data.generators.flux import load_flux, sdpa_context, speed_up

PSNR_BOUND_DB = 30.0
# FLUX.1-dev's transformer/config.json and vae/config.json (black-forest-labs/FLUX.1-dev).
DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
DEV_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
DEV_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def random_flux_dev(device, dtype, blocks: tuple[int, int] | None = None):
    """FluxPipeline with FLUX.1-dev's transformer and VAE, random weights built on `device`, no text encoders.

    `blocks` = (double, single): fewer transformer blocks, for a CPU smoke run of this path."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            layers = dict(zip(("num_layers", "num_single_layers"), blocks, strict=True)) if blocks else {}
            transformer = FluxTransformer2DModel(**{**DEV_TRANSFORMER, **layers})
            vae = AutoencoderKL(**DEV_VAE)
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeddings(pipe, batch: int, seq: int, device, dtype):
    """(B, seq, D) T5 and (B, 768) CLIP embeddings: encoded by the pipeline's own encoders, or random."""
    if pipe.text_encoder is not None:
        prompts = [f"a photo of object number {i} on a table" for i in range(batch)]
        with torch.inference_mode():
            embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device=device, max_sequence_length=seq)
        return embeds, pooled
    gen = torch.Generator(device="cpu").manual_seed(1)
    dim = pipe.transformer.config.joint_attention_dim
    pooled_dim = pipe.transformer.config.pooled_projection_dim
    embeds = torch.randn(batch, seq, dim, generator=gen).mul_(0.5).to(device, dtype)
    return embeds, torch.randn(batch, pooled_dim, generator=gen).to(device, dtype)


def psnr_and_max_abs(a: list, b: list) -> tuple[float, float]:
    x = np.stack([np.asarray(i, dtype=np.float64) for i in a])
    y = np.stack([np.asarray(i, dtype=np.float64) for i in b])
    mse = float(((x - y) ** 2).mean())
    return (float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))), float(np.abs(x - y).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["tiny", "dev"], default="tiny")
    ap.add_argument("--size", type=int, default=None, help="height = width in pixels (tiny 64, dev 1024)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (tiny 4, dev 28)")
    ap.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    ap.add_argument("--seq", type=int, default=None, help="T5 sequence length (tiny 32, dev 512)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on CUDA only")
    ap.add_argument("--sdpa", default="auto", help="ours: auto, flash, efficient, cudnn or math (cudnn falls back)")
    ap.add_argument("--blocks", default=None, help="with --arch dev: 'double,single' blocks (a CPU smoke run)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tiny = args.arch == "tiny"
    size = args.size or (64 if tiny else 1024)
    steps = args.steps or (4 if tiny else 28)
    seq = args.seq or (32 if tiny else 512)
    blocks = tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None
    t0 = time.perf_counter()
    pipe = load_flux("tiny:flux", device, dtype) if tiny else random_flux_dev(device, dtype, blocks)
    embeds, pooled = prompt_embeddings(pipe, args.batch, seq, device, dtype)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    figures = {
        "device": name,
        "arch": args.arch,
        "size": size,
        "steps": steps,
        "batch": args.batch,
        "dtype": str(dtype),
    }
    figures["build_s"] = time.perf_counter() - t0
    params = sum(p.numel() for p in pipe.transformer.parameters())
    print(
        f"device {name}, FLUX {args.arch} ({params / 1e9:.2f}B transformer), {size} px, {steps} steps, batch {args.batch}"
    )

    def save() -> None:
        if args.json:  # identical images have an infinite PSNR: written as null (max_abs 0 says why)
            clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in figures.items()}
            args.json.write_text(json.dumps(clean, indent=1))

    def draw(num_steps: int, backend: str = "auto"):
        generators = [torch.Generator(device="cpu").manual_seed(i) for i in range(args.batch)]
        with torch.inference_mode(), sdpa_context(backend):
            return pipe(
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                height=size,
                width=size,
                num_inference_steps=num_steps,
                guidance_scale=3.5,
                generator=generators,
                output_type="pil",
            ).images

    def timed_draw(backend: str = "auto"):
        sync()
        start = time.perf_counter()
        images = draw(steps, backend)
        sync()
        return images, (time.perf_counter() - start) / args.batch

    draw(1)  # warm-up: kernels, cuDNN's VAE plans, allocator
    plain, figures["plain_s_per_image"] = timed_draw()
    print(f"plain pipeline        {figures['plain_s_per_image']:8.2f} s/image")
    save()

    backend = args.sdpa
    compile_on = args.compile == "on" or (args.compile == "auto" and cuda)
    speed_up(pipe, fuse_qkv=True, channels_last_vae=True)
    try:
        draw(1, backend)
    except RuntimeError as err:  # a pinned kernel this GPU or shape does not support
        print(f"sdpa backend {backend!r} failed ({str(err).splitlines()[0]}); using auto")
        backend = "auto"
        draw(1, backend)
    figures["sdpa_backend"] = backend
    ours, figures["fused_s_per_image"] = timed_draw(backend)
    figures["fused_psnr_db"], figures["fused_max_abs"] = psnr_and_max_abs(plain, ours)
    print(f"fused QKV + channels-last VAE ({backend}) {figures['fused_s_per_image']:8.2f} s/image")
    figures["ours_s_per_image"], figures["psnr_db"], figures["max_abs"] = (
        figures["fused_s_per_image"],
        figures["fused_psnr_db"],
        figures["fused_max_abs"],
    )
    figures["compiled"] = False
    save()
    if compile_on:
        speed_up(pipe, compile=True)
        start = time.perf_counter()
        try:
            draw(1, backend)  # compiles the two block classes
        except Exception as err:  # a compile failure leaves the uncompiled figures standing
            print(f"compiling the blocks failed: {str(err).splitlines()[0]}")
            figures["compile_error"] = str(err).splitlines()[0]
            compile_on = False
    if compile_on:
        figures["compile_s"] = time.perf_counter() - start
        ours, figures["ours_s_per_image"] = timed_draw(backend)
        figures["psnr_db"], figures["max_abs"] = psnr_and_max_abs(plain, ours)
        figures["compiled"] = True
        print(f"+ compiled blocks (compile {figures['compile_s']:.0f} s) {figures['ours_s_per_image']:8.2f} s/image")
    figures["speedup"] = figures["plain_s_per_image"] / figures["ours_s_per_image"]
    figures["within_bound"] = bool(figures["psnr_db"] >= PSNR_BOUND_DB)
    save()
    print(
        f"ours vs plain: {figures['speedup']:.2f}x, PSNR {figures['psnr_db']:.1f} dB (bound >= {PSNR_BOUND_DB:.0f}), "
        f"max abs pixel error {figures['max_abs']:.0f}"
    )


if __name__ == "__main__":
    main()
