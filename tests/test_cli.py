"""`janus` on bad input: one line, non-zero exit, completed work intact. Plus --help."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from procs import HANG_S
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def snapshot(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, janus_cache):
    root = tmp_path_factory.mktemp("cli")
    prompts = root / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red cube"}) + "\n")
    run = root / "run"
    res = invoke(
        "data",
        "synth",
        "--prompts",
        str(prompts),
        "--run",
        str(run),
        "--config",
        "tiny",
        "--images-per-prompt",
        "2",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    return root, run


def one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def synth_args(run: Path, *extra: str) -> list[str]:
    return ["data", "synth", "--run", str(run), "--config", "tiny", "--images-per-prompt", "2", "--no-progress", *extra]


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("missing.jsonl", None, ["prompt file not found"]),
        ("empty.txt", b"", ["holds no prompts"]),
        ("blank.txt", b"  \n\t\n", ["holds no prompts"]),
        ("cols.csv", b"caption,id\nx,1\n", ["prompt", "caption"]),
        ("latin.txt", "café au lait\n".encode("latin-1"), ["not UTF-8"]),
        ("bad.jsonl", b'{"prompt": "ok"}\n{"prompt": \n', ["line 2"]),
    ],
)
def test_bad_prompt_files(done_run, name, content, needles):
    root, run = done_run
    path = root / name
    if content is not None:
        path.write_bytes(content)
    before = snapshot(run)
    one_line_error(invoke(*synth_args(run, "--prompts", str(path))), *needles)
    assert snapshot(run) == before


def test_unknown_config_key(done_run):
    root, run = done_run
    cfg = root / "bad.yaml"
    cfg.write_text("synth:\n  images_per_prompt: 2\n  imagez: 3\n")
    before = snapshot(run)
    res = invoke("data", "synth", "--run", str(run), "--config", str(cfg), "--no-progress")
    one_line_error(res, "unknown config key 'synth.imagez'")
    assert snapshot(run) == before


def test_unknown_preset_and_bad_value(done_run):
    _, run = done_run
    one_line_error(invoke("data", "synth", "--run", str(run), "--config", "nosuch"), "unknown preset")
    one_line_error(invoke(*synth_args(run, "--flux-share", "1.5")), "flux_share")


def test_missing_checkpoint_path(done_run):
    root, run = done_run
    cfg = root / "missing-model.yaml"
    cfg.write_text(f"preset: tiny\nsynth:\n  images_per_prompt: 4\n  janus:\n    model: {root / 'no-such-ckpt'}\n")
    before = snapshot(run)
    res = invoke("data", "synth", "--run", str(run), "--config", str(cfg), "--no-progress")
    one_line_error(res, "checkpoint not found", "no-such-ckpt")
    assert snapshot(run) == before  # checked before any generator runs


def test_unwritable_run_dir(done_run):
    root, _ = done_run
    blocker = root / "a-file"
    blocker.write_text("x")
    prompts = root / "ok.txt"
    prompts.write_text("a red cube\n")
    one_line_error(invoke(*synth_args(blocker / "run", "--prompts", str(prompts))), "not writable")


def test_run_without_prompts(tmp_path):
    one_line_error(invoke(*synth_args(tmp_path / "fresh")), "has no prompts", "--prompts")


def test_rerun_says_nothing_to_do(done_run):
    _, run = done_run
    res = invoke(*synth_args(run))
    assert res.exit_code == 0
    assert "nothing to do" in res.stderr


def _leaf_commands(group=None, path=()):
    """Every command path of the CLI, walked from typer's click group."""
    import typer.main

    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name)


def test_every_command_has_help_with_an_example():
    leaves = list(_leaf_commands())
    assert {("run",), ("demo",), ("data", "report"), ("train", "rl"), ("train", "sft")} <= set(leaves)
    for cmd in leaves:
        res = invoke(*cmd, "--help")
        assert res.exit_code == 0, cmd
        assert "Example: janus" in res.output or "Example: torchrun" in res.output, cmd


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [("janus da", 1, {"data"}), ("janus train r", 2, {"rl"}), ("janus run --from s", 3, {"synth", "score", "sft"})],
)
def test_shell_completion(words, cword, expected):
    """Bash completion as the installed script asks for it (`janus --install-completion`)."""
    import subprocess
    import sys

    env = {**os.environ, "_JANUS_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out = subprocess.run(
        [sys.executable, "-c", "from cli import app; app(prog_name='janus')"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=HANG_S,
    )
    assert set(out.stdout.split()) == expected, out.stderr


def check_demo_samples(run: Path) -> None:
    """No Task II/III target reason starts with the opposite of its label; every Task III context is VQ(stored image)."""
    import re

    import numpy as np
    import torch

    from janus_data.vq import VQEncoder
    from janus_data.wds import decode_sample, iter_samples, list_shards

    vq = VQEncoder("tiny:janus", torch.device("cpu"), torch.float32)
    for task in ("judge", "regen"):
        samples = [decode_sample(s) for s in iter_samples(list_shards(run / "sft" / task))]
        assert samples, task
        for s in samples:
            label = s["json"]["label"]
            first = re.findall(r"\w+", s["json"]["reason"])[0]
            assert first.lower() == label.lower(), (task, label, s["json"]["reason"])
            if task == "regen":
                assert np.array_equal(vq.encode([s["bad.png"]])[0], s["bad.npy"]), s["__key__"]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, janus_cache):
    res = invoke("demo", "--run", str(tmp_path / "demo"), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "not image quality" in res.stderr and "contact sheet" in res.stderr
    assert (tmp_path / "demo" / "contact_sheet.png").is_file()
    assert (tmp_path / "demo" / "report" / "index.html").is_file()
    assert (tmp_path / "demo" / "checkpoints" / "rl" / "step-000004").is_dir()
    check_demo_samples(tmp_path / "demo")
    check_demo_eval(tmp_path / "demo", tmp_path / "profile")
    check_demo_edits(tmp_path / "demo", res.stderr)
    again = invoke("demo", "--run", str(tmp_path / "demo"), "--no-progress")
    assert again.exit_code == 0
    for stage in ("synth", "score", "filter", "sft", "rl", "eval"):
        assert f"skip {stage}" in again.stderr


def check_demo_edits(run: Path, printed: str) -> None:
    """The small edit run: candidate edits scored, the three edit tasks written, SFT drew edit samples,
    GRPO ran edit steps, the report has its editing section."""
    import polars as pl

    for stage in ("synth --task edit", "score --task edit", "filter --task edit"):
        assert f"janus data {stage}" in printed, stage
    assert pl.read_parquet(str(run / "manifests/edit_scores/**/*.parquet")).height == 4 * 8
    state = json.loads((run / "sft_edit" / "state.json").read_text())
    assert all(state["tasks"][t]["samples"] > 0 for t in ("edit", "edit_judge", "edit_regen"))
    sft = [json.loads(line) for line in (run / "checkpoints/sft/metrics.jsonl").read_text().splitlines()]
    assert {"edit", "edit_judge", "edit_regen"} & {k for m in sft for k in m["loss"]}
    rl = [json.loads(line) for line in (run / "checkpoints/rl/metrics.jsonl").read_text().splitlines()]
    assert [m["edit"] for m in rl] == [1.0, 1.0, 1.0, 0.0]  # rl.edit_share 0.5 at seed 0
    assert 'id="edit"' in (run / "report" / "index.html").read_text()


def check_demo_eval(run: Path, profile: Path) -> None:
    """The eval stage measured base, SFT and GRPO (GenEval with the chain, and the judge); the report shows it."""
    import polars as pl
    from test_report import chromium_dump, console_lines

    from janus_data.eval_results import GENEVAL_INTROSPECT, GENEVAL_SUMMARY, JUDGE_SUMMARY

    for kind, file in (("geneval", GENEVAL_SUMMARY), ("judge", JUDGE_SUMMARY)):
        for label in ("base", "sft", "rl"):
            summary = pl.read_parquet(run / "eval" / kind / label / file)
            assert set(summary["label"]) == {label} and summary["n_images"].min() >= 1, (kind, label)
    tags = pl.read_parquet(run / "eval/geneval/rl" / GENEVAL_SUMMARY)["tag"].unique().to_list()
    assert sorted(tags) == sorted(
        ["single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"]
    )
    aha = pl.read_parquet(run / "eval/geneval/rl" / GENEVAL_INTROSPECT).row(0, named=True)
    assert aha["n_evaluated"] >= 12 and 0 <= aha["regeneration_rate"] <= 1 and 0 <= aha["agreement"] <= 1
    html = (run / "report" / "index.html").read_text()
    assert 'id="eval"' in html
    if shutil.which("chromium"):  # without it, tests/test_report_eval.py says it skipped the browser check
        dom, stderr = chromium_dump(run / "report" / "index.html", profile)
        assert console_lines(stderr) == []
        assert 'id="eval"' in dom and all(label in dom for label in ("base", "sft", "rl"))


def test_models_tiny_writes_a_loadable_checkpoint(tmp_path):
    from transformers import JanusForConditionalGeneration

    res = invoke("models", "tiny", "janus", "--out", str(tmp_path / "tj"))
    assert res.exit_code == 0, res.output
    model = JanusForConditionalGeneration.from_pretrained(tmp_path / "tj")
    assert model.config.vision_config.num_image_tokens == 16
    one_line_error(invoke("models", "tiny", "dalle", "--out", str(tmp_path / "x")), "unknown tiny model")
