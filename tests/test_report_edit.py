"""The report's image-editing section: counts, R per editor, the gallery, the edit SFT table, and nothing without edits."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from test_edit_stages import EDITS, PER_SOURCE, write_edits
from test_report import LINK, chromium_dump, console_lines

from janus_data import report_edit
from janus_data.config import load_config
from janus_data.edit_manifest import edits_manifest_schema, source_path, write_edits_manifest
from janus_data.edit_score import EDIT_SCORE_SCHEMA, run_edit_score
from janus_data.edit_synth import run_edit_synth
from janus_data.prompts import load_prompts, write_prompts_manifest
from janus_data.report import SECTIONS, build_report, report_table
from janus_data.synth import IMAGE_SCHEMA

XSS = "<script>alert(1)</script>"
WITH_EDIT = ["overview", "scores", "tasks", "samples", "edit", "sft", "rl"]


def page(result) -> str:
    return result.path.read_text(encoding="utf-8")


def section(html: str) -> str:
    return html.split('<section id="edit">', 1)[1].split("</section>", 1)[0]


def tiles(body: str) -> dict[str, str]:
    return {k: v for v, k in re.findall(r'<div class="v">([^<]*)</div><div class="k">([^<]*)</div>', body)}


def rows_of(body: str, after: str) -> list[list[str]]:
    """The body rows of the first table after `after`, as cell texts."""
    tbody = body.split(after, 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in tbody.split("</tr>") if r]


def cards(body: str) -> list[str]:
    return re.findall(r'<article class="prompt">.*?</article>', body)


def rewards_in(card: str) -> list[float]:
    return [float(r) for r in re.findall(r"· R (\d\.\d+)", card)]


def assert_links_inside(result) -> None:
    root = result.path.parent.resolve()
    files = set()
    for link in LINK.findall(page(result)):
        if link.startswith("#"):
            continue
        target = (root / link).resolve()
        assert target.is_file() and target.is_relative_to(root), link
        files.add(target)
    assert files == {p.resolve() for p in (root / "assets").iterdir()} == {p.resolve() for p in result.assets}


# ---------------------------------------------------------------- a tiny edit run (real stages, tiny models)


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory) -> Path:
    """3 edits x 4 candidates (2 kontext + 2 janus), judged by the tiny InternVL."""
    root = tmp_path_factory.mktemp("report-edit")
    cfg = load_config("tiny")
    run_edit_synth(root / "run", cfg, write_edits(root / "src"), progress=False)
    run_edit_score(root / "run", cfg, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def edit_report(edit_run):
    return build_report(edit_run, edits_shown=2)


def test_an_edit_run_has_the_section_with_its_counts(edit_report, edit_run):
    html = page(edit_report)
    assert edit_report.sections == WITH_EDIT and html.count('<section id="edit">') == 1
    assert '<a href="#edit">Image editing</a>' in html
    body = section(html)
    n = len(EDITS) * PER_SOURCE
    assert tiles(body) == {
        "edits": "3",
        "candidate edits · kontext": str(n // 2),
        "candidate edits · janus": str(n // 2),
        "scored": str(n),
        "flagged": "0",
        "error rows": "0",
    }
    scores = pl.read_parquet(list((edit_run / "manifests/edit_scores").rglob("*.parquet")))
    table = {r[0]: r for r in rows_of(body, "</div>")}
    assert list(table) == ["kontext", "janus"]
    for g, row in table.items():
        mine = scores.filter(pl.col("generator") == g)
        assert row[1:5] == [str(n // 2), str(n // 2), "0", "0"]
        assert row[5:] == [f"{mine[c].mean():.3f}" for c in ("score_flw", "score_psv", "reward")]
    assert "assets/edit-reward-hist.svg" in body
    # an edit-only run: the text-to-image sections say what to run, the edit SFT data is not built
    assert "janus data filter --task edit" in body and "Edit SFT samples" not in body


def test_the_gallery_shows_the_best_and_the_worst_edit(edit_report, edit_run):
    body = section(page(edit_report))
    shown = cards(body)
    assert len(shown) == 2 and "1 more edit(s) not shown" in body
    scores = pl.read_parquet(list((edit_run / "manifests/edit_scores").rglob("*.parquet")))
    means = scores.group_by("prompt_id").agg(pl.col("reward").mean()).sort("reward", descending=True)
    best, worst = means["prompt_id"][0], means["prompt_id"][-1]
    assert best in shown[0] and worst in shown[1]
    for card in shown:
        r = rewards_in(card)
        assert len(r) == PER_SOURCE and r == sorted(r, reverse=True)
        assert card.count("<img ") == PER_SOURCE + 1 + ("reference" in card)
        assert 'class="best"' in card and 'class="worst"' in card and "S_flw" in card and "S_psv" in card
    not_run = ("scores", "SFT data", "samples", "SFT", "GRPO")  # an edit-only run: the t2i stages did not run
    assert edit_report.notes == [f"{s}: not run yet" for s in not_run]


def test_links_resolve_and_the_table_lists_the_section(edit_report):
    assert_links_inside(edit_report)
    t = report_table(edit_report)
    assert list(t.columns[0].cells)[4] == "Image editing" and list(t.columns[1].cells)[4] == "ok"


def test_chromium_opens_the_edit_report_cleanly(edit_report, tmp_path):
    dom, stderr = chromium_dump(edit_report.path, tmp_path / "profile")
    assert console_lines(stderr) == [] and 'id="edit"' in dom


# ---------------------------------------------------------------- no edits: no section, nothing read


def bare_run(root: Path) -> Path:
    """Prompts and an empty text-to-image manifest: enough for a report."""
    run = root / "run"
    (root / "p.jsonl").write_text(json.dumps({"prompt": "a red cube"}) + "\n")
    write_prompts_manifest(run, load_prompts(root / "p.jsonl")[0])
    part = run / "manifests" / "images" / "rank00000" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pl.DataFrame(schema=IMAGE_SCHEMA).write_parquet(part)
    return run


def test_a_run_without_edits_has_no_edit_section_and_reads_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("an edit manifest was read")

    monkeypatch.setattr(report_edit, "scan_manifest", boom)
    monkeypatch.setattr(report_edit, "read_edits_manifest", boom)
    result = build_report(bare_run(tmp_path))
    html = page(result)
    assert result.sections == list(SECTIONS) and 'id="edit"' not in html and "#edit" not in html
    assert not any("edit" in n for n in result.notes) and "Image editing" not in html


# ---------------------------------------------------------------- hand-written edit manifests


def png(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


EIDS = ("e0", "e1", "e2")
INSTRUCTIONS = ("make it blue", f"write {XSS} on the wall", "remove the tree")
# (edit, generator, index, status, S_flw, S_psv): e0 scores best, e2 worst, e1 in between
CANDIDATES = [
    ("e0", "kontext", 0, "ok", 0.9, 0.8),
    ("e0", "janus", 0, "ok", 0.7, 0.6),
    ("e1", "kontext", 0, "flagged", None, 0.5),
    ("e1", "janus", 0, "ok", 0.5, 0.5),
    ("e2", "kontext", 0, "ok", 0.2, 0.1),
    ("e2", "janus", 0, "error", None, None),
]


def hand_written_run(root: Path, state: object) -> Path:
    """Edit manifests written by hand: e2's source is missing, e1's janus candidate points past its shard's end."""
    run = root / "run"
    schema = edits_manifest_schema()
    edits = pl.DataFrame(
        {
            "edit_id": list(EIDS),
            "instruction": list(INSTRUCTIONS),
            "source_sha256": ["0" * 64] * 3,
            "source_path": [source_path(e) for e in EIDS],
            "reference_path": [None] * 3,
            "source_width": [16] * 3,
            "source_height": [16] * 3,
            "source": ["edits.jsonl"] * 3,
            "source_id": [None] * 3,
            "tags": [[]] * 3,
            "n_occurrences": [1] * 3,
        },
        schema=schema,
    )
    write_edits_manifest(run, edits)
    for i, eid in enumerate(EIDS[:2]):
        (run / source_path(eid)).parent.mkdir(parents=True, exist_ok=True)
        (run / source_path(eid)).write_bytes(png(i))
    shard = "images/edit-mixed/rank00000/shard-000000.tar"
    (run / shard).parent.mkdir(parents=True)
    blob, images, scores = b"", [], []
    for k, (eid, gen, idx, status, flw, psv) in enumerate(CANDIDATES):
        data = png(10 + k)
        image_id = f"{eid}-{gen}-{idx:03d}"
        length = len(data) + (10_000 if image_id == "e1-janus-000" else 0)
        images.append({"image_id": image_id, "prompt_id": eid, "generator": gen, "index": idx} | {"shard": shard})
        images[-1] |= {"offset": len(blob), "length": length, "width": 16, "height": 16, "format": "png"}
        blob += data
        reward = None if flw is None or psv is None else flw + 0.25 * psv
        scores.append(
            {"image_id": image_id, "prompt_id": eid, "generator": gen, "status": status, "score": flw}
            | {"score_flw": flw, "score_psv": psv, "reward": reward, "reason_flw": f"yes, {XSS} " + "long " * 60}
            | {"error": "judge refused" if status == "error" else None, "reason_psv": "yes"}
        )
    (run / shard).write_bytes(blob)
    for kind, rows, sch in (("edit_images", images, IMAGE_SCHEMA), ("edit_scores", scores, EDIT_SCORE_SCHEMA)):
        part = run / "manifests" / kind / "rank00000" / "part-0.parquet"
        part.parent.mkdir(parents=True)
        pl.DataFrame(rows, schema_overrides={k: v for k, v in sch.items() if k in rows[0]}).write_parquet(part)
    if state is not None:
        (run / "sft_edit").mkdir()
        (run / "sft_edit" / "state.json").write_text(json.dumps(state))
    return run


STATE = {
    "fingerprint": "x",
    "stats": {"pool": 5, "edits": 3},
    "tasks": {
        "edit": {"samples": 6, "shards": 1, "bytes": 3 * 2**20, "shard_files": [{"name": "sft-000000.tar"}]},
        "edit_judge": {"samples": 2, "shards": 1, "bytes": 2**20, "shard_files": [{"name": "sft-000000.tar"}]},
        "edit_regen": {"samples": 0, "shards": 0, "bytes": 0, "shard_files": []},
    },
}


def test_hand_written_manifests_give_counts_gallery_notes_and_the_sft_table(tmp_path):
    result = build_report(hand_written_run(tmp_path, STATE), edits_shown=2)
    body = section(page(result))
    assert tiles(body) == {
        "edits": "3",
        "candidate edits · kontext": "3",
        "candidate edits · janus": "3",
        "scored": "4",
        "flagged": "1",
        "error rows": "1",
    }
    table = {r[0]: r for r in rows_of(body, "</div>")}
    assert table["kontext"][1:] == ["3", "2", "1", "0", "0.550", "0.450", f"{(1.1 + 0.225) / 2:.3f}"]
    assert table["janus"][1:] == ["3", "2", "0", "1", "0.600", "0.550", f"{(0.85 + 0.625) / 2:.3f}"]
    shown = cards(body)
    assert len(shown) == 2 and "<code>e0</code>" in shown[0] and "<code>e2</code>" in shown[1]
    assert "1 more edit(s) not shown" in body
    assert rewards_in(shown[0]) == [1.1, 0.85] and "judge refused" in shown[1]
    assert XSS not in page(result) and "yes, &lt;script&gt;" in shown[0]
    assert "…" in shown[0] and "long " * 30 not in shown[0]  # reasons are shortened
    assert result.notes[-1] == "image editing: 1 image(s) could not be read, e.g. edit_sources/e2.png"
    assert rows_of(body, "<h3>Edit SFT samples</h3>") == [
        ["edit", "6", "75.0%", "1", "3.00"],
        ["edit_judge", "2", "25.0%", "1", "1.00"],
        ["edit_regen", "0", "0.0%", "0", "0.00"],
    ]
    assert "edits 3 · pool 5" in body
    # all edits shown: the escaped instruction and the unreadable candidate too
    all_shown = build_report(tmp_path / "run", tmp_path / "all", edits_shown=10)
    every = section(page(all_shown))
    assert all_shown.notes[-1].startswith("image editing: 2 image(s) could not be read")  # e2's source, e1's edit
    assert len(cards(every)) == 3 and "more edit(s)" not in every and "write &lt;script&gt;" in every
    assert_links_inside(result)


@pytest.mark.parametrize(
    "state", [None, [1, 2], {"tasks": [1]}, {"tasks": {"edit": "x", "edit_judge": {"samples": "?"}}}]
)
def test_a_missing_or_odd_edit_sft_state_never_breaks_the_report(tmp_path, state):
    body = section(page(build_report(hand_written_run(tmp_path, state))))
    if isinstance(state, dict) and isinstance(state.get("tasks"), dict):
        assert [r[:2] for r in rows_of(body, "<h3>Edit SFT samples</h3>")] == [
            ["edit", "0"],
            ["edit_judge", "0"],
            ["edit_regen", "0"],
        ]
    else:
        assert "Edit SFT samples" not in body and "not built yet" in body


def test_a_foreign_edit_score_manifest_is_a_note(tmp_path):
    run = hand_written_run(tmp_path, None)
    part = run / "manifests" / "edit_scores" / "rank00000" / "part-0.parquet"
    pl.read_parquet(part).drop("reward").write_parquet(part)
    result = build_report(run)
    assert (
        result.notes[-1]
        == "image editing: cannot read the edit manifests: manifests/edit_scores lacks column(s) reward"
    )
    assert "cannot read the edit manifests" in section(page(result))
