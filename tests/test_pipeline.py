"""`janus run`: the chain, skipping complete stages, failures, and kills at several points."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import kill_at
import polars as pl
import pytest
import yaml
from procs import HANG_S
from typer.testing import CliRunner

from cli import app
from janus_data.config import DEMO_EDITS, load_config, to_dict, with_overrides
from janus_data.manifest import read_manifest
from janus_run.pipeline import (
    LATER_SETTINGS,
    STAGES,
    PipelineError,
    fingerprint,
    read_record,
    run_pipeline,
    stage_range,
)

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red cube on a table", "two birds on a branch", "a cat on a blue sofa", "three green apples"]
SMALL = {
    "synth": {"images_per_prompt": 6},
    "filter": {"threshold": 0.6},
    "sft": {"max_steps": 6, "save_every": 2, "log_every": 1, "warmup_steps": 1},
    "rl": {"max_steps": 3, "save_every": 1, "prompts_per_step": 2, "group_size": 3, "micro_batch": 3},
}


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def config_file(tmp_path: Path, run: Path, prompts: Path, **extra) -> Path:
    data = {"preset": "tiny", "pipeline": {"run_dir": str(run), "prompts": str(prompts)}, **SMALL}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / f"run-{len(list(tmp_path.glob('run-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def statuses(outcomes) -> dict[str, str]:
    return {o.stage: o.status for o in outcomes}


def test_chain_runs_every_stage_then_skips_them_and_reruns_what_a_change_touches(tmp_path, prompts):
    run = tmp_path / "run"
    cfg = load_config(str(config_file(tmp_path, run, prompts)))
    assert statuses(run_pipeline(run, cfg, prompts, progress=False)) == dict.fromkeys(STAGES, "ran")
    assert (run / "config.yaml").is_file() and all(read_record(run, s) for s in STAGES)
    assert (run / "checkpoints/rl/step-000003").is_dir()
    # Same inputs: nothing runs (no model is even loaded).
    assert statuses(run_pipeline(run, cfg, None, progress=False)) == dict.fromkeys(STAGES, "skipped")
    # A stricter filter: filter and everything after it re-run; synth and score do not.
    stricter = load_config(str(config_file(tmp_path, run, prompts, filter={"threshold": 0.7})))
    got = statuses(run_pipeline(run, stricter, prompts, progress=False))
    assert got == {"synth": "skipped", "score": "skipped", "filter": "ran", "sft": "ran", "rl": "ran", "eval": "ran"}
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n.split(".")[0] for n in names] == ["rl", "rl", "sft", "sft"]  # fresh ones, old ones set aside
    assert all(n.split(".")[1].startswith("stale-") for n in names if "." in n)


def test_edits_join_synth_score_and_filter_and_feed_sft_and_rl(tmp_path, prompts):
    """With an edit source, synth, score and filter also run `--task edit`; SFT mixes the edit shards in
    and GRPO runs edit steps. A rerun skips everything; adding edits to a text-to-image run re-runs from
    synth, whose text-to-image half then has nothing left to draw."""
    run = tmp_path / "run"
    edit = {"images_per_source": 8, "threshold": 0.5}  # the demo's: the tiny judge gives every edit task samples
    plain = load_config(str(config_file(tmp_path, run, prompts, edit=edit)))
    assert statuses(run_pipeline(run, plain, prompts, progress=False, stop="score")) == {"synth": "ran", "score": "ran"}
    # rl.edit_share 0.34 at seed 0: steps 0 and 1 edit, step 2 draws text-to-image
    mixed = load_config(
        str(config_file(tmp_path, run, prompts, edit=edit, sft={"edit_share": 0.3}, rl={"edit_share": 0.34}))
    )
    outcomes = run_pipeline(run, mixed, prompts, progress=False, edits=DEMO_EDITS)
    assert statuses(outcomes) == dict.fromkeys(STAGES, "ran")
    synth, score, filt = (next(o.result for o in outcomes if o.stage == s) for s in ("synth", "score", "filter"))
    assert synth[0].generated == 0 and synth[1].generated == 4 * 8  # the t2i images were drawn before
    assert score[1].task == "edit" and filt[1].task == "edit"
    assert all((run / "sft_edit" / t).is_dir() for t in ("edit", "edit_judge", "edit_regen"))
    sft = [json.loads(line) for line in (run / "checkpoints/sft/metrics.jsonl").read_text().splitlines()]
    assert {"edit", "edit_judge", "edit_regen"} & {k for m in sft for k in m["loss"]}
    rl = [json.loads(line) for line in (run / "checkpoints/rl/metrics.jsonl").read_text().splitlines()]
    assert {m["edit"] for m in rl} == {0.0, 1.0}
    assert statuses(run_pipeline(run, mixed, prompts, progress=False, edits=DEMO_EDITS)) == dict.fromkeys(
        STAGES, "skipped"
    )


def test_new_settings_at_their_defaults_keep_old_records_valid():
    """sft/rl settings added for edits are left out of the fingerprint at their defaults (runs recorded
    before they existed are not redone); set, they count."""
    cfg = load_config("tiny")
    tree = to_dict(cfg)
    for stage in ("sft", "rl"):
        old = {k: v for k, v in tree[stage].items() if k not in LATER_SETTINGS[stage]}
        assert fingerprint(cfg, stage, "up", None) == fingerprint_of(stage, old)
        changed = with_overrides(cfg, {stage: {"edit_share": 0.5}})
        assert fingerprint(changed, stage, "up", None) != fingerprint(cfg, stage, "up", None)


def fingerprint_of(stage: str, section: dict) -> str:
    """The fingerprint as it was computed before LATER_SETTINGS existed: the whole section."""
    import hashlib

    from janus_run.pipeline import _DEPENDS, _lookup

    tree = to_dict(load_config("tiny"))
    parts = {"stage": stage, "upstream": "up", "section": section}
    parts["depends"] = {key: _lookup(tree, key) for key in _DEPENDS[stage]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def official_on_tiny(tmp_path: Path, run: Path, prompts: Path) -> Path:
    """`preset: official` with tiny's models, sizes and step counts (every released setting kept)."""
    tiny = yaml.safe_load((REPO / "janus_data/presets/tiny.yaml").read_text())
    official = yaml.safe_load((REPO / "janus_data/presets/official.yaml").read_text())
    data = {"preset": "official", "pipeline": {"run_dir": str(run), "prompts": str(prompts)}}
    for section, values in tiny.items():
        kept = {k: v for k, v in values.items() if k not in official.get(section, {})}
        data[section] = kept
    data["synth"]["images_per_prompt"] = 8  # official's 16, halved for time; flux_share keeps both generators
    data["sft"] |= {"max_steps": 4, "save_every": 2, "log_every": 1}
    data["rl"] = {**data["rl"], "max_steps": 2, "save_every": 1, "prompts_per_step": 1, "reason_tokens": 8}
    path = tmp_path / "official-tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_official_preset_runs_every_stage_on_the_tiny_models(tmp_path, prompts):
    run = tmp_path / "run"
    cfg = load_config(str(official_on_tiny(tmp_path, run, prompts)))
    assert (cfg.filter.threshold, cfg.filter.judge_labels, cfg.sft.mix_unit, cfg.rl.schedule) == (
        0.7,
        "answer",
        "step",
        "released",
    )
    assert (cfg.rl.group_size, cfg.rl.answer_logp, cfg.rl.judge_eos) == (8, "full", False)
    assert statuses(run_pipeline(run, cfg, prompts, progress=False)) == dict.fromkeys(STAGES, "ran")
    samples = pl.read_parquet(run / "manifests/samples/samples.parquet")
    generators = pl.scan_parquet(str(run / "manifests/images/**/*.parquet")).collect()
    gen_of = dict(zip(generators["image_id"], generators["generator"], strict=True))
    t2i = samples.filter(pl.col("task") == "t2i")
    assert t2i.height and all(gen_of[ids[0]] == "flux" for ids in t2i["image_ids"])  # released: FLUX targets
    sft_steps = [json.loads(line) for line in (run / "checkpoints/sft/metrics.jsonl").read_text().splitlines()]
    rl_steps = [json.loads(line) for line in (run / "checkpoints/rl/metrics.jsonl").read_text().splitlines()]
    assert len(sft_steps) == 4 and len(rl_steps) == 2
    assert rl_steps[0]["lr"] == 0.0  # the released schedule's first update: lr(0) = 0


def test_from_and_to_select_stages(tmp_path, prompts):
    run = tmp_path / "run"
    cfg = load_config(str(config_file(tmp_path, run, prompts)))
    assert [o.stage for o in run_pipeline(run, cfg, prompts, stop="score", progress=False)] == ["synth", "score"]
    assert not (run / "sft").exists()
    assert statuses(run_pipeline(run, cfg, None, start="filter", stop="filter", progress=False)) == {"filter": "ran"}
    assert stage_range("sft", None) == ["sft", "rl", "eval"]
    with pytest.raises(PipelineError, match="unknown stage 'sythn'"):
        stage_range("sythn", None)
    with pytest.raises(PipelineError, match="--from rl comes after --to score"):
        stage_range("rl", "score")


def test_a_failure_names_the_stage_and_the_command_that_resumes(tmp_path, prompts, dead_url):
    run = tmp_path / "run"
    dead = config_file(tmp_path, run, prompts, score={"backend": "lmdeploy", "endpoints": [dead_url]})
    out = CliRunner().invoke(app, ["run", "--config", str(dead), "--no-progress", "--no-report"])
    assert out.exit_code == 2
    line = " ".join(out.output.split())
    assert "stage score failed" in line and dead_url.removeprefix("http://") in line
    assert f"janus run --config {dead} --run {run} --from score" in line
    assert read_record(run, "synth") and not read_record(run, "score")
    fixed = config_file(tmp_path, run, prompts)
    out = CliRunner().invoke(app, ["run", "--config", str(fixed), "--no-progress", "--no-report", "--to", "score"])
    assert out.exit_code == 0, out.output
    assert "skip synth" in out.output and read_record(run, "score")


def test_cli_bad_input(tmp_path, prompts):
    runner = CliRunner()
    no_run = tmp_path / "c.yaml"
    no_run.write_text("preset: tiny\n")
    out = runner.invoke(app, ["run", "--config", str(no_run)])
    assert out.exit_code == 2 and "no run directory" in out.output
    out = runner.invoke(app, ["run", "--config", "tiny", "--run", str(tmp_path / "r"), "--from", "trian"])
    assert out.exit_code == 2 and "unknown stage 'trian'" in out.output
    out = runner.invoke(app, ["run", "--config", "tiny", "--run", str(tmp_path / "r2"), "--no-report"])
    assert out.exit_code == 2 and "stage synth failed" in " ".join(out.output.split())


def _run(config: Path, log: Path, kill: tuple[str, int, str] | None = None) -> int:
    """`janus run --config ... --no-report` in a child process; `kill`: (pattern, count, when) for kill_at."""
    args = ("run", "--config", str(config), "--no-report")
    cmd = kill_at.command(*kill, *args) if kill else [sys.executable, str(REPO / "cli.py"), *args]
    with open(log, "w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, timeout=HANG_S).returncode


# Where attempt k is killed, inside stage k: at a file the stage publishes that is never its last.
KILL_POINTS = {
    "synth": ("*/manifests/images/*/part-*.parquet", 1, "after"),  # 24 images, batches of 8 a generator
    "score": ("*/manifests/scores/*/part-*.parquet", 2, "before"),  # 24 images, batches of 4
    "filter": ("*/sft.build-*/*/sft-*.tar", 1, "after"),  # the first task's shard, of three tasks
    "sft": ("*/checkpoints/sft/step-000002", 1, "after"),  # 6 steps saved every 2
    "rl": ("*/checkpoints/rl/step-000002", 1, "before"),  # 3 steps: step 2 is logged, not yet saved
}


@pytest.mark.slow
def test_killed_during_each_stage_the_rerun_finishes_without_redoing_completed_stages(tmp_path, prompts):
    """Attempt k resumes stage k - 1, skips those before it and is SIGKILLed inside stage k (kill_at)."""
    run = tmp_path / "run"
    config = config_file(tmp_path, run, prompts)
    for k, (stage, kill) in enumerate(KILL_POINTS.items()):
        done = list(STAGES[: max(k - 1, 0)])
        assert [s for s in STAGES if read_record(run, s)] == done
        log = tmp_path / f"log{k}.txt"
        assert _run(config, log, kill) == -signal.SIGKILL, (stage, log.read_text()[-3000:])
        text = log.read_text()
        for skipped in done:  # stages complete before this attempt were skipped, not redone
            assert f"skip {skipped}" in text, (stage, text[-2000:])
        assert [s for s in STAGES if read_record(run, s)] == list(STAGES[:k])  # killed inside `stage`
    final = tmp_path / "final.txt"
    assert _run(config, final) == 0, final.read_text()[-3000:]
    assert all(f"skip {s}" in final.read_text() for s in STAGES[: STAGES.index("rl")])
    assert all(read_record(run, s) for s in STAGES)
    images = read_manifest(run, "images")
    assert images.height == len(PROMPTS) * 6 and images["image_id"].n_unique() == images.height
    scores = read_manifest(run, "scores")
    assert scores.height == images.height and scores["image_id"].n_unique() == scores.height
    samples = pl.read_parquet(run / "manifests/samples/samples.parquet")
    assert samples["key"].n_unique() == samples.height > 0
    assert (run / "checkpoints/sft/step-000006").is_dir() and (run / "checkpoints/rl/step-000003").is_dir()
    steps = [json.loads(line)["step"] for line in (run / "checkpoints/rl/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # a resumed trainer rewrites no step twice
