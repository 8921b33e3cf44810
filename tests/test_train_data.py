"""TaskMixer: the SFT stream mixing t2i/judge/regen shards by ratio, seeded, epoch-cycling, rank-split, resumable.

Frequency tolerance: each task's count over n draws is Binomial(n, p), std sqrt(n p (1 - p))
(about 57 draws, 0.28 % of 20,000, for p = 0.2; 71 for p = 0.5). The test allows 5 std per
task: a correct mixer fails it with probability below 1e-6 per task for a random seed (the
seed here is fixed, so the test is deterministic anyway), while a bias of 1.5 % or more in any
weight is caught. With mix_unit 'step' the trials are the steps (3,000: 5 std is 4.6 % of them
for p = 0.5, 3.7 % for p = 0.2).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from janus_data.wds import TarShardWriter
from janus_train.data import DataError, TaskMixer

VQ = "deepseek-ai/Janus-Pro-7B"
SIZES = {"t2i": (3, 2, 2), "judge": (4, 4, 3), "regen": (3, 2)}  # samples per shard: 7, 11, 5
MIX = {"t2i": 0.2, "judge": 0.3, "regen": 0.5}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def _npy(value: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full(4, value, dtype=np.int32), allow_pickle=False)
    return buf.getvalue()


def write_task(
    root: Path, task: str, sizes: tuple[int, ...], vq: str | None = VQ, bad_shard: int | None = None
) -> list[str]:
    """Shards of `task` under root/task; the json's vq_model is null for judge, "other/vq" in `bad_shard`."""
    keys = []
    k = 0
    for index, size in enumerate(sizes):
        with TarShardWriter(root / task, start_index=index) as writer:
            for _ in range(size):
                key = f"{task}-{k:03d}"
                model = None if task == "judge" else ("other/vq" if index == bad_shard else vq)
                record = {"key": key, "task": task, "prompt": f"prompt {k}", "vq_model": model}
                members = {"json": json.dumps(record).encode(), "image.png": PNG}
                if task != "judge":
                    members["image.npy"] = _npy(k)
                writer.write(key, members)
                keys.append(key)
                k += 1
    return keys


@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    for task, sizes in SIZES.items():
        write_task(root, task, sizes)
    return root


def keys_of(mixer: TaskMixer, n: int) -> list[tuple[str, str]]:
    return [(task, raw["__key__"]) for task, raw in (mixer.next_raw() for _ in range(n))]


def test_frequencies_follow_the_mix(sft: Path, tmp_path: Path) -> None:
    n = 20_000
    counts = Counter(task for task, _ in keys_of(TaskMixer(sft, MIX, seed=0, shuffle_buffer=4), n))
    assert set(counts) == set(MIX)
    for task, p in MIX.items():
        std = math.sqrt(n * p * (1 - p))
        assert abs(counts[task] - n * p) <= 5 * std, (task, counts[task], n * p, std)
    # a weight-0 task is never drawn and needs no shards
    root = tmp_path / "sft"
    write_task(root, "t2i", (3, 4))
    write_task(root, "regen", (5,))
    mixer = TaskMixer(root, {"t2i": 0.4, "judge": 0.0, "regen": 0.6}, seed=3)
    counts = Counter(task for task, _ in keys_of(mixer, 5000))
    assert set(counts) == {"t2i", "regen"}
    assert abs(counts["t2i"] - 2000) <= 5 * math.sqrt(5000 * 0.24)
    # a 3-sequence is (t2i, judge, regen), as in the config
    assert TaskMixer(root, (1, 0, 3)).mix == {"t2i": 1.0, "judge": 0.0, "regen": 3.0}


STEP = 6  # draws per optimizer step for the 'step' unit tests


def step_tasks(draws: list[tuple[str, str]]) -> list[str]:
    """The one task of each whole step of `draws`, asserting that every step has a single task."""
    steps = [{task for task, _ in draws[i : i + STEP]} for i in range(0, len(draws) - STEP + 1, STEP)]
    assert all(len(tasks) == 1 for tasks in steps)
    return [tasks.pop() for tasks in steps]


def test_step_unit_draws_one_task_per_step(sft: Path) -> None:
    n_steps = 3000
    mixer = TaskMixer(sft, MIX, seed=0, shuffle_buffer=4, mix_unit="step", step_samples=STEP)
    counts = Counter(step_tasks(keys_of(mixer, n_steps * STEP)))
    for task, p in MIX.items():
        std = math.sqrt(n_steps * p * (1 - p))
        assert abs(counts[task] - n_steps * p) <= 5 * std, (task, counts[task], n_steps * p, std)
    # every rank draws the step's task (ranks with their own streams: one task for the whole global batch)
    ranks = [
        step_tasks(keys_of(TaskMixer(sft, MIX, seed=4, rank=r, world_size=2, mix_unit="step", step_samples=STEP), 120))
        for r in (0, 1)
    ]
    assert ranks[0] == ranks[1] and len(set(ranks[0])) > 1
    # 'sample' mixes tasks within a step
    per_sample = keys_of(TaskMixer(sft, MIX, seed=0, shuffle_buffer=4), 120)
    assert any(len({t for t, _ in per_sample[i : i + STEP]}) > 1 for i in range(0, 120, STEP))


def test_step_unit_resumes_exactly(sft: Path) -> None:
    kwargs = {"seed": 9, "shuffle_buffer": 4, "mix_unit": "step", "step_samples": STEP}
    reference = keys_of(TaskMixer(sft, MIX, **kwargs), 120)
    for n in (0, 6, 23, 60, 61):  # at a step boundary and mid-step (a resume state is saved per step)
        first = TaskMixer(sft, MIX, **kwargs)
        assert keys_of(first, n) == reference[:n]
        state = json.loads(json.dumps(first.state_dict()))
        second = TaskMixer(sft, MIX, **kwargs)
        second.load_state_dict(state)
        assert keys_of(second, 120 - n) == reference[n:], n
    for other in (TaskMixer(sft, MIX, seed=9, shuffle_buffer=4), TaskMixer(sft, MIX, **{**kwargs, "step_samples": 4})):
        with pytest.raises(DataError, match=r"saved with another (mix_unit, )?step_samples"):
            other.load_state_dict(state)


def test_samples_are_decoded(sft: Path) -> None:
    mixer = TaskMixer(sft, MIX, seed=0, expected_vq_model=VQ)
    seen = set()
    for task, sample in (mixer.next_sample() for _ in range(40)):
        seen.add(task)
        assert sample["json"]["task"] == task and sample["json"]["key"] == sample["__key__"]
        assert isinstance(sample["image.png"], Image.Image) and sample["image.png"].size == (2, 2)
        if task == "judge":
            assert "image.npy" not in sample and sample["json"]["vq_model"] is None
        else:
            assert sample["image.npy"].dtype == np.int32 and sample["json"]["vq_model"] == VQ
    assert seen == set(MIX)
    it = iter(mixer)
    assert next(it)[0] in MIX


def test_seeded(sft: Path) -> None:
    a = keys_of(TaskMixer(sft, MIX, seed=7, shuffle_buffer=3), 300)
    assert a == keys_of(TaskMixer(sft, MIX, seed=7, shuffle_buffer=3), 300)
    b = keys_of(TaskMixer(sft, MIX, seed=8, shuffle_buffer=3), 300)
    assert a != b
    assert [t for t, _ in a] != [t for t, _ in b]  # the task choice too, not only the sample order


def test_epochs_cycle(sft: Path) -> None:
    mixer = TaskMixer(sft, MIX, seed=1, shuffle_buffer=3)
    per_task: dict[str, list[str]] = {t: [] for t in MIX}
    for task, key in keys_of(mixer, 600):
        per_task[task].append(key)
    for task, sizes in SIZES.items():
        size = sum(sizes)
        everything = {f"{task}-{k:03d}" for k in range(size)}
        epochs = [per_task[task][i : i + size] for i in range(0, len(per_task[task]) - size + 1, size)]
        assert len(epochs) >= 8
        for keys in epochs:
            assert len(keys) == size and set(keys) == everything  # each sample once per epoch
        assert len({tuple(keys) for keys in epochs}) > len(epochs) // 2  # the order changes between epochs
        assert epochs[0] != epochs[1]
    state = mixer.state_dict()["tasks"]
    for task, sizes in SIZES.items():
        assert state[task]["epoch"] * sum(sizes) + state[task]["consumed"] == len(per_task[task])


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1), (4, 0)])  # (4, 0): fewer shards than ranks
def test_resume_exactly(sft: Path, world_size: int, rank: int) -> None:
    kwargs = {"seed": 5, "shuffle_buffer": 4, "rank": rank, "world_size": world_size}
    total, m = 90, 25
    reference = keys_of(TaskMixer(sft, MIX, **kwargs), total)
    mid = set()  # tasks caught between their first and last sample of an epoch
    for n in range(total - m + 1):
        first = TaskMixer(sft, MIX, **kwargs)
        assert keys_of(first, n) == reference[:n]
        state = json.loads(json.dumps(first.state_dict()))
        assert state["draws"] == n
        for task, pos in state["tasks"].items():
            if 0 < pos["consumed"] < len(list(first.epoch_samples(task, pos["epoch"]))):
                mid.add(task)  # mid-epoch: in the middle of a shard or of draining the shuffle buffer
        second = TaskMixer(sft, MIX, **kwargs)
        second.next_raw()  # a used mixer must also jump to the saved position
        second.load_state_dict(state)
        assert keys_of(second, m) == reference[n : n + m], n
        assert second.draws == n + m
    assert mid == set(MIX)


def test_resume_refuses_another_config(sft: Path, tmp_path: Path) -> None:
    mixer = TaskMixer(sft, MIX, seed=5)
    keys_of(mixer, 10)
    state = json.loads(json.dumps(mixer.state_dict()))
    for other in (
        TaskMixer(sft, MIX, seed=6),
        TaskMixer(sft, {"t2i": 1, "judge": 1, "regen": 1}, seed=5),
        TaskMixer(sft, MIX, seed=5, world_size=2),
        TaskMixer(sft, MIX, seed=5, shuffle_buffer=10),
    ):
        with pytest.raises(DataError, match="saved with another") as err:
            other.load_state_dict(state)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="version"):
        mixer.load_state_dict({"draws": 3})
    # other shards (one sample more in the regen task)
    root = tmp_path / "sft"
    for task, sizes in SIZES.items():
        write_task(root, task, (*sizes, 1) if task == "regen" else sizes)
    with pytest.raises(DataError, match="another shards"):
        TaskMixer(root, MIX, seed=5).load_state_dict(state)


def first_epochs(mixer: TaskMixer, task: str, epochs: int) -> list[list[str]]:
    """The keys of each of this rank's first `epochs` epochs of `task`, drawn through the mixer."""
    out: list[list[str]] = [[] for _ in range(epochs)]
    while True:
        _, raw = mixer.next_raw()
        epoch = mixer.state_dict()["tasks"][task]["epoch"]
        if epoch == epochs:
            return out
        out[epoch].append(raw["__key__"])


@pytest.mark.parametrize("sizes", [(3, 2, 2), (7,)], ids=["three-shards", "one-shard"])
def test_ranks_are_disjoint(tmp_path: Path, sizes: tuple[int, ...]) -> None:
    keys = write_task(tmp_path, "t2i", sizes)
    ranks = [first_epochs(TaskMixer(tmp_path, {"t2i": 1}, seed=2, rank=r, world_size=2), "t2i", 4) for r in (0, 1)]
    for e in range(4):
        a, b = ranks[0][e], ranks[1][e]
        assert a and b and not set(a) & set(b), e
        assert len(a) + len(b) == len(keys) and set(a) | set(b) == set(keys), e
    if len(sizes) == 1:  # split by sample index: the same halves every epoch, 4 and 3 samples
        assert [len(epoch) for epoch in ranks[0]] == [4] * 4
    else:  # split by shard: the shard order, so the halves, change between epochs
        assert len({frozenset(epoch) for epoch in ranks[0]}) > 1


def test_rank_without_samples(tmp_path: Path) -> None:
    write_task(tmp_path, "t2i", (1,))
    TaskMixer(tmp_path, {"t2i": 1}, rank=0, world_size=2).next_raw()
    with pytest.raises(DataError, match="rank 1 of 2 gets no samples of task t2i") as err:
        TaskMixer(tmp_path, {"t2i": 1}, rank=1, world_size=2).next_raw()
    assert "\n" not in str(err.value)


def one_line(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and len(text) < 400
    return text


def test_errors(sft: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        TaskMixer(tmp_path / "nope", MIX)
    assert "does not exist" in one_line(err) and "janus data filter" in one_line(err)

    root = tmp_path / "run" / "sft"
    write_task(root, "t2i", (2,))
    write_task(root, "judge", (2,))
    (root / "regen").mkdir()
    (root / "regen" / ".sft-000000.tar.tmp").write_bytes(b"partial")  # a temp file is not a shard
    with pytest.raises(DataError) as err:
        TaskMixer(root, MIX)
    assert one_line(err) == f"no shards for task regen under {root / 'regen'} (run `janus data filter` first)"
    TaskMixer(root, {"t2i": 1, "judge": 1})  # regen has weight 0: fine

    for mix, match in (
        ({"t2i": 0, "judge": 0, "regen": 0}, "all zero"),
        ({"t2i": -1, "judge": 1}, "must be a finite number >= 0"),
        ({"t2i": float("nan")}, "must be a finite number >= 0"),
        ({"t2i": 1, "regne": 1}, "unknown task regne"),
        ((1, 2), "needs 3 weights"),
    ):
        with pytest.raises(DataError, match=match) as err:
            TaskMixer(sft, mix)
        one_line(err)
    with pytest.raises(DataError, match="rank 2 must be in"):
        TaskMixer(sft, MIX, rank=2, world_size=2)
    with pytest.raises(DataError, match="mix_unit must be"):
        TaskMixer(sft, MIX, mix_unit="epoch")
    with pytest.raises(DataError, match="step_samples must be"):
        TaskMixer(sft, MIX, mix_unit="step", step_samples=0)


def test_wrong_vq_model(sft: Path, tmp_path: Path) -> None:
    # the first shard of a task is checked when the mixer is built
    with pytest.raises(DataError) as err:
        TaskMixer(sft, MIX, expected_vq_model="someone/Janus-Pro-1B")
    text = one_line(err)
    assert f"was built with VQ model {VQ}, but training uses someone/Janus-Pro-1B" in text
    assert text.startswith(f"shard {sft / 't2i' / 'sft-000000.tar'} (sample t2i-000)")
    assert text.endswith("(rebuild with janus data filter, or train the checkpoint the run generated with)")
    # a later shard with another model fails when its sample comes up; judge samples (null) pass
    root = tmp_path / "sft"
    write_task(root, "t2i", (2, 2, 2), bad_shard=2)
    write_task(root, "judge", (3,))
    mixer = TaskMixer(root, {"t2i": 1, "judge": 1}, seed=0, shuffle_buffer=0, expected_vq_model=VQ)
    with pytest.raises(DataError, match="built with VQ model other/vq, but training uses") as err:
        keys_of(mixer, 30)
    one_line(err)
    assert "sft-000002.tar" in str(err.value)
    # without an expected model nothing is compared
    keys_of(TaskMixer(root, {"t2i": 1, "judge": 1}), 30)


def test_misplaced_task(tmp_path: Path) -> None:
    write_task(tmp_path, "t2i", (2,))
    (tmp_path / "regen").mkdir()
    (tmp_path / "t2i" / "sft-000000.tar").rename(tmp_path / "regen" / "sft-000000.tar")
    with pytest.raises(DataError, match="holds a sample of task 't2i', not regen") as err:
        TaskMixer(tmp_path, {"regen": 1})
    one_line(err)
