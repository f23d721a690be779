"""Ingest commits what it reads, or refuses: formats, hyperstacks, narrowing, truncation and I/O errors.

Each family of hostile input is tried with several members: one line naming the file or setting,
exit 2, nothing at the output path, the input unchanged. Where ingest accepts, the store holds
exactly the numpy data written (the independent reference), and TIFF axes are checked against
tifffile's own reading of the file's metadata.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from batterytwin import store
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK

VOL = np.arange(6 * 20 * 24, dtype=np.uint16).reshape(6, 20, 24) * 7


def _ingest(capsys, src, out, *extra) -> tuple[int, list[str]]:
    from batterytwin.cli import main

    capsys.readouterr()
    try:
        code = main(["-q", "ingest", str(src), str(out), "--voxel-size-um", "1", *map(str, extra)])
    except SystemExit as exc:
        code = exc.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    return code, err


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _refused(capsys, tmp_path, src, names, *extra):
    out = tmp_path / "out.zarr"
    before = _sha(src) if Path(src).is_file() else None
    code, err = _ingest(capsys, src, out, *extra)
    assert code == EXIT_BAD_INPUT and len(err) == 1 and names in err[0], (code, err)
    assert not out.exists() and not list(tmp_path.glob("out.zarr.tmp-*"))
    if before is not None:
        assert _sha(src) == before
    return err[0]


def _accepted(capsys, tmp_path, src, *extra) -> np.ndarray:
    out = tmp_path / "out.zarr"
    code, err = _ingest(capsys, src, out, *extra)
    assert code == EXIT_OK, err
    data = store.open_volume(out).array[:]
    shutil.rmtree(out)
    return data


# ------------------------------------------------------------------------------ truncated TIFF
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.97, "last-page-data"])
def test_truncated_tiff_is_refused(capsys, tmp_path, keep):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, VOL)
    data = full.read_bytes()
    if keep == "last-page-data":
        with tifffile.TiffFile(full) as tif:
            page = tif.pages[-1]
            cut = page.dataoffsets[0] + page.databytecounts[0] // 2
    else:
        cut = int(len(data) * keep)
    src = tmp_path / "cut.tif"
    src.write_bytes(data[:cut])
    _refused(capsys, tmp_path, src, str(src))


def test_truncated_slice_in_a_tiff_folder_is_refused(capsys, tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(4):
        tifffile.imwrite(folder / f"s{z}.tif", VOL[z])
    bad = folder / "s2.tif"
    bad.write_bytes(bad.read_bytes()[:400])
    _refused(capsys, tmp_path, folder, "s2.tif")


# ------------------------------------------------------------------------------ hyperstacks
HYPER = np.arange(3 * 4 * 2 * 8 * 10, dtype=np.uint16).reshape(3, 4, 2, 8, 10)  # T Z C Y X


def _hyperstacks(tmp_path) -> dict[str, tuple[Path, np.ndarray, str]]:
    """name -> (file, data, axes), each written by tifffile with its axes metadata."""
    out = {}
    p = tmp_path / "imagej_tzcyx.tif"
    tifffile.imwrite(p, HYPER, imagej=True, metadata={"axes": "TZCYX"})
    out["imagej"] = (p, HYPER, "TZCYX")
    zc = HYPER[0].astype(np.uint8)  # Z C Y X
    p = tmp_path / "ome_zcyx.ome.tif"
    tifffile.imwrite(p, zc, ome=True, metadata={"axes": "ZCYX"})
    out["ome-zcyx"] = (p, zc, "ZCYX")
    tz = HYPER[:, :, 1]  # T Z Y X
    p = tmp_path / "ome_tzyx.ome.tif"
    tifffile.imwrite(p, tz, ome=True, metadata={"axes": "TZYX"})
    out["ome-tzyx"] = (p, tz, "TZYX")
    rgb = np.stack([HYPER[0, :, 0], HYPER[0, :, 1], HYPER[1, :, 0]], axis=-1).astype(np.uint8)  # Z Y X S
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, rgb, photometric="rgb")
    out["rgb"] = (p, rgb, None)
    return out


@pytest.mark.parametrize("name", ["imagej", "ome-zcyx", "ome-tzyx", "rgb"])
def test_channels_and_time_are_never_flattened_into_z(capsys, tmp_path, name):
    path, data, axes = _hyperstacks(tmp_path)[name]
    with tifffile.TiffFile(path) as tif:  # tifffile's own reading of the metadata
        series_axes = tif.series[0].axes
        assert tuple(tif.series[0].shape) == data.shape
    if axes:
        assert series_axes == axes
    line = _refused(capsys, tmp_path, path, str(path))
    assert "--channel" in line or "--timepoint" in line
    # select: the store is that sub-volume of the written array
    sel = {"imagej": (("--timepoint", 2, "--channel", 1), data[2, :, 1]),
           "ome-zcyx": (("--channel", 1), data[:, 1]),
           "ome-tzyx": (("--timepoint", 1), data[1]),
           "rgb": (("--channel", 2), data[..., 2])}[name]
    got = _accepted(capsys, tmp_path, path, *sel[0])
    np.testing.assert_array_equal(got, sel[1])


def test_channel_selection_is_checked(capsys, tmp_path):
    path, _, _ = _hyperstacks(tmp_path)["ome-zcyx"]
    _refused(capsys, tmp_path, path, "--channel 5 is outside 0..1", "--channel", "5")
    _refused(capsys, tmp_path, path, "--timepoint", "--channel", "0", "--timepoint", "0")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, VOL)
    _refused(capsys, tmp_path, plain, "--channel 0 given", "--channel", "0")
    np.testing.assert_array_equal(_accepted(capsys, tmp_path, plain), VOL)
    np.save(tmp_path / "v.npy", VOL)
    _refused(capsys, tmp_path, tmp_path / "v.npy", "--channel", "--channel", "0")


# ------------------------------------------------------------------------------ value ranges
@pytest.mark.parametrize("data,dtype", [
    (np.array([0, 300, 65535], np.uint16), "uint8"),
    (np.array([-5, 0, 7], np.int16), "uint16"),
    (np.array([0, 40000, 2], np.uint16), "int16"),
    (np.array([-1e10, 0.5, 3.0], np.float64), "int32"),
    (np.array([1e300, 0.0, -2.0], np.float64), "float32"),
    (np.array([0.0, 70000.0, 1.0], np.float32), "float16"),
])
def test_narrowing_output_dtype_never_wraps(capsys, tmp_path, data, dtype):
    src = tmp_path / "v.npy"
    vol = np.resize(data, (4, 5, 6)).astype(data.dtype)
    np.save(src, vol)
    _refused(capsys, tmp_path, src, "do not fit output_dtype", "--output-dtype", dtype)
    got = _accepted(capsys, tmp_path, src, "--output-dtype", dtype, "--clip")
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    ref = np.clip(vol.astype(np.float64), float(info.min), float(info.max))
    ref = np.rint(ref) if np.dtype(dtype).kind in "iu" else ref
    np.testing.assert_array_equal(got, ref.astype(dtype))
    assert np.isfinite(got.astype(np.float64)).all()


@pytest.mark.parametrize("fill", ["nan", "inf", "-inf"])
def test_nan_fill_must_be_finite(capsys, tmp_path, fill):
    src = tmp_path / "v.npy"
    vol = np.ones((4, 5, 6), np.float32)
    vol[1, 2, 3] = np.nan
    np.save(src, vol)
    _refused(capsys, tmp_path, src, "--nan-fill", "--nan-fill", fill)
    got = _accepted(capsys, tmp_path, src, "--nan-fill", "0")
    assert np.isfinite(got).all() and got[1, 2, 3] == 0


def test_hdf5_and_npy_non_finite_and_dims(capsys, tmp_path):
    import h5py

    h5 = tmp_path / "scan.h5"
    with h5py.File(h5, "w") as f:
        f["/exchange/data"] = np.full((3, 4, 5), np.inf, np.float32)
        f["/four"] = np.zeros((2, 3, 4, 5), np.float32)
    _refused(capsys, tmp_path, h5, "NaN/Inf")
    _refused(capsys, tmp_path, h5, "expected a 3-D volume", "--dataset", "/four")
    npy = tmp_path / "v4.npy"
    np.save(npy, np.zeros((2, 3, 4, 5), np.float32))
    _refused(capsys, tmp_path, npy, "expected a 3-D volume")
    cut = tmp_path / "cut.npy"
    np.save(cut, np.zeros((8, 8, 8), np.float32))
    cut.write_bytes(cut.read_bytes()[:-100])
    _refused(capsys, tmp_path, cut, "truncated .npy")


# ------------------------------------------------------------------------------ raw byte order
def test_raw_byte_order_in_dtype_wins_and_conflicts_are_errors(capsys, tmp_path):
    src = tmp_path / "v.raw"
    src.write_bytes(VOL.astype(">u2").tobytes())
    shape = ("--shape", *VOL.shape)
    np.testing.assert_array_equal(_accepted(capsys, tmp_path, src, *shape, "--dtype", ">u2"), VOL)
    np.testing.assert_array_equal(_accepted(capsys, tmp_path, src, *shape, "--dtype", "uint16", "--byte-order", "big"),
                                  VOL)
    _refused(capsys, tmp_path, src, "big-endian but --byte-order is little", *shape, "--dtype", ">u2",
             "--byte-order", "little")
    _refused(capsys, tmp_path, src, "little-endian but --byte-order is big", *shape, "--dtype", "<u2",
             "--byte-order", "big")
    _refused(capsys, tmp_path, src, "--header-bytes must be an integer >= 0", *shape, "--dtype", "u2",
             "--header-bytes", "-2")


# ------------------------------------------------------------------------------ not regular files
def _fifo(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    os.mkfifo(p)
    return p


def test_fifo_folder_and_binary_inputs_are_refused_without_hanging(capsys, tmp_path):
    # each in a subprocess with a timeout: a hang fails the test instead of stalling the suite
    cfg = tmp_path / "config.bin"
    cfg.write_bytes(bytes(range(256)) * 4)
    np.save(tmp_path / "v.npy", VOL)
    cases = {
        "fifo-input": ["-i", str(_fifo(tmp_path, "scan.tif")), "-o", str(tmp_path / "o1.zarr"), "--voxel-size-um", "1"],
        "fifo-raw": ["-i", str(_fifo(tmp_path, "scan.raw")), "-o", str(tmp_path / "o2.zarr"), "--voxel-size-um", "1",
                     "--shape", "1", "1", "1", "--dtype", "u1"],
        "folder-npy": ["-i", str(tmp_path), "-o", str(tmp_path / "o3.zarr"), "--voxel-size-um", "1", "--format", "npy"],
    }
    stage_cases = {
        "fifo-config": ["denoise", "-i", "x.zarr", "-o", str(tmp_path / "o4.zarr"), "--config", str(_fifo(tmp_path, "c.yaml"))],
        "binary-config": ["denoise", "-i", "x.zarr", "-o", str(tmp_path / "o5.zarr"), "--config", str(cfg)],
        "folder-config": ["denoise", "-i", "x.zarr", "-o", str(tmp_path / "o6.zarr"), "--config", str(tmp_path)],
        "fifo-store": ["microstructure", "-i", str(_fifo(tmp_path, "l.zarr")), "--output",
                       str(tmp_path / "o7.json"), "--msd", str(tmp_path / "o7.npz")],
    }
    for kind, value in (("fifo", str(_fifo(tmp_path, "m.json"))), ("folder", str(tmp_path)), ("binary", str(cfg))):
        stage_cases[f"{kind}-i"] = ["simulate", "-i", value, "-o", str(tmp_path / "o8.zarr"), "--summary",
                                    str(tmp_path / "o8.json"), "--work-dir", str(tmp_path / "w")]
    argvs = {k: ["ingest", *v] for k, v in cases.items()} | stage_cases
    expect = {"fifo-input": "named pipe", "fifo-raw": "named pipe", "folder-npy": "is a folder",
              "fifo-config": "named pipe", "binary-config": "binary file", "folder-config": "is a folder",
              "fifo-store": "named pipe", "fifo-i": "named pipe", "folder-i": "is a folder", "binary-i": "binary file"}
    for name, argv in argvs.items():
        proc = subprocess.run([sys.executable, "-m", "batterytwin.cli", "-q", *argv], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == EXIT_BAD_INPUT and len(lines) == 1 and expect[name] in lines[0], (name, proc.stderr)
        assert not list(tmp_path.glob("o*.zarr*")) and not list(tmp_path.glob("o*.json"))


# ------------------------------------------------------------------------------ the output filesystem
def test_unwritable_output_is_one_line_naming_it(capsys, tmp_path):
    src = tmp_path / "v.npy"
    np.save(src, VOL)
    out = Path("/proc/out.zarr")  # a filesystem nobody may write, not even root
    code, err = _ingest(capsys, src, out)
    assert code == EXIT_BAD_INPUT and len(err) == 1 and str(out) in err[0] and "(E" in err[0], err
    blocker = tmp_path / "file.txt"  # the output's folder is a file
    blocker.write_text("x")
    code, err = _ingest(capsys, src, blocker / "out.zarr")
    assert code == EXIT_BAD_INPUT and len(err) == 1 and str(blocker) in err[0] and "(E" in err[0], err
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_full_or_read_only_output_filesystem_blames_the_output(capsys, tmp_path, monkeypatch, err_no):
    """The OS refuses a chunk write (a full disk): the line names the output, not the healthy input."""
    import zarr.storage._local as local

    def refuse(path, value, exclusive=False):
        raise OSError(err_no, os.strerror(err_no), str(path))

    src = tmp_path / "in.zarr"
    with store.atomic_output(src) as t:
        store.create_volume(t, (8, 8, 8), "float32", store.volume_attrs("ingest", 1.0), chunk=4,
                            shard=8)[:] = np.random.default_rng(0).random((8, 8, 8), dtype=np.float32)  # has contrast
    before = {q: _sha(q) for q in src.rglob("*") if q.is_file()}
    monkeypatch.setattr(local, "_put", refuse)
    out = tmp_path / "den.zarr"
    from batterytwin.cli import main

    capsys.readouterr()
    code = main(["-q", "denoise", str(src), str(out), "--patch-size", "3", "--search-radius", "1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == EXIT_BAD_INPUT and len(err) == 1, err
    assert f"{out}: {os.strerror(err_no)} ({errno.errorcode[err_no]})" in err[0] and str(src) not in err[0]
    assert not out.exists() and not list(tmp_path.glob("den.zarr.tmp-*"))
    assert {q: _sha(q) for q in src.rglob("*") if q.is_file()} == before


# ------------------------------------------------------------------------------ stale temporaries
def test_stale_temporaries_of_the_same_output_are_cleaned(capsys, tmp_path):
    src = tmp_path / "v.npy"
    np.save(src, VOL)
    out = tmp_path / "out.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    stale = [tmp_path / f"out.zarr.tmp-{host}-{int(dead.stdout)}-{'a' * 12}"]
    kept = [tmp_path / f"out.zarr.tmp-{host}-{os.getppid()}-{'b' * 12}",  # a live writer
            tmp_path / f"out.zarr.tmp-{'0' * 8}-{int(dead.stdout)}-{'c' * 12}",  # another host
            tmp_path / f"other.zarr.tmp-{host}-{int(dead.stdout)}-{'d' * 12}",  # another output
            tmp_path / "out.zarr.tmp-notours"]  # not our pattern
    for p in stale + kept:
        p.mkdir()
        (p / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    code, err = _ingest(capsys, src, out)
    assert code == EXIT_OK, err
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    np.testing.assert_array_equal(store.open_volume(out).array[:], VOL)
