"""`janus train sft`: learning, frozen modules, exact resume, DDP equivalence, checkpoints, bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import runs
import torch
from procs import HANG_S, mismatched_share, torchrun
from safetensors.torch import load_file

from janus_data.config import load_config, with_overrides
from janus_data.errors import ConfigError, RunDirError
from janus_train.checkpoint import CheckpointError, latest_checkpoint
from janus_train.core import FROZEN, TRAINABLE, TrainError, module_of
from janus_train.data import DataError
from janus_train.sft import run_sft

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red cube on a table", "a yellow taxi", "a lighthouse at night"]


def cfg(**sft):
    base = {"max_steps": 6, "batch_size": 4, "save_every": 3, "keep_last": 5, "log_every": 1, "warmup_steps": 1}
    return with_overrides(
        load_config("tiny"),
        {
            "synth": {"images_per_prompt": 6},
            "filter": {"threshold": 0.6, "t2i_per_prompt": 1, "judge_per_prompt": 1, "regen_per_prompt": 1},
            "sft": {**base, **sft},
        },
    )


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory, janus_cache) -> Path:
    return runs.filtered_run(tmp_path_factory.mktemp("sft"), cfg(), PROMPTS)


@pytest.fixture
def run(filtered_run, tmp_path) -> Path:
    return Path(shutil.copytree(filtered_run, tmp_path / "run"))


def weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt_dir / "model.safetensors")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "checkpoints/sft/metrics.jsonl").read_text().splitlines()]


def test_overfit_drives_every_task_loss_down(run, tiny_janus):
    result = run_sft(run, cfg(max_steps=40, lr=2e-3, save_every=40), progress=False)
    first, last = result.first_loss, result.last_loss
    for task in ("t2i", "judge", "regen"):
        assert last[task] < 0.3 * first[task], (task, first[task], last[task])
    base = load_file(tiny_janus / "model.safetensors")
    trained = weights(result.checkpoint)
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    for name in base:
        module = module_of(name)
        if module in FROZEN:
            assert name not in changed, f"frozen {name} changed"
        else:
            assert module in TRAINABLE and name in changed, f"trainable {name} did not change"


def test_resume_is_bit_identical(run, tmp_path):
    straight = Path(shutil.copytree(run, tmp_path / "straight"))
    run_sft(straight, cfg(), progress=False)
    run_sft(run, cfg(), max_steps=3, progress=False)
    resumed = run_sft(run, cfg(), resume=True, progress=False)
    assert resumed.start_step == 3 and resumed.end_step == 6
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in metrics(straight)]
    a, b = (
        weights(latest_checkpoint(run / "checkpoints/sft").path),
        weights(latest_checkpoint(straight / "checkpoints/sft").path),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_loads_with_stock_transformers_and_generates(run):
    from transformers import JanusForConditionalGeneration

    from janus_data.config import JanusGenConfig
    from janus_data.generators.janus import JanusGenerator

    result = run_sft(run, cfg(max_steps=2, save_every=2), progress=False)
    model = JanusForConditionalGeneration.from_pretrained(result.checkpoint)
    gen = JanusGenerator(JanusGenConfig(model=str(result.checkpoint), batch_size=1), torch.device("cpu"), torch.float32)
    (image,) = gen.generate(["a red cube"], [0])
    assert image.size == (64, 64) and np.asarray(image).std() > 0
    assert type(model).__name__ == "JanusForConditionalGeneration"
    kept = sorted(p.name for p in (run / "checkpoints/sft").glob("step-*"))
    assert kept == ["step-000002"]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(run, tmp_path, parallel):
    single = Path(shutil.copytree(run, tmp_path / "single"))
    run_sft(single, cfg(max_steps=3, batch_size=4, save_every=3), progress=False)
    overrides = tmp_path / "ddp.yaml"
    overrides.write_text(
        "preset: tiny\nsynth: {images_per_prompt: 6}\n"
        "filter: {threshold: 0.6, t2i_per_prompt: 1, judge_per_prompt: 1, regen_per_prompt: 1}\n"
        "sft: {max_steps: 3, batch_size: 2, save_every: 3, keep_last: 5, log_every: 1, warmup_steps: 1,"
        f" parallel: {parallel}}}\n"
    )
    res = torchrun("train", "sft", "--run-dir", str(run), "--config", str(overrides), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    a = weights(latest_checkpoint(run / "checkpoints/sft").path)
    b = weights(latest_checkpoint(single / "checkpoints/sft").path)
    share = mismatched_share(a, b, cfg().sft.lr)
    print(f"two processes vs one: {share:.1e} of the weights more than lr / 10 apart")
    assert share < 1e-3, share
    for x, y in zip(metrics(run), metrics(single), strict=True):
        assert x["loss"]["total"] == pytest.approx(y["loss"]["total"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)  # AdamW alone would hide a scale
    # A checkpoint is whole whatever the parallelism: one process resumes the two-process run.
    resumed = run_sft(run, cfg(max_steps=4, batch_size=4, save_every=4), resume=True, progress=False)
    assert (resumed.start_step, resumed.end_step) == (3, 4)


def test_step_unit_and_batch_reduction_train_one_task_per_step_and_resume_exactly(run, tmp_path):
    """The released recipe (mix_unit step, loss_reduction batch), with micro-steps: resume == uninterrupted."""
    released = {"mix_unit": "step", "loss_reduction": "batch", "batch_size": 2, "grad_accum": 2}
    straight = Path(shutil.copytree(run, tmp_path / "straight"))
    run_sft(straight, cfg(**released), progress=False)
    run_sft(run, cfg(**released), max_steps=3, progress=False)
    resumed = run_sft(run, cfg(**released), resume=True, progress=False)
    assert (resumed.start_step, resumed.end_step) == (3, 6)
    logged = metrics(straight)
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in logged]
    for m in logged:  # every micro-batch of the step had the same single task
        (task,) = set(m["loss"]) - {"total"}
        assert m["loss"]["total"] == pytest.approx(m["loss"][task], rel=1e-6)
    a = weights(latest_checkpoint(run / "checkpoints/sft").path)
    b = weights(latest_checkpoint(straight / "checkpoints/sft").path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_batch_reduction_two_processes_equal_one_with_the_same_micro_batches(run, tmp_path, parallel):
    """'batch': the step's gradient is the mean micro-batch loss over micro-steps and processes, so 2
    processes x 1 micro-batch of 2 train what 1 process x 2 micro-batches of 2 trains (same samples)."""
    single = Path(shutil.copytree(run, tmp_path / "single"))
    run_sft(single, cfg(max_steps=2, batch_size=2, grad_accum=2, loss_reduction="batch", save_every=2), progress=False)
    overrides = tmp_path / "ddp.yaml"
    overrides.write_text(
        "preset: tiny\nsynth: {images_per_prompt: 6}\n"
        "filter: {threshold: 0.6, t2i_per_prompt: 1, judge_per_prompt: 1, regen_per_prompt: 1}\n"
        "sft: {max_steps: 2, batch_size: 2, save_every: 2, keep_last: 5, log_every: 1, warmup_steps: 1,"
        f" loss_reduction: batch, parallel: {parallel}}}\n"
    )
    res = torchrun("train", "sft", "--run-dir", str(run), "--config", str(overrides), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    a = weights(latest_checkpoint(run / "checkpoints/sft").path)
    b = weights(latest_checkpoint(single / "checkpoints/sft").path)
    share = mismatched_share(a, b, cfg().sft.lr)
    print(f"two processes vs one: {share:.1e} of the weights more than lr / 10 apart")
    assert share < 1e-3, share
    for x, y in zip(metrics(run), metrics(single), strict=True):
        assert x["loss"]["total"] == pytest.approx(y["loss"]["total"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)  # AdamW alone would hide a scale


def token_losses(model, builder, pad_id, processor, sample: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample alone: the CE of each text target, its weight, and the CE of each image target."""
    from janus_train.losses import collate, hidden_states

    batch = collate([builder.from_record(sample)], pad_id, processor)
    hidden = hidden_states(model, batch)[0]
    text, image = batch.text_labels[0] != -100, batch.image_labels[0] != -100
    text_ce = torch.nn.functional.cross_entropy(
        model.lm_head(hidden[text]), batch.text_labels[0][text], reduction="none"
    )
    image_logits = model.model.generation_head(hidden[image])
    image_ce = torch.nn.functional.cross_entropy(image_logits, batch.image_labels[0][image], reduction="none")
    return text_ce, batch.text_weights[0][text], image_ce


def test_batch_reduction_is_token_level_over_the_micro_batch(tiny_janus):
    """'batch': 0.8 x mean CE of the Yes/No tokens + 0.2 x mean CE of the rest, pooled over the batch's
    reasons (long ones weigh more); the step loss weighs each task by its share of samples."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, JanusForConditionalGeneration

    from janus_data.config import SFTConfig
    from janus_train.sft_step import SFTStep

    torch.manual_seed(0)
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus, dtype=torch.float32)
    tok, processor = AutoTokenizer.from_pretrained(tiny_janus), AutoImageProcessor.from_pretrained(tiny_janus)
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    reasons = ["Yes.", "No, the cube is blue and the table is missing from the picture entirely.", "Yes, red."]
    samples = [
        ("judge", {"json": {"task": "judge", "prompt": "a red cube", "reason": r}, "image.png": picture})
        for r in reasons
    ]
    codes = rng.integers(0, 512, 16).astype(np.int32)
    samples.append(("t2i", {"json": {"task": "t2i", "prompt": "a red cube"}, "image.npy": codes}))
    rngs = [random.Random(0) for _ in samples]
    steps = {
        r: SFTStep(model, tok, processor, SFTConfig(loss_reduction=r, caption_dropout=0.0), torch.device("cpu"))
        for r in ("batch", "sample")
    }
    with torch.no_grad():
        batch_losses, _ = steps["batch"].forward(samples, rngs, sync=True)
        per_sample, _ = steps["sample"].forward(samples, rngs, sync=True)
        parts = [token_losses(model, steps["batch"].builder, tok.pad_token_id, processor, s) for _, s in samples]
    ce = torch.cat([p[0] for p in parts[:3]])
    w = torch.cat([p[1] for p in parts[:3]])
    assert sorted(set(w.tolist())) == pytest.approx([0.2, 0.8])
    judge = 0.8 * ce[w > 0.5].mean() + 0.2 * ce[w < 0.5].mean()
    t2i = parts[3][2].mean()
    assert batch_losses["judge"].item() == pytest.approx(judge.item(), rel=1e-5)
    assert batch_losses["t2i"].item() == pytest.approx(t2i.item(), rel=1e-5)
    assert batch_losses["total"].item() == pytest.approx((3 / 4 * judge + 1 / 4 * t2i).item(), rel=1e-5)
    # 'sample': each reason normalised on its own, then the mean over samples: not the same number here
    alone = [0.8 * c[x > 0.5].mean() + 0.2 * c[x < 0.5].mean() for c, x, _ in parts[:3]]
    assert per_sample.tolist() == pytest.approx([*(a.item() for a in alone), t2i.item()], rel=1e-5)
    assert abs(per_sample.mean().item() - batch_losses["total"].item()) > 1e-3


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(run, monkeypatch):
    import janus_train.sft_step as steps

    real = steps.per_sample_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(steps, "per_sample_losses", poisoned)
    with pytest.raises(TrainError, match="non-finite loss") as info:
        run_sft(run, cfg(max_steps=8, save_every=2), progress=False)
    assert "step-000004" in str(info.value) and "\n" not in str(info.value)
    last = latest_checkpoint(run / "checkpoints/sft")
    assert last.step == 4
    weights(last.path)  # loads
    monkeypatch.setattr(steps, "per_sample_losses", real)
    resumed = run_sft(run, cfg(max_steps=6, save_every=2), resume=True, progress=False)
    assert resumed.start_step == 4 and resumed.end_step == 6


def test_corrupt_checkpoint_on_resume_is_one_line(run):
    run_sft(run, cfg(max_steps=3), progress=False)
    ckpt = latest_checkpoint(run / "checkpoints/sft")
    with open(ckpt.path / "model.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="damaged") as info:
        run_sft(run, cfg(), resume=True, progress=False)
    assert "\n" not in str(info.value)


def test_bad_input(run, tmp_path):
    with pytest.raises(RunDirError, match="no SFT shards"):
        run_sft(tmp_path / "empty", cfg(), progress=False)
    other = with_overrides(cfg(), {"synth": {"janus": {"model": str(tmp_path / "other-janus")}}})
    shutil.copytree(Path(os.environ["JANUS_CACHE"]) / "tiny/v3/janus", tmp_path / "other-janus")
    with pytest.raises(DataError, match="VQ model"):
        run_sft(run, other, progress=False)
    with pytest.raises(ConfigError, match="lr"):
        cfg(lr=0.0)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_sft(run, cfg(), resume=True, progress=False)


@pytest.mark.slow
def test_cli_train_sft(run):
    base = [sys.executable, str(REPO / "cli.py"), "train", "sft", "--run", str(run), "--no-progress"]
    bad = subprocess.run([*base, "--config", "tiny", "--resume"], capture_output=True, text=True, timeout=HANG_S)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    ok = subprocess.run([*base, "--config", "tiny", "--max-steps", "2"], capture_output=True, text=True, timeout=HANG_S)
    assert ok.returncode == 0, ok.stderr
    assert "janus train sft" in ok.stderr and "step-000002" in ok.stderr


def test_tensorboard_without_the_package_is_one_line(run):
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    with pytest.raises(TrainError, match="pip install tensorboard"):
        run_sft(run, cfg(max_steps=1, tensorboard=True), progress=False)
