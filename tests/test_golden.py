"""Golden per-step metrics: the real SFT and GRPO trainers, a few steps on the tiny models, against pinned values.

As torchtune's recipe tests do, these pin what the trainers compute, step by step, so that a
refactor (the two trainers into one core) that changes any number fails here, whatever the
shapes say. The inputs do not depend on sampling upstream: SFT trains on images drawn from
numpy seeds and scored by a hash (the real filter builds the shards), GRPO scores the share of
an image's codes in a quarter of the codebook (R1, R2, R3 are exact fractions).

Tolerance: rel 1e-4, abs 1e-6. On one machine two runs give bitwise the same numbers (fp32 on
CPU, one thread, seeds fixed); the slack is for another CPU's float32 kernels (a few ulp per
operation, ~1e-7 relative, through a few optimizer steps), and abs covers the values that are
differences of O(1) terms (GRPO's loss at ratio ~1, the KL near 0). Any change of the math moves
the values by far more (a swapped segment weight, by percents).

To regenerate after a deliberate change: run `.venv/bin/pytest tests/test_golden.py`; each
failure prints the measured table as a Python literal. Check why every value moved, then paste it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoConfig

from janus_data.config import load_config, with_overrides
from janus_data.filter import run_filter
from janus_data.judge.types import JudgeResult
from janus_data.prompts import load_prompts, write_prompts_manifest
from janus_data.score import run_score
from janus_data.synth import run_synth
from janus_train.rewards import CodebookShareScorer
from janus_train.rl import run_rl
from janus_train.sft import run_sft

PROMPTS = ["a red cube on a table", "a yellow taxi", "a lighthouse at night"]
REL, ABS = 1e-4, 1e-6


class NoiseGenerator:
    """Images from numpy's generator seeded with the image's seed: the same bytes on every machine."""

    model_id = "noise"

    def __init__(self, name: str, size: int):
        self.name = name
        self.size = size

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        shape = (self.size, self.size, 3)
        return [Image.fromarray(np.random.default_rng(s).integers(0, 256, shape, dtype=np.uint8)) for s in seeds]

    def params(self) -> dict:
        return {}


class HashJudge:
    """S = a hash of (prompt, image bytes) in [0, 1), its yes/no at 0.5 and a reason that agrees."""

    model_id = "hash-judge"

    def score(self, prompts: list[str], images: list[bytes]) -> list[JudgeResult]:
        out = []
        for prompt, data in zip(prompts, images, strict=True):
            s = int(hashlib.sha256(prompt.encode() + data).hexdigest()[:8], 16) / 2**32
            reason = f"Yes, it shows {prompt}." if s >= 0.5 else f"No, it does not show {prompt}."
            out.append(JudgeResult(s, "yes" if s >= 0.5 else "no", reason, False))
        return out


def sft_config(**sft):
    base = {"max_steps": 4, "batch_size": 4, "save_every": 4, "log_every": 1, "warmup_steps": 1}
    return with_overrides(
        load_config("tiny"),
        {
            "synth": {"images_per_prompt": 6},
            "filter": {"threshold": 0.6, "t2i_per_prompt": 1, "judge_per_prompt": 1, "regen_per_prompt": 1},
            "sft": {**base, **sft},
        },
    )


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory, tiny_janus) -> Path:
    """A filtered run: 3 prompts x 6 noise images a generator, hash-scored, real VQ codes in the shards."""
    root = tmp_path_factory.mktemp("golden-sft")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = sft_config()
    size = cfg.synth.image_size
    factories = {name: (lambda name=name: NoiseGenerator(name, size)) for name in ("flux", "janus")}
    run = root / "run"
    run_synth(run, cfg, prompts, progress=False, factories=factories)
    run_score(run, cfg, progress=False, judge=HashJudge())
    run_filter(run, cfg, progress=False)
    return run


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check(measured: list[dict], golden: list[dict]) -> None:
    """Every pinned value of every step, within REL / ABS; on failure, the whole measured table."""
    table = "[\n" + "".join(f"    {m!r},\n" for m in measured) + "]"
    assert len(measured) == len(golden), table
    for step, (got, want) in enumerate(zip(measured, golden, strict=True), start=1):
        assert got.keys() == want.keys(), table
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=REL, abs=ABS), f"step {step} {key}: measured\n{table}"


def sft_steps(run: Path) -> list[dict]:
    out = []
    for m in metrics(run / "checkpoints/sft/metrics.jsonl"):
        out.append({**{f"loss/{k}": v for k, v in sorted(m["loss"].items())}, "grad_norm": m["grad_norm"]})
    return out


# SFT, per step: each task's loss (the tasks drawn that step) and the total, and the gradient norm.
SFT_GOLDEN = {
    "sample": [
        {
            "loss/regen": 7.990562438964844,
            "loss/t2i": 7.890230655670166,
            "loss/total": 7.9153136014938354,
            "grad_norm": 15.129114151000977,
        },
        {
            "loss/judge": 6.7548933029174805,
            "loss/regen": 7.581050157546997,
            "loss/t2i": 6.55098819732666,
            "loss/total": 7.116995453834534,
            "grad_norm": 15.316482543945312,
        },
        {
            "loss/judge": 6.8732171058654785,
            "loss/regen": 6.603197733561198,
            "loss/total": 6.670702576637268,
            "grad_norm": 14.644370079040527,
        },
        {
            "loss/regen": 6.282221794128418,
            "loss/t2i": 5.5860826174418134,
            "loss/total": 5.760117411613464,
            "grad_norm": 11.465631484985352,
        },
    ],
    "released": [
        {"loss/t2i": 7.916330575942993, "loss/total": 7.916330575942993, "grad_norm": 17.863168716430664},
        {"loss/regen": 7.565206527709961, "loss/total": 7.565206527709961, "grad_norm": 17.166648864746094},
        {"loss/regen": 6.877831220626831, "loss/total": 6.877831220626831, "grad_norm": 15.728475570678711},
        {"loss/regen": 5.913811922073364, "loss/total": 5.913811922073364, "grad_norm": 13.845100402832031},
    ],
}
SFT_SETTINGS = {
    "sample": {},  # the paper's: every sample's task drawn from the mix, per-sample loss
    "released": {"mix_unit": "step", "loss_reduction": "batch", "batch_size": 2, "grad_accum": 2, "min_lr_ratio": 0.05},
}


@pytest.mark.parametrize("variant", list(SFT_SETTINGS))
def test_sft_per_step_losses_are_the_pinned_ones(sft_data, tmp_path, variant):
    run = Path(shutil.copytree(sft_data, tmp_path / "run"))
    run_sft(run, sft_config(**SFT_SETTINGS[variant]), progress=False)
    check(sft_steps(run), SFT_GOLDEN[variant])


def rl_steps(run: Path) -> list[dict]:
    keys = ("loss", "reward/r1", "reward/r2", "reward/r3", "kl", "grad_norm")
    return [{k: m[k] for k in keys} for m in metrics(run / "checkpoints/rl/metrics.jsonl")]


# GRPO, per step: the loss, the mean R1, R2, R3 of the step's rollouts, the KL to the reference
# (0 at step 1: the reference is the policy) and the gradient norm.
RL_GOLDEN = {
    "paper": [
        {
            "loss": -1.3248063623905182e-07,
            "reward/r1": 0.2421875,
            "reward/r2": 0.5234375,
            "reward/r3": 0.2421875,
            "kl": 0.0,
            "grad_norm": 23.13981056213379,
        },
        {
            "loss": 0.0005580114666372538,
            "reward/r1": 0.2734375,
            "reward/r2": 0.4609375,
            "reward/r3": 0.2734375,
            "kl": 0.009434341580014338,
            "grad_norm": 23.87411117553711,
        },
        {
            "loss": 0.00230735307559371,
            "reward/r1": 0.2890625,
            "reward/r2": 0.5859375,
            "reward/r3": 0.3515625,
            "kl": 0.043943694872515544,
            "grad_norm": 25.419511795043945,
        },
    ],
    "released": [
        {
            "loss": 3.173395241029553e-09,
            "reward/r1": 0.2421875,
            "reward/r2": 0.5234375,
            "reward/r3": 0.2421875,
            "kl": 0.0,
            "grad_norm": 6.465915203094482,
        },
        {
            "loss": 0.021570191689534113,
            "reward/r1": 0.3125,
            "reward/r2": 0.515625,
            "reward/r3": 0.265625,
            "kl": 0.0009866047019816257,
            "grad_norm": 5.5271782875061035,
        },
        {
            "loss": 9.93505418591667e-05,
            "reward/r1": 0.296875,
            "reward/r2": 0.5,
            "reward/r3": 0.21875,
            "kl": 0.002383683222543561,
            "grad_norm": 8.373527526855469,
        },
    ],
}
RL_SETTINGS = {
    "paper": {},  # sampled log-probs, two-way answer, weights 1 : 1 : 2, per-sequence reduction
    "released": {
        "image_logp": "cfg_divided",
        "answer_logp": "full",
        "judge_eos": False,
        "weight_final": 1.0,
        "beta": 0.04,
        "loss_reduction": "token",  # the released code's is 'sequence': this covers the other branch
    },
}


@pytest.mark.parametrize("variant", list(RL_SETTINGS))
def test_grpo_per_step_metrics_are_the_pinned_ones(tmp_path, tiny_janus, variant):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run = tmp_path / "run"
    write_prompts_manifest(run, load_prompts(prompts)[0])
    size = AutoConfig.from_pretrained(tiny_janus).vq_config.num_embeddings
    scorer = CodebookShareScorer([c for c in range(size) if c % 4 == 0], size)
    settings = {"max_steps": 3, "save_every": 3, "log_every": 1, "prompts_per_step": 2, "group_size": 4}
    cfg = with_overrides(load_config("tiny"), {"rl": {**settings, **RL_SETTINGS[variant]}})
    run_rl(run, cfg, init=str(tiny_janus), progress=False, scorer=scorer)
    check(rl_steps(run), RL_GOLDEN[variant])
