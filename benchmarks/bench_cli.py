"""CLI start-up: how long a bad flag, file or config takes to fail, against `janus --help`, from one run.

    python benchmarks/bench_cli.py                    # the installed `janus`, 5 repeats each
    python benchmarks/bench_cli.py --repeats 9
    python benchmarks/bench_cli.py --cli /tmp/old/cli.py   # another checkout's cli.py, run with this python

Each command runs as a fresh subprocess (what a user waits for, interpreter start included);
the figure is the median wall time over the repeats, and the ratio is against `janus --help`
measured in the same run. Acceptance: every bad-input ratio <= 1.5 (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT = 1.5


def janus_command(cli: Path | None) -> list[str]:
    """argv prefix that runs `janus`: the console script next to this python, else ./cli.py."""
    if cli is not None:
        return [sys.executable, str(cli)]
    script = Path(sys.executable).with_name("janus")
    return [str(script)] if script.exists() else [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py")]


def cases(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """Name -> (janus arguments, expected exit status)."""
    typo = tmp / "typo.yaml"
    typo.write_text("preset: tiny\nsynth:\n  images_per_promt: 4\n")  # misspelled on purpose
    prompts = tmp / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red cube"}\n')
    run = str(tmp / "run")
    return {
        "janus --help": (["--help"], 0),
        "missing prompt file": (["data", "synth", "--prompts", "missing.jsonl", "--run", run], 2),
        "bad threshold": (["data", "filter", "--run", run, "--threshold", "1.5"], 2),
        "unknown config key": (["data", "synth", "--config", str(typo), "--prompts", str(prompts), "--run", run], 2),
    }


def wall(cmd: list[str], expect: int, cwd: Path) -> float:
    """Seconds one subprocess takes; its exit status must be `expect`."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, "JANUS_NO_PROGRESS": "1"})
    seconds = time.perf_counter() - t0
    if out.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {out.returncode}, expected {expect}:\n{out.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="Runs of each command; the median is reported.")
    ap.add_argument("--cli", type=Path, default=None, help="A cli.py to time instead of the installed janus.")
    args = ap.parse_args()

    prefix = janus_command(args.cli)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as d:
        tmp = Path(d)
        todo = cases(tmp)
        wall([*prefix, "--help"], 0, tmp)  # warm the page cache and .pyc files once
        times: dict[str, list[float]] = {name: [] for name in todo}
        for _ in range(args.repeats):  # interleaved, so a noisy moment hits every command alike
            for name, (argv, expect) in todo.items():
                times[name].append(wall([*prefix, *argv], expect, tmp))

    print(f"{' '.join(prefix)} · {platform.machine()} · {os.cpu_count()} CPUs · Python {platform.python_version()}")
    print(f"median of {args.repeats} runs each, as fresh processes\n")
    base = statistics.median(times["janus --help"])
    over = []
    print(f"{'command':<22} {'median s':>9} {'min s':>7} {'x --help':>9}")
    for name, ts in times.items():
        ratio = statistics.median(ts) / base
        verdict = "" if name == "janus --help" else ("  ok" if ratio <= LIMIT else f"  over {LIMIT}")
        print(f"{name:<22} {statistics.median(ts):>9.3f} {min(ts):>7.3f} {ratio:>9.2f}{verdict}")
        if ratio > LIMIT and name != "janus --help":
            over.append(name)
    if over:
        raise SystemExit(f"slower than {LIMIT} x --help: {', '.join(over)}")


if __name__ == "__main__":
    main()
