"""`janus data filter --task edit`: the edit labels, the three edit tasks, and the shared resumable writer.

The labels are checked on hand-made score rows (pure Polars frames); the shards on a tiny edit run:
candidates drawn by the tiny Kontext and Janus-Pro editors, judged by a scripted edit judge whose
answers cover every case of the rule (so the run has Yes, No, dropped and unlabelled candidates).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from test_cli_fast import janus, one_line_error
from test_edit_stages import write_edits
from test_filter import Boom, dying_encoder

from janus_data.config import EditConfig, FilterConfig, load_config
from janus_data.edit_score import run_edit_score
from janus_data.edit_select import edit_pool, select_edit_all, target_reason_expr
from janus_data.edit_synth import run_edit_synth
from janus_data.errors import RunDirError
from janus_data.filter import FilterError, run_filter
from janus_data.judge.types import EditJudgeResult, JudgeResult
from janus_data.select import labelled_reason, reason_answer
from janus_data.summaries import filter_headline, filter_table
from janus_data.vq import VQEncoder
from janus_data.wds import decode_sample, iter_samples, list_shards

THRESHOLD = 0.5
W_FLW, W_PSV = 1.0, 0.25
EDIT_TASKS = ("edit", "edit_judge", "edit_regen")
RECORD_FIELDS = {
    "key", "task", "edit_id", "instruction", "image_ids", "generators", "scores", "scores_flw", "scores_psv",
    "label", "reason", "threshold", "vq_model",
}  # fmt: skip
MEMBERS = {
    "edit": {"json", "source.png", "source.npy", "image.png", "image.npy"},
    "edit_judge": {"json", "source.png", "source.npy", "image.png"},
    "edit_regen": {"json", "source.png", "source.npy", "bad.png", "bad.npy", "good.png", "good.npy"},
}


def cfg(**filter_overrides):
    filt = {"threshold": THRESHOLD, "shard_bytes": 65536, "vq_batch_size": 2, "t2i_per_prompt": 2, **filter_overrides}
    return load_config("tiny", {"edit": {"images_per_source": 8}, "filter": filt})


# ---------------------------------------------------------------- the rule, on hand-made rows

# (S_flw, S_psv, reason_flw, reason_psv) -> label under 'agree' and 'answer', and the side its reason is from.
CASES = [
    (0.9, 0.9, "yes, it follows", "Yes. The rest is kept", "Yes", "Yes", "flw"),
    (0.8, 0.6, "Yes it does", "", "Yes", "Yes", "flw"),  # an empty reason takes its side's S (0.6 >= 0.5)
    (0.2, 0.9, "no, the car is still blue", "yes", "No", "No", "flw"),
    (0.3, 0.1, "yes", "No, the sky changed", "No", "No", "psv"),
    (0.95, 0.2, "yes", "no, the background moved", None, "No", "psv"),  # q >= t but a side says no
    (0.1, 0.1, "", "", "No", "No", "flw"),  # both empty and low: both say no, following first
    (0.7, 0.7, "Perhaps", "yes", None, None, None),  # a side answering neither: unlabelled
    (0.3, 0.9, "yes", "yes", None, None, None),  # q < t with both yes: dropped
    (0.9, 0.9, "NO. it is red", "no", None, "No", "flw"),  # 'answer': both say no, following first
    (0.45, 0.9, "", "yes", None, "No", "flw"),  # an empty following reason below t says no
]


def q_of(flw: float, psv: float) -> float:
    return (W_FLW * flw + W_PSV * psv) / (W_FLW + W_PSV)


def hand_made(cases=CASES, edits=("e0", "e1")):
    rows = [
        {
            "image_id": f"{edits[i % len(edits)]}-janus-{i:03d}",
            "prompt_id": edits[i % len(edits)],
            "status": "ok",
            "score": flw,
            "score_flw": flw,
            "score_psv": psv,
            "reward": W_FLW * flw + W_PSV * psv,
            "reason": rf,
            "reason_flw": rf,
            "reason_psv": rp,
        }
        for i, (flw, psv, rf, rp, *_) in enumerate(cases)
    ]
    rows.append({**rows[0], "image_id": "e0-janus-999", "status": "error", "reward": None})
    scores = pl.LazyFrame(rows)
    images = pl.LazyFrame(
        {
            "image_id": [r["image_id"] for r in rows],
            "generator": ["janus"] * len(rows),
            "sha256": [hashlib.sha256(r["image_id"].encode()).hexdigest() for r in rows],
        }
    )
    return scores, images, pl.LazyFrame({"edit_id": list(edits)})


@pytest.mark.parametrize("rule", ["agree", "answer"])
def test_labels_and_target_reasons_follow_the_rule(rule):
    scores, images, edits = hand_made()
    fcfg = FilterConfig(threshold=THRESHOLD, judge_labels=rule)
    pooled = edit_pool(scores, images, edits, fcfg, EditConfig()).collect()
    assert pooled.height == len(CASES)  # the error row is left out
    assert set(pooled.columns) == {
        "image_id",
        "prompt_id",
        "score",
        "score_row",
        "says_yes",
        "image_row",
        "generator",
        "order",
        "label",
    }  # fmt: skip  (select.pool's columns)
    sides = (
        scores.collect()
        .with_row_index("score_row")
        .select("score_row", "score_flw", "score_psv", "reason_flw", "reason_psv")
    )
    got = pooled.join(sides, on="score_row").with_columns(target_reason_expr(THRESHOLD).alias("reason"))
    by_row = {r["score_row"]: r for r in got.iter_rows(named=True)}
    for i, (flw, psv, rf, rp, agree, answer, side) in enumerate(CASES):
        row = by_row[i]
        assert row["score"] == pytest.approx(q_of(flw, psv)), i
        expected = agree if rule == "agree" else answer
        assert row["label"] == expected, (i, row)
        if expected is None:
            continue
        raw = {"flw": rf, "psv": rp}[side]
        assert row["reason"] == raw, (i, row)
        assert labelled_reason(expected, row["reason"]).split()[0].strip(".,") == expected


def test_says_yes_needs_both_sides():
    scores, images, edits = hand_made()
    pooled = edit_pool(scores, images, edits, FilterConfig(threshold=THRESHOLD), EditConfig()).collect()
    says = dict(zip(pooled["score_row"], pooled["says_yes"], strict=True))
    assert [says[i] for i in range(len(CASES))] == [True, True, False, False, False, False, None, True, False, False]


def test_tasks_on_hand_made_rows_use_the_edit_roles_and_add_references():
    cases = [c for c in CASES if c[4] is not None] * 2  # Yes and No candidates only
    scores, images, edits = hand_made(cases, edits=("e0",))
    images = images.with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("kontext")).otherwise(pl.lit("janus")).alias("generator")
    )
    fcfg = FilterConfig(threshold=THRESHOLD, t2i_per_prompt=0, judge_per_prompt=0, regen_per_prompt=0)
    ecfg = EditConfig(target_generators=("kontext",), judge_generators=("janus",))
    refs = pl.DataFrame({"edit_id": ["e0", "e1"], "reference_path": ["edit_sources/e0.reference.png", None]})
    pooled = edit_pool(scores, images, edits, fcfg, ecfg)
    plans = {t: p.collect() for t, p in select_edit_all(pooled, fcfg, ecfg, refs).items()}
    gen = dict(zip(*pooled.select("image_id", "generator").collect().get_columns(), strict=True))
    scored = plans["edit"].filter(pl.col("image_row").is_not_null())
    assert scored.height > 0 and {gen[i] for i in scored["image_id"]} == {"kontext"}
    assert all(k == f"edit-{i}" for k, i in zip(scored["key"], scored["image_id"], strict=True))
    (ref,) = plans["edit"].filter(pl.col("image_row").is_null()).iter_rows(named=True)
    assert ref["key"] == "edit-e0-reference" and ref["score"] is None
    judged = plans["edit_judge"]
    assert {gen[i] for i in judged["image_id"]} == {"janus"} and judged["key"].str.starts_with("edit_judge-").all()
    labels = Counter(judged["label"])
    assert labels["Yes"] == labels["No"] > 0
    regen = plans["edit_regen"]
    assert regen.height > 0 and (regen["score_good"] > regen["score"]).all()
    assert {gen[i] for i in regen["image_id_good"]} == {"kontext"}
    no_refs = select_edit_all(pooled, fcfg, EditConfig(target_generators=("kontext",), reference_samples=False), refs)
    assert no_refs["edit"].collect().height == scored.height


# ---------------------------------------------------------------- a tiny edit run

# Per edit, the n-th candidate judged gets PATTERN[n % 8]: two Yes, three No, one dropped by 'agree',
# one unlabelled, one dropped below the threshold (both editors get some of each).
PATTERN = [CASES[0], CASES[2], CASES[4], CASES[3], CASES[1], CASES[5], CASES[6], CASES[7]]


class ScriptedJudge:
    """An edit judge whose answers follow PATTERN per instruction, in the order score asks."""

    model_id = "scripted"

    def __init__(self):
        self.seen: Counter = Counter()

    def score_edits(self, instructions, originals, edited):
        out = []
        for instruction in instructions:
            flw, psv, rf, rp, *_ = PATTERN[self.seen[instruction] % len(PATTERN)]
            self.seen[instruction] += 1
            side = lambda s, r: JudgeResult(s, "yes" if s >= 0.5 else "no", r, False)  # noqa: E731
            out.append(EditJudgeResult(side(flw, rf), side(psv, rp)))
        return out


@pytest.fixture(scope="module")
def scored_edit_run(tmp_path_factory, janus_cache) -> Path:
    """3 edits (one with a reference) x 8 candidates from the tiny editors, scripted scores."""
    root = tmp_path_factory.mktemp("edit-filter")
    run = root / "run"
    run_edit_synth(run, cfg(), write_edits(root / "src"), progress=False)
    run_edit_score(run, cfg(), progress=False, judge=ScriptedJudge())
    return run


@pytest.fixture(scope="module")
def built(scored_edit_run, tmp_path_factory):
    run = Path(shutil.copytree(scored_edit_run, tmp_path_factory.mktemp("edit-built") / "run"))
    return run, run_filter(run, cfg(), progress=False, task="edit")


@pytest.fixture
def run(scored_edit_run, tmp_path) -> Path:
    return Path(shutil.copytree(scored_edit_run, tmp_path / "run"))


def samples_of(run: Path, task: str) -> list[dict]:
    return [decode_sample(s) for s in iter_samples(list_shards(run / "sft_edit" / task))]


def shard_hashes(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "sft_edit").rglob("*.tar"))
    }


def score_rows(run: Path) -> dict[str, dict]:
    df = pl.read_parquet(str(run / "manifests/edit_scores/**/*.parquet"))
    return {r["image_id"]: r for r in df.iter_rows(named=True)}


def test_every_task_has_samples_with_the_contract_members_and_record(built):
    run, result = built
    edits = {r["edit_id"]: r for r in pl.read_parquet(run / "manifests/edits/edits.parquet").iter_rows(named=True)}
    scores = score_rows(run)
    assert set(result.tasks) == set(EDIT_TASKS) and not (run / "sft").exists()
    for task in EDIT_TASKS:
        samples = samples_of(run, task)
        assert len(samples) == result.tasks[task].samples > 0, task
        for s in samples:
            rec = s["json"]
            assert set(s) - {"__key__", "__shard__"} == MEMBERS[task], task
            assert set(rec) == RECORD_FIELDS and rec["task"] == task and rec["key"] == s["__key__"]
            assert rec["instruction"] == edits[rec["edit_id"]]["instruction"]
            assert rec["threshold"] == THRESHOLD and rec["vq_model"]
            source = (run / f"edit_sources/{rec['edit_id']}.png").read_bytes()
            raw = next(
                r for r in iter_samples([run / "sft_edit" / task / s["__shard__"]]) if r["__key__"] == s["__key__"]
            )
            assert raw["source.png"] == source  # what the editors and the judge saw, byte for byte
            for member in MEMBERS[task]:
                if member.endswith(".npy"):
                    assert s[member].shape == (16,) and s[member].dtype == np.int32 and s[member].flags.c_contiguous
            for image_id, q, flw, psv in zip(
                rec["image_ids"], rec["scores"], rec["scores_flw"], rec["scores_psv"], strict=True
            ):
                if image_id.endswith("-reference"):
                    assert q is None and flw is None and psv is None
                    continue
                row = scores[image_id]
                assert q == pytest.approx(row["reward"] / (W_FLW + W_PSV))
                assert (flw, psv) == (row["score_flw"], row["score_psv"])


def test_the_edit_task_holds_yes_targets_and_the_reference(built):
    run, result = built
    samples = samples_of(run, "edit")
    refs = [s for s in samples if s["json"]["generators"] == ["reference"]]
    (ref,) = refs  # EDITS[1] has a reference image
    assert ref["__key__"] == f"edit-{ref['json']['edit_id']}-reference" and ref["json"]["label"] is None
    stored = Image.open(run / f"edit_sources/{ref['json']['edit_id']}.reference.png")
    assert np.array_equal(np.asarray(ref["image.png"]), np.asarray(stored))
    assert result.references == 1
    per_edit = Counter(s["json"]["edit_id"] for s in samples if s not in refs)
    assert max(per_edit.values()) <= 2  # filter.t2i_per_prompt
    for s in samples:
        if s not in refs:
            q = s["json"]["scores"][0]
            assert q >= THRESHOLD and s["json"]["reason"] is None and s["json"]["label"] is None


def test_edit_judge_is_balanced_and_reasons_are_the_judges(built):
    run, _ = built
    samples = samples_of(run, "edit_judge")
    labels = Counter(s["json"]["label"] for s in samples)
    assert labels["Yes"] == labels["No"] > 0
    scores = score_rows(run)
    for s in samples:
        rec = s["json"]
        row = scores[rec["image_ids"][0]]
        flw_says_no = (reason_answer(row["reason_flw"]) or ("no" if row["score_flw"] < THRESHOLD else "")) == "no"
        if not row["reason_flw"].strip():
            flw_says_no = row["score_flw"] < THRESHOLD
        raw = row["reason_flw"] if rec["label"] == "Yes" or flw_says_no else row["reason_psv"]
        assert rec["reason"] == labelled_reason(rec["label"], raw)


def test_edit_regen_pairs_a_no_with_a_better_yes_of_the_same_edit(built):
    run, _ = built
    samples = samples_of(run, "edit_regen")
    for s in samples:
        rec = s["json"]
        bad, good = rec["image_ids"]
        assert bad.startswith(rec["edit_id"]) and good.startswith(rec["edit_id"])
        assert rec["scores"][0] < THRESHOLD <= rec["scores"][1] and rec["label"] == "No"
        assert rec["reason"].startswith("No")


def test_codes_are_the_vq_of_the_stored_images(built):
    run, _ = built
    vq = VQEncoder("tiny:janus", torch.device("cpu"), torch.float32)
    for task, roles in (("edit", ("source", "image")), ("edit_regen", ("source", "bad", "good"))):
        for s in samples_of(run, task)[:3]:
            for role in roles:
                assert np.array_equal(vq.encode([s[f"{role}.png"]])[0], s[f"{role}.npy"]), (task, role)


def test_samples_manifest_and_summary(built):
    run, result = built
    df = pl.read_parquet(run / "manifests/edit_samples/edit_samples.parquet")
    assert df.columns == ["key", "task", "edit_id", "image_ids", "scores", "label", "shard"]
    assert df.height == sum(t.samples for t in result.tasks.values()) and df["key"].n_unique() == df.height
    where = {}
    for task in EDIT_TASKS:
        for s in iter_samples(list_shards(run / "sft_edit" / task)):
            where[s["__key__"]] = f"sft_edit/{task}/{s['__shard__']}"
    assert dict(zip(df["key"], df["shard"], strict=True)) == where
    state = json.loads((run / "sft_edit/state.json").read_text())
    assert set(state["tasks"]) == set(EDIT_TASKS) and state["edit"]["reference_samples"] is True
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(filter_table(result))
    text = console.export_text()
    assert "II  edit self-evaluation" in text and "sft.edit_mix 0.2:0.3:0.5" in text and "sft_edit" in text


def test_two_builds_are_byte_identical_and_a_rerun_does_nothing(built, run):
    built_run, _ = built
    first = run_filter(run, cfg(), progress=False, task="edit")
    assert first.rebuilt and shard_hashes(run) == shard_hashes(built_run)
    a = pl.read_parquet(run / "manifests/edit_samples/edit_samples.parquet")
    assert a.equals(pl.read_parquet(built_run / "manifests/edit_samples/edit_samples.parquet"))
    again = run_filter(run, cfg(), progress=False, task="edit", encoder=lambda: pytest.fail("encoder loaded"))
    assert not again.rebuilt and shard_hashes(run) == shard_hashes(built_run)
    assert filter_headline(again).startswith("nothing to do")
    no_refs = load_config("tiny", {"edit": {"images_per_source": 8, "reference_samples": False}, "filter": {
        "threshold": THRESHOLD, "shard_bytes": 65536, "vq_batch_size": 2, "t2i_per_prompt": 2}})  # fmt: skip
    rebuilt = run_filter(run, no_refs, progress=False, task="edit")
    assert rebuilt.rebuilt and rebuilt.tasks["edit"].samples == first.tasks["edit"].samples - 1
    assert not list(run.glob("sft_edit.*"))  # no build or old directories left


def test_a_killed_build_resumes_to_identical_bytes(built, run):
    built_run, _ = built
    with pytest.raises(Boom):  # the 7th encode: the edit task's fourth batch (a source and a target per batch)
        run_filter(run, cfg(), progress=False, encoder=dying_encoder(7), task="edit")
    (build,) = run.glob("sft_edit.build-*")
    assert not (run / "sft_edit").exists() and list((build / "edit").glob("sft-*.tar"))
    result = run_filter(run, cfg(), progress=False, task="edit")
    assert result.rebuilt and shard_hashes(run) == shard_hashes(built_run)
    manifest = "manifests/edit_samples/edit_samples.parquet"
    assert pl.read_parquet(run / manifest).equals(pl.read_parquet(built_run / manifest))


def test_readable_by_webdataset(built):
    import webdataset

    run, result = built
    for task in EDIT_TASKS:
        urls = [str(p) for p in list_shards(run / "sft_edit" / task)]
        got = list(webdataset.WebDataset(urls, shardshuffle=False))
        assert len(got) == result.tasks[task].samples
        assert MEMBERS[task] <= set(got[0])
        assert json.loads(got[0]["json"])["task"] == task
        Image.open(io.BytesIO(got[0]["source.png"])).load()


def test_the_t2i_filter_is_untouched_by_an_edit_build(built):
    run, _ = built
    assert not (run / "sft").exists() and not (run / "manifests/samples").exists()


def test_missing_edit_scores_is_a_one_line_error(run, tmp_path):
    shutil.rmtree(run / "manifests" / "edit_scores")
    with pytest.raises(RunDirError, match="no edit_scores manifest"):
        run_filter(run, cfg(), progress=False, task="edit")
    code, err, heavy = janus("data", "filter", "--task", "edit", "--run", run)
    assert code == 2 and heavy == []
    one_line_error(err, "no edit_scores manifest", "janus data score --task edit")
    code, err, heavy = janus("data", "filter", "--task", "edits", "--run", run)
    assert code == 2 and heavy == []
    one_line_error(err, "--task")
    assert not (run / "sft_edit").exists()


def test_no_sample_is_a_clear_error(run):
    strict = load_config("tiny", {"edit": {"reference_samples": False}, "filter": {"threshold": 1.0}})
    with pytest.raises(FilterError, match=r"no sample at threshold 1\.0: of \d+ usable scored edits"):
        run_filter(run, strict, progress=False, task="edit")
    assert not (run / "sft_edit").exists()
