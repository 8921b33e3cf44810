"""GRPO: rollouts, log-prob consistency, learning, parameters, resume, the judge over HTTP, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from procs import mismatched_share, torchrun
from safetensors.torch import load_file
from transformers import AutoConfig, AutoImageProcessor, JanusForConditionalGeneration
from typer.testing import CliRunner

from cli import app
from janus_data.config import load_config, with_overrides
from janus_data.errors import ConfigError
from janus_data.generators.sampling import SamplerParams
from janus_data.judge.hf import HFJudge
from janus_data.judge.server import JudgeServer
from janus_data.judge.types import JudgeResult
from janus_data.prompts import load_prompts, write_prompts_manifest
from janus_data.vq import VQEncoder
from janus_train.core import FROZEN, module_of
from janus_train.grpo_math import group_advantages
from janus_train.logprobs import rollout_logprobs, segments_for
from janus_train.losses import collate, hidden_states
from janus_train.rewards import CodebookShareScorer, JudgeScorer, RewardError, rollout_rewards
from janus_train.rl import run_rl
from janus_train.rollout import RolloutEngine, RolloutParams, Rollouts, answer_words
from janus_train.sequences import IGNORE, SequenceBuilder

PROMPTS = ["a red cube", "two birds on a tree", "a cat on a sofa", "a blue car", "three green apples"]


def cfg(**rl):
    base = {"max_steps": 2, "prompts_per_step": 2, "group_size": 4, "micro_batch": 3, "save_every": 1}
    return with_overrides(load_config("tiny"), {"rl": {**base, **rl}})


@pytest.fixture(scope="module")
def prompts_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rl")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run = root / "run"
    write_prompts_manifest(run, load_prompts(root / "prompts.jsonl")[0])
    return run


@pytest.fixture
def run(prompts_run, tmp_path) -> Path:
    return Path(shutil.copytree(prompts_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def parts(tiny_janus):
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus).eval()
    return model, SequenceBuilder.from_pretrained(str(tiny_janus)), AutoImageProcessor.from_pretrained(tiny_janus)


def codebook_scorer(tiny_janus, every: int = 4) -> CodebookShareScorer:
    size = AutoConfig.from_pretrained(tiny_janus).vq_config.num_embeddings
    return CodebookShareScorer([c for c in range(size) if c % every == 0], size)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "checkpoints/rl/metrics.jsonl").read_text().splitlines()]


def rollouts(parts, rl, prompts=PROMPTS[:3], seeds=(11, 12, 13)):
    model, builder, processor = parts
    image = SamplerParams(rl.cfg_weight, rl.temperature, rl.top_k, rl.top_p)
    params = RolloutParams(image, rl.text_temperature, 6, rl.regen_context)
    return RolloutEngine(model, builder, processor, params).run(list(prompts), list(seeds))


def test_rollout_structure_and_determinism(parts):
    _, builder, _ = parts
    ro = rollouts(parts, cfg().rl, PROMPTS * 2, range(10))
    yes, no = answer_words(builder)
    said = ro.said_yes.tolist()
    assert 0 < sum(said) < len(said)  # both branches occur
    assert len(yes) != len(no)  # the tiny tokenizer splits "No": the cap must count per word
    for i, ids in enumerate(ro.judge_ids):
        assert ids[0] == (yes[0] if said[i] else no[0])
        word = yes if said[i] else no
        # reason_tokens (6) counts after the row's own word; the tiny model never says <EOS>, so
        # every reason is cut at the cap
        assert len(ids) == len(word) + 6 and builder.eos_id not in ids
        assert ids[: len(word)] == word  # the forced word, whole
        assert all(np.isnan(ro.judge_logp[i][k]) for k in range(1, len(word)))  # forced: no log-prob
        assert ro.judge_logp[i][0] <= 0 and not np.isnan(ro.judge_logp[i][0])
        if said[i]:
            assert not ro.image2[i].any() and not ro.pixels2[i].any()
        else:
            assert ro.image2[i].any() and ro.pixels2[i].any()
    assert ro.regenerated == [i for i, s in enumerate(said) if not s]
    # A rollout depends only on its seed: alone equals batched.
    alone = rollouts(parts, cfg().rl, [PROMPTS[2]], [2])
    assert torch.equal(alone.image1[0], ro.image1[2]) and alone.judge_ids[0] == ro.judge_ids[2]
    assert torch.equal(alone.image2[0], ro.image2[2])


@pytest.mark.parametrize(
    "overrides",
    [{}, {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "text_temperature": 0.7, "cfg_weight": 3.0}],
    ids=["paper", "topk-topp-temps"],
)
def test_training_logprobs_equal_the_rollouts_behaviour_logprobs(parts, overrides):
    """At the policy that drew them, the loss's log-probs of every segment token are the sampler's."""
    model, builder, processor = parts
    rl = cfg(**overrides).rl
    ro = rollouts(parts, rl, PROMPTS * 2, range(20, 30))
    rows = list(range(len(ro)))
    segments, behaviour = segments_for(ro, rows, "cpu")
    with torch.no_grad():
        logp = rollout_logprobs(model, builder, processor, ro, rows, rl)
    union = torch.stack(list(segments.values())).any(0)
    assert segments["judge"].sum() > len(rows)  # reasons, not only answers
    torch.testing.assert_close(logp[union], behaviour[union], atol=2e-4, rtol=1e-4)
    # The released code's definition is a different distribution (documented, opt-in).
    divided = rollout_logprobs(model, builder, processor, ro, rows, cfg(image_logp="cfg_divided").rl)
    assert not torch.allclose(divided[segments["image1"]], behaviour[segments["image1"]], atol=1e-2)


def test_segments_cover_image1_the_sampled_evaluation_and_the_final_image(parts):
    ro = rollouts(parts, cfg().rl, PROMPTS * 2, range(10))
    rows = list(range(len(ro)))
    seg, _ = segments_for(ro, rows, "cpu")
    n = ro.image1.shape[1]
    assert seg["image1"].sum(1).tolist() == [n] * len(rows)
    assert seg["final"].sum(1).tolist() == [n] * len(rows)
    for i in rows:
        assert bool((seg["final"][i] == seg["image1"][i]).all()) == bool(ro.said_yes[i])
        sampled = sum(not np.isnan(v) for v in ro.judge_logp[i])
        assert int(seg["judge"][i].sum()) == sampled


def hand_rollouts(eos: int, yes: list[int], no: list[int], n: int = 2) -> Rollouts:
    """Three rollouts of N = 2 codes: Yes + reason + <EOS>; No (split) + reason + <EOS>; Yes + a reason cut at the cap."""
    judge_ids = [[*yes, 7, 8, eos], [*no, 9, eos], [*yes, 7, 8, 9]]
    # behaviour log-probs: the answer's first token, NaN on a split word's forced tokens, the reason
    logp = lambda word, k: [-0.1] + [float("nan")] * (len(word) - 1) + [-0.2] * k  # noqa: E731
    judge_logp = [logp(yes, 3), logp(no, 2), logp(yes, 3)]
    zeros = torch.zeros(3, n)
    return Rollouts(
        prompts=["a", "b", "c"],
        seeds=[0, 1, 2],
        image1=torch.ones(3, n, dtype=torch.long),
        image1_logp=zeros - 0.2,
        said_yes=torch.tensor([True, False, True]),
        judge_ids=judge_ids,
        judge_logp=judge_logp,
        image2=torch.ones(3, n, dtype=torch.long),
        image2_logp=zeros - 0.3,
        pixels1=np.zeros((3, 4, 4, 3), np.uint8),
        pixels2=np.zeros((3, 4, 4, 3), np.uint8),
        context1=torch.zeros(3, n, dtype=torch.long),
    )


def test_judge_segment_keeps_or_leaves_out_the_eos(parts):
    """rl.judge_eos: the reason's <EOS> is trained (True) or only context (False, released llama.py:222-224)."""
    _, builder, _ = parts
    yes, no = answer_words(builder)
    ro = hand_rollouts(builder.eos_id, yes, no)
    n, rows = 2, [0, 1, 2]
    width = max(len(ids) for ids in ro.judge_ids)
    with_eos, behaviour = segments_for(ro, rows, "cpu")
    without, same = segments_for(ro, rows, "cpu", eos_id=builder.eos_id)
    assert torch.equal(behaviour, same)
    for i, ids in enumerate(ro.judge_ids):
        word = yes if i != 1 else no
        sampled = [n] + [n + k for k in range(len(word), len(ids))]  # the answer's first token, then the reason
        assert torch.nonzero(with_eos["judge"][i]).flatten().tolist() == sampled
        kept = sampled[:-1] if ids[-1] == builder.eos_id else sampled  # a reason cut at the cap keeps all
        assert torch.nonzero(without["judge"][i]).flatten().tolist() == kept
        assert not without["judge"][i, n + len(ids) : n + width].any()  # padding never
    assert without["judge"][2].sum() == with_eos["judge"][2].sum() == 4
    for s in ("image1", "final"):
        assert torch.equal(with_eos[s], without[s])


@pytest.mark.parametrize("text_temperature", [1.0, 0.7])
def test_answer_logprob_two_way_or_full_vocabulary(parts, text_temperature):
    """rl.answer_logp: the answer's training log-prob, by hand from the lm_head logits at its position."""
    model, builder, processor = parts
    rl = cfg(text_temperature=text_temperature).rl
    ro = rollouts(parts, rl, PROMPTS[:4], range(40, 44))
    rows = list(range(len(ro)))
    n = ro.image1.shape[1]
    yes, no = answer_words(builder)
    with torch.no_grad():
        two_way = rollout_logprobs(model, builder, processor, ro, rows, rl)
        # replace(), not cfg(): validate() refuses 'full' with 'sampled' for training, not for this probe.
        full = rollout_logprobs(model, builder, processor, ro, rows, dataclasses.replace(rl, answer_logp="full"))
        samples = [builder.judge(ro.prompts[r], Image.fromarray(ro.pixels1[r]), ro.judge_ids[r]) for r in rows]
        batch = collate(samples, builder.pad_id, processor)
        hidden = hidden_states(model, batch, processor)
    for i, r in enumerate(rows):
        pos = int(torch.nonzero(batch.text_labels[i] != IGNORE)[0])  # the answer's target position
        logits = model.lm_head(hidden[i, pos]).detach().double() / text_temperature
        answer = ro.judge_ids[r][0]
        expect_full = logits[answer] - torch.logsumexp(logits, 0)
        pair = logits[[yes[0], no[0]]]
        expect_two = logits[answer] - torch.logsumexp(pair, 0)
        assert float(full[i, n]) == pytest.approx(float(expect_full), abs=2e-5)
        assert float(two_way[i, n]) == pytest.approx(float(expect_two), abs=2e-5)
        assert float(two_way[i, n]) == pytest.approx(ro.judge_logp[r][0], abs=2e-5)  # the rollout's behaviour
        assert float(full[i, n]) < float(two_way[i, n])  # the full softmax spreads mass over every word
        torch.testing.assert_close(full[i, n + 1 :], two_way[i, n + 1 :])  # the other tokens are unchanged


def test_answer_logp_full_needs_cfg_divided(run, tiny_janus):
    with pytest.raises(ConfigError, match=r"answer_logp 'full' needs rl\.image_logp 'cfg_divided'"):
        run_rl(run, cfg(answer_logp="full"), init=str(tiny_janus), progress=False)
    assert not (run / "checkpoints/rl").exists()


@pytest.mark.parametrize("regen_context", ["reencoded", "sampled"])
def test_regeneration_context(parts, tiny_janus, monkeypatch, regen_context):
    """rl.regen_context: image 1 in the regeneration prefix, at the rollout and at the update."""
    model, builder, processor = parts
    seen = []
    original = builder.regen

    def spy(prompt, bad_codes, *args, **kwargs):
        seen.append(np.array(bad_codes))
        return original(prompt, bad_codes, *args, **kwargs)

    monkeypatch.setattr(builder, "regen", spy)
    rl = cfg(regen_context=regen_context).rl
    ro = rollouts(parts, rl, PROMPTS * 2, range(10))
    redo = ro.regenerated
    assert redo and not ro.context1[ro.said_yes].any()
    at_rollout = np.stack(seen[: len(redo)])  # the conditional prefixes, then their twins
    assert np.array_equal(at_rollout, np.stack(seen[len(redo) : 2 * len(redo)]))
    assert np.array_equal(at_rollout, ro.context1[redo].numpy())
    if regen_context == "reencoded":
        # VQEncoder's semantics (pad-to-square, l2-normalised nearest code), weights read from the checkpoint
        vq = VQEncoder(str(tiny_janus), torch.device("cpu"), torch.float32)
        expected = vq.encode([Image.fromarray(ro.pixels1[i]) for i in redo])
        assert np.array_equal(at_rollout, expected)
        assert (at_rollout != ro.image1[redo].numpy()).any()  # decode -> encode is no identity
    else:
        assert np.array_equal(at_rollout, ro.image1[redo].numpy())
    seen.clear()
    rows = list(range(len(ro)))
    segments, behaviour = segments_for(ro, rows, "cpu")
    with torch.no_grad():
        logp = rollout_logprobs(model, builder, processor, ro, rows, rl)
    assert np.array_equal(np.stack(seen[: len(redo)]), at_rollout)  # the update conditions on the same codes
    torch.testing.assert_close(logp[segments["final"]], behaviour[segments["final"]], atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_grpo_raises_a_known_reward_from_the_untrained_level(run, tiny_janus, parts):
    """Synthetic S = share of an image's codes in a quarter of the codebook: training must raise it.

    The untrained and the trained policy draw image 1 for the same 120 (prompt, seed) pairs. The
    bounds are 4 standard errors measured here (of S, and of the paired differences), not a
    baseline from another run: the untrained policy is at chance (the target's share of the
    codebook), and the trained one beats it on the very same prompts and seeds.
    """
    rl = {"max_steps": 30, "prompts_per_step": 4, "micro_batch": 8, "lr": 2e-3, "save_every": 100}
    scorer = codebook_scorer(tiny_janus)
    result = run_rl(run, cfg(**rl), init=str(tiny_janus), progress=False, scorer=scorer)
    model, builder, processor = parts
    trained = JanusForConditionalGeneration.from_pretrained(result.checkpoint).eval()
    prompts, seeds = PROMPTS * 24, range(1000, 1120)

    def shares(policy) -> np.ndarray:
        ro = rollouts((policy, builder, processor), cfg().rl, prompts, seeds)
        return np.array(scorer.score(ro.prompts, list(ro.pixels1), list(ro.image1)))

    before, after = shares(model), shares(trained)
    n, chance = len(before), float(scorer.mask.float().mean())
    se_before = before.std(ddof=1) / np.sqrt(n)
    gain = after - before
    se_gain = gain.std(ddof=1) / np.sqrt(n)
    print(
        f"GRPO learning: S {before.mean():.3f} ± {se_before:.3f} -> {after.mean():.3f}, gain {gain.mean():.3f} ± {se_gain:.3f}"
    )
    assert abs(before.mean() - chance) < 4 * se_before, (before.mean(), chance, se_before)
    assert gain.mean() > 4 * se_gain, (gain.mean(), se_gain)


def test_one_step_changes_every_trainable_parameter_and_no_frozen_one(run, tiny_janus):
    before = load_file(tiny_janus / "model.safetensors")
    result = run_rl(run, cfg(), init=str(tiny_janus), max_steps=1, progress=False)
    after = load_file(result.checkpoint / "model.safetensors")
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        changed = not torch.equal(tensor, after[name])
        assert changed == (module_of(name) not in FROZEN), name
    assert np.isfinite(metrics(run)[0]["loss"])


def test_resume_equals_an_uninterrupted_run(run, tiny_janus, tmp_path):
    """Judge rewards (tiny InternVL in process), reference refreshes every step: 2 + 2 == 4."""
    straight = Path(shutil.copytree(run, tmp_path / "straight"))
    settings = cfg(max_steps=4, ref_refresh_every=1, refresh_lr_factor=0.5)
    run_rl(straight, settings, init=str(tiny_janus), progress=False)
    run_rl(run, settings, init=str(tiny_janus), max_steps=2, progress=False)
    resumed = run_rl(run, settings, resume=True, progress=False)
    assert resumed.start_step == 2 and resumed.end_step == 4 and resumed.refreshes == 4
    a = load_file(straight / "checkpoints/rl/step-000004/model.safetensors")
    b = load_file(run / "checkpoints/rl/step-000004/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert [m["reward"] for m in metrics(straight)] == pytest.approx([m["reward"] for m in metrics(run)], abs=1e-6)
    assert [m["lr"] for m in metrics(run)] == pytest.approx([m["lr"] for m in metrics(straight)])


def test_a_group_with_one_reward_trains_without_nan(run, tiny_janus):
    """Every image scores 0: R1 and R3 have zero variance, hence zero advantage; no NaN anywhere."""
    empty = CodebookShareScorer([], AutoConfig.from_pretrained(tiny_janus).vq_config.num_embeddings)
    run_rl(run, cfg(), init=str(tiny_janus), progress=False, scorer=empty)
    for line in metrics(run):
        assert line["reward/r1"] == line["reward/r3"] == 0.0 and all(np.isfinite(v) for v in line.values())


class FlakyJudge:
    """Fails the first `fail` calls for every image, then scores by a fixed rule."""

    def __init__(self, fail: int):
        self.fail = fail
        self.calls = 0

    def score(self, prompts, images):
        self.calls += 1
        if self.calls <= self.fail:
            return [JudgeResult(None, None, "", False, error="HTTP 500 from the judge") for _ in images]
        return [JudgeResult(0.25 + 0.5 * (i % 2), "yes", "", False) for i in range(len(images))]


def test_judge_failures_are_retried_and_never_scored_zero(run, tiny_janus):
    flaky = JudgeScorer(FlakyJudge(fail=2), retries=3, backoff_s=0.0)
    run_rl(run, cfg(max_steps=1), init=str(tiny_janus), progress=False, scorer=flaky)
    assert 0 < metrics(run)[0]["reward/r1"] < 1
    dead = JudgeScorer(FlakyJudge(fail=99), retries=3, backoff_s=0.0)
    with pytest.raises(RewardError, match=r"scored 0 of \d+ images after 3 tries .*HTTP 500.*never scored"):
        run_rl(run, cfg(max_steps=2), resume=True, progress=False, scorer=dead)
    assert sorted(p.name for p in (run / "checkpoints/rl").glob("step-*")) == ["step-000001"]


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory, tiny_janus) -> Path:
    """A tiny SFT checkpoint the way users make one: synth -> score -> filter -> 2 SFT steps."""
    from janus_data.filter import run_filter
    from janus_data.score import run_score
    from janus_data.synth import run_synth
    from janus_train.sft import run_sft

    root = tmp_path_factory.mktemp("rl-sft")
    (root / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    settings = with_overrides(
        load_config("tiny"),
        {
            "synth": {"images_per_prompt": 6},
            "filter": {"threshold": 0.6},
            "sft": {"max_steps": 2, "save_every": 2, "warmup_steps": 1},
        },
    )
    run_synth(root / "run", settings, root / "p.jsonl", progress=False)
    run_score(root / "run", settings, progress=False)
    run_filter(root / "run", settings, progress=False)
    return run_sft(root / "run", settings, progress=False).checkpoint


def test_cli_end_to_end_from_sft_checkpoint_with_the_judge_over_http(run, sft_checkpoint, tiny_internvl):
    judge = HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, max_tiles=2, reason_tokens=0)
    with JudgeServer(judge, model_name="tiny:internvl", max_batch=16) as server:
        out = CliRunner().invoke(
            app,
            [
                "train",
                "rl",
                "--run",
                str(run),
                "--init",
                str(sft_checkpoint),
                "--config",
                "tiny",
                "--max-steps",
                "2",
                "--endpoint",
                server.url,
                "--no-progress",
            ],
        )
    assert out.exit_code == 0, out.output
    assert "janus train rl" in out.output and "R1 = S(image 1)" in out.output and "judge" in out.output
    ckpt = run / "checkpoints/rl/step-000002"
    model = JanusForConditionalGeneration.from_pretrained(ckpt)  # stock transformers
    assert isinstance(model, JanusForConditionalGeneration)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["init"] == str(sft_checkpoint) and state["scorer"].startswith("judge:")
    lines = metrics(run)
    assert len(lines) == 2 and {"reward/r1", "reward/r2", "reward/r3", "kl", "aha_rate", "time/judge"} <= set(lines[0])


def test_cli_bad_input_is_one_line(run, tmp_path, dead_url):
    runner = CliRunner()
    dead = runner.invoke(
        app,
        [
            "train",
            "rl",
            "--run",
            str(run),
            "--init",
            "tiny:janus",
            "--endpoint",
            dead_url,
            "--config",
            "tiny",
        ],
    )
    assert dead.exit_code == 2 and dead_url.removeprefix("http://") in dead.output
    assert not (run / "checkpoints/rl").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nrl:\n  group_size: 1\n")
    one = runner.invoke(app, ["train", "rl", "--run", str(run), "--config", str(bad)])
    assert one.exit_code == 2 and "group_size" in one.output
    empty = runner.invoke(app, ["train", "rl", "--run", str(tmp_path / "nothing"), "--config", "tiny"])
    assert empty.exit_code == 2 and "prompts" in empty.output
    missing = runner.invoke(
        app, ["train", "rl", "--run", str(run), "--init", str(tmp_path / "no-ckpt"), "--config", "tiny"]
    )
    assert missing.exit_code == 2 and "no-ckpt" in missing.output
    resume = runner.invoke(app, ["train", "rl", "--run", str(run), "--config", "tiny", "--resume"])
    assert resume.exit_code == 2 and "no checkpoint to resume" in resume.output


def test_reference_refresh_triggers_on_schedule_and_on_a_reward_drop():
    from janus_train.grpo import RefState

    every = cfg(ref_refresh_every=3).rl
    state = RefState()
    assert [state.observe(0.5, every, step) for step in (1, 2, 3)] == [False, False, True]
    state.refreshed(3, every)
    assert [state.observe(0.5, every, step) for step in (4, 5, 6)] == [False, False, True]
    drop = cfg(ref_refresh_drop=0.05, reward_ema=0.5, refresh_lr_factor=0.5).rl
    state = RefState()
    seen = [state.observe(r, drop, k) for k, r in enumerate([0.5, 0.6, 0.7, 0.7, 0.55, 0.5], start=1)]
    assert seen == [False, False, False, False, True, True]  # ema 0.5 .55 .625 .6625 .606 .553
    state.refreshed(6, drop)
    assert state.best == state.ema and state.lr_scale == 0.5 and state.refreshes == 1


def test_learning_rate_schedules():
    from janus_train.grpo import RefState
    from janus_train.optim import rl_lr_lambda

    state = RefState()
    cosine = rl_lr_lambda(cfg(max_steps=105, warmup_steps=5, min_lr_ratio=0.0).rl, state)
    assert [round(cosine(s), 4) for s in (0, 4, 5, 55, 105)] == [0.2, 1.0, 1.0, 0.5, 0.0]
    linear = rl_lr_lambda(cfg(max_steps=105, warmup_steps=5, schedule="linear", min_lr_ratio=0.2).rl, state)
    assert [round(linear(s), 4) for s in (5, 55, 105)] == [1.0, 0.6, 0.2]
    state.lr_scale = 0.5
    assert linear(5) == 0.5


RELEASED = {"lr": 3e-7, "warmup_steps": 5, "convert_step": 30, "schedule": "released", "max_steps": 3000}
RELEASED_RATIOS = {"convert_lr_ratio": 1 / 3, "min_lr_ratio": 1 / 6}  # convert_lr 1e-7, min_lr 5e-8


def test_released_learning_rate_schedule():
    """grpo_trainer_t2iv1.py:70-88 with grpo.yml:28-34 (lr 3e-7, warm-up 5, convert 30 at 1e-7, min 5e-8), T 3000."""
    from janus_train.grpo import RefState
    from janus_train.optim import rl_lr_lambda

    rl = cfg(**RELEASED, **RELEASED_RATIOS).rl
    f = rl_lr_lambda(rl, RefState())
    by_hand = {
        0: 0.0,  # 3e-7 * 0 / 5
        1: 6e-8,  # 3e-7 * 1 / 5
        4: 2.4e-7,  # 3e-7 * 4 / 5
        5: 3e-7,  # 3e-7 + (1e-7 - 3e-7) * 0 / 25
        10: 2.6e-7,  # 3e-7 - 2e-7 * 5 / 25
        30: 1e-7,  # 1e-7 + (5e-8 - 1e-7) * 0 / 2970
        100: 9.882154882154882e-08,  # 1e-7 - 5e-8 * 70 / 2970
        1000: 8.367003367003367e-08,  # 1e-7 - 5e-8 * 970 / 2970
        3000: 5e-8,  # 1e-7 - 5e-8 * 2970 / 2970
    }
    for step, lr in by_hand.items():
        assert rl.lr * f(step) == pytest.approx(lr, rel=1e-15, abs=0), step
    assert rl.lr * f(3100) == pytest.approx(5e-8, rel=1e-15, abs=0)  # a longer --max-steps holds min_lr
    # max_steps <= convert_step: the last piece is never reached in the run, and nothing divides by 0
    short = rl_lr_lambda(cfg(**{**RELEASED, "max_steps": 20}, **RELEASED_RATIOS).rl, RefState())
    assert [short(x) for x in (0, 5, 20)] == pytest.approx([0.0, 1.0, 1 - (2 / 3) * 15 / 25], rel=1e-15, abs=0)
    assert short(30) == pytest.approx(1 / 6, rel=1e-15, abs=0)


def test_released_schedule_through_lambda_lr_first_update_at_zero():
    """The optimizer steps before the scheduler: update k uses lr(k - 1), so update 1 uses 0."""
    from janus_train.grpo import RefState
    from janus_train.optim import rl_lr_lambda

    rl = cfg(**RELEASED, **RELEASED_RATIOS).rl
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=rl.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rl_lr_lambda(rl, RefState()))
    used = []
    for _ in range(7):
        optimizer.zero_grad()
        before = weight.detach().clone()
        (weight * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if len(used) == 1:
            assert torch.equal(weight.detach(), before)  # lr 0: the first update changes nothing
    # updates 1-7 use lr(0..6): 3e-7 * x / 5 for x < 5, then 3e-7 - 2e-7 * (x - 5) / 25
    assert used == pytest.approx([0.0, 6e-8, 1.2e-7, 1.8e-7, 2.4e-7, 3e-7, 2.92e-7], rel=1e-15, abs=0)
    assert not torch.equal(weight.detach(), torch.ones(3))


def two_processes_vs_one(run: Path, single: Path, tiny_janus: Path, tmp_path: Path, steps: int, **rl) -> float:
    """`steps` GRPO steps as two torchrun processes of 1 prompt each (in `run`) and as one process of 2
    (in `single`); the share of weights more than lr / 10 apart (`procs.mismatched_share`)."""
    run_rl(single, cfg(max_steps=steps, prompts_per_step=2, **rl), init=str(tiny_janus), progress=False)
    base = {"max_steps": steps, "prompts_per_step": 1, "group_size": 4, "micro_batch": 3, "save_every": 1}
    overrides = tmp_path / "ddp.yaml"
    overrides.write_text(json.dumps({"preset": "tiny", "rl": {"model": str(tiny_janus), **base, **rl}}))
    res = torchrun("train", "rl", "--run-dir", str(run), "--config", str(overrides), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (load_file(r / f"checkpoints/rl/step-{steps:06d}/model.safetensors") for r in (run, single))
    return mismatched_share(a, b, cfg().rl.lr)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(run, tiny_janus, tmp_path, parallel):
    """torchrun (gloo, CPU): each process rolls out its own prompts and judges them; the gradient
    is the global batch's, so 2 x 1 prompt per step trains what 1 x 2 prompts does. Under FSDP2
    the policy is sharded and the rollouts run on a whole copy refreshed after each update."""
    single = Path(shutil.copytree(run, tmp_path / "single"))
    share = two_processes_vs_one(run, single, tiny_janus, tmp_path, 2, parallel=parallel)
    print(f"two processes vs one: {share:.1e} of the weights more than lr / 10 apart")
    assert share < 1e-3, share
    for x, y in zip(metrics(run), metrics(single), strict=True):
        for key in ("reward/r1", "reward/r2", "reward/r3", "loss", "kl", "regen_rate"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    # A checkpoint is whole whatever the parallelism: one process resumes the two-process run.
    resumed = run_rl(run, cfg(max_steps=3, prompts_per_step=2), resume=True, progress=False)
    assert (resumed.start_step, resumed.end_step) == (2, 3)


def test_a_bf16_rollout_copy_follows_the_policy(run, tiny_janus):
    """rollout_dtype bfloat16 (the default on CUDA): rollouts run on a bf16 copy that is
    refreshed in place after every update."""
    from janus_train.core import Distributed, set_trainable
    from janus_train.grpo import GRPOStep

    model = JanusForConditionalGeneration.from_pretrained(tiny_janus)
    set_trainable(model)
    reference = JanusForConditionalGeneration.from_pretrained(tiny_janus).eval().requires_grad_(False)
    builder = SequenceBuilder.from_pretrained(str(tiny_janus))
    processor = AutoImageProcessor.from_pretrained(tiny_janus)
    rl = cfg(rollout_dtype="bfloat16").rl
    step = GRPOStep(model, reference, builder, processor, codebook_scorer(tiny_janus), rl, Distributed())
    assert step.actor is not model and next(step.actor.parameters()).dtype == torch.bfloat16
    before = [p.clone() for p in step.actor.parameters()]
    ro = step.rollout(PROMPTS[:2] * 4, list(range(8)))
    assert ro.image1.shape == (8, 16) and torch.isfinite(ro.image1_logp).all()
    s1, s2 = step.score(ro)
    advantages = {k: group_advantages(v, 4) for k, v in rollout_rewards(s1, s2, ro.said_yes).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step.backward(ro, advantages)
    optimizer.step()
    step.sync_actor()
    for mine, theirs in zip(step.actor.parameters(), model.parameters(), strict=True):
        assert torch.equal(mine, theirs.to(torch.bfloat16))
    assert any(not torch.equal(m, o) for m, o in zip(step.actor.parameters(), before, strict=True))
    assert (
        cfg().rl.rollout_dtype == "auto"
        and GRPOStep(model, reference, builder, processor, codebook_scorer(tiny_janus), cfg().rl, Distributed()).actor
        is model
    )  # on CPU, auto rolls out with the policy itself
