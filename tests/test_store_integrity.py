"""Store integrity: a changed, edited or missing part of a committed store is refused.

Each corruption is applied to a copy of a store committed by ``batterytwin phantom``; every stage that
reads it must exit 2 with one line naming the store (the file, the chunk or the field), leave nothing
at its output and leave its input as it was. Independent references: the numpy data written, the
stores' own ``zarr.json`` read as JSON.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr

from batterytwin import store
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, InputError

SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    from batterytwin.cli import main

    root = tmp_path_factory.mktemp("integrity")
    code = main(["-q", "phantom", str(root / "volume.zarr"), "--labels", str(root / "labels.zarr"),
                 "--shape", *map(str, SHAPE), "--chunk", "8", "--shard", "16", "--seed", "5"])
    assert code == EXIT_OK
    sparse = root / "sparse_labels.zarr"  # its last shard is all ignore (255): never written
    lab = store.open_volume(root / "labels.zarr")
    data = lab.array[:]
    data[16:, 16:, 16:] = 255
    with store.atomic_output(sparse) as t:
        store.create_volume(t, SHAPE, "uint8", lab.attrs, chunk=8, shard=16)[...] = data
    assert len(_shards(sparse)) == 7
    return {"image": root / "volume.zarr", "labels": root / "labels.zarr", "sparse": sparse}


def _shards(p: Path) -> list[Path]:
    return sorted(q for q in (p / "0" / "c").rglob("*") if q.is_file())


def _digest(p: Path) -> str:
    h = hashlib.sha256()
    for q in sorted(p.rglob("*")):
        if q.is_file():
            h.update(q.relative_to(p).as_posix().encode() + q.read_bytes())
    return h.hexdigest()


def _flip(p: Path, shard: int, offset: float, bit: int = 0) -> None:
    f = _shards(p)[shard]
    data = bytearray(f.read_bytes())
    data[int(offset * (len(data) - 1))] ^= 1 << bit
    f.write_bytes(bytes(data))


def _edit_meta(p: Path, edit: Callable[[dict], None], name: str = "0/zarr.json") -> None:
    """Edit a zarr.json keeping its length (so a size check alone cannot see it): compact JSON, padded."""
    f = p / name
    size = f.stat().st_size
    doc = json.loads(f.read_text())
    edit(doc)
    text = json.dumps(doc, separators=(",", ":"))
    assert len(text) <= size
    f.write_text(text + " " * (size - len(text)))
    assert f.stat().st_size == size


def _set(*keys, value):
    def edit(doc):
        d = doc
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def _array_meta(p: Path) -> dict:
    return json.loads((p / "0" / "zarr.json").read_text())


def _delete_shard_and_manifest(p: Path, how: str) -> None:
    _shards(p)[-1].unlink()
    m = p / store.MANIFEST
    if how == "missing":
        m.unlink()
    elif how == "empty":
        m.write_bytes(b"")
    elif how == "no-files":
        doc = json.loads(m.read_text())
        doc["files"] = {}
        m.write_text(json.dumps(doc))


# (name, which store, corruption, stage, what the line names)
CORRUPTIONS: list[tuple[str, str, Callable[[Path], None], str, str]] = [
    ("bit-flip-first-shard-start", "image", lambda p: _flip(p, 0, 0.0), "denoise", "0/c/0/0/0"),
    ("bit-flip-mid-shard", "image", lambda p: _flip(p, 3, 0.4, 5), "segment", "first bad chunk"),
    ("bit-flip-shard-index", "image", lambda p: _flip(p, 5, 1.0, 7), "denoise", "0/c/"),
    ("bit-flip-labels", "labels", lambda p: _flip(p, 2, 0.3, 1), "microstructure", "0/c/0/1/0"),
    ("dtype-edited", "image", lambda p: _edit_meta(p, _set("data_type", value="int32")), "denoise", "data_type"),
    ("shape-edited", "image", lambda p: _edit_meta(p, _set("shape", value=[32, 32, 31])), "segment", "shape"),
    ("shard-shape-edited", "image", lambda p: _edit_meta(p, _set("chunk_grid", "configuration", "chunk_shape",
                                                                  value=[16, 16, 32])), "denoise", "shards"),
    ("inner-chunk-edited", "labels", lambda p: _edit_meta(p, lambda d: d["codecs"][0]["configuration"].update(
        chunk_shape=[8, 8, 4])), "microstructure", "chunks"),
    ("fill-value-edited", "labels", lambda p: _edit_meta(p, _set("fill_value", value=0)), "microstructure",
     "fill_value"),
    ("crc-codec-removed", "labels", lambda p: _edit_meta(p, lambda d: d["codecs"][0]["configuration"]["codecs"].pop()),
     "microstructure", "codecs"),
    ("group-attrs-edited", "image", lambda p: _edit_meta(p, _set("attributes", "voxel_size_um", value=[0.9] * 3),
                                                         "zarr.json"), "denoise", "zarr.json"),
    ("shard-deleted-manifest-missing", "image", lambda p: _delete_shard_and_manifest(p, "missing"), "segment",
     store.MANIFEST),
    ("shard-deleted-manifest-empty", "labels", lambda p: _delete_shard_and_manifest(p, "empty"), "microstructure",
     store.MANIFEST),
    ("shard-deleted-manifest-no-files", "image", lambda p: _delete_shard_and_manifest(p, "no-files"), "denoise",
     store.MANIFEST),
    ("label-shard-deleted", "labels", lambda p: _shards(p)[1].unlink(), "microstructure", "missing"),
    ("shards-swapped", "image", lambda p: _swap(_shards(p)[0], _shards(p)[7]), "denoise", "0/c/"),
    ("shard-from-other-store", "labels", lambda p: _replace_from(p, "image"), "microstructure", "0/c/"),
    ("shard-added", "sparse", lambda p: _add_shard(p), "microstructure", "0/c/1/1/1: not part of the committed"),
]


def _swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _replace_from(p: Path, other: str) -> None:
    """A label shard overwritten by a valid shard of another label store of the same layout."""
    from batterytwin.ingest.phantom import make_phantom

    _, lab = make_phantom(SHAPE, seed=9)
    src = p.parent / "other_labels.zarr"
    attrs = store.volume_attrs("t", 0.5, classes={"0": "pore"}, ignore_label=255)
    with store.atomic_output(src) as t:
        store.create_volume(t, SHAPE, "uint8", attrs, chunk=8, shard=16)[...] = lab
    target = _shards(p)[3]
    target.write_bytes((src / target.relative_to(p)).read_bytes())


def _add_shard(p: Path) -> None:
    """A shard file where the committed store had none (an all-ignore region): it would be read."""
    present = _shards(p)
    for idx in np.ndindex(2, 2, 2):
        q = p / "0" / "c" / "/".join(map(str, idx))
        if q not in present:
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(present[0].read_bytes())
            return
    raise AssertionError("no free shard position in the fixture")


def _argv(stage: str, inp: Path, out: Path) -> list[str]:
    if stage == "denoise":
        return ["denoise", str(inp), str(out), "--patch-size", "3", "--search-radius", "1"]
    if stage == "segment":
        return ["segment", "--input", str(inp), "--method", "gmm", "--output", str(out)]
    return ["microstructure", "--labels", str(inp), "--output", str(out), "--msd", str(out.with_suffix(".npz"))]


@pytest.mark.parametrize("name,which,corrupt,stage,names", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_store_is_refused_by_the_stage(stores, tmp_path, capsys, name, which, corrupt, stage, names):
    from batterytwin.cli import main

    inp = shutil.copytree(stores[which], tmp_path / f"{which}.zarr")
    assert store.open_volume(inp)  # intact before the corruption
    corrupt(inp)
    before = _digest(inp)
    out = tmp_path / ("out.json" if stage == "microstructure" else "out.zarr")
    capsys.readouterr()
    code = main(["-q", *_argv(stage, inp, out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(err) == 1 and str(inp) in err[0] and names in err[0], err
    assert not out.exists() and not out.with_suffix(".npz").exists()
    assert not list(tmp_path.glob("out*tmp-*"))
    assert _digest(inp) == before  # the input is never modified


def test_every_chunk_and_the_shard_index_carry_crc32c(stores):
    for p in stores.values():
        (codec,) = _array_meta(p)["codecs"]
        conf = codec["configuration"]
        assert codec["name"] == "sharding_indexed"
        assert conf["codecs"][-1] == {"name": "crc32c"} and {"name": "crc32c"} in conf["index_codecs"]


def test_label_stores_read_missing_chunks_as_the_ignore_label(stores, tmp_path):
    from batterytwin.contracts import IGNORE_LABEL

    assert _array_meta(stores["labels"])["fill_value"] == IGNORE_LABEL
    assert _array_meta(stores["image"])["fill_value"] == 0.0
    # a label chunk never written (all ignore) reads as 255, not as pore (0)
    attrs = store.volume_attrs("t", 1.0, classes={"0": "pore"}, ignore_label=IGNORE_LABEL)
    with store.atomic_output(tmp_path / "l.zarr") as t:
        store.create_volume(t, (8, 8, 8), "uint8", attrs, chunk=4, shard=8)[:4] = 0
    data = store.open_volume(tmp_path / "l.zarr").array[:]
    assert (data[:4] == 0).all() and (data[4:] == IGNORE_LABEL).all()


def test_corrupt_read_names_store_and_chunk(stores, tmp_path):
    p = shutil.copytree(stores["image"], tmp_path / "v.zarr")
    f = _shards(p)[0]
    data = bytearray(f.read_bytes())
    data[10] ^= 0x10  # inside the first chunk's compressed bytes
    f.write_bytes(bytes(data))
    vol = store.open_volume(p)
    with pytest.raises(InputError) as err:
        store.read_region(vol, (slice(0, 16), slice(0, 16), slice(0, 16)))
    msg = str(err.value)
    assert str(f) in msg and "first bad chunk at (z, y, x) = (0, 0, 0)" in msg and "\n" not in msg


def test_intact_store_reads_exactly_what_was_written(tmp_path):
    data = np.random.default_rng(0).normal(size=(20, 12, 9)).astype(np.float32)
    with store.atomic_output(tmp_path / "v.zarr") as t:
        store.create_volume(t, data.shape, data.dtype, store.volume_attrs("t", 1.0), chunk=4, shard=8)[...] = data
    np.testing.assert_array_equal(store.open_volume(tmp_path / "v.zarr").array[:], data)
    manifest = json.loads((tmp_path / "v.zarr" / store.MANIFEST).read_text())
    rec = manifest["arrays"]["0/zarr.json"]
    assert rec["shape"] == [20, 12, 9] and rec["data_type"] == "float32" and rec["chunks"] == [4, 4, 4]


def test_old_store_without_chunk_checksums_is_refused_with_advice(tmp_path):
    """Stores written before checksummed chunks: refused, with the advice to re-run ingest."""
    p = tmp_path / "old.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=3, attributes=store.volume_attrs("ingest", 1.0))
    g.create_array("0", shape=(8, 8, 8), dtype="f4", chunks=(4, 4, 4), shards=(8, 8, 8))[:] = 1.0
    with pytest.raises(InputError, match=r"old.zarr: chunks carry no crc32c checksums .*re-run ingest"):
        store.open_volume(p)
    store.write_manifest(p)  # a manifest does not make its chunks checked
    with pytest.raises(InputError, match="no crc32c"):
        store.open_volume(p)
    doc = json.loads((p / store.MANIFEST).read_text())  # a manifest of the first version
    doc = {"schema": "batterytwin.manifest/1", "files": doc["files"]}
    (p / store.MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(InputError, match="older batterytwin.*re-run ingest"):
        store.open_volume(p)
