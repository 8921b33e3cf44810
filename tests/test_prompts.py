"""Prompt loading (every format), normalisation, dedupe, typed errors and the prompts manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from janus_data.errors import PromptError
from janus_data.prompts import (
    PROMPT_SCHEMA,
    PromptStats,
    load_prompts,
    normalise_prompt,
    prompt_id_for,
    read_prompts_manifest,
    write_prompts_manifest,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- normalisation and ids ---------------------------------------------------------------


def test_normalise_collapses_whitespace_and_applies_nfc() -> None:
    assert normalise_prompt("  a\tred\n\ncube \r\n on\u00a0a  table ") == "a red cube on a table"
    assert normalise_prompt("cafe\u0301") == "caf\u00e9"
    assert normalise_prompt(" \t\n ") == ""


def test_normalise_is_idempotent() -> None:
    for text in ["  two\tdogs ", "cafe\u0301  au\nlait", "\u2000spaced\u3000out\u2028"]:
        once = normalise_prompt(text)
        assert normalise_prompt(once) == once


def test_prompt_id_is_hash_of_normalised_text() -> None:
    expected = hashlib.sha256(b"a red cube").hexdigest()[:16]
    assert prompt_id_for("a red cube") == expected
    assert prompt_id_for("  a\n red\tcube ") == expected
    assert prompt_id_for("cafe\u0301") == prompt_id_for("caf\u00e9")
    assert prompt_id_for("A red cube") != expected


# --- formats -----------------------------------------------------------------------------


def test_jsonl_with_ids_and_tags(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "two red apples", "tags": ["counting", "color"]},
            {"id": 7, "prompt": "a  blue\tcar", "tags": "color"},
            {"prompt": "a cat left of a dog"},
        ],
    )
    df, stats = load_prompts(path)
    assert df.schema == pl.Schema(PROMPT_SCHEMA)
    assert df["prompt"].to_list() == ["two red apples", "a blue car", "a cat left of a dog"]
    assert df["source_id"].to_list() == ["a", "7", None]
    assert df["tags"].to_list() == [["color", "counting"], ["color"], []]
    assert df["source"].unique().to_list() == [str(path)]
    assert df["prompt_id"].to_list() == [prompt_id_for(p) for p in df["prompt"]]
    assert stats == PromptStats(rows_read=3, empty_dropped=0, duplicates_merged=0, unique=3)


def test_jsonl_skips_blank_lines_and_reads_json_suffix(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('\n{"prompt": "a"}\n   \n{"prompt": "b"}\n\n', encoding="utf-8")
    df, stats = load_prompts(path)
    assert df["prompt"].to_list() == ["a", "b"]
    assert stats.rows_read == 2
    assert stats.empty_dropped == 0


def test_txt_one_prompt_per_line_with_empties_counted(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa red cube\r\n\r\n  two\t dogs  \n   \nthree cats".encode())
    df, stats = load_prompts(path)
    assert df["prompt"].to_list() == ["a red cube", "two dogs", "three cats"]
    assert df["source_id"].to_list() == [None, None, None]
    assert df["tags"].to_list() == [[], [], []]
    assert stats == PromptStats(rows_read=5, empty_dropped=2, duplicates_merged=0, unique=3)


def test_unknown_suffix_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "prompts.lst"
    path.write_text("a red cube\nthe final newline opens no empty row\n", encoding="utf-8")
    df, stats = load_prompts(path)
    assert df.height == 2
    assert stats.empty_dropped == 0


def test_parquet_with_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame(
        {
            "prompt": ["a red cube", None, "two dogs", "a red  cube"],
            "id": [1, 2, 3, 4],
            "tags": [["color"], [], None, ["shape", "color"]],
            "extra": [0.1, 0.2, 0.3, 0.4],
        }
    ).write_parquet(path)
    df, stats = load_prompts(path)
    assert df["prompt"].to_list() == ["a red cube", "two dogs"]
    assert df["source_id"].to_list() == ["1", "3"]
    assert df["tags"].to_list() == [["color", "shape"], []]
    assert df["n_occurrences"].to_list() == [2, 1]
    assert stats == PromptStats(rows_read=4, empty_dropped=1, duplicates_merged=1, unique=2)


def test_parquet_prompt_only(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame({"prompt": ["x", "y"]}).write_parquet(path)
    df, _ = load_prompts(path)
    assert df["prompt"].to_list() == ["x", "y"]


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text(
        'id,prompt,tags\n007,"a red cube, on a table","color; position"\n8,two dogs,\n9,,\n',
        encoding="utf-8",
    )
    df, stats = load_prompts(csv)
    assert df["prompt"].to_list() == ["a red cube, on a table", "two dogs"]
    assert df["source_id"].to_list() == ["007", "8"]  # read as strings: leading zeros survive
    assert df["tags"].to_list() == [["color", "position"], []]
    assert stats.empty_dropped == 1
    tsv = tmp_path / "p.tsv"
    tsv.write_text("prompt\tid\na red cube, on a table\tx\n", encoding="utf-8")
    df2, _ = load_prompts(tsv)
    assert df2["prompt_id"].to_list() == [df["prompt_id"][0]]


def test_datasets_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"prompt": ["a red cube", "two dogs", "a red cube"], "id": [1, 2, 3], "tags": [["a"], [], ["b"]]}
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    df, stats = load_prompts(tmp_path / "ds")
    assert df["prompt"].to_list() == ["a red cube", "two dogs"]
    assert df["source_id"].to_list() == ["1", "2"]
    assert df["tags"].to_list() == [["a", "b"], []]
    assert stats.duplicates_merged == 1


def test_datasets_dict_uses_train_then_only_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"prompt": ["train prompt"]})
    test = datasets.Dataset.from_dict({"prompt": ["test prompt"]})
    datasets.DatasetDict({"test": test, "train": train}).save_to_disk(str(tmp_path / "both"))
    df, _ = load_prompts(tmp_path / "both")
    assert df["prompt"].to_list() == ["train prompt"]
    datasets.DatasetDict({"validation": test}).save_to_disk(str(tmp_path / "only"))
    df, _ = load_prompts(tmp_path / "only")
    assert df["prompt"].to_list() == ["test prompt"]
    datasets.DatasetDict({"validation": test, "test": test}).save_to_disk(str(tmp_path / "many"))
    with pytest.raises(PromptError, match=r"splits validation, test and no 'train' split"):
        load_prompts(tmp_path / "many")


def test_datasets_without_prompt_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(PromptError, match=r"no 'prompt' column \(columns: 'text'\)") as exc:
        load_prompts(tmp_path / "ds")
    assert "rename_column" in exc.value.hint


# --- dedupe ------------------------------------------------------------------------------


def test_duplicates_merge_with_stable_id_and_tags_unioned(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a red cube", "tags": ["color"]},
            {"id": "second", "prompt": "two dogs", "tags": ["counting"]},
            {"id": "late", "prompt": "  a red\ncube", "tags": ["shape", "color"]},
            {"id": "ignored", "prompt": "a red cube", "tags": "attribute"},
            {"prompt": "   "},
        ],
    )
    df, stats = load_prompts(path)
    assert df["prompt"].to_list() == ["a red cube", "two dogs"]  # first-seen order
    assert df["prompt_id"][0] == prompt_id_for("a red cube")
    assert df["tags"][0].to_list() == ["attribute", "color", "shape"]
    assert df["n_occurrences"].to_list() == [3, 1]
    assert df["source_id"].to_list() == ["late", "second"]  # first occurrence that carries an id
    assert stats == PromptStats(rows_read=5, empty_dropped=1, duplicates_merged=2, unique=2)


def test_same_text_in_two_formats_has_same_id(tmp_path: Path) -> None:
    jsonl = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a photo of a  bench"}])
    txt = tmp_path / "p.txt"
    txt.write_text("a photo\tof a bench\n", encoding="utf-8")
    pq = tmp_path / "p.parquet"
    pl.DataFrame({"prompt": ["\na photo of a bench "]}).write_parquet(pq)
    ids = {load_prompts(p)[0]["prompt_id"][0] for p in (jsonl, txt, pq)}
    assert ids == {prompt_id_for("a photo of a bench")}


# --- errors ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=r"prompt file not found: .*nope\.jsonl") as exc:
        load_prompts(tmp_path / "nope.jsonl")
    assert exc.value.hint


@pytest.mark.parametrize("name", ["e.txt", "e.jsonl", "e.csv"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(PromptError, match="holds no prompts"):
        load_prompts(path)


@pytest.mark.parametrize(("name", "body"), [("w.txt", " \n\t\n  \r\n"), ("w.jsonl", '{"prompt": " \\n "}\n\n')])
def test_whitespace_only_file(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    with pytest.raises(PromptError, match="holds no prompts") as exc:
        load_prompts(path)
    assert "blank" in exc.value.hint


def test_empty_parquet(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pl.DataFrame(schema={"prompt": pl.String}).write_parquet(path)
    with pytest.raises(PromptError, match="holds no prompts"):
        load_prompts(path)


def test_no_prompt_column(tmp_path: Path) -> None:
    pq = tmp_path / "p.parquet"
    pl.DataFrame({"text": ["x"], "id": [1]}).write_parquet(pq)
    with pytest.raises(PromptError, match=r"no 'prompt' column \(columns: 'text', 'id'\)") as exc:
        load_prompts(pq)
    assert "rename" in exc.value.hint
    csv = tmp_path / "p.csv"
    csv.write_text("caption\nx\n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"no 'prompt' column \(columns: 'caption'\)"):
        load_prompts(csv)


@pytest.mark.parametrize("name", ["bad.txt", "bad.jsonl", "bad.csv"])
def test_non_utf8_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    body = b'{"prompt": "caf\xe9"}\n' if name.endswith("jsonl") else b"prompt\ncaf\xe9\n"
    path.write_bytes(body)
    offset = body.index(b"\xe9")
    with pytest.raises(PromptError, match=rf"is not UTF-8 text \(byte 0xe9 at offset {offset}") as exc:
        load_prompts(path)
    assert "iconv" in exc.value.hint


def test_malformed_json_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",\n', encoding="utf-8")
    with pytest.raises(PromptError, match=r"p\.jsonl: line 3 is not valid JSON"):
        load_prompts(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "a"}', "line 2 has no 'prompt' string"),
        ('{"prompt": 3}', "line 2 has no 'prompt' string"),
        ('["a"]', "line 2 is not a JSON object"),
        ('{"prompt": "a", "id": [1]}', "line 2 has an 'id' that is not a string or integer"),
        ('{"prompt": "a", "tags": [1]}', "line 2 has 'tags' that are not a string or a list of strings"),
    ],
)
def test_bad_jsonl_rows(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PromptError, match=message):
        load_prompts(path)


def test_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(PromptError, match="is a directory but not a dataset") as exc:
        load_prompts(tmp_path / "dir")
    assert "save_to_disk" in exc.value.hint


def test_unreadable_parquet_and_csv_are_one_line(tmp_path: Path) -> None:
    pq = tmp_path / "p.parquet"
    pq.write_bytes(b"not parquet at all")
    with pytest.raises(PromptError, match=r"cannot read .* as Parquet") as exc:
        load_prompts(pq)
    assert "\n" not in str(exc.value)
    csv = tmp_path / "p.csv"
    csv.write_text('prompt,x\n"unterminated,1\n', encoding="utf-8")
    with pytest.raises(PromptError, match=r"cannot read .* as CSV") as exc:
        load_prompts(csv)
    assert "\n" not in str(exc.value)


def test_non_text_prompt_column(tmp_path: Path) -> None:
    pq = tmp_path / "p.parquet"
    pl.DataFrame({"prompt": [1, 2]}).write_parquet(pq)
    with pytest.raises(PromptError, match=r"column 'prompt' of .* holds Int64, not text"):
        load_prompts(pq)


# --- manifest ----------------------------------------------------------------------------


def test_manifest_absent_is_empty_with_schema(tmp_path: Path) -> None:
    df = read_prompts_manifest(tmp_path / "run")
    assert df.height == 0
    assert df.schema == pl.Schema(PROMPT_SCHEMA)


def test_manifest_write_is_idempotent(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "b", "tags": ["y", "x"]}, {"prompt": "a"}, {"prompt": "b", "id": 1}],
    )
    df, _ = load_prompts(path)
    run = tmp_path / "run"
    out = write_prompts_manifest(run, df)
    assert out == run / "manifests" / "prompts" / "prompts.parquet"
    first = out.read_bytes()
    write_prompts_manifest(run, df)
    assert out.read_bytes() == first
    assert read_prompts_manifest(run).equals(df)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_manifest_merges_a_second_file(tmp_path: Path) -> None:
    first = _write_jsonl(
        tmp_path / "a.jsonl",
        [{"prompt": "one", "tags": ["x"]}, {"prompt": "two"}, {"prompt": "two"}],
    )
    second = tmp_path / "b.txt"
    second.write_text("three\ntwo\none\none\none\n", encoding="utf-8")
    run = tmp_path / "run"
    df1, _ = load_prompts(first)
    df2, _ = load_prompts(second)
    write_prompts_manifest(run, df1)
    out = write_prompts_manifest(run, df2)
    merged = read_prompts_manifest(run)
    assert merged["prompt"].to_list() == ["one", "two", "three"]  # existing rows keep their place
    assert merged["source"].to_list() == [str(first), str(first), str(second)]
    assert merged["tags"].to_list() == [["x"], [], []]
    assert merged["n_occurrences"].to_list() == [3, 2, 1]  # max over files, not the sum
    assert merged["prompt_id"].n_unique() == 3
    again = out.read_bytes()
    write_prompts_manifest(run, df2)
    write_prompts_manifest(run, df1)
    assert out.read_bytes() == again


def test_manifest_unions_tags_across_writes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    a = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "tags": ["b"]}])
    b = _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "id": "z", "tags": ["a", "b"]}])
    write_prompts_manifest(run, load_prompts(a)[0])
    write_prompts_manifest(run, load_prompts(b)[0])
    merged = read_prompts_manifest(run)
    assert merged["tags"].to_list() == [["a", "b"]]
    assert merged["source_id"].to_list() == ["z"]


# --- the shipped demo set ----------------------------------------------------------------


def test_demo_prompts_load() -> None:
    df, stats = load_prompts(PROJECT_ROOT / "janus_data" / "assets" / "demo_prompts.jsonl")
    assert stats == PromptStats(rows_read=8, empty_dropped=0, duplicates_merged=0, unique=8)
    assert df["source_id"].to_list() == [f"demo-{i}" for i in range(8)]
    assert all(len(t) > 0 for t in df["tags"].to_list())
