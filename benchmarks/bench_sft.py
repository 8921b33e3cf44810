"""SFT throughput on a tiny run: the data path alone vs data path + train step, as a ratio from one run.

    python benchmarks/bench_sft.py                 # builds a tiny run (synth, score, filter), CPU
    python benchmarks/bench_sft.py --run runs/t    # an existing filtered run

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    quiet_libraries()
    cfg = with_overrides(load_config("tiny"), {"filter": {"threshold": 0.6}, "sft": {"batch_size": args.batch}})
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        run = args.run or make_run(Path(tmp), cfg)
        from transformers import AutoImageProcessor, AutoTokenizer, JanusForConditionalGeneration

        from janus_data.wds import decode_sample
        from janus_train.data import TaskMixer
        from janus_train.losses import collate
        from janus_train.sft import TASKS, sample_rng, set_trainable
        from janus_train.steps import SFTStep

        s = cfg.sft
        device = resolve_device(cfg.runtime)
        path = resolve_model(cfg.synth.janus.model)
        tokenizer, processor = AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
        model = JanusForConditionalGeneration.from_pretrained(path).to(device)
        set_trainable(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=s.lr)
        step = SFTStep(model, tokenizer, processor, s, device, ddp=False)
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
