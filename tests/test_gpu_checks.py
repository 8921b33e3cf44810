"""benchmarks/gpu_checks.sh runs end to end on CPU (--dry-run), so GPU time is never spent on typos."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from procs import HANG_S, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_report

# Figures that need CUDA, or a path the dry run takes in its tiny form (SFT's tiny run has no
# MFU; FLUX's blocks are compiled only on CUDA; the compiled loop runs at 16 prompts only).
GPU_ONLY = {
    "sampler_kernel_us",
    "sampler_speedup",
    "flux_compile_s",
    "flux_psnr_db",  # null when the images are identical (max_abs 0), as on CPU
    "sft_tokens_per_s",
    "sft_mfu_pct",
    "janus_b64_compiled_ms_per_step",
    "gpu_tests_passed",
    "gpu_tests_failed",
}


def gpu_checks(out, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(REPO / "benchmarks" / "gpu_checks.sh"), "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S, env=env, cwd=REPO)


@pytest.mark.slow
def test_dry_run_writes_every_figure(tmp_path):
    """The whole script on CPU with tiny shapes (about 90 s on 2 cores)."""
    res = gpu_checks(tmp_path, "--dry-run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "figures.json").read_text())
    assert set(report["figures"]) == set(gpu_report.FIGURES)
    assert {name: row["status"] for name, row in report["parts"].items()} == dict.fromkeys(
        ["ceilings", "tests", "sampler", "janus", "flux", "sft", "grpo", "janus128", "janus_compiled"], "ok"
    )
    missing = [k for k, v in report["figures"].items() if v is None and k not in GPU_ONLY]
    assert not missing, missing
    assert report["figures"]["gpu_tests_skipped"] >= 4  # the gpu tests, collected and skipped without CUDA
    for name in report["parts"]:
        assert (tmp_path / f"{name}.log").exists()
    log = (tmp_path / "gpu_checks.log").read_text()
    assert "sampler [32 x 16384]" in log and "FLUX: plain" in log


def test_a_deadline_too_short_skips_parts_and_still_reports(tmp_path):
    res = gpu_checks(tmp_path, "--dry-run", "--deadline", "20")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "figures.json").read_text())
    assert set(report["figures"]) == set(gpu_report.FIGURES)
    assert {row["status"] for row in report["parts"].values()} == {"skipped"}
    assert all(v is None for v in report["figures"].values())


def test_report_reads_the_sft_and_grpo_benchmarks_output(tmp_path):
    """bench_sft.py --arch and bench_grpo.py print their figures; the report parses those lines."""
    (tmp_path / "ceilings.json").write_text(json.dumps({"copy_gbs": 4300.0, "matmul_tflops": 780.0}))
    (tmp_path / "sft.log").write_text(
        "Janus-Pro-1b shapes (24 layers, random), device cuda, batch 8, 5 steps, torch 2.11.0\n"
        "tokens/s 41,234   samples/s 51.20\n"
        "model FLOP/s 234.0 T  ->  MFU 23.7% of the H100 bf16 dense peak\n"
    )
    (tmp_path / "grpo.log").write_text(
        "phase         s/step   share\nrollout        9.120     61%\njudge          1.500     10%\n"
        "update         4.300     29%\nstep          14.920  (0.94 rollouts/s, regeneration rate 0.50)\n"
    )
    fig = gpu_report.collect(tmp_path)
    assert fig["sft_tokens_per_s"] == 41234 and fig["sft_mfu_pct"] == pytest.approx(30.0)
    assert (fig["grpo_rollout_s"], fig["grpo_judge_s"], fig["grpo_update_s"]) == (9.12, 1.5, 4.3)
