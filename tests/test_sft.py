"""`janus train sft`: learning, frozen modules, exact resume, DDP equivalence, checkpoints, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from janus_data.config import load_config, with_overrides
from janus_data.errors import ConfigError, RunDirError
from janus_data.filter import run_filter
from janus_data.score import run_score
from janus_data.synth import run_synth
from janus_train.checkpoint import CheckpointError, latest_checkpoint
from janus_train.data import DataError
from janus_train.sft import FROZEN, TRAINABLE, TrainError, module_of, run_sft

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
    root = tmp_path_factory.mktemp("sft")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run = root / "run"
    run_synth(run, cfg(), prompts, progress=False)
    run_score(run, cfg(), progress=False)
    run_filter(run, cfg(), progress=False)
    return run


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


@pytest.mark.parametrize("parallel, port", [("ddp", 29517), ("fsdp", 29519)])
def test_two_processes_equal_one_with_the_same_global_batch(run, tmp_path, parallel, port):
    single = Path(shutil.copytree(run, tmp_path / "single"))
    run_sft(single, cfg(max_steps=3, batch_size=4, save_every=3), progress=False)
    overrides = tmp_path / "ddp.yaml"
    overrides.write_text(
        "preset: tiny\nsynth: {images_per_prompt: 6}\n"
        "filter: {threshold: 0.6, t2i_per_prompt: 1, judge_per_prompt: 1, regen_per_prompt: 1}\n"
        "sft: {max_steps: 3, batch_size: 2, save_every: 3, keep_last: 5, log_every: 1, warmup_steps: 1,"
        f" parallel: {parallel}}}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
        str(REPO / "cli.py"), "train", "sft", "--run-dir", str(run), "--config", str(overrides), "--no-progress",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    a = weights(latest_checkpoint(run / "checkpoints/sft").path)
    b = weights(latest_checkpoint(single / "checkpoints/sft").path)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    for x, y in zip(metrics(run), metrics(single), strict=True):
        assert x["loss"]["total"] == pytest.approx(y["loss"]["total"], rel=1e-5)
    # A checkpoint is whole whatever the parallelism: one process resumes the two-process run.
    resumed = run_sft(run, cfg(max_steps=4, batch_size=4, save_every=4), resume=True, progress=False)
    assert (resumed.start_step, resumed.end_step) == (3, 4)


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(run, monkeypatch):
    import janus_train.steps as steps

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


def test_cli_train_sft(run):
    base = [sys.executable, str(REPO / "cli.py"), "train", "sft", "--run", str(run), "--no-progress"]
    bad = subprocess.run([*base, "--config", "tiny", "--resume"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    ok = subprocess.run([*base, "--config", "tiny", "--max-steps", "2"], capture_output=True, text=True, timeout=300)
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
