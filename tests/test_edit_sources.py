"""Edit sources: every format gives the same edits and ids; bad input is one line naming the file and row."""

from __future__ import annotations

import doctest
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from janus_data import edit_sources
from janus_data.edit_sources import EditSourceError, check_edit_source, edit_id_for, load_edits
from janus_data.errors import PromptError

REPO = Path(__file__).resolve().parent.parent


def png(seed: int, size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


# Four rows: the second repeats the first (other spacing, a tag, no reference), the fourth is blank.
ROWS = [
    {"source": 0, "instruction": "make the car red", "reference": 1, "id": "e1", "tags": ["color"]},
    {"source": 0, "instruction": "  make the   car red ", "reference": None, "id": None, "tags": ["car"]},
    {"source": 2, "instruction": "remove the tree", "reference": None, "id": "e3", "tags": []},
    {"source": 3, "instruction": "   ", "reference": None, "id": "e4", "tags": []},
]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edit-images")
    (root / "img").mkdir()
    for k in range(4):
        (root / "img" / f"{k}.png").write_bytes(png(k))
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def jsonl_rows() -> list[dict]:
    out = []
    for r in ROWS:
        row = {"source_image": f"img/{r['source']}.png", "instruction": r["instruction"], "tags": r["tags"]}
        if r["reference"] is not None:
            row["reference_image"] = f"img/{r['reference']}.png"
        if r["id"] is not None:
            row["id"] = r["id"]
        out.append(row)
    return out


def table(kind: str) -> dict:
    """The rows as columns, images as bytes, relative paths or {bytes, path} structs."""

    def cell(k):
        if k is None:
            return None
        return {"bytes": png(k), "path": None} if kind == "struct" else png(k) if kind == "bytes" else f"img/{k}.png"

    return {
        "source_image": [cell(r["source"]) for r in ROWS],
        "instruction": [r["instruction"] for r in ROWS],
        "reference_image": [cell(r["reference"]) for r in ROWS],
        "id": [r["id"] for r in ROWS],
        "tags": [r["tags"] for r in ROWS],
    }


def write_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def shard_samples(rows=ROWS) -> dict[str, dict[str, bytes]]:
    samples = {}
    for n, r in enumerate(rows):
        members = {"png": png(r["source"])}
        if r["reference"] is not None:
            members["reference.png"] = png(r["reference"])
        meta = {"instruction": r["instruction"], "tags": r["tags"]} | ({"id": r["id"]} if r["id"] else {})
        if n == 2:  # a .txt instruction, the key as the id
            members["txt"] = r["instruction"].encode()
            meta = {"tags": r["tags"]}
        members["json"] = json.dumps(meta).encode()
        samples[f"s{n:03d}"] = members
    return samples


def make_source(kind: str, images: Path, tmp_path: Path) -> Path:
    if kind == "jsonl":
        return write_jsonl(images / f"edits-{tmp_path.name}.jsonl", jsonl_rows())
    if kind.startswith("parquet"):
        shape = kind.split("-")[1]
        path = (images if shape == "paths" else tmp_path) / f"edits-{tmp_path.name}.parquet"
        pl.DataFrame(table(shape)).write_parquet(path)
        return path
    if kind == "tar":
        return write_tar(tmp_path / "edits.tar", shard_samples())
    if kind == "tar-folder":
        samples = list(shard_samples().items())
        (tmp_path / "shards").mkdir()
        write_tar(tmp_path / "shards" / "a.tar", dict(samples[:2]))
        write_tar(tmp_path / "shards" / "b.tar", dict(samples[2:]))
        return tmp_path / "shards"
    if kind == "datasets":
        datasets = pytest.importorskip("datasets")
        features = datasets.Features(
            {
                "source_image": datasets.Image(),
                "instruction": datasets.Value("string"),
                "reference_image": datasets.Image(),
                "id": datasets.Value("string"),
                "tags": datasets.Sequence(datasets.Value("string")),
            }
        )
        datasets.Dataset.from_dict(table("struct"), features=features).save_to_disk(str(tmp_path / "ds"))
        return tmp_path / "ds"
    raise AssertionError(kind)


KINDS = ["jsonl", "parquet-bytes", "parquet-paths", "parquet-struct", "tar", "tar-folder", "datasets"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_gives_the_same_edits(kind, images, tmp_path):
    path = make_source(kind, images, tmp_path)
    check_edit_source(path)
    df, stats = load_edits(path)
    assert (stats.rows_read, stats.empty_dropped, stats.duplicates_merged, stats.unique) == (4, 1, 1, 2)
    assert stats.with_reference == 1 and stats.bad_images_skipped == 0
    sha0 = hashlib.sha256(png(0)).hexdigest()
    want_id = hashlib.sha256(f"{sha0}\nmake the car red".encode()).hexdigest()[:16]  # by hand
    assert df["edit_id"].to_list() == [want_id, edit_id_for(hashlib.sha256(png(2)).hexdigest(), "remove the tree")]
    assert df["instruction"].to_list() == ["make the car red", "remove the tree"]
    assert df["source_image"].to_list() == [png(0), png(2)] and df["source_sha256"][0] == sha0
    assert df["reference_image"].to_list() == [png(1), None]
    assert (df["source_width"][0], df["source_height"][0]) == (24, 16)
    assert df["tags"].to_list() == [["car", "color"], []]
    assert df["n_occurrences"].to_list() == [2, 1] and df["source"].unique().to_list() == [str(path)]
    want_ids = ["e1", "s002"] if kind.startswith("tar") else ["e1", "e3"]
    assert df["source_id"].to_list() == want_ids
    assert df.schema == pl.Schema(edit_sources.edit_schema())


def test_id_ignores_spacing_and_follows_the_image_bytes():
    assert edit_id_for("0" * 64, "a  b") == edit_id_for("0" * 64, "a b") != edit_id_for("1" * 64, "a b")
    assert doctest.testmod(edit_sources).failed == 0


def test_reference_of_a_later_duplicate_is_kept(images, tmp_path):
    rows = jsonl_rows()[:2][::-1]  # the copy without a reference comes first
    df, stats = load_edits(write_jsonl(images / "later.jsonl", rows))
    assert stats.duplicates_merged == 1 and df["reference_image"].to_list() == [png(1)]
    assert df["source_id"].to_list() == ["e1"]


# ---------------------------------------------------------------- bad input


def one_line_error(fn, path, match: str) -> EditSourceError:
    with pytest.raises(EditSourceError, match=match) as err:
        fn(path)
    assert "\n" not in str(err.value) and isinstance(err.value, PromptError)
    return err.value


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            '{"source_image": "img/0.png", "instruction": "a"}\n{"source_image": "img/0.png",\n',
            r"line 2 is not valid JSON",
        ),
        ('["img/0.png", "a"]\n', r"line 1 is not a JSON object"),
        ('\n{"source_image": "img/0.png"}\n', r"line 2 has no 'instruction'"),
        ('{"source_image": "img/0.png", "instruction": 3}\n', r"line 1 has an 'instruction' that is not a string"),
        ('{"instruction": "a"}\n', r"line 1 has no 'source_image'"),
        ('{"source_image": 5, "instruction": "a"}\n', r"line 1 has a 'source_image' that is not an image path"),
        ('{"source_image": "img/0.png", "instruction": "a", "tags": 4}\n', r"line 1 has 'tags' that are not"),
        ('{"source_image": "img/0.png", "instruction": " "}\n\n', r"holds no edits \(all 1 rows have blank"),
        ("", r"holds no edits \(it is empty"),
    ],
)
def test_malformed_jsonl(images, text, match):
    path = images / "bad.jsonl"
    path.write_text(text)
    for fn in (check_edit_source, load_edits):
        err = one_line_error(fn, path, match)
        assert str(path) in str(err)


def test_missing_and_unknown_sources(tmp_path):
    one_line_error(load_edits, tmp_path / "nope.jsonl", "edit source not found")
    (tmp_path / "edits.csv").write_text("a,b\n")
    one_line_error(check_edit_source, tmp_path / "edits.csv", "unknown edit source kind .csv")
    (tmp_path / "empty").mkdir()
    one_line_error(load_edits, tmp_path / "empty", "neither a saved `datasets` dataset nor")
    (tmp_path / "latin1.jsonl").write_bytes('{"instruction": "caf\xe9"}\n'.encode("latin-1"))
    one_line_error(load_edits, tmp_path / "latin1.jsonl", r"not UTF-8 text \(byte 0xe9 .* line 1\)")


def test_unreadable_images_name_the_row(images):
    rows = [*jsonl_rows()[:3], {"source_image": "img/missing.png", "instruction": "x"}]
    path = write_jsonl(images / "missing.jsonl", rows)
    err = one_line_error(check_edit_source, path, r"line 4: source_image img/missing.png not found")
    assert "relative to" in err.hint
    one_line_error(load_edits, path, r"line 4: source_image img/missing.png: No such file")
    (images / "img" / "cut.png").write_bytes(png(5)[:150])
    (images / "img" / "text.png").write_bytes(b"not an image")
    for name, line in (("cut", 2), ("text", 3)):
        bad = [
            jsonl_rows()[0],
            *([jsonl_rows()[2]] if line == 3 else []),
            {"source_image": "img/0.png", "instruction": "y", "reference_image": f"img/{name}.png"},
        ]
        path = write_jsonl(images / f"{name}.jsonl", bad)
        check_edit_source(path)  # the files exist: only decoding finds them bad
        one_line_error(load_edits, path, rf"line {line}: reference_image cannot be decoded")
        df, stats = load_edits(path, skip_bad_images=True)
        assert stats.bad_images_skipped == 1 and stats.unique == line - 1 and df.height == line - 1


def test_corrupt_image_bytes_in_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    pl.DataFrame({"source_image": [png(0), b"\x89PNG\r\n\x1a\n broken"], "instruction": ["a", "b"]}).write_parquet(path)
    one_line_error(load_edits, path, r"row 1: source_image cannot be decoded")


def test_malformed_tables(tmp_path):
    path = tmp_path / "cols.parquet"
    pl.DataFrame({"input": [png(0)], "text": ["a"]}).write_parquet(path)
    err = one_line_error(
        check_edit_source, path, r"has no 'source_image' or 'instruction' column \(columns: 'input', 'text'\)"
    )
    assert "rename" in err.hint
    pl.DataFrame({"source_image": [png(0)], "instruction": [3]}).write_parquet(path)
    one_line_error(load_edits, path, "column 'instruction' of .* holds Int64, not text")
    pl.DataFrame({"source_image": [png(0)], "instruction": ["a"], "reference_image": [4]}).write_parquet(path)
    one_line_error(load_edits, path, r"row 0 has a 'reference_image' that is not an image path or bytes")
    path.write_bytes(b"PAR1 cut short")
    one_line_error(load_edits, path, "cannot read .* as Parquet")


def test_malformed_shards(tmp_path):
    cases = {
        "no-image": ({"k": {"json": b'{"instruction": "a"}'}}, r"sample 'k' has 0 source images"),
        "no-text": ({"k": {"png": png(0)}}, r"sample 'k' has no 'instruction'"),
        "bad-json": ({"k": {"png": png(0), "json": b"{"}}, r"sample 'k': its .json is not valid JSON"),
        "escape": ({"../k": {"png": png(0), "txt": b"a"}}, r"unsafe member '../k.png'.*'..' path component"),
        "pickle": ({"k": {"png": png(0), "txt": b"a", "pyd": b"x"}}, r"pickle-ish extension"),
    }
    for name, (samples, match) in cases.items():
        err = one_line_error(load_edits, write_tar(tmp_path / f"{name}.tar", samples), match)
        assert "<key>.png" in err.hint
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("k.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    one_line_error(check_edit_source, link, "symlink")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".tar") == []  # nothing extracted


def test_check_needs_neither_polars_nor_pil(images, tmp_path):
    """The CLI's pre-check of JSON Lines and shards costs no heavy import."""
    sources = [write_jsonl(images / "light.jsonl", jsonl_rows()), write_tar(tmp_path / "light.tar", shard_samples())]
    code = (
        "import sys\nfrom janus_data.edit_sources import check_edit_source\n"
        + "".join(f"check_edit_source({str(p)!r})\n" for p in sources)
        + "heavy = [m for m in ('polars', 'pyarrow', 'PIL', 'torch', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=120)
