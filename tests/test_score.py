"""`janus data score`: one row per image, resumable, shardable, bad images as error rows, both backends."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import kill_at
import pandas as pd
import polars as pl
import pytest
import torch
from judge_fakes import Proxy
from procs import HANG_S

from janus_data.config import load_config, with_overrides
from janus_data.dist import Shard
from janus_data.errors import JudgeServerError, RunDirError
from janus_data.judge.client import ServerJudge
from janus_data.judge.hf import HFJudge
from janus_data.judge.server import JudgeServer
from janus_data.judge.types import JudgeResult
from janus_data.score import SCORE_SCHEMA, run_score
from janus_data.summaries import score_histogram, score_table
from janus_data.synth import run_synth

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red cube on a table", "a yellow taxi", "a lighthouse at night"]  # ranks of 2: 1, 0, 1


def scores(run: Path) -> pl.DataFrame:
    return pl.scan_parquet(str(run / "manifests/scores/**/*.parquet")).collect()


def tiny_cfg(**score):
    return with_overrides(load_config("tiny"), {"synth": {"images_per_prompt": 4}, "score": score})


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory, janus_cache) -> Path:
    """A finished synth run: 3 prompts x (2 FLUX + 2 Janus) tiny images."""
    root = tmp_path_factory.mktemp("score")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run_synth(root / "run", tiny_cfg(), prompts, progress=False)
    return root / "run"


@pytest.fixture
def run(synth_run, tmp_path) -> Path:
    """A private copy of the synth run, not yet scored."""
    return Path(shutil.copytree(synth_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def hf_scores(synth_run, tmp_path_factory) -> pl.DataFrame:
    """The run scored in process, once (the reference for the other tests)."""
    run = Path(shutil.copytree(synth_run, tmp_path_factory.mktemp("hf") / "run"))
    run_score(run, tiny_cfg(), progress=False)
    return scores(run).sort("image_id")


@pytest.fixture(scope="module")
def server(tiny_internvl):
    cfg = tiny_cfg().score
    judge = HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, cfg.max_tiles, cfg.reason_tokens)
    with JudgeServer(judge, model_name="tiny-judge") as srv:
        yield srv


def test_one_score_per_image_in_unit_interval_with_reason(hf_scores, synth_run):
    images = pl.scan_parquet(str(synth_run / "manifests/images/**/*.parquet")).collect()
    assert hf_scores.height == images.height == 12
    assert sorted(hf_scores["image_id"]) == sorted(images["image_id"])
    assert hf_scores["image_id"].n_unique() == hf_scores.height
    assert (hf_scores["status"] == "ok").all()
    assert hf_scores["score"].is_between(0, 1).all()
    assert hf_scores.select(pl.col("score").std()).item() > 0.01  # S depends on the pair
    assert all(a == ("yes" if s >= 0.5 else "no") for a, s in zip(hf_scores["answer"], hf_scores["score"], strict=True))
    assert (hf_scores["reason"].str.len_chars() > 0).all()
    assert set(hf_scores["judge"]) == {"tiny:internvl"}
    assert dict(hf_scores.schema) == SCORE_SCHEMA


def test_manifest_reads_with_pandas(hf_scores, tmp_path):
    path = tmp_path / "s.parquet"
    hf_scores.write_parquet(path)
    assert len(pd.read_parquet(path)) == hf_scores.height


def test_rerun_scores_nothing_and_loads_no_judge(run):
    cfg = tiny_cfg()
    first = run_score(run, cfg, progress=False)
    assert first.written == first.planned == 12
    before = sorted(p.name for p in (run / "manifests/scores").rglob("*.parquet"))

    class NoJudge:
        model_id = "never"

        def score(self, prompts, images):
            raise AssertionError("a complete run must not judge again")

    again = run_score(run, cfg, progress=False, judge=NoJudge())
    assert (again.written, again.existing, again.judge) == (0, 12, None)
    assert sorted(p.name for p in (run / "manifests/scores").rglob("*.parquet")) == before
    assert scores(run).height == 12


def test_two_ranks_split_the_work_and_match_one_process(run, hf_scores):
    cfg = tiny_cfg()
    a = run_score(run, cfg, Shard(0, 2), progress=False)
    b = run_score(run, cfg, Shard(1, 2), progress=False)
    assert a.written + b.written == 12 and a.written > 0 and b.written > 0
    got = scores(run).sort("image_id")
    assert got["image_id"].to_list() == hf_scores["image_id"].to_list()
    # Different batch compositions: batched S equals one-at-a-time S well inside 1e-5.
    assert (got["score"] - hf_scores["score"]).abs().max() < 1e-5
    assert set(got["rank"]) == {0, 1}


def test_corrupt_and_unreadable_images_become_error_rows(run):
    images = pl.scan_parquet(str(run / "manifests/images/**/*.parquet")).collect().sort("image_id")
    bad = images.row(0, named=True)
    with open(run / bad["shard"], "r+b") as fh:  # flip bytes inside one stored image
        fh.seek(bad["offset"] + bad["length"] // 2)
        fh.write(b"\x00garbage\x00")
    janus_shards = images.filter(pl.col("generator") == "janus")["shard"].unique().to_list()
    lost = images.filter(pl.col("shard") == janus_shards[0])
    (run / janus_shards[0]).unlink()  # a whole shard gone

    result = run_score(run, tiny_cfg(), progress=False)
    df = scores(run)
    assert df.height == 12 and df["image_id"].n_unique() == 12
    errors = df.filter(pl.col("status") == "error")
    assert set(errors["image_id"]) == {bad["image_id"], *lost["image_id"]}
    assert errors["score"].is_null().all()
    assert errors.filter(pl.col("image_id") == bad["image_id"])["error"].item().startswith("corrupt")
    assert all(e.startswith("unreadable") for e in errors.filter(pl.col("image_id") != bad["image_id"])["error"])
    assert result.errors == errors.height
    assert df.filter(pl.col("status") == "ok")["score"].is_between(0, 1).all()
    by_gen = {r["generator"]: r for r in result.by_generator.iter_rows(named=True)}
    assert sum(r["errors"] for r in by_gen.values()) == errors.height


def test_summary_tables_render(hf_scores, run):
    result = run_score(run, tiny_cfg(), progress=False)
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(score_table(result))
    console.print(score_histogram(result))
    text = console.export_text()
    for word in ("flux", "janus", "mean S", "≥0.8", "0.9–1.0", "█"):
        assert word in text
    assert sum(result.histogram["count"]) == 12


def test_server_backend_matches_in_process(run, server, hf_scores):
    cfg = tiny_cfg(backend="lmdeploy", endpoints=[server.url], model=None, batch_size=5, concurrency=4)
    result = run_score(run, cfg, progress=False)
    assert result.judge == "server:tiny-judge"
    got = scores(run).sort("image_id")
    assert got["image_id"].to_list() == hf_scores["image_id"].to_list()
    assert (got["status"] == "ok").all()
    assert (got["score"] - hf_scores["score"]).abs().max() < 1e-4
    assert got["reason"].to_list() == hf_scores["reason"].to_list()


def test_dead_server_fails_the_batch_and_keeps_finished_rows(run, server, dead_url):
    cfg = tiny_cfg(backend="lmdeploy", endpoints=[server.url], model=None, batch_size=4, retries=2, backoff_s=0.01)

    class DiesAfterOneBatch(ServerJudge):
        calls = 0

        def score(self, prompts, images):
            DiesAfterOneBatch.calls += 1
            if DiesAfterOneBatch.calls == 2:
                self._urls = [dead_url]
                self.endpoints = list(self._urls)
            return super().score(prompts, images)

    flaky = DiesAfterOneBatch([server.url], model="tiny-judge", retries=2, backoff_s=0.01, timeout_s=5)
    with pytest.raises(JudgeServerError) as info:
        run_score(run, cfg, progress=False, judge=flaky)
    message = str(info.value)
    assert "\n" not in message and dead_url in message and "rerun" in message
    assert "4 of 12" in message
    kept = scores(run)
    assert kept.height == 4 and (kept["status"] == "ok").all()

    result = run_score(run, cfg, progress=False)  # the server is back: resume
    assert result.existing == 4 and result.written == 8
    df = scores(run)
    assert df.height == 12 and df["image_id"].n_unique() == 12


def lmdeploy_cfg(url: str, **score):
    return tiny_cfg(backend="lmdeploy", endpoints=[url], model=None, retries=2, backoff_s=0.01, **score)


def no_scores(run: Path) -> bool:
    return not list((run / "manifests" / "scores").rglob("*.parquet"))


def test_pytorch_engine_without_logprobs_mode_fails_in_preflight(run, tiny_internvl):
    judge = HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, max_tiles=2, reason_tokens=4)
    with JudgeServer(judge, model_name="tiny-judge", engine="pytorch") as srv, pytest.raises(JudgeServerError) as err:
        run_score(run, lmdeploy_cfg(srv.url), progress=False)
    message = str(err.value)
    assert "\n" not in message and "refuses logprobs" in message and "--logprobs-mode raw_logprobs" in message
    assert no_scores(run)


@pytest.mark.parametrize("batch_size", [6, 1])
def test_identical_refusal_of_every_image_stops_the_stage(run, server, batch_size):
    refused = (400, {"object": "error", "message": "image too large", "type": "invalid_request_error", "code": 400})
    # Request 0 is the pre-flight's probe, which passes; every image after it is refused.
    every_image = Proxy(server.url, faults=lambda i, body: refused if i > 0 else None)
    with every_image as proxy, pytest.raises(JudgeServerError) as err:
        run_score(run, lmdeploy_cfg(proxy.url, batch_size=batch_size), progress=False)
    message = str(err.value)
    assert "\n" not in message and f"refused all {batch_size} requests" in message and "image too large" in message
    # Batches of one: the first refusal is that image's error row (the next run judges it again).
    assert no_scores(run) if batch_size > 1 else scores(run)["status"].to_list() == ["error"]


def test_context_length_on_every_image_stops_the_stage(run, server):
    """Each image refused with its own message (LMDeploy's context-length 400): still the server's fault."""

    def too_long(i: int, body: dict):
        message = f"Input length ({1000 + i}) must be smaller than the model context length (800)."
        return (
            (400, {"object": "error", "message": message, "type": "invalid_request_error", "code": 400}) if i else None
        )

    with Proxy(server.url, faults=too_long) as proxy, pytest.raises(JudgeServerError) as err:
        run_score(run, lmdeploy_cfg(proxy.url, batch_size=4), progress=False)
    assert "refused all 4 requests" in str(err.value) and "context length" in str(err.value)
    assert no_scores(run)


def test_transient_per_image_errors_are_judged_again(run, server, hf_scores):
    refused = (400, {"object": "error", "message": "transient", "type": "invalid_request_error", "code": 400})
    unlucky: list[str] = []  # the first two images whose S request arrives after the probe's
    lock = threading.Lock()

    def refuse_two(i: int, body: dict):
        url = body["messages"][0]["content"][0]["image_url"]["url"]
        with lock:
            if i > 0 and body.get("logprobs") and len(unlucky) < 2 and url not in unlucky:
                unlucky.append(url)
            return refused if url in unlucky else None

    with Proxy(server.url, faults=refuse_two) as proxy:
        first = run_score(run, lmdeploy_cfg(proxy.url, batch_size=12), progress=False)
    assert first.errors == 2 and scores(run).filter(pl.col("status") == "error").height == 2
    from janus_data.summaries import score_headline

    assert "rerun the same command" in score_headline(first)
    kept = run_score(run, lmdeploy_cfg(server.url, retry_errors=False), progress=False)
    assert kept.written == 0 and scores(run).filter(pl.col("status") == "error").height == 2
    again = run_score(run, lmdeploy_cfg(server.url), progress=False)
    assert (again.retried, again.written, again.errors) == (2, 2, 0)
    df = scores(run).sort("image_id")
    assert df.height == 12 and df["image_id"].n_unique() == 12 and (df["status"] == "ok").all()
    assert (df["score"] - hf_scores["score"]).abs().max() < 1e-4
    assert run_score(run, lmdeploy_cfg(server.url), progress=False).written == 0


def test_run_without_images_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="no image manifest"):
        run_score(tmp_path / "empty", tiny_cfg(), progress=False)


# ---------------------------------------------------------------- real processes: the CLI


def score_cmd(run: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), "data", "score", "--run", str(run), "--no-progress", *extra]


@pytest.mark.slow
def test_sigkill_then_rerun_loses_and_duplicates_nothing(run, hf_scores):
    """SIGKILL right after the second batch's part is published (batches of one image), then rerun."""
    argv = score_cmd(run, "--batch-size", "1")[2:]  # the janus arguments, without python and cli.py
    cmd = kill_at.command("*/manifests/scores/*/part-*.parquet", 2, "after", *argv)
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert scores(run).height == 2  # exactly the two published batches
    res = subprocess.run(score_cmd(run), capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr
    df = scores(run).sort("image_id")
    assert df.height == 12 and df["image_id"].n_unique() == 12
    assert df["image_id"].to_list() == hf_scores["image_id"].to_list()
    assert (df["score"] - hf_scores["score"]).abs().max() < 1e-4  # the scores of an uninterrupted run
    assert not list(run.rglob("*.tmp"))
    again = subprocess.run(score_cmd(run), capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert scores(run).height == 12


def test_cli_unreachable_server_is_one_line_and_writes_nothing(run, dead_url):
    res = subprocess.run(score_cmd(run, "--endpoint", dead_url), capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and dead_url in lines[0] and "lmdeploy serve api_server" in lines[0]
    assert "Traceback" not in res.stderr
    assert not (run / "manifests" / "scores").exists() or not list((run / "manifests/scores").rglob("*.parquet"))


def test_cli_run_without_images_is_one_line(tmp_path):
    res = subprocess.run(score_cmd(tmp_path / "nothing"), capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "janus data synth" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


class ServedJudge:
    """`janus serve judge --port 0` in a child process; `url` is the one it announces once bound."""

    def __init__(self, *args: str):
        cmd = [sys.executable, str(REPO / "cli.py"), "serve", "judge", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.bound = threading.Event()
        self.url = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"at (http://[\d.]+:\d+)/v1", line)
            if found and not self.bound.is_set():
                self.url = found.group(1)
                self.bound.set()  # the socket is bound and listening before this line is printed
        self.bound.set()  # exited without announcing: the test fails below with its output

    def stop(self) -> str:
        """SIGINT (Ctrl-C), wait for the exit; everything the server wrote to stderr."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=HANG_S)
        self.reader.join(timeout=HANG_S)
        return "".join(self.lines)


@pytest.mark.slow
def test_cli_serve_judge_then_score_over_http(run, hf_scores):
    engine = ["--engine", "pytorch", "--logprobs-mode", "raw_logprobs"]
    server = ServedJudge("--model", "tiny:internvl", "--max-tiles", "2", *engine)
    try:
        assert server.bound.wait(timeout=HANG_S) and server.url, "".join(server.lines)[-3000:]
        res = subprocess.run(score_cmd(run, "--endpoint", server.url), capture_output=True, text=True, timeout=HANG_S)
        assert res.returncode == 0, res.stderr
    finally:
        log = server.stop()
    got = scores(run).sort("image_id")
    assert set(got["judge"]) == {"server:tiny:internvl"}
    assert (got["score"] - hf_scores["score"]).abs().max() < 1e-4
    assert "Traceback" not in log


def test_cli_preflight_failure_is_one_line_and_writes_nothing(run, tiny_internvl):
    judge = HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, max_tiles=2, reason_tokens=4)
    with JudgeServer(judge, model_name="tiny:internvl", engine="pytorch") as srv:  # the tiny config's judge name
        res = subprocess.run(score_cmd(run, "--endpoint", srv.url), capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--logprobs-mode raw_logprobs" in lines[0]
    assert no_scores(run)


def test_cli_missing_judge_checkpoint_is_one_line(run):
    res = subprocess.run(
        score_cmd(run, "--backend", "hf", "--model", str(run / "no-such-judge")), capture_output=True, text=True
    )
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "no-such-judge" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (run / "manifests" / "scores").exists()


def test_flagged_and_refused_pairs_are_recorded_not_guessed(run):
    """A judge that sees no yes/no token flags the pair; one that refuses a pair gives an error row."""

    class PickyJudge:
        model_id = "picky"

        def score(self, prompts, images):
            out = []
            for i, _ in enumerate(prompts):
                if i % 3 == 0:
                    out.append(JudgeResult(None, None, "", True))
                elif i % 3 == 1:
                    out.append(JudgeResult(None, None, "", False, error="HTTP 400: cannot decode"))
                else:
                    out.append(JudgeResult(0.9, "yes", "fine", False))
            return out

    result = run_score(run, tiny_cfg(batch_size=12), progress=False, judge=PickyJudge())
    df = scores(run)
    assert df.height == 12
    assert (df.filter(pl.col("status") == "flagged")["score"].is_null()).all()
    assert df.filter(pl.col("status") == "error")["error"].to_list() == ["HTTP 400: cannot decode"] * 4
    assert (result.flagged, result.errors) == (4, 4)
    assert df.filter(pl.col("status") == "ok")["score"].to_list() == [0.9] * 4
