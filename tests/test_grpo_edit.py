"""GRPO on edits (#18): the edit reward, introspective edit rollouts, their log-probs, edit steps in `janus train rl`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_grpo import codebook_scorer, two_processes_vs_one
from transformers import AutoImageProcessor, JanusForConditionalGeneration

from janus_data.config import load_config, with_overrides
from janus_data.errors import RunDirError
from janus_data.generators.sampling import SamplerParams
from janus_data.judge.hf import HFJudge
from janus_data.prompts import load_prompts, write_prompts_manifest
from janus_train.grpo import GRPOStep
from janus_train.logprobs import rollout_logprobs, segments_for
from janus_train.rewards import JudgeScorer, combined_edit_reward, rollout_rewards
from janus_train.rl import run_rl
from janus_train.rl_edits import StepKinds, is_edit_step
from janus_train.rollout import RolloutEngine, RolloutParams, Rollouts
from janus_train.sequences import SequenceBuilder

INSTRUCTIONS = ["make the cube blue", "add a hat", "remove the tree"]
PROMPTS = ["a red cube", "two birds on a tree", "a cat on a sofa"]
NAN = float("nan")


def cfg(**rl):
    base = {"max_steps": 2, "prompts_per_step": 2, "group_size": 4, "micro_batch": 4, "save_every": 1}
    return with_overrides(load_config("tiny"), {"rl": {**base, **rl}})


def picture(seed: int, size=(80, 64)) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8))


@pytest.fixture(scope="module")
def parts(tiny_janus):
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus).eval()
    return model, SequenceBuilder.from_pretrained(str(tiny_janus)), AutoImageProcessor.from_pretrained(tiny_janus)


def engine(parts, rl) -> RolloutEngine:
    model, builder, processor = parts
    image = SamplerParams(rl.cfg_weight, rl.temperature, rl.top_k, rl.top_p)
    return RolloutEngine(model, builder, processor, RolloutParams(image, rl.text_temperature, 6, rl.regen_context))


def edit_rollouts(parts, rl, rows=6, seed0=40) -> Rollouts:
    eng = engine(parts, rl)
    codes, pixels = eng.prepare_sources([picture(i % 3) for i in range(rows)])
    texts = [INSTRUCTIONS[i % 3] for i in range(rows)]
    return eng.run(texts, list(range(seed0, seed0 + rows)), codes, pixels)


# ---------------------------------------------------------------- the reward


def test_edit_reward_is_r_flw_plus_a_quarter_r_psv_on_hand_computed_values():
    flw1, psv1 = torch.tensor([0.8, 0.2, 1.0]), torch.tensor([0.4, 1.0, 0.0])
    r1 = combined_edit_reward(flw1, psv1, 1.0, 0.25)
    assert r1.tolist() == pytest.approx([0.9, 0.45, 1.0])  # 0.8 + 0.1, 0.2 + 0.25, 1.0 + 0
    r2 = combined_edit_reward(torch.tensor([NAN, 0.6, 0.5]), torch.tensor([NAN, 0.8, 1.0]), 1.0, 0.25)
    said_yes = torch.tensor([True, False, False])
    rewards = rollout_rewards(r1, r2, said_yes, scale=1.25)
    assert rewards["image1"].tolist() == pytest.approx([0.9, 0.45, 1.0])
    # the self-check compares the answer with R / (w_flw + w_psv): 0.72, 0.36, 0.8
    assert rewards["judge"].tolist() == pytest.approx([1 - 0.28, 1 - 0.36, 1 - 0.8])
    assert rewards["final"].tolist() == pytest.approx([0.9, 0.8, 0.75])  # Yes keeps image 1's R
    with pytest.raises(ValueError, match="scale"):
        rollout_rewards(r1, r2, said_yes, scale=0.0)


class PairScorer:
    """Answers S_flw, S_psv from the first pixel of the original and of the edit; records each call."""

    name = "pairs"

    def __init__(self):
        self.calls = []

    def score_edits(self, instructions, sources, pixels, tokens, source_tokens):
        self.calls.append((list(instructions), [s.copy() for s in sources], [p.copy() for p in pixels]))
        return [float(p[0, 0, 0]) / 255 for p in pixels], [float(s[0, 0, 0]) / 255 for s in sources]


def test_score_sends_original_and_edit_of_both_images_and_combines_them():
    n, hw = 3, (2, 2, 3)
    source_px = np.stack([np.full(hw, v, np.uint8) for v in (51, 102, 204)])
    image1 = np.stack([np.full(hw, v, np.uint8) for v in (255, 0, 153)])
    image2 = np.stack([np.zeros(hw, np.uint8), np.full(hw, 204, np.uint8), np.zeros(hw, np.uint8)])
    ro = Rollouts(
        prompts=INSTRUCTIONS,
        seeds=[0, 1, 2],
        image1=torch.zeros(n, 4, dtype=torch.long),
        image1_logp=torch.zeros(n, 4),
        said_yes=torch.tensor([True, False, True]),
        judge_ids=[[1], [2], [1]],
        judge_logp=[[0.0], [0.0], [0.0]],
        image2=torch.zeros(n, 4, dtype=torch.long),
        image2_logp=torch.zeros(n, 4),
        pixels1=image1,
        pixels2=image2,
        context1=torch.zeros(n, 4, dtype=torch.long),
        sources=np.zeros((n, 4), np.int64),
        source_pixels=source_px,
    )
    scorer = PairScorer()
    s1, s2 = GRPOStep.score(SimpleNamespace(scorer=scorer, edit_weights=(1.0, 0.25)), ro)
    ((texts, originals, edited),) = scorer.calls  # one call: the three image 1s, then row 1's image 2
    assert texts == [*INSTRUCTIONS, INSTRUCTIONS[1]]
    assert [int(o[0, 0, 0]) for o in originals] == [51, 102, 204, 102]  # each edit's own source, first
    assert [int(e[0, 0, 0]) for e in edited] == [255, 0, 153, 204]
    assert s1.tolist() == pytest.approx([1.0 + 0.25 * 0.2, 0.0 + 0.25 * 0.4, 0.6 + 0.25 * 0.8])
    assert s2[1].item() == pytest.approx(0.8 + 0.25 * 0.4) and s2[[0, 2]].isnan().all()
    assert ro.edit_scores["flw1"].tolist() == pytest.approx([1.0, 0.0, 0.6])


def test_judge_scorer_edits_equal_the_judges_own_scores(tiny_internvl):
    judge = HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, reason_tokens=0)
    sources = [np.asarray(picture(i, (64, 64))) for i in range(3)]
    edits = [np.asarray(picture(10 + i, (64, 64))) for i in range(3)]
    flw, psv = JudgeScorer(judge).score_edits(INSTRUCTIONS, sources, edits, [None] * 3, [None] * 3)
    own = judge.score_edits(INSTRUCTIONS, [Image.fromarray(s) for s in sources], [Image.fromarray(e) for e in edits])
    assert flw == pytest.approx([r.s_flw for r in own], abs=1e-6)
    assert psv == pytest.approx([r.s_psv for r in own], abs=1e-6)


# ---------------------------------------------------------------- the edit rollout


def test_edit_rollout_prefixes_hold_the_source_and_a_rollout_depends_only_on_its_seed(parts, monkeypatch):
    _, builder, _ = parts
    eng = engine(parts, cfg().rl)
    seen = []
    images = eng.images
    monkeypatch.setattr(eng, "images", lambda prefixes, *a, **k: (seen.append(prefixes), images(prefixes, *a, **k))[1])
    codes, pixels = eng.prepare_sources([picture(i % 3) for i in range(6)])
    texts = [INSTRUCTIONS[i % 3] for i in range(6)]
    ro = eng.run(texts, list(range(40, 46)), codes, pixels)
    assert ro.is_edit and pixels.shape == (6, 64, 64, 3)  # centre-cropped to the tiny model's 64 px
    first = seen[0]
    for i in range(6):  # conditional rows, then the twins with the instruction padded
        assert first[i].input_ids.tolist() == builder.edit(texts[i], codes[i]).input_ids.tolist()
        assert first[6 + i].input_ids.tolist() == builder.edit(texts[i], codes[i], drop=True).input_ids.tolist()
    redo = ro.regenerated
    assert 0 < len(redo) < 6  # both branches occur
    assert len(seen) == 2 and len(seen[1]) == 2 * len(redo)
    for j, i in enumerate(redo):  # image 2: the edit prompt with image 1 and its evaluation as context
        want = builder.edit_regen(texts[i], codes[i], ro.context1[i].numpy(), ro.judge_ids[i] + [builder.eos_id])
        assert seen[1][j].input_ids.tolist() == want.input_ids.tolist()
        assert seen[1][j].task == "edit_regen"
    alone = eng.run([texts[redo[0]]], [40 + redo[0]], codes[redo[:1]], pixels[redo[:1]])
    assert torch.equal(alone.image1[0], ro.image1[redo[0]]) and alone.judge_ids[0] == ro.judge_ids[redo[0]]
    assert torch.equal(alone.image2[0], ro.image2[redo[0]])


def test_edit_training_logprobs_equal_the_rollouts_behaviour_logprobs(parts):
    """At the policy that drew them, every segment token's log-prob in the update is the sampler's."""
    model, builder, processor = parts
    rl = cfg().rl
    ro = edit_rollouts(parts, rl, rows=8)
    rows = list(range(len(ro)))
    segments, behaviour = segments_for(ro, rows, "cpu")
    with torch.no_grad():
        logp = rollout_logprobs(model, builder, processor, ro, rows, rl)
    union = torch.stack(list(segments.values())).any(0)
    assert segments["judge"].sum() > len(rows)
    torch.testing.assert_close(logp[union], behaviour[union], atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------- edit steps in janus train rl


def test_step_kinds_are_a_function_of_the_seed_and_count_each_kind():
    kinds = [is_edit_step(7, k, 0.5) for k in range(400)]
    assert 0.4 < sum(kinds) / 400 < 0.6 and kinds == [is_edit_step(7, k, 0.5) for k in range(400)]
    assert not any(is_edit_step(7, k, 0.0) for k in range(50)) and all(is_edit_step(7, k, 1.0) for k in range(50))
    walk = StepKinds(7, 0.5)
    taken = [walk.take(k) for k in range(10)]
    resumed = StepKinds.before(7, 0.5, 6)
    assert [resumed.take(k) for k in range(6, 10)] == taken[6:]
    assert [i for e, i in taken if e] == list(range(sum(e for e, _ in taken)))


@pytest.fixture(scope="module")
def edits_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edits")
    rows = []
    for i, text in enumerate(INSTRUCTIONS):
        picture(i, (48, 40)).save(root / f"{i}.png")
        rows.append({"source_image": f"{i}.png", "instruction": text})
    (root / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "edits.jsonl"


@pytest.fixture
def run(tmp_path) -> Path:
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run = tmp_path / "run"
    write_prompts_manifest(run, load_prompts(tmp_path / "prompts.jsonl")[0])
    return run


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "checkpoints/rl/metrics.jsonl").read_text().splitlines()]


def test_rl_mixes_edit_steps_and_resumes_like_an_uninterrupted_run(run, edits_file, tiny_janus, tmp_path):
    settings = cfg(max_steps=4, edit_share=0.5, edits=str(edits_file), seed=3)
    straight = Path(shutil.copytree(run, tmp_path / "straight"))
    run_rl(straight, settings, init=str(tiny_janus), progress=False, scorer=codebook_scorer(tiny_janus))
    run_rl(run, settings, init=str(tiny_janus), max_steps=2, progress=False, scorer=codebook_scorer(tiny_janus))
    resumed = run_rl(run, settings, resume=True, progress=False, scorer=codebook_scorer(tiny_janus))
    assert (resumed.start_step, resumed.end_step) == (2, 4)
    rows = metrics(run)
    kinds = [bool(is_edit_step(3, k, 0.5)) for k in range(4)]
    assert [bool(m["edit"]) for m in rows] == kinds and 0 < sum(kinds) < 4  # seed 3: both kinds in 4 steps
    for m in rows:
        assert ("reward/flw" in m) == bool(m["edit"]) and np.isfinite(m["loss"])
        if m["edit"]:  # R = S_flw + 0.25 S_psv of the final images; R3 is its mean
            assert m["reward/r3"] == pytest.approx(m["reward/flw"] + 0.25 * m["reward/psv"], abs=1e-5)
    assert [m["reward"] for m in rows] == pytest.approx([m["reward"] for m in metrics(straight)], abs=1e-6)


def test_edit_only_rl_needs_no_prompts_and_missing_edits_are_one_line(tmp_path, edits_file, tiny_janus):
    run = tmp_path / "edits-only"
    settings = cfg(max_steps=1, edit_share=1.0, edits=str(edits_file))
    result = run_rl(run, settings, init=str(tiny_janus), progress=False, scorer=codebook_scorer(tiny_janus))
    assert result.end_step == 1 and metrics(run)[0]["edit"] == 1.0
    with pytest.raises(RunDirError, match=r"rl.edit_share is 1.0 but run .* has no edits") as err:
        run_rl(tmp_path / "other", cfg(edit_share=1.0), init=str(tiny_janus), progress=False)
    assert "rl.edits" in err.value.hint


@pytest.mark.slow
def test_two_processes_run_edit_steps_as_one_does(run, edits_file, tiny_janus, tmp_path):
    """torchrun (gloo, CPU, DDP): every process runs the same kind of step, edit steps split the step's
    edits across processes, and 2 x 1 edit per step trains what 1 x 2 edits does (judge: the tiny
    InternVL in process, both images in each question)."""
    single = Path(shutil.copytree(run, tmp_path / "single"))
    edits = {"edit_share": 0.34, "edits": str(edits_file)}  # seed 0: steps 0 and 1 edit, step 2 draws t2i
    share = two_processes_vs_one(run, single, tiny_janus, tmp_path, 3, **edits)
    print(f"edit steps, two processes vs one: {share:.1e} of the weights more than lr / 10 apart")
    assert share < 1e-3, share
    mine, theirs = metrics(run), metrics(single)
    assert [m["edit"] for m in mine] == [m["edit"] for m in theirs] == [1.0, 1.0, 0.0]
    for x, y in zip(mine, theirs, strict=True):
        # After two updates the weights differ by rounding (above), and a sampled token of the third
        # step's rollouts may flip with them (measured: R3 0.38712 vs 0.38727): that step is compared
        # loosely, the edit steps closely.
        tol = {"rel": 1e-4, "abs": 1e-6} if x["edit"] else {"abs": 2e-3}
        for key in ("reward/r1", "reward/r2", "reward/r3", "loss", "kl", "regen_rate", "reward/flw", "reward/psv"):
            if key in y:
                assert x[key] == pytest.approx(y[key], **tol), (key, x["step"])
