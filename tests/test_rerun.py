"""Reruns of `janus train sft|rl` keep the README's promise: the same command does only the missing work.

A finished trainer says so in one line and changes nothing; an interrupted one continues from
its latest checkpoint; other settings are refused with one line; `--restart` sets the old
checkpoints aside, after --yes off a terminal; GRPO says and records the policy it starts from.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import kill_at
import pytest
import runs
import yaml
from procs import HANG_S
from transformers import AutoConfig
from typer.testing import CliRunner

from cli import app
from janus_data.config import load_config, to_dict, with_overrides
from janus_data.errors import RunDirError
from janus_data.prompts import load_prompts, write_prompts_manifest
from janus_run.pipeline import run_pipeline
from janus_train.checkpoint import CheckpointError
from janus_train.resume import set_aside, settings
from janus_train.rewards import CodebookShareScorer
from janus_train.rl import run_rl
from janus_train.sft import run_sft

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red cube on a table", "a yellow taxi", "a lighthouse at night"]
SFT = {"max_steps": 4, "batch_size": 2, "save_every": 2, "keep_last": 5, "log_every": 1, "warmup_steps": 1}
RL = {"max_steps": 2, "prompts_per_step": 1, "group_size": 3, "micro_batch": 3, "save_every": 1}


def cfg(sft=None, rl=None):
    return with_overrides(
        load_config("tiny"),
        {
            "synth": {"images_per_prompt": 6},
            "filter": {"threshold": 0.6, "t2i_per_prompt": 1, "judge_per_prompt": 1, "regen_per_prompt": 1},
            "sft": {**SFT, **(sft or {})},
            "rl": {**RL, **(rl or {})},
        },
    )


def config_file(tmp_path: Path, **sections) -> Path:
    """cfg(...) as a YAML file the CLI reads with --config."""
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg(**sections))))
    return path


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory, janus_cache) -> Path:
    return runs.filtered_run(tmp_path_factory.mktemp("rerun"), cfg(), PROMPTS)


@pytest.fixture
def run(filtered_run, tmp_path) -> Path:
    return Path(shutil.copytree(filtered_run, tmp_path / "run"))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under `root` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def steps_logged(run: Path, stage: str) -> list[int]:
    path = run / "checkpoints" / stage / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def scorer(tiny_janus) -> CodebookShareScorer:
    size = AutoConfig.from_pretrained(tiny_janus).vq_config.num_embeddings
    return CodebookShareScorer([c for c in range(size) if c % 4 == 0], size)


# ------------------------------------------------------------------------------------------- SFT
def test_a_finished_sft_rerun_says_so_in_one_line_and_changes_nothing(run, tmp_path):
    config = config_file(tmp_path)
    first = invoke("train", "sft", "--run", run, "--config", config, "--no-progress")
    assert first.exit_code == 0, first.output
    before = snapshot(run)
    again = invoke("train", "sft", "--run", run, "--config", config, "--no-progress")
    assert again.exit_code == 0, again.output
    (line,) = lines(again.output)
    assert line.startswith("sft: already finished at step 4") and "step-000004" in line, line
    assert snapshot(run) == before


def test_an_interrupted_sft_continues_and_a_larger_max_steps_trains_on(run):
    run_sft(run, cfg(), max_steps=2, progress=False)  # stopped at step 2 of 4
    resumed = run_sft(run, cfg(), progress=False)  # the same call again, no --resume
    assert (resumed.start_step, resumed.end_step) == (2, 4) and resumed.resumed_from.name == "step-000002"
    done = run_sft(run, cfg(), progress=False)
    assert done.already_done and (done.start_step, done.end_step) == (4, 4)
    longer = run_sft(run, cfg(), max_steps=5, progress=False)  # --max-steps past the finished run
    assert (longer.start_step, longer.end_step) == (4, 5)
    # run-shape settings (max_steps, cadences) are no change of what a step computes: it continues
    more = run_sft(run, cfg(sft={"max_steps": 6, "save_every": 3, "log_every": 2}), progress=False)
    assert (more.start_step, more.end_step) == (5, 6)
    assert steps_logged(run, "sft") == [1, 2, 3, 4, 5, 6]


def test_other_settings_are_refused_in_one_line(run, tmp_path):
    run_sft(run, cfg(), max_steps=2, progress=False)
    with pytest.raises(CheckpointError, match=r"other settings \(sft\.lr: 0\.001 -> 0\.002\).*--restart") as info:
        run_sft(run, cfg(sft={"lr": 2e-3}), progress=False)
    assert "\n" not in str(info.value)
    out = invoke("train", "sft", "--run", run, "--config", config_file(tmp_path, sft={"lr": 2e-3}))
    assert out.exit_code == 2 and len(lines(out.stderr)) == 1 and "--restart" in out.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["sft"]  # nothing set aside


def test_restart_needs_yes_off_a_terminal_then_sets_aside(run, tmp_path):
    config = config_file(tmp_path)
    run_sft(run, cfg(), max_steps=2, progress=False)
    before = snapshot(run)
    refused = invoke("train", "sft", "--run", run, "--config", config, "--restart")  # CliRunner: no TTY
    assert refused.exit_code == 2, refused.output
    (line,) = lines(refused.stderr)
    assert line.startswith("error: --restart would set aside") and "step-000002" in line and "--yes" in line
    assert snapshot(run) == before
    ok = invoke("train", "sft", "--run", run, "--config", config, "--restart", "--yes", "--no-progress")
    assert ok.exit_code == 0, ok.output
    (stale,) = (run / "checkpoints").glob("sft.stale-*")
    assert sorted(p.name for p in stale.glob("step-*")) == ["step-000002"]
    assert steps_logged(run, "sft") == [1, 2, 3, 4]  # trained afresh from step 0
    assert "set aside" in ok.output
    # --restart and --resume contradict each other; --resume alone insists on a checkpoint
    both = invoke("train", "sft", "--run", run, "--config", config, "--restart", "--yes", "--resume")
    assert both.exit_code == 2 and "contradict" in both.output


def test_restart_asks_on_a_terminal(run, tmp_path, monkeypatch):
    import janus_cli.train

    monkeypatch.setattr(janus_cli.train, "interactive", lambda: True)
    run_sft(run, cfg(), max_steps=2, progress=False)
    before = snapshot(run)
    no = CliRunner().invoke(app, ["train", "sft", "--run", str(run), "--restart"], input="n\n")
    assert no.exit_code == 1 and "set aside" in no.output and "[y/N]" in no.output, no.output
    assert snapshot(run) == before


def test_set_aside_never_overwrites_an_earlier_one(tmp_path):
    for k in range(3):
        (tmp_path / "sft").mkdir()
        (tmp_path / "sft" / "mark").write_text(str(k))
        set_aside(tmp_path / "sft", "same")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["sft.stale-same", "sft.stale-same-2", "sft.stale-same-3"]
    assert set_aside(tmp_path / "sft") is None


def test_settings_count_the_batch_over_processes():
    one = settings("sft", {**to_dict(cfg().sft), "batch_size": 4, "parallel": "ddp"}, 1)
    two = settings("sft", {**to_dict(cfg().sft), "batch_size": 2, "parallel": "fsdp"}, 2)
    assert one == two and "max_steps" not in one
    assert settings("sft", to_dict(cfg().sft), 1) != settings("sft", to_dict(cfg(sft={"grad_accum": 2}).sft), 1)


@pytest.mark.slow
def test_killed_sft_command_resumes_when_run_again(run, tmp_path):
    config = config_file(tmp_path)
    args = ("train", "sft", "--run", str(run), "--config", str(config), "--no-progress")
    killed = subprocess.run(
        kill_at.command("*/checkpoints/sft/step-000002", 1, "after", *args), cwd=REPO, timeout=HANG_S
    )
    assert killed.returncode == -signal.SIGKILL
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "sft: steps 2 -> 4" in again.output and "resumed from" in again.output
    assert steps_logged(run, "sft") == [1, 2, 3, 4]


# -------------------------------------------------------------------------------------------- RL
@pytest.fixture
def rl_run(tmp_path) -> Path:
    """A run with prompts only (no SFT shards)."""
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run = tmp_path / "rl-run"
    write_prompts_manifest(run, load_prompts(tmp_path / "p.jsonl")[0])
    return run


def test_a_finished_rl_rerun_says_so_and_an_interrupted_one_continues(rl_run, tiny_janus, tmp_path):
    first = run_rl(rl_run, cfg(), max_steps=1, progress=False, scorer=scorer(tiny_janus))
    assert (first.init, first.init_from) == (cfg().synth.janus.model, "base")  # no SFT shards: the base model
    resumed = run_rl(rl_run, cfg(), progress=False, scorer=scorer(tiny_janus))
    assert (resumed.start_step, resumed.end_step) == (1, 2) and resumed.init == first.init
    before = snapshot(rl_run)
    # The CLI's configured judge is never built: a finished run returns before anything is loaded.
    again = invoke("train", "rl", "--run", rl_run, "--config", config_file(tmp_path), "--no-progress")
    assert again.exit_code == 0, again.output
    (line,) = lines(again.output)
    assert line.startswith("rl: already finished at step 2") and "step-000002" in line, line
    assert snapshot(rl_run) == before
    assert steps_logged(rl_run, "rl") == [1, 2]
    with pytest.raises(CheckpointError, match="starting policy"):  # another --init than the checkpoint's
        run_rl(rl_run, cfg(), init=str(tiny_janus), max_steps=3, progress=False, scorer=scorer(tiny_janus))


def test_rl_with_sft_shards_but_no_sft_checkpoint_needs_from_base(rl_run, tiny_janus, tmp_path):
    (rl_run / "sft").mkdir()
    message = "run has SFT shards but no SFT checkpoint: run `janus train sft` first, or pass --from-base"
    with pytest.raises(RunDirError, match=message.replace("`", ".")):
        run_rl(rl_run, cfg(), progress=False, scorer=scorer(tiny_janus))
    out = invoke("train", "rl", "--run", rl_run, "--config", config_file(tmp_path))
    assert out.exit_code == 2 and len(lines(out.stderr)) == 1 and message in " ".join(out.stderr.split())
    assert not (rl_run / "checkpoints").exists()
    based = run_rl(rl_run, cfg(), max_steps=1, from_base=True, progress=False, scorer=scorer(tiny_janus))
    assert (based.init, based.init_from) == (cfg().synth.janus.model, "--from-base")
    state = json.loads((rl_run / "checkpoints/rl/step-000001/trainer_state.json").read_text())
    assert (state["init"], state["init_from"]) == (cfg().synth.janus.model, "--from-base")


def test_rl_starts_from_the_runs_sft_checkpoint_and_says_so(rl_run, tiny_janus, tmp_path):
    sft = rl_run / "checkpoints/sft/step-000003"  # a stand-in SFT checkpoint: the tiny model's files
    shutil.copytree(tiny_janus, sft)
    (sft / "trainer_state.json").write_text("{}")
    config = config_file(tmp_path)
    out = invoke("train", "rl", "--run", rl_run, "--config", config, "--max-steps", "1", "--no-progress")
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert f"rl: steps 0 -> 1, policy from {sft} (the run's latest SFT checkpoint)" in text
    assert f"policy started from {sft} (the run's latest SFT checkpoint)" in text
    state = json.loads((rl_run / "checkpoints/rl/step-000001/trainer_state.json").read_text())
    assert (state["init"], state["init_from"]) == (str(sft), "sft")


# -------------------------------------------------------------------------------------- janus run
def test_janus_run_sets_aside_a_half_trained_stage_whose_settings_changed(run):
    """Stopped midway (no completion record) under other settings: `janus run` trains afresh, not fails."""
    run_pipeline(run, cfg(), stop="filter", progress=False)
    run_sft(run, cfg(), max_steps=2, progress=False)
    changed = cfg(sft={"lr": 2e-3})
    outcomes = run_pipeline(run, changed, start="sft", stop="sft", progress=False)
    assert [(o.stage, o.status) for o in outcomes] == [("sft", "ran")]
    assert outcomes[0].result.start_step == 0 and steps_logged(run, "sft") == [1, 2, 3, 4]
    (stale,) = (run / "checkpoints").glob("sft.stale-*")
    assert [p.name for p in stale.glob("step-*")] == ["step-000002"]
    again = run_pipeline(run, changed, start="sft", stop="sft", progress=False)
    assert [(o.stage, o.status) for o in again] == [("sft", "skipped")]
