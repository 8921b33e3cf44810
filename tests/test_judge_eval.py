"""`janus eval judge`: every drawn image scored by the run's judge, per tag; resumable; hf == lmdeploy; tables; CLI."""

from __future__ import annotations

import doctest
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from eval_fakes import PROMPTS, FakeJudge, NoJudge, fake_s, write_generations
from procs import HANG_S
from rich.console import Console
from test_cli_fast import janus, one_line_error

from janus_data.config import load_config, with_overrides
from janus_data.errors import ConfigError, JudgeServerError, RunDirError
from janus_data.eval_results import JUDGE_SUMMARY
from janus_data.judge.hf import HFJudge
from janus_data.judge.server import JudgeServer
from janus_eval import judge_eval
from janus_eval.judge_eval import JUDGE_EVAL_SCHEMA, SUMMARY_SCHEMA, judge_summary, run_judge_eval, score_generations
from janus_eval.tables import comparison_table, judge_eval_tables, tag_table

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = len(PROMPTS) * 2 + 1  # 3 prompts x 2 samples, one of them redrawn once


def tiny_cfg(**score):
    return with_overrides(load_config("tiny"), {"score": score} if score else {})


def rows(out: Path) -> pl.DataFrame:
    return pl.scan_parquet(str(out / "manifests/judge_eval/*.parquet")).collect().sort("gen_id")


def parts(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "manifests/judge_eval").glob("*.parquet"))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    """An OUT with hand-made generations of one checkpoint, not yet judged."""
    out = tmp_path_factory.mktemp("drawn") / "base"
    write_generations(out, "base")
    return out


@pytest.fixture
def out(drawn, tmp_path) -> Path:
    return Path(shutil.copytree(drawn, tmp_path / "base"))


@pytest.fixture(scope="module")
def hf_scored(drawn, tmp_path_factory):
    """The OUT scored with the tiny config's judge (score.backend hf, tiny:internvl), as `janus eval judge` does."""
    out = Path(shutil.copytree(drawn, tmp_path_factory.mktemp("hf") / "base"))
    return out, score_generations(out, tiny_cfg(), progress=False)


# ---------------------------------------------------------------- scoring one OUT


def test_every_image_gets_s_reason_and_pass(hf_scored):
    out, result = hf_scored
    df = rows(out)
    gens = pl.read_parquet(out / "manifests/generations/part-00000.parquet").sort("gen_id")
    assert df.height == result.planned == result.written == N_IMAGES and result.existing == 0
    assert df["gen_id"].to_list() == gens["gen_id"].to_list()
    assert dict(df.schema) == JUDGE_EVAL_SCHEMA
    for col in ("label", "prompt_id", "tags", "sample", "round", "final"):
        assert df[col].to_list() == gens[col].to_list(), col
    assert (df["status"] == "ok").all() and df["score"].is_between(0, 1).all()
    assert df.select(pl.col("score").std()).item() > 0.001  # S depends on the pair
    threshold = tiny_cfg().filter.threshold
    assert df["passed"].to_list() == [s >= threshold for s in df["score"]]
    assert (df["reason"].str.len_chars() > 0).all()
    assert set(df["judge"]) == {"tiny:internvl"} and result.judge == "tiny:internvl"


def test_summary_per_image_and_tag(hf_scored):
    out, result = hf_scored
    df, threshold = rows(out), tiny_cfg().filter.threshold
    summary = pl.read_parquet(out / JUDGE_SUMMARY)
    assert summary.equals(result.summary) and dict(summary.schema) == SUMMARY_SCHEMA
    assert summary.filter(pl.col("image") == "final")["tag"].to_list() == ["all", "color", "counting", "object"]
    assert summary["label"].unique().to_list() == ["base"] and (summary["threshold"] == threshold).all()

    def expect(image: str, tag: str) -> tuple[int, float, float]:
        view = df.filter(pl.col("final") if image == "final" else pl.col("round") == 0)
        if tag != "all":
            view = view.filter(pl.col("tags").list.contains(tag))
        return view.height, view["score"].mean(), (view["score"] >= threshold).mean()

    for row in summary.iter_rows(named=True):
        n, mean, rate = expect(row["image"], row["tag"])
        assert (
            row["n_images"] == n
            and row["mean_score"] == pytest.approx(mean)
            and row["pass_rate"] == pytest.approx(rate)
        )
    n_final = {r["tag"]: r["n_images"] for r in summary.filter(pl.col("image") == "final").iter_rows(named=True)}
    assert n_final == {"all": 6, "color": 2, "object": 2, "counting": 2}  # the redrawn chain counts once, as its final


def test_rerun_judges_nothing_and_loads_no_judge(hf_scored, tmp_path, monkeypatch):
    out = Path(shutil.copytree(hf_scored[0], tmp_path / "base"))
    before = parts(out)
    monkeypatch.setattr(judge_eval, "make_judge", lambda cfg: pytest.fail("a complete OUT must not load a judge"))
    again = score_generations(out, tiny_cfg(), progress=False)
    assert (again.written, again.existing, again.judge) == (0, N_IMAGES, None)
    assert score_generations(out, tiny_cfg(), judge=NoJudge(), progress=False).written == 0
    assert parts(out) == before and rows(out).height == N_IMAGES
    assert again.summary.equals(hf_scored[1].summary)


def test_a_lost_part_is_judged_again_and_nothing_else(out):
    cfg = tiny_cfg(batch_size=3)
    first = FakeJudge()
    score_generations(out, cfg, judge=first, progress=False)
    assert len(parts(out)) == 3 and first.calls == 3
    full = rows(out)
    lost = pl.read_parquet(out / "manifests/judge_eval" / parts(out)[0])
    (out / "manifests/judge_eval" / parts(out)[0]).unlink()
    (out / "manifests/judge_eval" / ".part-x.parquet.abc.tmp").write_bytes(b"torn")  # a killed writer's temp file
    second = FakeJudge()
    result = score_generations(out, cfg, judge=second, progress=False)
    assert (result.written, result.existing) == (lost.height, N_IMAGES - lost.height)
    assert len(second.sent) == lost.height
    assert rows(out).drop("judge").equals(full.drop("judge")) and not list(out.rglob("*.tmp"))


def test_unreadable_images_are_error_rows_then_judged_again(out):
    gens = pl.read_parquet(out / "manifests/generations/part-00000.parquet")
    broken, escaping = gens["gen_id"][0], gens["gen_id"][1]
    good = (out / "images" / f"{broken}.png").read_bytes()
    (out / "images" / f"{broken}.png").write_bytes(b"not a png")
    part = out / "manifests/generations/part-00000.parquet"
    gens.with_columns(
        image_path=pl.when(pl.col("gen_id") == escaping).then(pl.lit("../elsewhere.png")).otherwise("image_path")
    ).write_parquet(part)
    result = score_generations(out, tiny_cfg(), judge=FakeJudge(), progress=False)
    df = rows(out)
    errors = df.filter(pl.col("status") == "error")
    assert result.errors == 2 and sorted(errors["gen_id"]) == sorted([broken, escaping])
    assert errors["score"].is_null().all() and errors["passed"].is_null().all()
    assert "undecodable" in errors.filter(pl.col("gen_id") == broken)["error"][0]
    assert "not a path inside" in errors.filter(pl.col("gen_id") == escaping)["error"][0]
    n_all = result.summary.filter((pl.col("image") == "final") & (pl.col("tag") == "all"))["n_images"][0]
    assert n_all == 6 - 2  # errors are left out of the summary

    keep = score_generations(out, tiny_cfg(retry_errors=False), judge=NoJudge(), progress=False)
    assert keep.written == 0 and keep.retried == 0

    (out / "images" / f"{broken}.png").write_bytes(good)
    gens.write_parquet(part)
    judge = FakeJudge()
    again = score_generations(out, tiny_cfg(), judge=judge, progress=False)
    assert again.retried == again.written == 2 and len(judge.sent) == 2
    df = rows(out)
    assert df.height == N_IMAGES and df["gen_id"].n_unique() == N_IMAGES and (df["status"] == "ok").all()
    assert df.filter(pl.col("gen_id") == broken)["score"][0] == pytest.approx(fake_s(good))


def test_a_judge_that_fails_a_batch_stops_with_what_is_kept(out):
    judge = FakeJudge(fail_on_call=2, error=JudgeServerError("judge server gone", hint="start it again"))
    with pytest.raises(JudgeServerError) as err:
        score_generations(out, tiny_cfg(batch_size=4), judge=judge, progress=False)
    assert "4 of 7 images" in err.value.hint and "rerun the same command" in err.value.hint
    assert rows(out).height == 4 and not (out / JUDGE_SUMMARY).exists()


def test_out_without_generations_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="no generations manifest"):
        score_generations(tmp_path, tiny_cfg(), judge=NoJudge())


def test_lmdeploy_backend_gives_the_same_s_as_hf(out, hf_scored, tiny_internvl):
    """The judge behind `janus serve judge` (LMDeploy's API), reached as score.backend lmdeploy."""
    s = tiny_cfg().score
    hf = HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, s.max_tiles, s.reason_tokens)
    with JudgeServer(hf, model_name="tiny:internvl") as server:
        cfg = tiny_cfg(backend="lmdeploy", endpoints=[server.url], concurrency=2)
        result = score_generations(out, cfg, progress=False)
    got, want = rows(out), rows(hf_scored[0])
    assert result.judge == "server:tiny:internvl" and set(got["judge"]) == {"server:tiny:internvl"}
    assert (got["status"] == "ok").all() and got["gen_id"].to_list() == want["gen_id"].to_list()
    assert (got["score"] - want["score"]).abs().max() < 1e-4  # the tolerance of the judge client's tests
    assert got["passed"].to_list() == want["passed"].to_list()


# ---------------------------------------------------------------- several checkpoints: draw, then judge


def test_run_judge_eval_draws_every_checkpoint_then_loads_the_judge_once(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "tags": t}) + "\n" for p, t in PROMPTS))
    events, judges = [], []
    monkeypatch.setattr(judge_eval, "checkpoint_label", lambda c, cfg, run_dir: {"base": "base"}.get(c, "ckpt-7"))
    monkeypatch.setattr(judge_eval, "check_judge", lambda cfg: events.append("check judge"))

    def fake_generate(ckpt, prompt_file, out, cfg, run_dir, progress):
        events.append(f"draw {ckpt}")
        if not (out / "manifests").exists():
            write_generations(out, out.name, seed=len(events))

    def fake_make_judge(cfg):
        judges.append(FakeJudge())
        events.append("load judge")
        return judges[-1]

    monkeypatch.setattr(judge_eval, "generate", fake_generate)
    monkeypatch.setattr(judge_eval, "make_judge", fake_make_judge)
    run = run_judge_eval(["base", "runs/x/step-7"], prompts, tmp_path / "eval", tiny_cfg(), progress=False)
    assert events == ["check judge", "draw base", "draw runs/x/step-7", "load judge"]
    assert [r.label for r in run.results] == ["base", "ckpt-7"] and len(judges[0].sent) == 2 * N_IMAGES
    for label in ("base", "ckpt-7"):
        assert (tmp_path / "eval" / label / JUDGE_SUMMARY).is_file()
    assert run.summary["label"].unique(maintain_order=True).to_list() == ["base", "ckpt-7"]

    events.clear()
    again = run_judge_eval(["base", "runs/x/step-7"], prompts, tmp_path / "eval", tiny_cfg(), progress=False)
    assert "load judge" not in events and sum(r.written for r in again.results) == 0
    assert again.summary.equals(run.summary)

    with pytest.raises(ConfigError, match="share the label"):
        run_judge_eval(["base", "base"], prompts, tmp_path / "eval", tiny_cfg())


# ---------------------------------------------------------------- tables


def summary_of(label: str, scores: list[float]) -> pl.DataFrame:
    rows_ = pl.DataFrame(
        {
            "gen_id": [f"g{i}" for i in range(len(scores))],
            "label": [label] * len(scores),
            "tags": [["color"], ["color", "count"], []][: len(scores)],
            "round": [0] * len(scores),
            "final": [True] * len(scores),
            "score": scores,
        }
    )
    return judge_summary(rows_, 0.5)


def text(table) -> str:
    console = Console(width=160, record=True)
    console.print(table)
    return console.export_text()


def test_comparison_table_lays_labels_side_by_side_with_the_change():
    frames = [summary_of("base", [0.2, 0.6, 0.9]), summary_of("rl", [0.7, 0.8])]
    table = comparison_table(frames, "pass_rate", where={"image": "final"}, percent=True, title="pass")
    assert [c.header for c in table.columns] == ["tag", "base", "rl", "rl − base"]
    cells = {row[0]: row[1:] for row in zip(*(c._cells for c in table.columns), strict=True)}
    assert cells["all"] == ("66.7%", "100.0%", "+33.3 pt")
    assert cells["color"] == ("50.0%", "100.0%", "+50.0 pt") and cells["count"] == ("100.0%", "100.0%", "+0.0 pt")
    mean = comparison_table(pl.concat(frames), "mean_score", labels=["rl", "base", "sft"], tag_order=["count"])
    assert [c.header for c in mean.columns] == ["tag", "rl", "base", "base − rl"]
    assert list(mean.columns[0]._cells) == ["count", "all", "color"]
    one = comparison_table(frames[:1], "mean_score", delta=True)
    assert [c.header for c in one.columns] == ["tag", "base"]
    assert "0.567" in text(one)


def test_tag_table_lists_each_label_and_tag():
    frame = pl.concat([summary_of("base", [0.2, 0.6, 0.9]), summary_of("rl", [0.7, 0.8])])
    table = tag_table(
        frame,
        {"mean S": "mean_score", "pass": "pass_rate"},
        title="t",
        where={"image": "final"},
        percent=("pass_rate",),
    )
    assert table.row_count == 6
    assert list(table.columns[0]._cells) == ["base"] * 3 + ["rl"] * 3
    assert list(table.columns[4]._cells)[:3] == ["66.7%", "50.0%", "100.0%"]


def test_doctests():
    from janus_data import eval_results

    assert doctest.testmod(eval_results).failed == 0


def test_judge_eval_tables_print(hf_scored):
    out, result = hf_scored
    run = judge_eval.JudgeEvalRun(out.parent, 0.8, [result])
    printed = "".join(text(p) if not isinstance(p, str) else p for p in judge_eval_tables(run))
    assert "judged by tiny:internvl" in printed and "pass (S ≥ 0.8)" in printed and "counting" in printed


# ---------------------------------------------------------------- the command


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a red cube", "tags": ["color"]}) + "\n")
    (tmp_path / "run").mkdir()
    return tmp_path


BAD = {
    "missing prompt file": (
        ["--checkpoint", "base", "--prompts", "{tmp}/nope.jsonl", "--out", "{tmp}/o"],
        "prompt file not found",
    ),
    "nowhere to write": (["--checkpoint", "base", "--prompts", "{tmp}/p.jsonl"], "--out"),
    "no prompt file": (["--checkpoint", "base", "--out", "{tmp}/o", "-c", "tiny"], "eval.judge_prompts"),
    "missing run": (["--checkpoint", "base", "--prompts", "{tmp}/p.jsonl", "--run", "{tmp}/nope"], "does not exist"),
    "sft without a run": (["--checkpoint", "sft", "--prompts", "{tmp}/p.jsonl", "--out", "{tmp}/o"], "pass --run"),
    "run without rl": (["--checkpoint", "rl", "--prompts", "{tmp}/p.jsonl", "--run", "{tmp}/run"], "janus train rl"),
    "bad rounds": (
        ["--checkpoint", "base", "--prompts", "{tmp}/p.jsonl", "--out", "{tmp}/o", "--rounds", "-1", "-c", "tiny"],
        "rounds",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_in_one_line_before_any_heavy_import(case, inputs):
    args, needle = BAD[case]
    code, stderr, heavy = janus("eval", "judge", *(a.format(tmp=inputs) for a in args))
    assert code == 2, stderr
    one_line_error(stderr, needle)
    assert heavy == [], f"{case}: imported {heavy} before failing"
    assert not (inputs / "o").exists() and not (inputs / "run" / "eval").exists()


@pytest.mark.slow
def test_cli_end_to_end_with_the_tiny_model(inputs):
    """Draws with the real generator (janus_eval.generate) and scores with the tiny judge; a rerun does nothing."""
    pytest.importorskip("janus_eval.generate")
    pytest.importorskip("janus_eval.checkpoints")
    cmd = [sys.executable, str(REPO / "cli.py"), "eval", "judge", "--checkpoint", "base", "--prompts"]
    cmd += [str(inputs / "p.jsonl"), "--run", str(inputs / "run"), "--config", "tiny", "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert first.returncode == 0, first.stderr[-3000:]
    out = inputs / "run" / "eval" / "judge" / "base"
    assert rows(out).height == tiny_cfg().eval.images_per_prompt and (out / JUDGE_SUMMARY).is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr
