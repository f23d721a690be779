"""Ingest: every format round-trips exactly, crop/bin match references, bad input fails cleanly."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from skimage.measure import block_reduce

from batterytwin import store
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK
from batterytwin.ingest import driver, readers

RNG = np.random.default_rng(7)
VOLUME = RNG.integers(0, 60000, size=(37, 29, 23), dtype=np.uint16)


def _tiff_stack(folder, volume):
    folder.mkdir()
    for z, plane in enumerate(volume):  # natural order: slice_2 before slice_10
        tifffile.imwrite(folder / f"slice_{z}.tif", plane)
    return folder


def _sources(tmp_path):
    tifffile.imwrite(tmp_path / "multi.tif", VOLUME)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["/exchange/data"] = VOLUME
        f["/other/recon"] = VOLUME
    np.save(tmp_path / "vol.npy", VOLUME)
    VOLUME.astype(">u2").tofile(tmp_path / "vol_be.raw")
    return {
        "tiff-stack": ([str(_tiff_stack(tmp_path / "stack", VOLUME))], []),
        "tiff": ([str(tmp_path / "multi.tif")], []),
        "hdf5": ([str(tmp_path / "scan.h5")], []),
        "hdf5-path": ([str(tmp_path / "scan.h5")], ["--dataset", "/other/recon"]),
        "npy": ([str(tmp_path / "vol.npy")], []),
        "raw": ([str(tmp_path / "vol_be.raw")], ["--shape", "37", "29", "23", "--dtype", "uint16", "--byte-order", "big"]),
    }


def test_every_format_round_trips_exactly(tmp_path, cli):
    for name, (src, extra) in _sources(tmp_path).items():
        out = tmp_path / f"{name}.zarr"
        code, err = cli("ingest", *src, out, "--voxel-size-um", "0.65", "--chunk", "8", "--shard", "16", *extra)
        assert code == EXIT_OK, err
        vol = store.open_volume(out)
        np.testing.assert_array_equal(vol.array[:], VOLUME, err_msg=name)
        assert vol.array.dtype == np.uint16 and vol.shards == (16, 16, 16)
        assert vol.voxel_size_um == [0.65] * 3
        files = sorted((tmp_path / "stack").iterdir(), key=lambda f: int(f.stem.split("_")[1])) if name == "tiff-stack" else [src[0]]
        assert vol.attrs["source"]["sha256"] == store.sha256_files(files)
        assert vol.attrs["statistics"]["max"] == VOLUME.max()


def test_crop_and_bin_match_block_reduce(tmp_path, cli):
    np.save(tmp_path / "v.npy", VOLUME)
    code, err = cli("ingest", tmp_path / "v.npy", tmp_path / "o.zarr", "--voxel-size-um", "1", "2", "3",
                    "--crop", "3:35,:,2:22", "--bin", "2", "--chunk", "4", "--shard", "8")
    assert code == EXIT_OK, err
    expected = block_reduce(VOLUME[3:35, :28, 2:22].astype(np.float64), (2, 2, 2), np.mean)
    vol = store.open_volume(tmp_path / "o.zarr")
    np.testing.assert_allclose(vol.array[:], expected, rtol=1e-6)
    assert vol.voxel_size_um == [2.0, 4.0, 6.0]


def test_slab_depth_respects_memory_budget(tmp_path):
    """Reads come in whole-chunk slabs when a shard row would exceed the budget."""
    np.save(tmp_path / "v.npy", VOLUME)
    reader = readers.open_reader(tmp_path / "v.npy")
    depths = []
    original = reader.read
    reader.read = lambda z0, z1: depths.append(z1 - z0) or original(z0, z1)
    plane_mb = 29 * 23 * 10 / 2**20
    driver.ingest_volume(reader, tmp_path / "small.zarr", voxel_size_um=1, chunk=4, shard=16,
                         max_memory_mb=plane_mb * 9)  # room for 9 planes: slabs of 8 (2 chunks)
    assert max(depths) == 8 and sum(depths) == 37
    depths.clear()
    driver.ingest_volume(reader, tmp_path / "big.zarr", voxel_size_um=1, chunk=4, shard=16, max_memory_mb=100)
    assert max(depths) == 16  # a whole shard row fits
    np.testing.assert_array_equal(store.open_volume(tmp_path / "small.zarr").array[:], VOLUME)


def _bad_inputs(tmp_path):
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage-not-a-tiff" * 4)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "a_0.tif", VOLUME[0])
    tifffile.imwrite(mixed / "a_1.tif", VOLUME[1, :10])
    mixed_dtype = tmp_path / "mixed_dtype"
    mixed_dtype.mkdir()
    tifffile.imwrite(mixed_dtype / "a_0.tif", VOLUME[0])
    tifffile.imwrite(mixed_dtype / "a_1.tif", VOLUME[1].astype(np.float32))
    with h5py.File(tmp_path / "nodata.h5", "w") as f:
        f["/exchange/dark"] = VOLUME[:2]
    VOLUME.tofile(tmp_path / "short.raw")
    np.save(tmp_path / "text.npy", np.array([[["a"]]]))
    nan = VOLUME.astype(np.float32)
    nan[20, 3, 4] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ok.npy", VOLUME)
    return [
        (["ingest", tmp_path / "absent.h5", "--voxel-size-um", "1"], "absent.h5: no such file"),
        (["ingest", tmp_path / "corrupt.tif", "--voxel-size-um", "1"], "corrupt.tif: unreadable or corrupt TIFF"),
        (["ingest", mixed, "--voxel-size-um", "1"], "a_1.tif: slice shape/dtype"),
        (["ingest", mixed_dtype, "--voxel-size-um", "1"], "a_1.tif: slice shape/dtype"),
        (["ingest", tmp_path / "nodata.h5", "--voxel-size-um", "1"], "nodata.h5: no dataset '/exchange/data'"),
        (["ingest", tmp_path / "short.raw", "--voxel-size-um", "1", "--shape", "40", "29", "23", "--dtype", "uint16"],
         "short.raw: file has 49358 bytes but shape"),
        (["ingest", tmp_path / "text.npy", "--voxel-size-um", "1"], "text.npy: data type <U1 is not numeric"),
        (["ingest", tmp_path / "nan.npy", "--voxel-size-um", "1"], "nan.npy: 1 NaN/Inf value(s), first in slice z=20"),
        (["ingest", tmp_path / "ok.npy", "--voxel-size-um", "0"], "voxel_size_um must be > 0"),
        (["ingest", tmp_path / "ok.npy", "--voxel-size-um", "1", "--crop", "0:99,,"], "outside the volume"),
    ]


def test_bad_input_gives_one_line_error_and_no_output(tmp_path, cli):
    for argv, message in _bad_inputs(tmp_path):
        out = tmp_path / "out.zarr"
        code, err = cli(argv[0], argv[1], out, *argv[2:])
        assert code == EXIT_BAD_INPUT, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (message, err)
        assert lines[0].startswith("batterytwin ingest: error:")
        assert not out.exists() and not list(tmp_path.glob("out.zarr*"))


def test_missing_voxel_size_is_rejected(tmp_path, capsys):
    from batterytwin.cli import main

    np.save(tmp_path / "ok.npy", VOLUME)
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(tmp_path / "ok.npy"), str(tmp_path / "o.zarr")])
    assert exc.value.code == EXIT_BAD_INPUT and "--voxel-size-um" in capsys.readouterr().err


def test_nan_fill_replaces_non_finite(tmp_path, cli):
    nan = VOLUME.astype(np.float32)
    nan[5, 1, 1], nan[6, 2, 2] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", nan)
    code, err = cli("ingest", tmp_path / "nan.npy", tmp_path / "o.zarr", "--voxel-size-um", "1", "--nan-fill", "-1")
    assert code == EXIT_OK, err
    out = store.open_volume(tmp_path / "o.zarr").array[:]
    assert out[5, 1, 1] == -1 and out[6, 2, 2] == -1 and np.isfinite(out).all()
