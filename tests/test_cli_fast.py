"""Bad input fails before the heavy imports; the training path needs no polars; GenEval metadata is kept.

The CLI runs in a child process whose wrapper prints, at exit, which of torch, transformers,
diffusers and polars were imported: a bad flag, file or config must fail with one line and exit
2 without any of them (timings are benchmarks/bench_cli.py's business, not a test's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import HANG_S

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "diffusers", "polars")
# Runs `janus ARGS`, then prints (stdout, last line) the heavy top-level modules it imported.
WRAPPER = f"""
import json, sys
from cli import app
try:
    app(prog_name="janus")
finally:
    print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
"""


def janus(*args: str | Path, cwd: Path = REPO) -> tuple[int, str, list[str]]:
    """(exit code, stderr, heavy modules imported) of `janus ARGS` in a fresh interpreter."""
    cmd = [sys.executable, "-c", WRAPPER, *map(str, args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=HANG_S, env=env)
    return out.returncode, out.stderr, json.loads(out.stdout.strip().splitlines()[-1])


def one_line_error(stderr: str, *needles: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "typo.yaml").write_text("preset: tiny\nsynth:\n  images_per_promt: 4\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a red cube"}) + "\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    (tmp_path / "edit_rl.yaml").write_text("preset: tiny\nrl:\n  edit_share: 1.0\n")
    (tmp_path / "bad_share.yaml").write_text("preset: tiny\nsft:\n  edit_share: 1.5\n")
    return tmp_path


BAD_INPUTS = {
    "missing prompt file": (
        ["data", "synth", "--prompts", "missing.jsonl", "--run", "{tmp}/r"],
        "prompt file not found",
    ),
    "malformed prompt file": (["data", "synth", "--prompts", "{tmp}/bad.jsonl", "--run", "{tmp}/r"], "line 2"),
    "bad threshold": (["data", "filter", "--run", "{tmp}/r", "--threshold", "1.5"], "filter.threshold"),
    "unknown config key": (
        ["data", "synth", "--config", "{tmp}/typo.yaml", "--prompts", "{tmp}/p.jsonl", "--run", "{tmp}/r"],
        "unknown config key 'synth.images_per_promt'",
    ),
    "unknown preset": (["data", "synth", "--config", "nosuch", "--run", "{tmp}/r"], "unknown preset"),
    "run without prompts": (["data", "synth", "--config", "tiny", "--run", "{tmp}/r"], "has no prompts"),
    "score without images": (["data", "score", "--run", "{tmp}/missing"], "no image manifest"),
    "filter without manifests": (["data", "filter", "--run", "{tmp}/missing"], "no prompts manifest"),
    "sft without shards": (["train", "sft", "--run", "{tmp}/missing"], "no SFT shards"),
    "rl without prompts": (["train", "rl", "--run", "{tmp}/missing", "--config", "tiny"], "has no prompts"),
    "edit-only rl without edits": (["train", "rl", "--run", "{tmp}/r", "--config", "{tmp}/edit_rl.yaml"], "no edits"),
    "edit filter without edit scores": (["data", "filter", "--task", "edit", "--run", "{tmp}/r"], "edit"),
    "edit share out of range": (["train", "sft", "--run", "{tmp}/r", "--config", "{tmp}/bad_share.yaml"], "edit_share"),
    "report of a missing run": (["data", "report", "--run", "{tmp}/missing"], "does not exist"),
    "chain with a missing prompt file": (
        ["run", "--config", "tiny", "--run", "{tmp}/r", "--prompts", "missing.jsonl"],
        "prompt file not found",
    ),
    "chain with a bad stage": (["run", "--config", "tiny", "--run", "{tmp}/r", "--from", "trian"], "unknown stage"),
    "unknown judge engine": (["serve", "judge", "--model", "tiny:internvl", "--engine", "vllm"], "--engine"),
    "unknown tiny model": (["models", "tiny", "dalle", "--out", "{tmp}/x"], "unknown tiny model"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_in_one_line_before_any_heavy_import(case, inputs):
    args, needle = BAD_INPUTS[case]
    code, stderr, heavy = janus(*(a.format(tmp=inputs) for a in args))
    assert code == 2, stderr
    one_line_error(stderr, needle)
    assert heavy == [], f"{case}: imported {heavy} before failing"
    assert not (inputs / "r").exists()  # nothing written


def test_help_and_import_cli_load_nothing_heavy():
    code, _, heavy = janus("--help")
    assert code == 0 and heavy == []


def test_the_light_modules_import_and_load_configs_without_heavy_libraries(tmp_path):
    """What runs before a stage's checks pass: cli, the configs, the prompt check, the stage entry points."""
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a red cube", "tag": "colors"}) + "\n")
    code = "".join(f"sys.modules[{m!r}] = None\n" for m in HEAVY) + (
        "import cli, janus_run.stages, janus_run.pipeline, janus_run.summary, janus_run.demo\n"
        "import janus_data.checks, janus_data.judge.serve, janus_data.models, janus_data.rundir\n"
        "import janus_eval.checkpoints, janus_eval.gen_checks, janus_eval.geneval_rules, janus_data.eval_results\n"
        "from janus_data.config import load_config\n"
        "from janus_data.prompts import check_prompt_file\n"
        "for preset in ('paper', 'tiny', 'official'):\n    load_config(preset)\n"
        f"check_prompt_file({str(tmp_path / 'p.jsonl')!r})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=REPO, timeout=HANG_S
    )
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("prompts", ["missing.jsonl", "."])
def test_run_with_a_bad_prompts_path_writes_nothing(tmp_path, prompts):
    """A missing file, or a directory that is no saved dataset: one line, exit 2, no run directory, no config.yaml."""
    run = tmp_path / "run"
    code, stderr, _ = janus("run", "--config", "tiny", "--run", run, "--prompts", prompts, "--no-report", cwd=tmp_path)
    assert code == 2
    one_line_error(stderr, "prompt file not found" if prompts.endswith("jsonl") else "is a directory but not a dataset")
    assert not run.exists()


def test_run_with_a_bad_prompts_path_leaves_an_existing_run_untouched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("old: config\n")
    code, stderr, _ = janus("run", "--config", "tiny", "--run", run, "--prompts", tmp_path / "nope.jsonl")
    assert code == 2, stderr
    assert [p.name for p in run.iterdir()] == ["config.yaml"]
    assert (run / "config.yaml").read_text() == "old: config\n"


# ---------------------------------------------------------------- the training path without polars

NO_POLARS = "import sys; sys.modules['polars'] = None\n"


def test_sft_and_grpo_import_without_polars():
    code = NO_POLARS + "import janus_train.sft, janus_train.rl, janus_run.stages, janus_run.summary\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert out.returncode == 0, out.stderr[-2000:]


def test_bench_sft_help_without_polars():
    code = NO_POLARS + (
        "import runpy; sys.argv = ['bench_sft.py', '--help']\n"
        "runpy.run_path('benchmarks/bench_sft.py', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert out.returncode == 0 and "usage: bench_sft.py" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------- prompt files

GENEVAL = [
    {
        "tag": "counting",
        "include": [{"class": "cat", "count": 2}],
        "exclude": [{"class": "cat", "count": 3}],
        "prompt": "a photo of two cats",
    },
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
]


def test_geneval_tag_and_metadata_reach_the_prompts_manifest(tmp_path):
    from janus_data.prompts import load_prompts, read_prompts_manifest, write_prompts_manifest

    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in GENEVAL))
    df, _ = load_prompts(path)
    write_prompts_manifest(tmp_path / "run", df)
    manifest = read_prompts_manifest(tmp_path / "run")
    assert manifest["tags"].to_list() == [["counting"], ["colors"]]
    assert [json.loads(m) for m in manifest["metadata"]] == GENEVAL


def test_a_tag_that_is_not_a_string_is_an_error(tmp_path):
    from janus_data.errors import PromptError
    from janus_data.prompts import check_prompt_file

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a cat", "tag": ["counting"]}) + "\n")
    with pytest.raises(PromptError, match="line 1 has a 'tag' that is not a string"):
        check_prompt_file(path)


def test_a_manifest_written_before_metadata_reads_with_null_metadata(tmp_path):
    import polars as pl

    from janus_data.prompts import PROMPT_SCHEMA, read_prompts_manifest

    old = pl.DataFrame(
        {"prompt_id": ["a"], "prompt": ["x"], "source": ["f"], "source_id": [None], "tags": [[]], "n_occurrences": [1]},
        schema={k: v for k, v in PROMPT_SCHEMA.items() if k != "metadata"},
    )
    (tmp_path / "manifests" / "prompts").mkdir(parents=True)
    old.write_parquet(tmp_path / "manifests" / "prompts" / "prompts.parquet")
    df = read_prompts_manifest(tmp_path)
    assert df.schema == pl.Schema(PROMPT_SCHEMA) and df["metadata"].to_list() == [None]


def test_check_prompt_file_finds_what_load_prompts_rejects_without_polars(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\t\n")
    code = NO_POLARS + (
        "from janus_data.errors import PromptError\n"
        "from janus_data.prompts import check_prompt_file\n"
        f"check_prompt_file({str(tmp_path / 'ok.txt')!r})\n"
        f"try:\n    check_prompt_file({str(tmp_path / 'blank.txt')!r})\n"
        "except PromptError as err:\n    print(err)\n"
    )
    (tmp_path / "ok.txt").write_text("a red cube\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert out.returncode == 0 and "holds no prompts" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------- summaries and hints


def test_cli_and_report_show_the_same_first_and_latest_sft_losses(tmp_path):
    from janus_data.report_sections import _first_latest
    from janus_data.rundir import read_metrics
    from janus_run.summary import sft_table
    from janus_train.sft import SFTResult

    metrics = tmp_path / "checkpoints" / "sft" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    rows = [
        {"step": 5, "loss": {"t2i": 7.0, "judge": 3.0, "total": 5.0}},
        {"step": 10, "loss": {"t2i": 6.0, "judge": 2.5, "regen": 4.0, "total": 4.0}},
        {"step": 12, "loss": {"t2i": 5.5, "judge": 2.0, "regen": 3.5, "total": 3.5}},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = sft_table(SFTResult(tmp_path, start_step=8, end_step=12, max_steps=12))
    headers = [c.header for c in table.columns]
    cells = {c.header: list(c.cells) for c in table.columns}
    assert headers == ["loss", "first (step 5)", "latest (step 12)"]
    assert cells["loss"] == ["t2i", "judge", "regen", "total"]
    assert cells["first (step 5)"] == ["7.0000", "3.0000", "4.0000 (step 10)", "5.0000"]
    assert cells["latest (step 12)"] == ["5.5000", "2.0000", "3.5000", "3.5000"]
    html = _first_latest(read_metrics(metrics), {t: f"loss/{t}" for t in ("t2i", "judge", "regen", "total")})
    for header in headers[1:]:
        assert header in html
    for value in cells["first (step 5)"] + cells["latest (step 12)"]:
        assert value in html
    assert "first and latest steps logged in" in str(table.caption)


def test_offline_hub_id_hint_says_how_to_get_the_checkpoint(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from janus_data.errors import ModelError
    from janus_data.models import loading

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    ref = "deepseek-community/Janus-Pro-7B"
    with pytest.raises(ModelError) as err, loading("Janus-Pro", ref, f"use a checkpoint such as {ref}"):
        try:
            raise LocalEntryNotFoundError("not in the disk cache")
        except LocalEntryNotFoundError as cause:
            raise OSError("We couldn't connect to 'https://huggingface.co'") from cause
    assert "not (fully) in the local Hugging Face cache" in err.value.message
    assert f"hf download {ref}" in err.value.hint and "HF_HUB_OFFLINE" in err.value.hint
    assert "--config tiny" in err.value.hint and "such as" not in err.value.hint


def test_outputs_table_names_every_stage():
    from janus_run.pipeline import StageOutcome
    from janus_run.stages import STAGES
    from janus_run.summary import outputs_table

    table = outputs_table(Path("runs/x"), [StageOutcome(s, "skipped") for s in STAGES])
    assert list(table.columns[0].cells) == list(STAGES)
