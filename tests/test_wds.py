"""WebDataset shards: round trip, byte-identical output, webdataset and HF datasets readers,
deterministic shuffling and rank splits, refusal of unsafe members, atomic shards.

Hugging Face `datasets` ("webdataset" builder, datasets 5.x) decodes by the member's last
extension: .json -> json.loads (a struct column), .npy -> numpy.lib.format.read_array with
allow_pickle=False (stored as nested lists, read back as lists), .png/.jpg/.webp -> an Image
feature (PIL image on access). It infers the columns from the first 5 samples and refuses
shards whose first samples differ in member sets, so each dataset needs a uniform member set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from janus_data.wds import (
    ShardInfo,
    TarShardWriter,
    UnsafeShardError,
    check_member,
    decode_sample,
    iter_samples,
    list_shards,
)

N = 30
BIG = 17  # this sample's image is bigger than MAX_BYTES, so it goes alone into its own shard
MAX_BYTES = 32 * 1024


def png_bytes(rng: np.random.Generator, size: int) -> bytes:
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def make_samples(n: int = N, seed: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        members = {
            "json": json.dumps({"prompt": f"a red apple #{i}", "score": i / 10, "tags": ["a", "b"]}).encode(),
            "image.png": png_bytes(rng, 128 if i == BIG else 24),
            "image.npy": npy_bytes(rng.standard_normal((4, 8)).astype(np.float32)),
        }
        out.append((f"task_a-{i:05d}", members))
    return out


def write_all(out_dir: Path, samples, max_bytes: int = MAX_BYTES) -> list[ShardInfo]:
    with TarShardWriter(out_dir, max_bytes=max_bytes) as writer:
        for key, members in samples:
            writer.write(key, members)
    return writer.close()


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def samples():
    return make_samples()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, samples) -> Path:
    d = tmp_path_factory.mktemp("shards")
    write_all(d, samples)
    return d


def test_round_trip_and_size_bound(tmp_path, samples):
    infos = write_all(tmp_path, samples)
    assert len(infos) >= 3
    assert [p.name for p in list_shards(tmp_path)] == [i.name for i in infos]
    assert sum(i.samples for i in infos) == N
    for info in infos:
        path = tmp_path / info.name
        assert path.stat().st_size == info.bytes
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info.sha256
        if info.bytes > MAX_BYTES:  # only the oversized sample, alone
            assert info.samples == 1 and info.first_key == info.last_key == samples[BIG][0]
    assert any(i.bytes > MAX_BYTES for i in infos)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    got = list(iter_samples(list_shards(tmp_path)))
    assert [g["__key__"] for g in got] == [k for k, _ in samples]
    for g, (_, members) in zip(got, samples, strict=True):
        assert {k: v for k, v in g.items() if not k.startswith("__")} == members
        assert g["__shard__"] in {i.name for i in infos}
    # every sample went where the infos say
    by_shard = {i.name: (i.first_key, i.last_key) for i in infos}
    for name, (first, last) in by_shard.items():
        keys = [g["__key__"] for g in got if g["__shard__"] == name]
        assert (keys[0], keys[-1]) == (first, last)

    dec = decode_sample(got[3])
    assert dec["json"]["prompt"] == "a red apple #3"
    want = np.load(io.BytesIO(samples[3][1]["image.npy"]))
    assert dec["image.npy"].dtype == np.float32 and np.array_equal(dec["image.npy"], want)
    assert isinstance(dec["image.png"], Image.Image) and dec["image.png"].size == (24, 24)
    assert dec["__key__"] == samples[3][0]


def test_tar_headers_are_fixed(shard_dir):
    with tarfile.open(list_shards(shard_dir)[0]) as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:3]] == ["task_a-00000.image.npy", "task_a-00000.image.png", "task_a-00000.json"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) == (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)


def test_byte_identical(tmp_path, samples):
    a = write_all(tmp_path / "a", samples)
    b = write_all(tmp_path / "b", make_samples())
    assert a == b
    for info in a:
        assert (tmp_path / "a" / info.name).read_bytes() == (tmp_path / "b" / info.name).read_bytes()


def test_readable_by_webdataset(shard_dir, samples):
    import webdataset as wds

    urls = [str(p) for p in list_shards(shard_dir)]
    got = list(wds.WebDataset(urls, shardshuffle=False))
    assert [g["__key__"] for g in got] == [k for k, _ in samples]
    for g, (_, members) in zip(got, samples, strict=True):
        assert {k: g[k] for k in members} == members


def test_readable_by_hf_datasets(shard_dir, samples, tmp_path):
    import datasets

    datasets.disable_progress_bars()
    files = [str(p) for p in list_shards(shard_dir)]
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert ds.num_rows == N
    assert isinstance(ds.features["image.png"], datasets.Image)
    row = ds[5]
    assert row["__key__"] == samples[5][0]
    assert row["json"] == json.loads(samples[5][1]["json"])
    assert np.allclose(np.asarray(row["image.npy"]), np.load(io.BytesIO(samples[5][1]["image.npy"])))
    assert isinstance(row["image.png"], Image.Image) and row["image.png"].size == (24, 24)


def test_shuffle_is_deterministic_permutation(shard_dir, samples):
    shards = list_shards(shard_dir)
    keys = [k for k, _ in samples]

    def order(seed: int) -> list[str]:
        it = iter_samples(shards, shuffle_shards=True, shuffle_buffer=8, seed=seed)
        return [s["__key__"] for s in it]

    a, b, c = order(1), order(1), order(2)
    assert a == b
    assert a != c
    assert a != keys
    assert sorted(a) == sorted(c) == keys


def test_rank_split_is_disjoint_and_complete(shard_dir, samples):
    shards = list_shards(shard_dir)
    world = 3
    assert len(shards) >= world
    parts = [
        [s["__key__"] for s in iter_samples(shards, shuffle_shards=True, seed=7, rank=r, world_size=world)]
        for r in range(world)
    ]
    flat = [k for p in parts for k in p]
    assert len(flat) == len(set(flat)) == N
    assert sorted(flat) == [k for k, _ in samples]
    with pytest.raises(ValueError):
        next(iter_samples(shards, rank=3, world_size=3))


def _bad_tar(path: Path, kind: str) -> None:
    good = b'{"ok": true}'
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("k0.json")
        info.size = len(good)
        tf.addfile(info, io.BytesIO(good))
        if kind == "symlink":
            info = tarfile.TarInfo("k1.json")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
            return
        name, data = {
            "dotdot": ("../evil.json", good),
            "absolute": ("/etc/x.json", good),
            "pickle": ("x.pkl", pickle.dumps({"boom": 1})),
        }[kind]
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    ("kind", "member"),
    [("dotdot", "../evil.json"), ("absolute", "/etc/x.json"), ("symlink", "k1.json"), ("pickle", "x.pkl")],
)
def test_unsafe_members_are_refused(tmp_path, monkeypatch, kind, member):
    shards = tmp_path / "shards"
    work = tmp_path / "work" / "deeper"
    shards.mkdir()
    work.mkdir(parents=True)
    shard = shards / f"bad-{kind}.tar"
    _bad_tar(shard, kind)
    monkeypatch.chdir(work)  # a relative extraction would land under tmp_path
    before = all_files(tmp_path)
    with pytest.raises(UnsafeShardError) as err:
        list(iter_samples([shard]))
    assert all_files(tmp_path) == before
    msg = str(err.value)
    assert "\n" not in msg
    assert repr(member) in err.value.message and shard.name in err.value.message
    assert "janus data filter" in err.value.hint


def test_check_member_direct():
    assert check_member(tarfile.TarInfo("k-1.image.png"), "s.tar") == ("k-1", "image.png")
    for name in ["noext", ".json", "a/b.json", "a.pth", "a.x.pickle", "a.__key__", "a\nb.json"]:
        with pytest.raises(UnsafeShardError) as err:
            check_member(tarfile.TarInfo(name), "s.tar")
        assert "\n" not in str(err.value)
    for kind in (tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE):
        info = tarfile.TarInfo("k.json")
        info.type = kind
        with pytest.raises(UnsafeShardError):
            check_member(info, "s.tar")


def test_writer_refuses_bad_keys_and_extensions(tmp_path):
    """The writer raises ValueError (a caller bug, not bad data) and writes nothing for the refused sample."""
    with TarShardWriter(tmp_path) as w:
        for key in ["a.b", "a/b", "", "__meta", "a b"]:
            with pytest.raises(ValueError):
                w.write(key, {"json": b"{}"})
        for ext in ["pth", "model.pt", "pkl", "PNG", "a/b", ".json", "json.", ""]:
            with pytest.raises(ValueError):
                w.write("k", {ext: b"x"})
        with pytest.raises(ValueError):
            w.write("k", {})
        w.write("k", {"json": b"{}"})
        with pytest.raises(ValueError):
            w.write("k", {"json": b"{}"})  # readers would merge it with the previous sample
    assert [(i.samples, i.first_key) for i in w.close()] == [(1, "k")]


def test_crash_inside_with_leaves_only_complete_shards(tmp_path, samples):
    with pytest.raises(RuntimeError), TarShardWriter(tmp_path, max_bytes=MAX_BYTES) as writer:
        for i, (key, members) in enumerate(samples):
            writer.write(key, members)
            if i == 12:
                # a killed writer at this point: complete shards plus one temp file
                names = sorted(os.listdir(tmp_path))
                temps = [n for n in names if n.startswith(".") and n.endswith(".tmp")]
                assert len(temps) == 1
                assert [n for n in names if n not in temps] == [s.name for s in writer.shards]
                raise RuntimeError("simulated crash")
    done = writer.shards
    assert len(done) >= 1
    assert sorted(os.listdir(tmp_path)) == [s.name for s in done]  # temp file removed
    got = list(iter_samples(list_shards(tmp_path)))
    assert [g["__key__"] for g in got] == [k for k, _ in samples[: len(got)]]
    assert len(got) == sum(s.samples for s in done)
    for s in done:
        assert hashlib.sha256((tmp_path / s.name).read_bytes()).hexdigest() == s.sha256


def test_list_shards_ignores_temp_files(tmp_path):
    (tmp_path / ".sft-000003.tar.tmp").write_bytes(b"partial")
    (tmp_path / "sft-000001.tar").write_bytes(b"")
    (tmp_path / "sft-000000.tar").write_bytes(b"")
    (tmp_path / "other.tar").write_bytes(b"")
    assert [p.name for p in list_shards(tmp_path)] == ["sft-000000.tar", "sft-000001.tar"]


def test_damaged_shards_are_refused(tmp_path, samples):
    infos = write_all(tmp_path / "ok", samples[:3], max_bytes=1 << 20)
    data = (tmp_path / "ok" / infos[0].name).read_bytes()
    cases = {
        "cut-in-data.tar": data[:700],
        "cut-at-header.tar": data[: len(data) - 2 * 512 - 100],
        "no-end-blocks.tar": data[: len(data) - 2 * 512],
        "garbled-header.tar": data[:1024] + b"\x01" * 512 + data[1536:],  # 2nd header (npy data is 1 block)
        "empty.tar": b"",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(UnsafeShardError, match=name):
            list(iter_samples([tmp_path / name]))


def test_reads_tars_from_other_writers(tmp_path, samples):
    """A plain tarfile archive (PAX format, padded to a 10 KiB record) reads the same."""
    path = tmp_path / "plain.tar"
    with tarfile.open(path, "w") as tf:
        for key, members in samples[:4]:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[ext])
                tf.addfile(info, io.BytesIO(members[ext]))
    got = list(iter_samples([path]))
    assert [(g["__key__"], g["json"]) for g in got] == [(k, m["json"]) for k, m in samples[:4]]
