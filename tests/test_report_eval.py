"""The report's evaluation section: checkpoints side by side (tables, introspection figures, images), escaped, clean in Chromium."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest
from eval_fakes import PROMPTS, FakeJudge, write_generations
from procs import HANG_S
from test_report import LINK, chromium_dump, console_lines

from janus_data.config import load_config
from janus_data.eval_results import GENEVAL_INTROSPECT, GENEVAL_SUMMARY, JUDGE_SUMMARY, eval_root
from janus_data.prompts import load_prompts, write_prompts_manifest
from janus_data.report import SECTIONS, build_report, report_table
from janus_data.synth import IMAGE_SCHEMA
from janus_eval.judge_eval import score_generations

REPO = Path(__file__).resolve().parent.parent
LABELS = ("rl", "base", "sft")  # written out of order: the report puts them in training order
ODD = "x<script>y"  # a checkpoint label with markup: a directory name like any other
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
ACCURACY = {"base": 0.5, "sft": 0.625, "rl": 0.75}


def bare_run(root: Path) -> Path:
    """A run with prompts and an (empty) image manifest: enough for a report; its other sections say 'not run yet'."""
    run = root / "run"
    (root / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p, _ in PROMPTS))
    write_prompts_manifest(run, load_prompts(root / "p.jsonl")[0])
    part = run / "manifests" / "images" / "rank00000" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pl.DataFrame(schema=IMAGE_SCHEMA).write_parquet(part)
    return run


def correct(gen_id: str) -> bool:
    return hashlib.sha256(gen_id.encode()).digest()[0] % 2 == 0


def write_geneval(out: Path, label: str, seed: int) -> None:
    """What `janus eval geneval` writes (the contract): the verdict per image, the summary, the introspection."""
    gens = write_generations(out, label, seed=seed)
    verdicts = gens.select(
        "gen_id", "label", "prompt_id", pl.lit("counting").alias("tag"), "sample", "round", "final", "answer"
    ).with_columns(correct=pl.col("gen_id").map_elements(correct, return_dtype=pl.Boolean), reason=pl.lit(""))
    (out / "manifests" / "geneval").mkdir(parents=True)
    verdicts.write_parquet(out / "manifests" / "geneval" / "part-00000.parquet")
    acc = ACCURACY[label]
    rows = [
        {
            "label": label,
            "image": image,
            "tag": tag,
            "n_images": 4,
            "accuracy": acc - (0.125 if image == "first" else 0),
        }
        for image in ("first", "final")
        for tag in (*GENEVAL_TAGS, "overall")
    ]
    pl.DataFrame(rows).write_parquet(out / GENEVAL_SUMMARY)
    intro = {"first_overall": acc - 0.125, "final_overall": acc, "aha_gain": 0.125, "regeneration_rate": 0.25}
    pl.DataFrame([{"label": label, **intro, "agreement": 0.8, "n_evaluated": 8}]).write_parquet(
        out / GENEVAL_INTROSPECT
    )


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    run = bare_run(tmp_path_factory.mktemp("report-eval"))
    cfg = load_config("tiny")
    for i, label in enumerate(LABELS):
        write_geneval(eval_root(run, "geneval") / label, label, seed=i)
    for i, label in enumerate((*LABELS, ODD)):
        out = eval_root(run, "judge") / label
        write_generations(out, label, seed=10 + i)
        score_generations(out, cfg, judge=FakeJudge(), progress=False)
    return run


@pytest.fixture(scope="module")
def report(eval_run):
    return build_report(eval_run, prompts_shown=2)


def page(result) -> str:
    return result.path.read_text(encoding="utf-8")


def section(html: str) -> str:
    return html.split('<section id="eval">', 1)[1].split("</section>", 1)[0]


def header_of(html: str, after: str) -> list[str]:
    table = html.split(after, 1)[1].split("</thead>", 1)[0]
    return re.findall(r"<th[^>]*>([^<]*)</th>", table)


def test_the_section_comes_last_and_only_with_results(report, tmp_path):
    html = page(report)
    assert report.sections == [*SECTIONS, "eval"] and html.count('<section id="eval">') == 1
    assert '<a href="#eval">Evaluation</a>' in html
    assert [row for row in report_table(report).columns[0].cells][-1] == "Evaluation"
    plain = build_report(bare_run(tmp_path))
    assert plain.sections == list(SECTIONS) and 'id="eval"' not in page(plain)


def test_geneval_per_tag_side_by_side_with_the_change(report):
    body = section(page(report))
    assert header_of(body, "<h3>GenEval</h3>") == ["tag", "base", "sft", "rl", "rl − base"]
    rows = re.findall(
        r"<tr><td>(\w+)</td><td class=\"n\">([^<]*)</td><td class=\"n\">([^<]*)</td>"
        r"<td class=\"n\">([^<]*)</td><td class=\"n\">([^<]*)</td></tr>",
        body.split("<h3>GenEval</h3>")[1],
    )
    assert [r[0] for r in rows[:7]] == [*GENEVAL_TAGS, "overall"]  # GenEval's order, overall last
    assert rows[6][1:] == ("50.0%", "62.5%", "75.0%", "+25.0 pt")  # the final image's accuracy


def test_introspection_table_and_figures(report):
    body = section(page(report))
    intro = body.split("<h4>With introspection</h4>", 1)[1]
    assert header_of(body, "<h4>With introspection</h4>") == [
        "checkpoint",
        "first image",
        "final image",
        "Aha gain",
        "regeneration rate",
        "self-check agreement",
        "images evaluated",
    ]
    assert '<td>base</td><td class="n">37.5%</td><td class="n">50.0%</td><td class="n">+12.5 pt</td>' in intro
    names = {p.name for p in report.assets}
    assert {"eval-aha.svg", "eval-selfcheck.svg"} <= names
    for name in ("eval-aha.svg", "eval-selfcheck.svg"):
        svg = (report.path.parent / "assets" / name).read_text()
        ET.fromstring(svg)
        assert all(f">{label}</text>" in svg for label in ("base", "sft", "rl"))


def test_judge_scores_per_tag_side_by_side(report, eval_run):
    body = section(page(report))
    judge = body.split("<h3>Judge-based scores</h3>", 1)[1]
    assert header_of(judge, "<h4>Mean S</h4>") == [
        "tag",
        "base",
        "sft",
        "rl",
        "x&lt;script&gt;y",
        "x&lt;script&gt;y − base",
    ]
    assert "<h4>Pass rate (S ≥ 0.8)</h4>" in judge
    summary = pl.read_parquet(eval_root(eval_run, "judge") / "sft" / JUDGE_SUMMARY)
    mean = summary.filter((pl.col("image") == "final") & (pl.col("tag") == "all"))["mean_score"][0]
    assert f'<td class="n">{mean:.3f}</td>' in judge.split("<h4>Pass rate")[0]


def test_the_same_prompts_side_by_side(report):
    body = section(page(report))
    for kind, name in (("geneval", "GenEval"), ("judge", "Judge-based scores")):
        gallery = body.split(f"<h4>{name}: the same prompts, side by side</h4>", 1)[1].split("</div><p", 1)[0]
        labels = ["base", "sft", "rl"] + (["x&lt;script&gt;y"] if kind == "judge" else [])
        assert gallery.count('<article class="prompt">') == 2  # prompts_shown
        assert re.findall(r'<div class="evallabel">([^<]*)</div>', gallery) == labels * 2
        assert gallery.count("<img ") == 2 * len(labels) * 2  # 2 prompts x labels x 2 final images
        assert ("✓ correct" in gallery or "✗ wrong" in gallery) if kind == "geneval" else "S 0." in gallery
    assert "redraw 1 · said Yes" in body  # the redrawn chain shows its final image
    assert "1 more prompt(s) not shown" in body


def test_every_link_is_a_file_inside_the_report_and_text_is_escaped(report):
    html, root = page(report), report.path.parent.resolve()
    for link in LINK.findall(html):
        if link.startswith("#"):
            assert f'id="{link[1:]}"' in html
            continue
        assert not link.startswith(("/", "file:", "data:")) and ".." not in link and ":" not in link, link
        assert re.fullmatch(r"assets/[A-Za-z0-9_-]+\.(png|svg)", link), link
        assert (root / link).resolve().is_file()
    assert {(root / link).resolve() for link in LINK.findall(html) if not link.startswith("#")} == {
        p.resolve() for p in report.assets
    }
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in section(html)


def test_chromium_opens_the_report_without_console_errors(report, tmp_path):
    dom, stderr = chromium_dump(report.path, tmp_path / "profile")
    assert console_lines(stderr) == []
    assert 'id="eval"' in dom and "evalrow" in dom


def test_an_unreadable_summary_is_a_note_not_a_failure(eval_run, tmp_path):
    import shutil

    run = Path(shutil.copytree(eval_run, tmp_path / "run"))
    (eval_root(run, "judge") / "sft" / JUDGE_SUMMARY).write_bytes(b"torn")
    shown = pl.read_parquet(eval_root(run, "geneval") / "rl" / "manifests/generations/part-00000.parquet")[
        "image_path"
    ][0]
    (eval_root(run, "geneval") / "rl" / shown).write_bytes(b"not a png")
    result = build_report(run)
    assert any("cannot read judge_eval_summary.parquet of sft" in n for n in result.notes)
    assert any("could not be read" in n for n in result.notes)
    judge = section(page(result)).split("<h3>Judge-based scores</h3>", 1)[1]
    assert header_of(judge, "<h4>Mean S</h4>")[:3] == ["tag", "base", "rl"]


def test_janus_data_never_imports_janus_eval(eval_run, tmp_path):
    code = (
        "import sys; sys.modules['janus_eval'] = None\n"
        "from pathlib import Path\n"
        "from janus_data.report import build_report\n"
        f"r = build_report(Path({str(eval_run)!r}), Path({str(tmp_path / 'out')!r}))\n"
        "assert 'eval' in r.sections\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert out.returncode == 0, out.stderr[-2000:]
