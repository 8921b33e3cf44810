"""Editing samples in SFT (#18): sft.edit_share / edit_mix, the mixer over the edit shards, the trainer.

Frequency tolerance as tests/test_train_data.py: each task's count over n draws is
Binomial(n, p); 5 std per task (a correct mixer fails with probability below 1e-6 per task; the
seed is fixed, so the test is deterministic).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from janus_data.checks import require_sft_shards
from janus_data.config import SFTConfig, load_config, with_overrides
from janus_data.config_train import sft_task_weights
from janus_data.errors import ConfigError, RunDirError
from janus_data.janus_format import ALL_TASKS, EDIT_TASKS, TASKS
from janus_data.rundir import SFT_DIR, SFT_EDIT_DIR, STATE_FILE
from janus_data.wds import TarShardWriter
from janus_train.data import DataError, TaskMixer
from janus_train.sft import _describe, run_sft

VQ = "tiny:janus"  # the tiny config's synth.janus.model
N = 16  # the tiny Janus-Pro's codes per image
MIX = {"t2i": 0.2, "judge": 0.3, "regen": 0.5}
SIZES = {"t2i": (3, 2), "judge": (4,), "regen": (3,), "edit": (3, 2), "edit_judge": (4, 3), "edit_regen": (5,)}


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _npy(seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).integers(0, 512, N).astype(np.int64), allow_pickle=False)
    return buf.getvalue()


def _members(task: str, k: int) -> tuple[str, dict, dict[str, bytes]]:
    """The key, json record and image members of sample k of `task`, as the filters write them."""
    key = f"{task}-{k:03d}"
    answer = "Yes, it matches." if k % 2 else "No, it does not."
    if task in TASKS:
        record = {"key": key, "task": task, "prompt": f"a red cube number {k}", "reason": answer, "vq_model": VQ}
        members = {
            "t2i": {"image.png": _png(k), "image.npy": _npy(k)},
            "judge": {"image.png": _png(k)},
            "regen": {"bad.png": _png(k), "bad.npy": _npy(k), "good.png": _png(k + 1), "good.npy": _npy(k + 1)},
        }[task]
        if task == "judge":
            record["vq_model"] = None
        return key, record, members
    label = {"edit": "Yes", "edit_judge": "Yes" if k % 2 else "No", "edit_regen": "No"}[task]
    reason = {"Yes": "Yes, the cube is blue and the rest is kept.", "No": "No, the cube is still red."}[label]
    record = {
        "key": key,
        "task": task,
        "edit_id": f"e{k}",
        "instruction": f"make cube {k} blue",
        "image_ids": [f"i{k}"] if task != "edit_regen" else [f"i{k}", f"j{k}"],
        "generators": ["janus"] if task != "edit_regen" else ["janus", "kontext"],
        "scores": [0.9] if task != "edit_regen" else [0.2, 0.9],
        "scores_flw": [0.9] if task != "edit_regen" else [0.1, 0.9],
        "scores_psv": [0.9] if task != "edit_regen" else [0.5, 0.9],
        "label": label if task != "edit" else "Yes",
        "reason": reason if task != "edit" else None,
        "threshold": 0.5,
        "vq_model": VQ,
    }
    source = {"source.png": _png(1000 + k), "source.npy": _npy(1000 + k)}
    members = {
        "edit": {"image.png": _png(k), "image.npy": _npy(k)},
        "edit_judge": {"image.png": _png(k)},
        "edit_regen": {"bad.png": _png(k), "bad.npy": _npy(k), "good.png": _png(k + 1), "good.npy": _npy(k + 1)},
    }[task]
    return key, record, {**source, **members}


def write_task(root: Path, task: str, sizes: tuple[int, ...]) -> list[str]:
    """Shards of `task` under root/task (members and json record per the filters' contract)."""
    keys, k = [], 0
    for index, size in enumerate(sizes):
        with TarShardWriter(root / task, start_index=index) as writer:
            for _ in range(size):
                key, record, members = _members(task, k)
                writer.write(key, {"json": json.dumps(record).encode(), **members})
                keys.append(key)
                k += 1
    return keys


def write_run(run: Path, tasks=ALL_TASKS) -> dict[str, list[str]]:
    """A run directory with finished shards of `tasks` (sft/ and sft_edit/, each with its state.json)."""
    keys = {}
    for task in tasks:
        root = run / (SFT_DIR if task in TASKS else SFT_EDIT_DIR)
        keys[task] = write_task(root, task, SIZES[task])
        (root / STATE_FILE).write_text("{}")
    return keys


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    run = tmp_path_factory.mktemp("edit-sft") / "run"
    return run, write_run(run)


def keys_of(mixer: TaskMixer, n: int) -> list[tuple[str, str]]:
    return [(task, raw["__key__"]) for task, raw in (mixer.next_raw() for _ in range(n))]


def mixer(run: Path, share: float, **kw) -> TaskMixer:
    weights = sft_task_weights(SFTConfig(edit_share=share))
    return TaskMixer(run / SFT_DIR, weights, edit_dir=run / SFT_EDIT_DIR, seed=0, shuffle_buffer=4, **kw)


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_task_weights_combine_the_two_mixes() -> None:
    assert sft_task_weights(SFTConfig()) == {**MIX, "edit": 0.0, "edit_judge": 0.0, "edit_regen": 0.0}
    weights = sft_task_weights(SFTConfig(mix=(10, 10, 15), edit_share=0.25, edit_mix=(1, 0, 3)))
    assert list(weights) == list(ALL_TASKS)
    assert weights == pytest.approx(
        {"t2i": 7.5, "judge": 7.5, "regen": 11.25, "edit": 0.25, "edit_judge": 0.0, "edit_regen": 0.75}
    )
    only = sft_task_weights(SFTConfig(edit_share=1.0))
    assert [only[t] for t in TASKS] == [0.0] * 3 and [only[t] for t in EDIT_TASKS] == [0.2, 0.3, 0.5]


@pytest.mark.parametrize(
    ("sft", "match"),
    [
        ({"edit_share": 1.5}, r"sft.edit_share must lie in \[0, 1\], got 1.5"),
        ({"edit_share": float("nan")}, "sft.edit_share must lie in"),
        ({"edit_mix": [1, 2]}, "sft.edit_mix must be three finite weights >= 0"),
        ({"edit_mix": [1, -1, 2]}, "sft.edit_mix must be three finite weights >= 0"),
        ({"edit_mix": [1, float("inf"), 2]}, "sft.edit_mix must be three finite weights >= 0"),
        ({"edit_share": 0.5, "edit_mix": [0, 0, 0]}, "sft.edit_mix must have a positive sum"),
    ],
)
def test_config_refuses_bad_edit_settings(sft: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        with_overrides(load_config("tiny"), {"sft": sft})
    one_line(err)


def test_config_accepts_edit_settings() -> None:
    cfg = with_overrides(load_config("tiny"), {"sft": {"edit_share": 1, "edit_mix": [0, 0, 1]}})
    assert cfg.sft.edit_share == 1 and tuple(cfg.sft.edit_mix) == (0, 0, 1)
    with_overrides(load_config("tiny"), {"sft": {"edit_mix": [0, 0, 0]}})  # no edit share: the ratio is unused


def test_mixer_draws_edit_tasks_from_the_edit_dir_in_proportion(data) -> None:
    run, keys = data
    n, share = 6000, 0.4
    weights = sft_task_weights(SFTConfig(edit_share=share))
    drawn = keys_of(mixer(run, share), n)
    counts = Counter(task for task, _ in drawn)
    assert set(counts) == set(ALL_TASKS)
    for task, p in weights.items():
        std = math.sqrt(n * p * (1 - p))
        assert abs(counts[task] - n * p) <= 5 * std, (task, counts[task], n * p, std)
    edits = sum(counts[t] for t in EDIT_TASKS)
    assert abs(edits - n * share) <= 5 * math.sqrt(n * share * (1 - share))
    for task, key in drawn:  # every sample from its task's own directory (sft/ or sft_edit/)
        assert key in keys[task]
    seen = {t: {k for task, k in drawn if task == t} for t in ALL_TASKS}
    assert seen == {t: set(keys[t]) for t in ALL_TASKS}  # many epochs: every sample of every task


def test_resume_mid_stream_equals_an_uninterrupted_stream(data) -> None:
    run, _ = data
    straight = keys_of(mixer(run, 0.6), 150)
    first = mixer(run, 0.6)
    head = keys_of(first, 61)
    state = json.loads(json.dumps(first.state_dict()))
    assert set(state["tasks"]) == set(ALL_TASKS)
    resumed = mixer(run, 0.6)
    resumed.load_state_dict(state)
    assert head + keys_of(resumed, 89) == straight
    with pytest.raises(DataError, match="saved with another mix"):
        mixer(run, 0.5).load_state_dict(state)
    # 'step' unit: one task for each whole step, edits included, and the same resume
    step = mixer(run, 0.6, mix_unit="step", step_samples=4)
    drawn = keys_of(step, 200)
    assert all(len({t for t, _ in drawn[i : i + 4]}) == 1 for i in range(0, 200, 4))
    assert {t for t, _ in drawn} & set(EDIT_TASKS)


@pytest.mark.parametrize("mix", [(0.2, 0.3, 0.5), (10, 10, 15), (1, 0, 3)])
@pytest.mark.parametrize("unit", ["sample", "step"])
def test_t2i_only_choices_are_those_of_before(data, mix, unit) -> None:
    run, _ = data
    kw = {"seed": 7, "shuffle_buffer": 4, "mix_unit": unit, "step_samples": 3}
    before = TaskMixer(run / SFT_DIR, dict(zip(TASKS, mix, strict=True)), **kw)  # the old 3-task mapping
    weights = sft_task_weights(SFTConfig(mix=mix))
    for edit_dir in (None, run / SFT_EDIT_DIR, run / "absent"):
        now = TaskMixer(run / SFT_DIR, weights, edit_dir=edit_dir, **kw)
        assert now.tasks == before.tasks
        assert [now.choose(i) for i in range(3000)] == [before.choose(i) for i in range(3000)]
        assert now.state_dict() == before.state_dict()  # the same fingerprint: old checkpoints resume
    assert keys_of(TaskMixer(run / SFT_DIR, weights, **kw), 40) == keys_of(before, 40)


def test_missing_edit_shards_fail_with_one_line(data, tmp_path) -> None:
    run, _ = data
    weights = sft_task_weights(SFTConfig(edit_share=0.3))
    for edit_dir in (None, tmp_path / "nowhere"):
        with pytest.raises(DataError, match="edit SFT directory") as err:
            TaskMixer(run / SFT_DIR, weights, edit_dir=edit_dir)
        assert "janus data filter --task edit" in one_line(err)
    partial = tmp_path / "partial"
    write_task(partial, "edit", (2,))  # edit_judge and edit_regen missing
    with pytest.raises(DataError, match="no shards for task edit_judge") as err:
        TaskMixer(run / SFT_DIR, weights, edit_dir=partial)
    assert "janus data filter --task edit" in one_line(err)
    (partial / STATE_FILE).write_text("{}")  # the filter finished: edit_judge is empty, not missing
    with pytest.raises(DataError, match="the filter found no sample of task edit_judge") as err:
        TaskMixer(run / SFT_DIR, weights, edit_dir=partial)
    assert "weight 0 in sft.edit_mix" in one_line(err)
    (partial / STATE_FILE).unlink()
    # a weight-0 edit task needs no shards; no t2i weight: no sft directory at all
    only = sft_task_weights(SFTConfig(edit_share=1.0, edit_mix=(1, 0, 0)))
    assert TaskMixer(None, only, edit_dir=partial).tasks == ["edit"]
    # the entry check: the shard directories the weights need, and only those
    t2i_only = tmp_path / "t2i-only"
    (t2i_only / SFT_DIR).mkdir(parents=True)
    (t2i_only / SFT_DIR / STATE_FILE).write_text("{}")
    require_sft_shards(t2i_only, SFTConfig())
    with pytest.raises(RunDirError, match="no edit SFT shards") as err:
        require_sft_shards(t2i_only, SFTConfig(edit_share=0.3))
    assert "janus data filter --task edit" in one_line(err)
    edit_only = tmp_path / "edit-only"
    (edit_only / SFT_EDIT_DIR).mkdir(parents=True)
    (edit_only / SFT_EDIT_DIR / STATE_FILE).write_text("{}")
    require_sft_shards(edit_only, SFTConfig(edit_share=1.0))
    with pytest.raises(RunDirError, match="no SFT shards"):
        require_sft_shards(edit_only, SFTConfig(edit_share=0.5))
    with pytest.raises(RunDirError, match="no SFT shards"):
        require_sft_shards(edit_only)  # default: text-to-image only


def test_progress_shows_the_drawn_tasks_only() -> None:
    losses = {"t2i": 1.0, "edit": 2.0, "total": 1.5}
    assert _describe(losses, ["t2i", "judge", "edit"]) == "sft loss 1.500 (t2i 1.000 edit 2.000)"
    assert _describe(losses, ["edit"]) == "sft loss 1.500 (edit 2.000)"


# -- the trainer on the tiny Janus-Pro ------------------------------------------------------------


def cfg(**sft):
    base = {"max_steps": 4, "batch_size": 4, "save_every": 2, "keep_last": 5, "log_every": 1, "warmup_steps": 1}
    return with_overrides(load_config("tiny"), {"sft": {**base, **sft}})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "checkpoints/sft/metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(data, tiny_janus, tmp_path_factory) -> Path:
    """A mixed t2i + edit run trained 4 steps straight."""
    run = Path(shutil.copytree(data[0], tmp_path_factory.mktemp("straight") / "run"))
    run_sft(run, cfg(edit_share=0.5), progress=False)
    return run


def test_mixed_run_logs_edit_losses_and_resumes(data, straight, tmp_path) -> None:
    logged = metrics(straight)
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    seen = {task for m in logged for task in m["loss"]}
    assert set(EDIT_TASKS) <= seen and seen & set(TASKS)
    assert all(math.isfinite(v) for m in logged for v in m["loss"].values())
    state = json.loads((straight / "checkpoints/sft/step-000004/trainer_state.json").read_text())
    assert set(state["data"]["tasks"]) == set(ALL_TASKS)
    run = Path(shutil.copytree(data[0], tmp_path / "run"))
    run_sft(run, cfg(edit_share=0.5), max_steps=2, progress=False)
    resumed = run_sft(run, cfg(edit_share=0.5), progress=False)
    assert (resumed.start_step, resumed.end_step) == (2, 4)
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in logged]


def test_edit_only_run_needs_no_t2i_shards(data, tmp_path) -> None:
    from janus_run import stages

    run = tmp_path / "run"
    shutil.copytree(data[0] / SFT_EDIT_DIR, run / SFT_EDIT_DIR)
    assert not (run / SFT_DIR).exists()
    result = stages.sft(run, cfg(edit_share=1.0, max_steps=2), progress=False)
    assert result.end_step == 2
    seen = {task for m in metrics(run) for task in m["loss"]}
    assert seen - {"total"} <= set(EDIT_TASKS) and seen & set(EDIT_TASKS)
    with pytest.raises(RunDirError, match="no SFT shards"):
        stages.sft(run, cfg(edit_share=0.5, max_steps=2), progress=False)
