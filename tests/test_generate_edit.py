"""`janus generate --edit IMAGE --instruction TEXT` (#18) on the tiny Janus-Pro.

N edits and their manifest rows (ids, seeds, the source in metadata), the prepared source, same seeds
-> same images, resume (a rerun draws nothing and loads no model; a deleted image is redrawn alone,
byte for byte), and the CLI: bad input in one line, exit 2, before torch is imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from test_cli_fast import janus, one_line_error
from typer.testing import CliRunner

import janus_eval.generate_edit as edit_mod
from cli import app
from janus_data.config import load_config
from janus_data.edit_sources import edit_id_for
from janus_data.errors import RunDirError
from janus_data.generators.janus_edit import center_crop
from janus_data.seeds import derive_seed
from janus_eval.gen_manifest import GENERATIONS_SCHEMA, read_generations
from janus_eval.generate import run_generate
from janus_eval.generate_edit import EDIT_STREAM, SOURCE_FILE, run_generate_edit

INSTRUCTION = "make the  sky green "  # normalised to "make the sky green"
N = 3


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (80, 48, 3)).astype(np.uint8)).save(path)
    return path


def draw(source: Path, out: Path, n: int = N, **overrides):
    cfg = load_config("tiny", overrides) if overrides else load_config("tiny")
    return run_generate_edit("tiny:janus", source, INSTRUCTION, out, cfg, n=n, progress=False)


def images(out: Path) -> dict[str, bytes]:
    rows = read_generations(out)
    return {g: (out / p).read_bytes() for g, p in zip(rows["gen_id"], rows["image_path"], strict=True)}


def no_editor(*args, **kwargs):
    raise AssertionError("a model was loaded")


def test_n_edits_and_their_manifest_rows(source, tmp_path, tiny_janus):
    out = tmp_path / "out"
    result = draw(source, out)
    rows = read_generations(out).sort("sample")
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    eid = edit_id_for(sha, INSTRUCTION)
    assert result.new.images == result.total.images == rows.height == N and result.existing == 0
    assert dict(rows.schema) == GENERATIONS_SCHEMA
    assert rows["gen_id"].to_list() == [f"{eid}-{s}-r0" for s in range(N)]
    assert set(rows["prompt_id"]) == {eid} and set(rows["prompt"]) == {"make the sky green"}
    assert rows["seed"].to_list() == [derive_seed(0, eid, EDIT_STREAM, s) for s in range(N)]
    assert rows["round"].to_list() == [0] * N and rows["final"].all()
    assert rows["answer"].is_null().all() and rows["reason"].is_null().all() and rows["context_gen_id"].is_null().all()
    assert json.loads(rows["metadata"][0]) == {"source_image": str(source.resolve()), "source_sha256": sha}
    assert set(rows["label"]) == {"tiny_janus"} and set(rows["checkpoint"]) == {"tiny:janus"}
    for path in rows["image_path"]:
        assert Image.open(out / path).size == (64, 64)
    assert len(set(images(out).values())) == N  # three seeds, three different edits
    prepared = np.asarray(Image.open(out / SOURCE_FILE))
    assert np.array_equal(prepared, np.asarray(center_crop(Image.open(source), 64)))


def test_same_seeds_same_images_and_a_rerun_draws_nothing(source, tmp_path, tiny_janus, monkeypatch):
    first = tmp_path / "a"
    draw(source, first)
    again = tmp_path / "b"
    draw(source, again, **{"synth": {"janus": {"batch_size": 2}}})  # other batches, same images
    assert images(again) == images(first)
    monkeypatch.setattr(edit_mod, "load_editor", no_editor)
    rerun = draw(source, first)
    assert rerun.new.images == 0 and rerun.existing == N and read_generations(first).height == N


def test_a_deleted_image_is_redrawn_alone_with_the_same_bytes(source, tmp_path, tiny_janus):
    out = tmp_path / "out"
    draw(source, out)
    before = images(out)
    gone = sorted(before)[1]
    (out / f"images/{gone}.png").unlink()
    result = draw(source, out)
    assert result.repaired == 1 and result.new.images == 1
    assert images(out) == before
    more = draw(source, out, n=N + 1)  # a larger --n adds samples
    rows = read_generations(out)
    assert more.new.images == 1 and rows.height == N + 1 and rows["gen_id"].n_unique() == N + 1


def test_another_edit_or_a_prompt_run_in_the_same_out_is_refused(source, tmp_path, tiny_janus):
    out = tmp_path / "out"
    draw(source, out, n=1)
    cfg = load_config("tiny")
    with pytest.raises(RunDirError, match="edit_id"):
        run_generate_edit("tiny:janus", source, "make it red", out, cfg, n=1, progress=False)
    from janus_eval.generate import prompt_frame

    with pytest.raises(RunDirError, match="task"):
        run_generate("tiny:janus", prompt_frame(["a red cube"]), out, cfg, n=1, progress=False)


# ---------------------------------------------------------------- the CLI


def test_the_cli_draws_edits_and_resumes(source, tmp_path, tiny_janus):
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", "tiny:janus", "--config", "tiny", "--edit", str(source)]
    args += ["--instruction", INSTRUCTION, "--n", "2", "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 edit x 2 samples" in res.output and "edit_source.png" in res.output
    assert read_generations(out).height == 2 and (out / SOURCE_FILE).is_file()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "2 chains already there" in res.output
    assert read_generations(out).height == 2


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--edit", "{src}"], ["--edit needs an --instruction", "missing"]),
        (["--edit", "{src}", "--instruction", "  "], ["--instruction", "empty"]),
        (["--instruction", "make it red", "--prompt", "a cube"], ["--instruction needs --edit"]),
        (["--edit", "{src}", "--instruction", "x", "--prompt", "a cube"], ["cannot be combined with --prompt"]),
        (["--edit", "{src}", "--instruction", "x", "--prompts", "{src}"], ["cannot be combined with --prompts"]),
        (["--edit", "{src}", "--instruction", "x", "--introspect", "--rounds", "0"], ["--rounds must be >= 1"]),
        (["--edit", "{tmp}/missing.png", "--instruction", "x"], ["--edit image", "not found"]),
        (["--edit", "{tmp}/bad.png", "--instruction", "x"], ["--edit image", "cannot be decoded"]),
        (["--edit", "{tmp}/cut.png", "--instruction", "x"], ["--edit image", "cannot be decoded"]),
        (["--edit", "{src}", "--instruction", "x", "--n", "0"], ["--n must be >= 1"]),
    ],
)
def test_bad_edit_inputs_fail_in_one_line_before_torch(source, tmp_path, extra, needles):
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(source.read_bytes()[:200])  # a truncated PNG
    fill = {"src": str(source), "tmp": str(tmp_path)}
    args = [a.format(**fill) for a in extra]
    code, err, heavy = janus(
        "generate", "--checkpoint", "tiny:janus", "--config", "tiny", "--out", tmp_path / "o", *args
    )
    assert code == 2 and heavy == [], err
    one_line_error(err, *needles)


@pytest.mark.parametrize("rounds", [1, 2])
def test_introspect_runs_the_edit_chain_on_the_source(source, tmp_path, tiny_janus, monkeypatch, rounds):
    """--introspect: each edit is evaluated by the model with the edit question and, on No, redrawn from
    the edit_regen prefix, which holds the source's codes (the prepared source, encoded by the model's VQ)."""
    from janus_eval import chain as chain_mod
    from janus_train.sequences import SequenceBuilder

    def load(path, config):  # the model never says Yes: every round regenerates
        steps = original(path, config)
        yes = steps.yes_ids[0]
        steps.model.lm_head.register_forward_hook(
            lambda m, a, out: out.clone().index_fill_(-1, torch.tensor([yes]), -1e4)
        )
        return steps

    original = chain_mod.load_chain_steps
    monkeypatch.setattr(edit_mod, "load_chain_steps", load)
    built = []
    for name in ("t2i", "judge", "regen"):
        real = getattr(SequenceBuilder, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            sample = _real(self, *args, **kwargs)
            built.append((_name, sample.task, kwargs.get("source")))
            return sample

        monkeypatch.setattr(SequenceBuilder, name, spy)
    out = tmp_path / "out"
    result = run_generate_edit(
        "tiny:janus", source, INSTRUCTION, out, load_config("tiny"), n=2, introspect=True, rounds=rounds, progress=False
    )
    rows = read_generations(out)
    assert result.total.chains == 2 and rows.height == 2 * (rounds + 1) and result.total.yes == 0
    assert all(a == "No" and r.startswith("No") for a, r in zip(rows["answer"], rows["reason"], strict=True))
    assert sorted(rows["round"].to_list()) == sorted(list(range(rounds + 1)) * 2)
    # every sequence of the chain is an edit sequence, and it holds the prepared source's codes
    with Image.open(out / SOURCE_FILE) as prepared:
        from janus_data.vq import VQEncoder

        want = VQEncoder(str(tiny_janus), torch.device("cpu"), torch.float32).encode([prepared.convert("RGB")])[0]
    assert {task for _, task, _ in built} == {"edit", "edit_judge", "edit_regen"}
    assert all(np.array_equal(src, want) for _, _, src in built)
    # a rerun draws nothing
    again = run_generate_edit(
        "tiny:janus", source, INSTRUCTION, out, load_config("tiny"), n=2, introspect=True, rounds=rounds, progress=False
    )
    assert again.new.images == 0


def test_the_manifest_reads_like_generate_s(source, tmp_path, tiny_janus):
    out = tmp_path / "out"
    draw(source, out, n=1)
    from janus_data.manifest import read_manifest

    assert read_manifest(out, "generations").select(pl.len()).item() == 1
