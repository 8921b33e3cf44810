"""`janus data report`: a self-contained HTML page of a run, every link inside it, escaped, atomic, clean in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from procs import HANG_S
from rich.table import Table

from janus_data import report as report_mod
from janus_data.config import load_config, with_overrides
from janus_data.errors import RunDirError
from janus_data.filter import run_filter
from janus_data.plots import line_plot, nice_ticks
from janus_data.report import SECTIONS, build_report, report_table
from janus_data.score import run_score
from janus_data.synth import run_synth

XSS = "<script>alert(1)</script>"
PROMPTS = ["a red cube on a table", f"a sign that reads {XSS}", "two birds on a branch"]
LINK = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
# Headless Chromium logs every console message (console.log/warn/error and uncaught exceptions
# alike, without their level) to stderr as
#   [pid:tid:date/time:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)
# The report has no JavaScript, so any such line is an error.
CONSOLE = re.compile(r"^\[[^\]]*:CONSOLE(?::\d+)?\] (.*)$", re.MULTILINE)


def cfg():
    return with_overrides(
        load_config("tiny"),
        {
            "synth": {"images_per_prompt": 6},
            "sft": {"max_steps": 4, "save_every": 2, "log_every": 1},
            "rl": {"max_steps": 2, "save_every": 2, "prompts_per_step": 2, "group_size": 2, "micro_batch": 2},
        },
    )


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory, janus_cache) -> Path:
    """Synth and score only: 3 prompts (one holding a script tag) x 6 tiny images."""
    root = tmp_path_factory.mktemp("report")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    run_synth(root / "partial", cfg(), root / "prompts.jsonl", progress=False)
    run_score(root / "partial", cfg(), progress=False)
    return root / "partial"


@pytest.fixture(scope="module")
def full_run(partial_run) -> Path:
    """The partial run carried through filter, 4 SFT steps and 2 GRPO steps."""
    from janus_train.rl import run_rl
    from janus_train.sft import run_sft

    run = Path(shutil.copytree(partial_run, partial_run.parent / "full"))
    run_filter(run, cfg(), progress=False)
    run_sft(run, cfg(), progress=False)
    run_rl(run, cfg(), progress=False)
    return run


@pytest.fixture(scope="module")
def full(full_run):
    return build_report(full_run)


@pytest.fixture(scope="module")
def partial(partial_run):
    return build_report(partial_run)


def html(result) -> str:
    return result.path.read_text(encoding="utf-8")


def console_lines(stderr: str) -> list[str]:
    return CONSOLE.findall(stderr)


def chromium_dump(page: Path, profile: Path) -> tuple[str, str]:
    """(dumped DOM, stderr) of headless Chromium opening `page`."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium; CI installs it via the Makefile)")
    cmd = [
        exe,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S, check=False)
    return done.stdout, done.stderr


@pytest.mark.parametrize("which", ["full", "partial"])
def test_every_link_is_a_file_inside_the_report(which, request):
    result = request.getfixturevalue(which)
    root = result.path.parent.resolve()
    page = html(result)
    links = LINK.findall(page)
    assert links
    assert "url(" not in page and "@import" not in page  # nothing fetched from CSS either
    files = set()
    for link in links:
        if link.startswith("#"):
            assert f'id="{link[1:]}"' in page, link
            continue
        assert not link.startswith(("/", "file:", "data:")) and ".." not in link and ":" not in link, link
        target = (root / link).resolve()
        assert target.is_file() and target.is_relative_to(root), link
        files.add(target)
    on_disk = {p.resolve() for p in (root / "assets").iterdir()}
    assert files == on_disk == {p.resolve() for p in result.assets}
    for svg in root.glob("assets/*.svg"):
        text = svg.read_text()
        ET.fromstring(text)  # well-formed XML
        assert "href" not in text


def test_full_run_has_every_section_with_data(full):
    page = html(full)
    assert full.sections == list(SECTIONS)
    assert full.notes == []
    for s in SECTIONS:
        assert page.count(f'<section id="{s}">') == 1
    assert "not run yet" not in page
    names = {p.name for p in full.assets}
    assert {"scores-hist.svg", "scores-pass.svg", "sft-loss.svg", "rl-reward.svg", "rl-kl.svg", "rl-rates.svg"} <= names
    assert sum(n.endswith("-best.png") for n in names) == len(PROMPTS)


def test_partial_run_says_what_to_run_next(partial, partial_run):
    page = html(partial)
    assert partial.sections == list(SECTIONS)
    for command in ("data filter", "train sft", "train rl"):
        assert f"not run yet: <code>janus {command} --run {partial_run}</code>" in page
    assert partial.notes == ["SFT data: not run yet", "SFT: not run yet", "GRPO: not run yet"]
    assert "scores-hist.svg" in page  # the stages that ran still report


def test_prompts_and_reasons_are_escaped(partial):
    page = html(partial)
    assert XSS not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_rebuild_replaces_the_report_atomically(full_run, tmp_path, monkeypatch):
    run = Path(shutil.copytree(full_run, tmp_path / "run"))
    first = build_report(run, prompts_shown=3)
    (first.path.parent / "assets" / "stale.png").write_bytes(b"old")
    (run / ".report.tmp-killed").mkdir()  # what a killed build leaves behind
    second = build_report(run, prompts_shown=1)
    assets = {p.name for p in (second.path.parent / "assets").iterdir()}
    assert assets == {p.name for p in second.assets}
    assert "stale.png" not in assets and len(second.assets) < len(first.assets)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".report")) == []

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    before = second.path.read_bytes()
    monkeypatch.setattr(report_mod, "curves", boom)
    with pytest.raises(RuntimeError):
        build_report(run)
    assert second.path.read_bytes() == before  # the old report is untouched
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".report")) == []


def test_run_without_images_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError) as err:
        build_report(tmp_path)
    assert "no image manifest" in err.value.message and "janus data synth" in err.value.hint
    assert not (tmp_path / "report").exists()


def test_report_table_lists_each_section(partial):
    table = report_table(partial)
    assert isinstance(table, Table) and table.row_count == len(SECTIONS)
    status = list(table.columns[1].cells)
    assert status == ["ok", "ok", "not run yet", "ok", "not run yet", "not run yet"]


def test_console_check_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><p id="x">x</p><script>undefinedFn()</script>')
    dom, stderr = chromium_dump(page, tmp_path / "profile")
    lines = console_lines(stderr)
    assert any("Uncaught ReferenceError: undefinedFn is not defined" in line for line in lines), stderr
    assert 'id="x"' in dom


@pytest.mark.parametrize("which", ["full", "partial"])
def test_chromium_opens_the_report_without_console_errors(which, request, tmp_path):
    result = request.getfixturevalue(which)
    dom, stderr = chromium_dump(result.path, tmp_path / "profile")
    assert console_lines(stderr) == []
    for s in SECTIONS:
        assert f'id="{s}"' in dom


def test_plot_helpers():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3, 97) == [20.0, 40.0, 60.0, 80.0]
    svg = line_plot({"a <b>": ([1, 2, 3], [1.0, float("nan"), 2.0]), "c": ([1], [5.0])}, "t & u", "x", "y")
    root = ET.fromstring(svg)
    assert "a &lt;b&gt;" in svg and "t &amp; u" in svg and root.tag.endswith("svg")
    assert "no data" in line_plot({}, "empty", "x", "y")
