"""Stores: chunk/shard shapes, atomic commit, validation errors, parallel writers."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from batterytwin import store
from batterytwin.errors import InputError

from .conftest import mpiexec


def test_block_shapes_fit_volume_and_nest():
    chunks, shards = store.block_shapes((70, 500, 20), 64, 256)
    assert chunks == (64, 64, 20)
    assert shards == (128, 256, 20)  # no larger than the volume needs, a multiple of the chunks
    assert all(s % c == 0 for s, c in zip(shards, chunks))


def test_shard_regions_tile_the_volume_exactly():
    shape, shards = (70, 33, 20), (32, 16, 20)
    hits = np.zeros(shape, int)
    for region in store.shard_regions(shape, shards):
        hits[region] += 1
    assert hits.min() == hits.max() == 1
    assert len(store.shard_regions(shape, shards)) == 3 * 3 * 1


def test_created_store_has_shards_chunks_and_provenance(tmp_path):
    attrs = store.volume_attrs("test", [1, 2, 3], {"a": 1}, {"path": "x", "sha256": "0" * 64})
    with store.atomic_output(tmp_path / "v.zarr") as tmp:
        arr = store.create_volume(tmp, (40, 30, 20), "uint16", attrs, chunk=16, shard=32)
        arr[:] = np.arange(40 * 30 * 20, dtype=np.uint16).reshape(40, 30, 20)
    vol = store.open_volume(tmp_path / "v.zarr")
    assert vol.array.chunks == (16, 16, 16) and vol.shards == (32, 32, 32)
    assert vol.voxel_size_um == [1.0, 2.0, 3.0]
    assert vol.attrs["axes"] == ["z", "y", "x"]
    assert vol.attrs["producer"]["config_sha256"] == store.params_sha256({"a": 1})
    assert vol.attrs["source"]["sha256"] == "0" * 64
    np.testing.assert_array_equal(vol.array[5], np.arange(40 * 30 * 20, dtype=np.uint16).reshape(40, 30, 20)[5])
    assert not list(tmp_path.glob("*.tmp-*"))


def test_failed_write_leaves_no_output_and_keeps_old(tmp_path):
    final = tmp_path / "v.zarr"
    with pytest.raises(RuntimeError):
        with store.atomic_output(final) as tmp:
            store.create_volume(tmp, (8, 8, 8), "f4", store.volume_attrs("t", 1))
            raise RuntimeError("killed half way")
    assert not final.exists() and not list(tmp_path.iterdir())
    with store.atomic_output(final) as tmp:  # a complete store ...
        store.create_volume(tmp, (8, 8, 8), "f4", store.volume_attrs("t", 1))[:] = 1.0
    with pytest.raises(RuntimeError):  # ... survives a failed rewrite untouched
        with store.atomic_output(final) as tmp:
            store.create_volume(tmp, (8, 8, 8), "f4", store.volume_attrs("t", 1))[:] = 2.0
            raise RuntimeError("killed")
    assert store.open_volume(final).array[0, 0, 0] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["v.zarr"]


def test_open_volume_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="no such store"):
        store.open_volume(tmp_path / "missing.zarr")
    with pytest.raises(InputError, match="unfinished temporary"):
        store.open_volume(tmp_path / "v.zarr.tmp-1234")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a zarr v3 store|no array"):
        store.open_volume(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w").create_array("0", shape=(4, 4, 4), dtype="f4")
    with pytest.raises(InputError, match="lacks attribute"):
        store.open_volume(tmp_path / "bare.zarr")
    g = zarr.open_group(str(tmp_path / "badvox.zarr"), mode="w", attributes={"voxel_size_um": [1, 0, 1], "producer": {}})
    g.create_array("0", shape=(4, 4, 4), dtype="f4")
    with pytest.raises(InputError, match="voxel_size_um must be > 0"):
        store.open_volume(tmp_path / "badvox.zarr")


def test_write_json_is_atomic_and_readable(tmp_path):
    store.write_json(tmp_path / "m.json", {"x": np.float32(1.5), "a": np.arange(3)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1.5, "a": [0, 1, 2]}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        store.read_json(tmp_path / "bad.json")


def _shard_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / "0" / "c").rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.mpi
def test_two_ranks_write_the_same_store_as_one(tmp_path):
    """Parallel writers own whole shards: 2 ranks give byte-identical shard files to 1 rank."""
    args = ["batterytwin", "-q", "phantom", "--shape", "40", "48", "36", "--seed", "3", "--chunk", "8",
            "--shard", "16", "--param", "photons=400", "--param", "ring_amplitude=0.02"]
    mpiexec(1, *args, str(tmp_path / "one.zarr"), "--labels", str(tmp_path / "one_l.zarr"))
    mpiexec(2, *args, str(tmp_path / "two.zarr"), "--labels", str(tmp_path / "two_l.zarr"))
    for a, b in (("one.zarr", "two.zarr"), ("one_l.zarr", "two_l.zarr")):
        files = _shard_files(tmp_path / a)
        assert files == _shard_files(tmp_path / b) and len(files) == 3 * 3 * 3
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / a / "0" / "c", tmp_path / b / "0" / "c",
                                                   [str(Path(*f.parts[2:])) for f in files], shallow=False)
        assert not mismatch and not errors
        np.testing.assert_array_equal(store.open_volume(tmp_path / a).array[:], store.open_volume(tmp_path / b).array[:])
    assert not list(tmp_path.glob("*.tmp-*"))
