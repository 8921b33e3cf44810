"""One GRPO step split into rollout, judge and update, and the rollout phase on the fast loop
vs the reference loop (#2), as a ratio from the same run.

    python benchmarks/bench_grpo.py                          # CPU: tiny policy and tiny judge
    python benchmarks/bench_grpo.py --arch 1b --group 7      # a GPU: Janus-Pro-1B shapes + InternVL3-1B judge, random bf16

A step draws `--prompts` x `--group` rollouts (image 1 -> Yes/No + reason -> image 2 if No),
judges every image, and runs the clipped-surrogate + KL update (policy and reference forward,
policy backward). Times are the mean of `--steps` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from timing import sync
from transformers import AutoImageProcessor

from janus_data.arch import random_internvl, random_janus_pro
from janus_data.config import load_config, with_overrides
from janus_data.generators.janus_loop import reference_image_loop
from janus_data.judge.hf import HFJudge
from janus_data.models import resolve_device, resolve_model, tiny_model_path
from janus_data.progress import quiet_libraries
from janus_train.core import Distributed, set_trainable
from janus_train.grpo import GRPOStep
from janus_train.grpo_math import group_advantages
from janus_train.rewards import JudgeScorer, rollout_rewards
from janus_train.sequences import SequenceBuilder

PROMPTS = ["a photo of two red apples on a wooden table", "a blue bicycle left of a fire hydrant", "three cats"]


def build(args, device):
    """(policy, reference, builder, image processor, judge) on `device`."""
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    if args.arch:
        policy, _ = random_janus_pro(args.arch, device, torch.float32, num_layers=args.layers)
        reference = random_janus_pro(args.arch, device, torch.float32, num_layers=args.layers)[0]
        reference.load_state_dict(policy.state_dict())
        judge_parts = random_internvl(args.judge_arch, device, torch.bfloat16)
        judge = HFJudge("random", device, torch.bfloat16, max_tiles=1, reason_tokens=0, loaded=judge_parts)
        path = tiny_model_path("janus")
    else:
        path = resolve_model("tiny:janus")
        policy = JanusForConditionalGeneration.from_pretrained(path).to(device)
        reference = JanusForConditionalGeneration.from_pretrained(path).to(device)
        judge = HFJudge("tiny:internvl", device, torch.float32, max_tiles=2, reason_tokens=0)
    set_trainable(policy)
    reference.eval().requires_grad_(False)
    cfg = policy.config
    size = int(cfg.vision_config.image_size)  # the tiny processor, resized to the architecture's input
    processor = AutoImageProcessor.from_pretrained(path, size={"height": size, "width": size})
    tokenizer = AutoTokenizer.from_pretrained(path)
    builder = SequenceBuilder(tokenizer, int(cfg.vision_config.num_image_tokens), int(cfg.vq_config.num_patches) ** 2)
    return policy, reference, builder, processor, judge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["1b", "7b"], default=None, help="random-weight Janus-Pro policy of this size")
    ap.add_argument("--judge-arch", default="1b", help="random-weight InternVL3 judge size with --arch")
    ap.add_argument("--layers", type=int, default=None, help="with --arch: keep this many LLM layers (CPU smoke run)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=7)
    ap.add_argument("--micro-batch", type=int, default=7)
    ap.add_argument("--reason-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()

    quiet_libraries()
    base = load_config("paper" if args.arch else "tiny")
    device = resolve_device(base.runtime)
    rl = {"group_size": args.group, "micro_batch": args.micro_batch, "reason_tokens": args.reason_tokens, "lr": 1e-6}
    cfg = with_overrides(base, {"rl": rl}).rl
    policy, reference, builder, processor, judge = build(args, device)
    step = GRPOStep(policy, reference, builder, processor, JudgeScorer(judge), cfg, Distributed())
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts) for _ in range(args.group)]
    n = int(policy.config.vq_config.num_patches) ** 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, policy {args.arch or 'tiny'}, {args.prompts} prompts x G {args.group}, {n} image tokens")

    def one(k: int) -> dict[str, float]:
        seeds = [1000 * k + i for i in range(len(texts))]
        sync()
        t0 = time.perf_counter()
        ro = step.rollout(texts, seeds)
        sync()
        t1 = time.perf_counter()
        s1, s2 = step.score(ro)
        t2 = time.perf_counter()
        advantages = {s: group_advantages(r, args.group) for s, r in rollout_rewards(s1, s2, ro.said_yes).items()}
        optimizer.zero_grad(set_to_none=True)
        step.backward(ro, advantages)
        optimizer.step()
        step.sync_actor()
        sync()
        t3 = time.perf_counter()
        return {"rollout": t1 - t0, "judge": t2 - t1, "update": t3 - t2, "regen": len(ro.regenerated) / len(ro)}

    one(0)  # warm-up: kernels, graphs, allocator
    runs = [one(k) for k in range(1, args.steps + 1)]
    mean = {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
    total = mean["rollout"] + mean["judge"] + mean["update"]
    print(f"{'phase':<10}{'s/step':>10}{'share':>8}")
    for key in ("rollout", "judge", "update"):
        print(f"{key:<10}{mean[key]:>10.3f}{100 * mean[key] / total:>7.0f}%")
    print(f"{'step':<10}{total:>10.3f}  ({len(texts) / total:.2f} rollouts/s, regeneration rate {mean['regen']:.2f})")

    # The rollout phase again with the reference loop of #2, same seeds: the fast loop's gain here.
    fast = step.engine.loop
    step.engine.loop = partial(reference_image_loop, policy)
    ref_times = [one(k)["rollout"] for k in range(1, args.steps + 1)]
    step.engine.loop = fast
    ref = sum(ref_times) / len(ref_times)
    print(
        f"rollout phase: fast loop {mean['rollout']:.3f} s vs reference loop {ref:.3f} s -> {ref / mean['rollout']:.2f}x"
    )


if __name__ == "__main__":
    main()
