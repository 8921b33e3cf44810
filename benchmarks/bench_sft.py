"""SFT throughput on a tiny run: the data path alone vs data path + train step, as a ratio from one run.

    python benchmarks/bench_sft.py                 # builds a tiny run (synth, score, filter), CPU
    python benchmarks/bench_sft.py --run runs/t    # an existing filtered run
    python benchmarks/bench_sft.py --arch 1b --batch 8 --steps 10   # a GPU: Janus-Pro-1B shapes, tokens/s and MFU

With --arch, the train step runs on Janus-Pro-{1b,7b}'s architecture with random weights on
synthetic samples of the real sizes (576 image tokens, 384 px understanding images; the task
mix drawn 0.2:0.3:0.5), fp32 master weights under bf16 autocast as `janus train sft` runs on a
GPU. MFU counts 6 x (language-model parameters outside the embedding tables) FLOPs per token
against the H100's 989 TFLOP/s dense bf16 peak.

"Loader" is everything a step does before the model: the global task mixer's draws, decoding
this process's samples (images, codes), building the Janus sequences and collating them.
"Loader + step" adds forward, backward, clipping and the AdamW update, as `janus train sft` runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from janus_data.config import load_config, with_overrides
from janus_data.models import resolve_device, resolve_model
from janus_data.progress import quiet_libraries

PROMPTS = ["a red cube", "two cats on a sofa", "a lighthouse at night", "a bowl of ramen", "a blue bicycle"]


def make_run(root: Path, cfg) -> Path:
    from janus_data.filter import run_filter
    from janus_data.score import run_score
    from janus_data.synth import run_synth

    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run = root / "run"
    for stage in (lambda: run_synth(run, cfg, prompts, progress=False), lambda: run_score(run, cfg, progress=False)):
        stage()
    run_filter(run, cfg, progress=False)
    return run


H100_BF16_PEAK = 989e12


def bench_arch(args) -> None:
    """Train-step tokens/s and MFU on a real architecture with random weights (meant for a GPU)."""
    import random

    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    from janus_data.arch import random_janus_pro
    from janus_data.config import RuntimeConfig
    from janus_data.janus_format import TASKS
    from janus_data.models import tiny_model_path
    from janus_train.core import build_optimizer, set_trainable
    from janus_train.optim import sft_lr_lambda
    from janus_train.parallel import clip_gradients
    from janus_train.sft_step import SFTStep

    device = resolve_device(RuntimeConfig())
    torch.manual_seed(0)
    model, tokenizer = random_janus_pro(args.arch, device, torch.float32, num_layers=args.layers)
    set_trainable(model)
    size = int(model.config.vision_config.image_size)
    processor = AutoImageProcessor.from_pretrained(tiny_model_path("janus"), size={"height": size, "width": size})
    cfg = load_config("paper").sft
    step = SFTStep(model, tokenizer, processor, cfg, device)
    params = step.trainable_parameters()
    opt, _ = build_optimizer(params, cfg, sft_lr_lambda(cfg))
    n_codes = int(model.config.vq_config.num_patches) ** 2
    codebook = int(model.config.vq_config.num_embeddings)
    rng = np.random.default_rng(0)
    reason = "No. The image shows two red apples, but the prompt asks for three green ones on a plate."

    def sample(task: str) -> dict:
        record = {"task": task, "prompt": "a photo of three green apples on a white plate", "reason": reason}
        if task == "judge":
            record["reason"] = "Yes. " + reason[4:]
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            return {"json": record, "image.png": Image.fromarray(pixels)}
        codes = {k: rng.integers(0, codebook, n_codes).astype(np.int32) for k in ("image", "bad", "good")}
        if task == "t2i":
            return {"json": record, "image.npy": codes["image"]}
        return {"json": record, "bad.npy": codes["bad"], "good.npy": codes["good"]}

    pick = random.Random(0)

    def batch():
        tasks = pick.choices(TASKS, weights=cfg.mix, k=args.batch)
        return [(t, sample(t)) for t in tasks], [random.Random(i) for i in range(args.batch)]

    def train_step() -> int:
        samples, rngs = batch()
        opt.zero_grad(set_to_none=True)
        losses, _ = step.forward(samples, rngs, sync=True)
        step.backward(losses.mean())
        clip_gradients(params, cfg.grad_clip)
        opt.step()
        return sum(len(step.builder.from_record(s, r)) for (_, s), r in zip(samples, rngs, strict=True))

    for _ in range(2):  # warm-up: kernels, allocator, optimizer state
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, tokens = time.perf_counter(), 0
    for _ in range(args.steps):
        tokens += train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    lm = model.model.language_model
    n_lm = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    flops = 6 * n_lm * tokens / seconds
    print(
        f"Janus-Pro-{args.arch} shapes ({lm.config.num_hidden_layers} layers, random), device {device}, "
        f"batch {args.batch}, {args.steps} steps, torch {torch.__version__}"
    )
    print(f"tokens/s {tokens / seconds:,.0f}   samples/s {args.steps * args.batch / seconds:.2f}")
    print(f"model FLOP/s {flops / 1e12:.1f} T  ->  MFU {flops / H100_BF16_PEAK:.1%} of the H100 bf16 dense peak")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--arch", choices=["1b", "7b"], default=None, help="random-weight Janus-Pro of this size")
    ap.add_argument("--layers", type=int, default=None, help="with --arch: fewer decoder layers (smoke tests)")
    args = ap.parse_args()
    quiet_libraries()
    if args.arch:
        bench_arch(args)
        return
    cfg = with_overrides(load_config("tiny"), {"filter": {"threshold": 0.6}, "sft": {"batch_size": args.batch}})
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        run = args.run or make_run(Path(tmp), cfg)
        from transformers import AutoImageProcessor, AutoTokenizer, JanusForConditionalGeneration

        from janus_data.janus_format import TASKS
        from janus_data.wds import decode_sample
        from janus_train.core import set_trainable
        from janus_train.data import TaskMixer
        from janus_train.losses import collate
        from janus_train.sft import sample_rng
        from janus_train.sft_step import SFTStep

        s = cfg.sft
        device = resolve_device(cfg.runtime)
        path = resolve_model(cfg.synth.janus.model)
        tokenizer, processor = AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
        model = JanusForConditionalGeneration.from_pretrained(path).to(device)
        set_trainable(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=s.lr)
        step = SFTStep(model, tokenizer, processor, s, device)
        mixer = TaskMixer(run / "sft", dict(zip(TASKS, s.mix, strict=True)), seed=0, shuffle_buffer=s.shuffle_buffer)

        def draw():
            samples = [(t, decode_sample(raw)) for t, raw in (mixer.next_raw() for _ in range(args.batch))]
            rngs = [sample_rng(0, mixer.draws + i) for i in range(args.batch)]
            return samples, rngs

        def loader_only():
            samples, rngs = draw()
            built = [step.builder.from_record(x, r) for (_, x), r in zip(samples, rngs, strict=True)]
            collate(built, tokenizer.pad_token_id, processor)

        def full_step():
            samples, rngs = draw()
            opt.zero_grad(set_to_none=True)
            losses, _ = step.forward(samples, rngs, sync=True)
            step.backward(losses.mean())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        rates = {}
        for name, fn in (("loader", loader_only), ("loader + step", full_step)):
            fn()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            rates[name] = args.steps * args.batch / (time.perf_counter() - t0)
        print(f"tiny Janus-Pro, device {device}, batch {args.batch}, {args.steps} steps, torch {torch.__version__}")
        print(f"{'path':<16}{'samples/s':>11}")
        for name, rate in rates.items():
            print(f"{name:<16}{rate:>11.1f}")
        print(f"ratio loader + step / loader: {rates['loader + step'] / rates['loader']:.2f}x")


if __name__ == "__main__":
    main()
