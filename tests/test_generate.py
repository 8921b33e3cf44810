"""`janus generate`: the manifest, seeds that do not depend on batching, resume, and the introspective chain.

The key property (issue #16): a regeneration is conditioned on the RE-ENCODED previous image,
VQ(decode(codes)). It is asserted on the codes the chain actually embedded (a spy on
`batch_embeds`, the one place prefix codes become the model's input), against a VQ loaded
afresh from the checkpoint's files encoding the PNG the chain wrote.

To make the tiny random model say No, `forced_no` adds -1e4 to the lm_head logit of the first
token of "Yes": its greedy answer is then always No (and no reason token starts a "Yes").
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from test_cli_fast import janus, one_line_error
from typer.testing import CliRunner

import janus_eval.generate as gen_mod
import janus_train.rollout as rollout_mod
from cli import app
from janus_data.config import load_config, with_overrides
from janus_data.errors import ModelError, RunDirError
from janus_data.seeds import derive_seed
from janus_data.vq import VQEncoder
from janus_eval.chain import IntrospectiveChain, load_chain_steps
from janus_eval.checkpoints import checkpoint_label, resolve_checkpoint
from janus_eval.gen_manifest import GENERATIONS_SCHEMA, read_generations
from janus_eval.generate import SEED_STREAM, prompt_frame, run_generate
from janus_train.rollout import RolloutEngine
from janus_train.sequences import SequenceBuilder

PROMPTS = [
    {"prompt": "a photo of two red apples", "tag": "counting", "include": [{"class": "apple", "count": 2}]},
    {"prompt": "a blue bicycle left of a hydrant", "tags": ["position"]},
    {"prompt": "a lighthouse at night"},
]


def cfg(**janus):
    return with_overrides(load_config("tiny"), {"synth": {"janus": janus}} if janus else {})


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


@pytest.fixture
def forced_no(monkeypatch):
    """run_generate's model never says Yes (see the module docstring)."""

    def load(path, config):
        steps = original(path, config)
        yes = steps.yes_ids[0]

        def hook(module, args, logits):
            logits = logits.clone()
            logits[..., yes] -= 1e4
            return logits

        steps.model.lm_head.register_forward_hook(hook)
        return steps

    original = gen_mod.load_chain_steps
    monkeypatch.setattr(gen_mod, "load_chain_steps", load)


def pixels(out: Path, rows: pl.DataFrame) -> dict[str, np.ndarray]:
    return {g: np.asarray(Image.open(out / p)) for g, p in zip(rows["gen_id"], rows["image_path"], strict=True)}


def chains(rows: pl.DataFrame) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for row in rows.sort("prompt_id", "sample", "round").iter_rows(named=True):
        out.setdefault((row["prompt_id"], row["sample"]), []).append(row)
    return out


def test_manifest_schema_counts_and_seeds(prompts, tmp_path):
    out = tmp_path / "out"
    result = run_generate("tiny:janus", prompts, out, cfg(), n=2, progress=False)
    rows = read_generations(out)
    assert dict(pl.read_parquet(next((out / "manifests/generations").glob("part-*.parquet"))).schema) == dict(
        GENERATIONS_SCHEMA
    )
    assert rows.height == 6 and rows["gen_id"].n_unique() == 6
    assert result.new.images == result.total.images == 6 and result.new.chains == 6 and result.existing == 0
    assert rows["answer"].is_null().all() and rows["reason"].is_null().all() and rows["final"].all()
    assert rows["context_gen_id"].is_null().all() and (rows["round"] == 0).all()
    assert set(rows["checkpoint"]) == {"tiny:janus"} and set(rows["label"]) == {"tiny_janus"}
    for row in rows.iter_rows(named=True):
        assert row["gen_id"] == f"{row['prompt_id']}-{row['sample']}-r0"
        assert row["image_path"] == f"images/{row['gen_id']}.png"
        assert row["seed"] == derive_seed(0, row["prompt_id"], SEED_STREAM, row["sample"])
        assert Image.open(out / row["image_path"]).size == (64, 64)
    apples = rows.filter(pl.col("prompt") == PROMPTS[0]["prompt"])
    assert apples["tags"].to_list() == [["counting"]] * 2 and "include" in apples["metadata"][0]
    assert rows.filter(pl.col("prompt") == PROMPTS[1]["prompt"])["tags"].to_list() == [["position"]] * 2


def test_images_and_chains_do_not_depend_on_batch_size(prompts, tmp_path):
    """Counter-based seeds per chain: batch 1 and batch 4 draw the same images, answers and redraws;
    the introspective chain's first images are the plain run's."""
    runs = {}
    for size in (1, 4):
        out = tmp_path / f"b{size}"
        run_generate("tiny:janus", prompts, out, cfg(batch_size=size), n=2, introspect=True, rounds=2, progress=False)
        runs[size] = (out, read_generations(out).sort("gen_id"))
    (out1, rows1), (out4, rows4) = runs[1], runs[4]
    assert rows1.equals(rows4)
    assert set(rows1["answer"]) == {"Yes", "No"}  # both branches ran, greedily
    p1, p4 = pixels(out1, rows1), pixels(out4, rows4)
    assert all(np.array_equal(p1[g], p4[g]) for g in p1)
    plain = tmp_path / "plain"
    run_generate("tiny:janus", prompts, plain, cfg(batch_size=4), n=2, progress=False)
    first = read_generations(plain)
    assert all(np.array_equal(a, p1[g]) for g, a in pixels(plain, first).items())


def test_resume_redraws_only_what_is_missing(prompts, tmp_path, monkeypatch):
    out = tmp_path / "out"
    config = cfg(batch_size=2)
    run_generate("tiny:janus", prompts, out, config, n=2, introspect=True, progress=False)
    full = read_generations(out).sort("gen_id")
    images = pixels(out, full)
    parts = sorted((out / "manifests/generations").glob("part-*.parquet"))
    assert len(parts) == 3  # 6 chains in batches of 2
    parts[0].unlink()  # a whole batch lost
    victim = pl.read_parquet(parts[1])["image_path"][0]
    (out / victim).unlink()  # one image of another batch deleted by hand
    (out / "images/.x.png.tmp").write_bytes(b"torn")  # a killed write
    result = run_generate("tiny:janus", prompts, out, config, n=2, introspect=True, progress=False)
    again = read_generations(out).sort("gen_id")
    assert again.equals(full) and again["gen_id"].n_unique() == again.height
    assert result.repaired == 1 and result.new.chains == 3 and result.existing == 3
    assert all(np.array_equal(images[g], a) for g, a in pixels(out, again).items())
    assert not (out / "images/.x.png.tmp").exists()

    def no_model(*args):
        raise AssertionError("a finished output loaded the model")

    monkeypatch.setattr(gen_mod, "load_chain_steps", no_model)
    done = run_generate("tiny:janus", prompts, out, config, n=2, introspect=True, progress=False)
    assert done.new.chains == 0 and done.total.chains == 6


def test_a_killed_run_keeps_finished_batches(prompts, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = gen_mod.write_batch
    calls = []

    def dies_on_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(gen_mod, "write_batch", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_generate("tiny:janus", prompts, out, cfg(batch_size=2), n=2, progress=False)
    assert read_generations(out).height == 2
    monkeypatch.setattr(gen_mod, "write_batch", original)
    result = run_generate("tiny:janus", prompts, out, cfg(batch_size=2), n=2, progress=False)
    assert result.existing == 2 and result.new.chains == 4 and read_generations(out)["gen_id"].n_unique() == 6


def test_other_settings_in_the_same_out_are_refused(prompts, tmp_path):
    out = tmp_path / "out"
    run_generate("tiny:janus", prompts, out, cfg(), n=1, progress=False)
    with pytest.raises(RunDirError, match=r"other settings.*introspect"):
        run_generate("tiny:janus", prompts, out, cfg(), n=1, introspect=True, progress=False)
    more = run_generate("tiny:janus", prompts, out, cfg(batch_size=1), n=2, progress=False)  # n and batch may change
    assert more.existing == 3 and more.total.chains == 6


@pytest.mark.parametrize("rounds", [1, 2])
def test_introspect_writes_the_chain_and_conditions_on_the_reencoded_image(
    prompts, tmp_path, tiny_janus, forced_no, monkeypatch, rounds
):
    """Each chain: image, No + reason, redraw, ... The codes the regeneration prefix fed the model
    are the previous image's PNG re-encoded by the checkpoint's VQ, and its evaluation is the model's."""
    fed, evaluations, sampled = [], [], []
    embeds, regen, context = rollout_mod.batch_embeds, SequenceBuilder.regen, rollout_mod.ChainSteps.context

    def spy_embeds(model, batch, processor=None):
        codes = batch.gen_codes.cpu().numpy()
        if (codes >= 0).any():  # a Task-III batch: R conditional rows, then their R twins
            rows = [r[r >= 0] for r in codes]
            half = len(rows) // 2
            assert all(np.array_equal(a, b) for a, b in zip(rows[:half], rows[half:], strict=True))
            fed.extend(rows[:half])
        return embeds(model, batch, processor)

    def spy_regen(self, prompt, bad_codes, evaluation, *args, **kwargs):
        if not kwargs.get("drop"):
            evaluations.append(list(evaluation))
        return regen(self, prompt, bad_codes, evaluation, *args, **kwargs)

    def spy_context(self, codes, pixels):
        sampled.extend(codes.cpu().numpy())
        return context(self, codes, pixels)

    monkeypatch.setattr(rollout_mod, "batch_embeds", spy_embeds)
    monkeypatch.setattr(SequenceBuilder, "regen", spy_regen)
    monkeypatch.setattr(rollout_mod.ChainSteps, "context", spy_context)
    out = tmp_path / "out"
    config = cfg(batch_size=8)  # one batch: regenerations are fed in plan order, round by round
    result = run_generate("tiny:janus", prompts, out, config, n=2, introspect=True, rounds=rounds, progress=False)
    rows = read_generations(out)
    assert result.total.chains == 6 and result.total.regenerated == 6 and result.total.yes == 0
    by_chain = chains(rows)
    for chain in by_chain.values():
        assert [r["round"] for r in chain] == list(range(rounds + 1))
        assert [r["final"] for r in chain] == [False] * rounds + [True]
        assert all(r["answer"] == "No" and r["reason"].startswith("No") for r in chain)
        assert [r["context_gen_id"] for r in chain] == [None] + [r["gen_id"] for r in chain[:-1]]
    # Regeneration batches run in plan order (prompt, sample), round 1 before round 2.
    order = sorted(by_chain, key=lambda k: ([p["prompt"] for p in PROMPTS].index(by_chain[k][0]["prompt"]), k[1]))
    redrawn = [by_chain[k][r] for r in range(1, rounds + 1) for k in order]
    assert len(fed) == len(evaluations) == len(sampled) == len(redrawn) == 6 * rounds
    vq = VQEncoder(str(tiny_janus), torch.device("cpu"), torch.float32)  # afresh, from the checkpoint's files
    shown = {r["gen_id"]: r for r in rows.iter_rows(named=True)}
    expected = vq.encode([Image.open(out / shown[r["context_gen_id"]]["image_path"]).convert("RGB") for r in redrawn])
    assert np.array_equal(np.stack(fed), expected)
    assert any(not np.array_equal(f, s) for f, s in zip(fed, sampled, strict=True))  # decode -> encode is no identity
    tokenizer = SequenceBuilder.from_pretrained(str(tiny_janus)).tokenizer
    for ids, row in zip(evaluations, redrawn, strict=True):
        text = " ".join(tokenizer.decode(ids[:-1], skip_special_tokens=True).split())
        assert ids[-1] == tokenizer.eos_token_id and text == shown[row["context_gen_id"]]["reason"]


def test_a_sampled_chain_is_a_grpo_rollout(tiny_janus):
    """Rounds 0 and 1 at text temperature 1 are exactly GRPO's rollout on the same seed (same steps, streams)."""
    config = with_overrides(load_config("tiny"), {"eval": {"text_temperature": 1.0}})
    steps = load_chain_steps("tiny:janus", config)
    prompts, seeds = [p["prompt"] for p in PROMPTS] * 2, list(range(6))
    engine = RolloutEngine(steps.model, steps.builder, steps.image_processor, steps.params, steps.loop)
    # One rollout per call: GRPO decodes its batch at once, the chain one image at a time (see chain.py).
    alone = [engine.run([p], [s]) for p, s in zip(prompts, seeds, strict=True)]
    ro = SimpleNamespace(**{k: torch.cat([getattr(r, k) for r in alone]) for k in ("image1", "image2", "context1")})
    ro.said_yes = torch.cat([r.said_yes for r in alone])
    ro.judge_ids = [r.judge_ids[0] for r in alone]
    chains_ = IntrospectiveChain(steps, introspect=True, rounds=1).run(prompts, seeds)
    assert 0 < sum(ro.said_yes.tolist()) < len(prompts)
    for i, chain in enumerate(chains_):
        assert np.array_equal(chain[0].codes, ro.image1[i].numpy()) and chain[0].evaluation == ro.judge_ids[i]
        assert (chain[0].answer == "Yes") == bool(ro.said_yes[i]) and len(chain) == (1 if ro.said_yes[i] else 2)
        if len(chain) == 2:
            assert np.array_equal(chain[1].codes, ro.image2[i].numpy())
            assert np.array_equal(chain[1].context, ro.context1[i].numpy())


def test_checkpoints_of_a_run_load_and_draw(prompts, tmp_path, tiny_janus):
    """'sft' is the run's latest checkpoints/sft/step-N (our layout); as a path it gets a path label."""
    from transformers import JanusForConditionalGeneration

    from janus_train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus)
    ckpt = save_checkpoint(run / "checkpoints/sft", 2, model, tiny_janus, {}, {}, keep_last=1)
    config = cfg()
    with pytest.raises(RunDirError, match="janus train rl"):
        resolve_checkpoint("rl", run, config)
    assert resolve_checkpoint("sft", run, config).path == str(ckpt.path.resolve())
    assert resolve_checkpoint("base", run, config).label == "base"
    outs = {}
    for ref in ("sft", str(ckpt.path), "tiny:janus"):
        out = outs[ref] = tmp_path / checkpoint_label(ref)
        run_generate(ref, prompts, out, config, run_dir=run, n=1, progress=False)
    rows = {ref: read_generations(out).sort("gen_id") for ref, out in outs.items()}
    assert set(rows["sft"]["label"]) == {"sft"} and set(rows[str(ckpt.path)]["label"]) == {"sft-step-000002"}
    same = [pixels(outs[ref], rows[ref]) for ref in outs]  # same weights, same seeds
    assert all(np.array_equal(same[0][g], other[g]) for other in same[1:] for g in same[0])


def test_checkpoint_references(tmp_path):
    config = cfg()
    assert resolve_checkpoint("org/model", None, config).path == "org/model"
    assert checkpoint_label("deepseek-community/Janus-Pro-7B") == "deepseek-community-Janus-Pro-7B"
    other = tmp_path / "internvl"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))
    with pytest.raises(ModelError, match="'multi_modality' model"):
        resolve_checkpoint(str(other), None, config)
    with pytest.raises(RunDirError, match="--run"):
        resolve_checkpoint("sft", None, config)


def test_cli_draws_one_prompt_and_prints_the_summary(tmp_path):
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", "tiny:janus", "--config", "tiny", "--prompt", "a red cube", "--n", "2"]
    res = CliRunner().invoke(app, [*args, "--introspect", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "janus generate" in res.output and "Yes rate" in res.output and str(out / "images") in res.output
    rows = read_generations(out)
    assert set(rows["prompt"]) == {"a red cube"} and rows["answer"].is_not_null().all()
    assert prompt_frame(["a  red cube", "a red cube", " "]).height == 1


BAD = {
    "both prompt options": (["--prompt", "x", "--prompts", "{tmp}/p.jsonl"], "both of --prompt and --prompts"),
    "neither prompt option": ([], "neither of --prompt and --prompts"),
    "missing checkpoint path": (["--prompt", "x", "--checkpoint", "{tmp}/nope"], "checkpoint not found"),
    "missing prompts file": (["--prompts", "{tmp}/missing.jsonl"], "prompt file not found"),
    "n below one": (["--prompt", "x", "--n", "0"], "--n must be >= 1"),
    "sft without a checkpoint": (["--prompt", "x", "--checkpoint", "sft", "--run", "{tmp}"], "janus train sft"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_before_heavy_imports(case, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a red cube"}) + "\n")
    args, needle = BAD[case]
    args = [a.format(tmp=tmp_path) for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", "tiny:janus"]
    code, stderr, heavy = janus("generate", *args, "--out", tmp_path / "out")
    assert code == 2, stderr
    one_line_error(stderr, needle)
    assert heavy == [] and not (tmp_path / "out").exists()


def test_missing_out_parent_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, stderr, _ = janus("generate", "--checkpoint", "tiny:janus", "--prompt", "x", "--out", blocker / "out")
    assert code == 2
    one_line_error(stderr, "not writable", "--out")
