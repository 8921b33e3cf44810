"""The SFT data stream: the three sub-tasks' WebDataset shards mixed by ratio, seeded and resumable.

`TaskMixer(sft_dir, mix, edit_dir=...)` reads `<sft_dir>/<task>/sft-*.tar` for the text-to-image
tasks (TASKS: what `janus data filter` writes, docs/filter.md) and `<edit_dir>/<task>/sft-*.tar`
for the edit tasks (EDIT_TASKS: `janus data filter --task edit`), and yields `(task, decoded
sample)` forever:

- Task choice. `mix_unit="sample"`: draw n picks a task in proportion to `mix` (the paper's
  0.2 : 0.3 : 0.5 for t2i : judge : regen; with edits, `janus_data.config_train.sft_task_weights`)
  from a uniform number hashed from (seed, rank, n):
  counter-based, so the choice needs no RNG state to resume, and ranks draw independently of
  each other (each rank's batch follows the mix on its own, and a global batch is closer to the
  mix than if every rank picked the same tasks). `mix_unit="step"` (the released trainer,
  trainer_t2i.py:137-140): draws n of step n // step_samples all take the task hashed from
  (seed, step), the same on every rank, so a whole optimizer step is one task. A task of weight
  0 is never drawn and needs no shards (nor a directory). The drawable tasks are taken in
  ALL_TASKS order, so a mix without edit weights draws exactly what it drew before edits existed.
- Per-task epochs. Each task's stream cycles through epochs. Epoch e of task t lists the task's
  shards, shuffles them with a seed hashed from (seed, t, e) (the same on every rank), splits
  them across ranks, streams the rank's samples through a shuffle buffer of `shuffle_buffer`
  samples (seeded from (seed, t, e, rank)) and then starts epoch e + 1 in a new order. Every
  sample of the rank's share appears exactly once per epoch.
- Rank split. With at least `world_size` shards, rank r reads shards r, r + world_size, ...
  of the epoch's shard order (ranks may then get different sample counts; each rank cycles its
  own epochs, so nothing waits on that). With fewer shards than ranks every rank reads all the
  shards and keeps the samples whose index in the epoch's shard order is r modulo world_size
  (before the shuffle buffer): still disjoint, covering the task and deterministic, at the cost
  of every rank reading every byte of the task. A rank that gets no sample of a task (the task
  has fewer samples than ranks) raises DataError.
- Cheap. The buffer holds raw samples (bytes as stored); only the sample handed out is decoded
  (`next_sample`), or none (`next_raw`). Memory: at most `shuffle_buffer` raw samples and one
  open shard per drawn task. Shards are read with the project's safe reader (janus_data.wds).
- Resume. `state_dict()` is JSON: the draw count, each task's epoch and the samples consumed in
  it, and a fingerprint of the config and shard files. `load_state_dict` restores the counters;
  the next draw of a task re-opens that task's epoch, re-reads it in its deterministic order and
  skips the consumed samples without decoding them. That costs reading (not decoding) up to one
  epoch of the rank's share of each task once after a resume: for the paper's data a few GB per
  task at disk speed. The fingerprint check refuses a state from another seed, mix, rank,
  world size, shuffle buffer or set of shards (their names and sizes), whose positions would
  mean other samples.
- Checks. Each sample handed out must carry a json record whose `task` is its directory's task
  and whose `vq_model` is null (judge samples carry no codes) or `expected_vq_model` (when one is
  given); the first sample of every task is checked at construction, so a wrong checkpoint fails
  before training starts. Errors are `DataError` (one line with a hint).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from janus_data.errors import JanusError
from janus_data.janus_format import ALL_TASKS, EDIT_TASKS, TASKS
from janus_data.wds import decode_sample, iter_samples, list_shards

STATE_VERSION = 1
FILTER_HINT = "run `janus data filter` first"
EDIT_FILTER_HINT = "run `janus data filter --task edit` first, or set sft.edit_share to 0"
VQ_HINT = "rebuild with janus data filter, or train the checkpoint the run generated with"


class DataError(JanusError):
    """The SFT shards are missing, do not match the training config, or a resume state does not fit."""


def _hash_int(*parts: object, bits: int = 64) -> int:
    """A stable integer from `parts` (Python's hash() is salted per process; this is not)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=bits // 8).digest(), "big")


def _uniform(*parts: object) -> float:
    """A uniform float in [0, 1) from `parts` (53 random bits, as random.random())."""
    return (_hash_int(*parts, bits=64) >> 11) / (1 << 53)


def _normalise_mix(mix: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """`mix` as {task: weight}: every task in TASKS (0 when a mapping leaves it out) and the edit tasks
    a mapping names; a 3-sequence is read as (t2i, judge, regen), a 6-sequence as ALL_TASKS."""
    if isinstance(mix, Mapping):
        unknown = sorted(set(mix) - set(ALL_TASKS))
        if unknown:
            raise DataError(
                f"unknown task {', '.join(map(str, unknown))} in the SFT mix", hint=f"tasks are {', '.join(ALL_TASKS)}"
            )
        items = {t: mix.get(t, 0.0) for t in ALL_TASKS if t in TASKS or t in mix}
    else:
        weights = list(mix)
        if len(weights) not in (len(TASKS), len(ALL_TASKS)):
            raise DataError(
                f"the SFT mix needs {len(TASKS)} weights ({', '.join(TASKS)}) or {len(ALL_TASKS)}, got {weights}",
                hint="e.g. 0.2, 0.3, 0.5 as in the paper",
            )
        items = dict(zip(ALL_TASKS, weights, strict=False))
    out: dict[str, float] = {}
    for task, w in items.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise DataError(
                f"SFT mix weight of task {task} must be a finite number >= 0, got {w!r}",
                hint="e.g. t2i 0.2, judge 0.3, regen 0.5 as in the paper",
            )
        out[task] = float(w)
    if sum(out.values()) <= 0:
        raise DataError(
            f"SFT mix weights are all zero: {out}",
            hint="give at least one task a positive weight (paper: 0.2, 0.3, 0.5)",
        )
    return out


def _hint(task: str) -> str:
    """Which command writes `task`'s shards."""
    return EDIT_FILTER_HINT if task in EDIT_TASKS else FILTER_HINT


class TaskMixer:
    """Infinite, seeded, resumable stream of `(task, sample)` mixing the SFT sub-tasks by `mix`."""

    def __init__(
        self,
        sft_dir: Path | None,
        mix: Mapping[str, float] | Sequence[float],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        expected_vq_model: str | None = None,
        mix_unit: str = "sample",
        step_samples: int = 1,
        edit_dir: Path | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"SFT data seed must be an integer, got {seed!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} must be in [0, world_size={world_size})")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise DataError(f"shuffle_buffer must be an integer >= 0, got {shuffle_buffer!r}")
        if mix_unit not in ("sample", "step"):
            raise DataError(f"mix_unit must be 'sample' or 'step', got {mix_unit!r}")
        if isinstance(step_samples, bool) or not isinstance(step_samples, int) or step_samples < 1:
            raise DataError(f"step_samples must be an integer >= 1, got {step_samples!r}")
        self.sft_dir = Path(sft_dir) if sft_dir is not None else None
        self.edit_dir = Path(edit_dir) if edit_dir is not None else None
        self.mix = _normalise_mix(mix)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.expected_vq_model = expected_vq_model
        self.mix_unit = mix_unit
        self.step_samples = step_samples
        # tasks that can be drawn, in ALL_TASKS order (not the mix dict's order), with cumulative weights
        self.tasks = [t for t in ALL_TASKS if self.mix.get(t, 0.0) > 0]
        self._dirs = self._task_dirs()
        self._cum: list[float] = []
        total = 0.0
        for t in self.tasks:
            total += self.mix[t]
            self._cum.append(total)
        self._shards: dict[str, list[Path]] = {}
        for t in self.tasks:
            shards = list_shards(self._dirs[t])
            if not shards and (self._dirs[t].parent / "state.json").is_file():  # built, and the task is empty
                setting = "sft.edit_mix" if t in EDIT_TASKS else "sft.mix"
                raise DataError(
                    f"the filter found no sample of task {t} (under {self._dirs[t]})",
                    hint=f"give {t} weight 0 in {setting}, or build more data (more candidates, another threshold)",
                )
            if not shards:
                raise DataError(f"no shards for task {t} under {self._dirs[t]}", hint=_hint(t))
            self._shards[t] = shards
        self._draws = 0
        self._epoch = dict.fromkeys(self.tasks, 0)
        self._consumed = dict.fromkeys(self.tasks, 0)
        self._streams: dict[str, Generator[dict[str, Any], None, None] | None] = dict.fromkeys(self.tasks)
        for t in self.tasks:  # fail fast on a wrong checkpoint or a misplaced task
            first = iter_samples(self._shards[t][:1])
            try:
                raw = next(first, None)
            finally:
                first.close()
            if raw is not None:
                self._check(t, raw)

    def _task_dirs(self) -> dict[str, Path]:
        """Each drawable task's shard directory: `<sft_dir>/<task>` (TASKS), `<edit_dir>/<task>` (EDIT_TASKS)."""
        dirs = {}
        for group, root, what in ((TASKS, self.sft_dir, "SFT"), (EDIT_TASKS, self.edit_dir, "edit SFT")):
            drawn = [t for t in self.tasks if t in group]
            if not drawn:
                continue  # weight 0: no directory needed
            if root is None or not root.is_dir():
                where = f"{what} directory {root} does not exist" if root is not None else f"no {what} directory"
                raise DataError(f"{where} for task(s) {', '.join(drawn)}", hint=_hint(drawn[0]))
            dirs.update({t: root / t for t in drawn})
        return dirs

    # -- the per-task epoch streams --------------------------------------------------------------

    def epoch_shards(self, task: str, epoch: int) -> list[Path]:
        """The task's shards in epoch `epoch`'s order (the same on every rank), before the rank split."""
        order = list(self._shards[task])
        random.Random(_hash_int(self.seed, "shards", task, epoch)).shuffle(order)
        return order

    def epoch_samples(self, task: str, epoch: int) -> Generator[dict[str, Any], None, None]:
        """This rank's raw samples of `task` in epoch `epoch`, in the order the mixer hands them out."""
        order = self.epoch_shards(task, epoch)
        stream: Iterator[dict[str, Any]]
        if len(order) >= self.world_size:
            stream = iter_samples(order[self.rank :: self.world_size])
        else:  # fewer shards than ranks: every rank reads everything and keeps every world_size-th sample
            stream = (s for i, s in enumerate(iter_samples(order)) if i % self.world_size == self.rank)
        if self.shuffle_buffer <= 1:
            yield from stream
            return
        rng = random.Random(_hash_int(self.seed, "buffer", task, epoch, self.rank))
        buf: list[dict[str, Any]] = []
        for s in stream:
            if len(buf) < self.shuffle_buffer:
                buf.append(s)
                continue
            k = rng.randrange(self.shuffle_buffer)
            yield buf[k]
            buf[k] = s
        rng.shuffle(buf)
        yield from buf

    def _open(self, task: str) -> Generator[dict[str, Any], None, None]:
        """The task's current epoch stream, positioned after the samples already consumed in it."""
        stream = self.epoch_samples(task, self._epoch[task])
        for skipped in range(self._consumed[task]):
            if next(stream, None) is None:
                raise DataError(
                    f"resume state says {self._consumed[task]} samples of task {task} were consumed in epoch "
                    f"{self._epoch[task]}, but rank {self.rank} has only {skipped} in it",
                    hint="resume with the shards and config the state was saved with",
                )
        return stream

    def _next_of(self, task: str) -> dict[str, Any]:
        stream = self._streams[task]
        if stream is None:
            stream = self._streams[task] = self._open(task)
        sample = next(stream, None)
        if sample is None:  # epoch done: the next one, in a new order
            if self._consumed[task] == 0:
                raise DataError(
                    f"rank {self.rank} of {self.world_size} gets no samples of task {task} "
                    f"(under {self._dirs[task]}: fewer samples than ranks)",
                    hint="build more SFT data, train on fewer ranks, or give the task weight 0",
                )
            self._epoch[task] += 1
            self._consumed[task] = 0
            stream = self._streams[task] = self._open(task)
            sample = next(stream, None)
            if sample is None:
                raise DataError(f"rank {self.rank} of {self.world_size} gets no samples of task {task}")
        self._consumed[task] += 1
        return sample

    # -- checks ----------------------------------------------------------------------------------

    def _check(self, task: str, raw: dict[str, Any]) -> None:
        where = f"shard {self._dirs[task] / str(raw.get('__shard__'))} (sample {raw.get('__key__')})"
        data = raw.get("json")
        if not isinstance(data, (bytes, bytearray)):
            raise DataError(f"{where} has no json record", hint="rebuild with janus data filter")
        try:
            record = json.loads(data)
        except ValueError as err:
            raise DataError(
                f"{where} has an unreadable json record: {err}", hint="rebuild with janus data filter"
            ) from None
        if not isinstance(record, dict):
            raise DataError(f"{where} has a json record that is not an object", hint="rebuild with janus data filter")
        if record.get("task") != task:
            raise DataError(
                f"{where} holds a sample of task {record.get('task')!r}, not {task}",
                hint="rebuild with janus data filter; do not move shards between task directories",
            )
        vq = record.get("vq_model")
        if vq is not None and self.expected_vq_model is not None and vq != self.expected_vq_model:
            raise DataError(
                f"{where} was built with VQ model {vq}, but training uses {self.expected_vq_model}", hint=VQ_HINT
            )

    # -- the mixed stream ------------------------------------------------------------------------

    def choose(self, draw: int) -> str:
        """The task of draw number `draw` on this rank (a pure function of seed, rank, draw and mix)."""
        if self.mix_unit == "step":  # not the rank: every rank trains the step's one task
            u = _uniform(self.seed, "mix-step", draw // self.step_samples)
        else:
            u = _uniform(self.seed, "mix", self.rank, draw)
        return self.tasks[min(bisect.bisect_right(self._cum, u * self._cum[-1]), len(self.tasks) - 1)]

    def next_raw(self) -> tuple[str, dict[str, Any]]:
        """The next `(task, raw sample)`: members as bytes (`__key__`, `__shard__`, ext -> bytes), checked."""
        task = self.choose(self._draws)
        raw = self._next_of(task)
        self._draws += 1
        self._check(task, raw)
        return task, raw

    def next_sample(self) -> tuple[str, dict[str, Any]]:
        """The next `(task, sample)`: json -> dict, .npy -> numpy array, images -> PIL (janus_data.wds.decode_sample)."""
        task, raw = self.next_raw()
        return task, decode_sample(raw)

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            yield self.next_sample()

    @property
    def draws(self) -> int:
        """Samples handed out so far (including those before a resume)."""
        return self._draws

    # -- resume ----------------------------------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        out = {
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle_buffer": self.shuffle_buffer,
            "mix": {t: self.mix[t] for t in self.tasks},
            "shards": {t: [[p.name, p.stat().st_size] for p in self._shards[t]] for t in self.tasks},
        }
        if self.mix_unit == "step":  # only then: states saved before mix_unit existed still load
            out.update(mix_unit=self.mix_unit, step_samples=self.step_samples)
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: draws, each task's epoch and samples consumed in it, and a fingerprint."""
        return {
            "version": STATE_VERSION,
            "draws": self._draws,
            "tasks": {t: {"epoch": self._epoch[t], "consumed": self._consumed[t]} for t in self.tasks},
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the mixer that saved `state` stopped (see the module doc for the cost)."""
        hint = "resume with the SFT shards and data config the state was saved with"
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise DataError(f"SFT data state has version {got!r}, expected {STATE_VERSION}", hint=hint)
        theirs = json.loads(json.dumps(state.get("fingerprint")))  # tuples -> lists, as after a JSON round trip
        ours = json.loads(json.dumps(self._fingerprint()))
        if theirs != ours:
            keys = sorted({*ours, *theirs}) if isinstance(theirs, dict) else list(ours)
            diff = [k for k in keys if not isinstance(theirs, dict) or theirs.get(k) != ours.get(k)]
            raise DataError(f"SFT data state was saved with another {', '.join(diff) or 'config'}", hint=hint)
        tasks = state.get("tasks")
        draws = state.get("draws")
        if not isinstance(tasks, Mapping) or set(tasks) != set(self.tasks) or not isinstance(draws, int) or draws < 0:
            raise DataError("SFT data state is malformed (draws or tasks)", hint=hint)
        epochs, consumed = {}, {}
        for t in self.tasks:
            pos = tasks[t]
            e, c = (pos.get("epoch"), pos.get("consumed")) if isinstance(pos, Mapping) else (None, None)
            if not isinstance(e, int) or not isinstance(c, int) or e < 0 or c < 0:
                raise DataError(f"SFT data state has a malformed position for task {t}: {pos!r}", hint=hint)
            epochs[t], consumed[t] = e, c
        for stream in self._streams.values():
            if stream is not None:
                stream.close()
        self._draws = draws
        self._epoch = epochs
        self._consumed = consumed
        self._streams = dict.fromkeys(self.tasks)  # re-opened lazily, skipping the consumed samples

    def close(self) -> None:
        """Close the open shards (also done when the mixer is garbage-collected)."""
        for stream in self._streams.values():
            if stream is not None:
                stream.close()
        self._streams = dict.fromkeys(self.tasks)
