"""Hand labels: import from TIFF/HDF5 into label stores, bad inputs, workflow wiring; shipped cycling data."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from batterytwin import store
from batterytwin.contracts import CLASSES
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, InputError

from .conftest import REPO
from .snakemake_run import snakemake

SHAPE = (6, 20, 24)
MAP = "0=pore,1=solid_electrolyte,2=lithium_metal"


def sparse_labels(shape=SHAPE, slices=(1, 4), seed=0) -> np.ndarray:
    """Labels on a few z slices (ids 0..2), 255 elsewhere."""
    rng = np.random.default_rng(seed)
    lab = np.full(shape, 255, np.uint8)
    for z in slices:
        lab[z] = rng.integers(0, 3, shape[1:])
    return lab


@pytest.fixture
def volume(tmp_path) -> Path:
    path = tmp_path / "volume.zarr"
    attrs = store.volume_attrs("ingest", [0.5, 0.6, 0.7])
    arr = store.create_volume(path, SHAPE, np.float32, attrs, chunk=8, shard=16)
    arr[:] = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    return path


def write_label_file(kind: str, lab: np.ndarray, root: Path) -> Path:
    import h5py
    import tifffile

    if kind == "tiff-stack":
        d = root / "labels_tif"
        d.mkdir()
        for z, plane in enumerate(lab):
            tifffile.imwrite(d / f"lab_{z}.tif", plane)
        return d
    if kind == "tiff":
        p = root / "labels.tif"
        tifffile.imwrite(p, lab)
        return p
    if kind == "hdf5":
        p = root / "labels.h5"
        with h5py.File(p, "w") as f:
            f["/exchange/data"] = lab
        return p
    p = root / "labels.npy"
    np.save(p, lab)
    return p


@pytest.mark.parametrize("kind", ["tiff-stack", "tiff", "hdf5"])
def test_label_import_round_trip(kind, tmp_path, volume, cli):
    lab = sparse_labels()
    src = write_label_file(kind, lab.astype(np.uint16) if kind == "tiff" else lab, tmp_path)
    out = tmp_path / "hand_labels.zarr"
    code, err = cli("ingest", src, out, "--labels", "--classes", MAP, "--like", volume, "--chunk", "8", "--shard", "16")
    assert code == EXIT_OK, err
    got = store.open_volume(out)
    np.testing.assert_array_equal(got.array[:], lab)
    assert got.array.dtype == np.uint8
    assert got.classes == {0: "pore", 1: "solid_electrolyte", 2: "lithium_metal"}
    assert got.attrs["ignore_label"] == 255
    assert got.voxel_size_um == [0.5, 0.6, 0.7]  # from --like
    counts = got.attrs["label_counts"]
    assert counts == {"pore": int((lab == 0).sum()), "solid_electrolyte": int((lab == 1).sum()),
                      "lithium_metal": int((lab == 2).sum()), "unlabelled": int((lab == 255).sum())}


def test_label_import_crop_and_unlabelled_id_streamed_in_small_slabs(tmp_path, volume, cli):
    # labels drawn on the uncropped scan, 0 = unlabelled in the labelling tool, ids shifted by one
    full = np.zeros((SHAPE[0] + 2, SHAPE[1], SHAPE[2] + 3), np.int32)
    lab = sparse_labels()
    inner = np.where(lab == 255, 0, lab.astype(np.int32) + 1)
    full[1:-1, :, 3:] = inner
    src = tmp_path / "l.npy"
    np.save(src, full)
    out = tmp_path / "l.zarr"
    code, err = cli("ingest", src, out, "--labels", "--classes", "1=pore,2=solid_electrolyte,3=lithium_metal",
                    "--unlabelled", "0", "--crop", f"1:{SHAPE[0] + 1},,3:", "--like", volume,
                    "--max-memory-mb", "0.001", "--chunk", "8", "--shard", "16")
    assert code == EXIT_OK, err
    got = store.open_volume(out)
    np.testing.assert_array_equal(got.array[:], np.where(lab == 255, 255, lab + 1))
    assert got.classes == {1: "pore", 2: "solid_electrolyte", 3: "lithium_metal"}


def test_default_class_map_is_the_contract(tmp_path, volume, cli):
    lab = sparse_labels()
    lab[2, 0, :6] = np.arange(6)
    src = write_label_file("npy", lab, tmp_path)
    code, err = cli("ingest", src, tmp_path / "o.zarr", "--labels", "--like", volume)
    assert code == EXIT_OK, err
    assert store.open_volume(tmp_path / "o.zarr").classes == CLASSES


def _one_error_line(code, err, out: Path, *needles):
    assert code == EXIT_BAD_INPUT, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists() and not list(out.parent.glob(out.name + "*"))


def test_unknown_ids_are_named_with_their_voxel_counts(tmp_path, volume, cli):
    lab = sparse_labels()
    lab[1, :3, :5] = 7     # 15 voxels
    lab[4, 10, :2] = 9     # 2 voxels
    src = write_label_file("tiff-stack", lab, tmp_path)
    out = tmp_path / "bad.zarr"
    code, err = cli("ingest", src, out, "--labels", "--classes", MAP, "--like", volume)
    _one_error_line(code, err, out, "7 (15 voxels)", "9 (2 voxels)", "not in the class map")


def test_negative_and_large_ids_are_unknown(tmp_path, volume, cli):
    lab = sparse_labels().astype(np.int32)
    lab[0, 0, 0] = -1
    lab[0, 0, 1:4] = 1000
    src = write_label_file("npy", lab, tmp_path)
    out = tmp_path / "bad.zarr"
    code, err = cli("ingest", src, out, "--labels", "--classes", MAP, "--like", volume)
    _one_error_line(code, err, out, "-1 (1 voxel)", "1000 (3 voxels)")


def test_labels_of_another_shape_are_refused(tmp_path, volume, cli):
    lab = sparse_labels(shape=(SHAPE[0], SHAPE[1], SHAPE[2] - 1))
    src = write_label_file("hdf5", lab, tmp_path)
    out = tmp_path / "bad.zarr"
    code, err = cli("ingest", src, out, "--labels", "--classes", MAP, "--like", volume)
    _one_error_line(code, err, out, "[6, 20, 23]", "[6, 20, 24]", "differs")


def test_a_class_named_twice_is_refused(tmp_path, volume, cli):
    src = write_label_file("npy", sparse_labels(), tmp_path)
    out = tmp_path / "bad.zarr"
    code, err = cli("ingest", src, out, "--labels", "--classes", "0=pore,1=solid_electrolyte,2=pore", "--like", volume)
    _one_error_line(code, err, out, "'pore' is named twice", "ids 0 and 2")


def test_parse_class_map_forms():
    from batterytwin.ingest.labels import parse_class_map

    assert parse_class_map({"pore": 0, "solid": 1}) == {0: "pore", 1: "solid"}
    assert parse_class_map(" 1=a , 0=b") == {0: "b", 1: "a"}
    with pytest.raises(InputError, match="outside 0..254"):
        parse_class_map("255=x")
    with pytest.raises(InputError, match="id 1 is given twice"):
        parse_class_map("1=a,1=b")


# ----------------------------------------------------------------------------- workflow wiring

@pytest.mark.slow
def test_dry_run_plans_import_and_training_on_tiff_labels(tmp_path):
    import tifffile

    data = tmp_path / "data"
    data.mkdir()
    scan = np.random.default_rng(0).integers(0, 60000, (40, 40, 40), dtype=np.uint16)
    tifffile.imwrite(data / "scan.tif", scan)
    tifffile.imwrite(data / "scan_labels.tif", sparse_labels((40, 40, 40), (5, 20, 30)))
    tifffile.imwrite(data / "scan_val.tif", sparse_labels((40, 40, 40), (12,)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "samples:\n"
        "  scan1:\n"
        "    source: data/scan.tif\n"
        "    voxel_size_um: 0.65\n"
        "    labels: data/scan_labels.tif\n"
        "    val_labels: data/scan_val.tif\n"
        "    role: train\n"  # a class map without cathode_active: not one microstructure could analyse
        "segment:\n"
        "  input: volume\n"
        "  classes: {pore: 0, solid_electrolyte: 1, lithium_metal: 2}\n"
        "degradation:\n  real_data: {enabled: false}\n")
    # this config alone: config.yaml's synthetic samples would be analysed with a class map that lacks the
    # cathode microstructure needs (refused)
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg), "--forceall",
                     "results/models/segment/model.pt")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "import_labels" in out and "train_seg" in out
    assert "batterytwin ingest -i data/scan_labels.tif -o results/scan1/hand_labels.zarr --labels" in out
    assert "--classes pore=0,solid_electrolyte=1,lithium_metal=2" in out
    assert "--like results/scan1/volume.zarr" in out
    assert "batterytwin ingest -i data/scan_val.tif -o results/scan1/val_labels.zarr --labels" in out
    train = next(line for line in out.splitlines() if "batterytwin train-seg" in line)
    assert "--volume results/scan1/volume.zarr --labels results/scan1/hand_labels.zarr" in train
    assert "--val-volume results/scan1/volume.zarr --val-labels results/scan1/val_labels.zarr" in train


# ---------------------------------------------------------------------------- shipped cycling data

CYCLING = REPO / "data" / "cycling"


def test_shipped_cycling_data_matches_its_checksums():
    sums = dict(reversed(line.split()) for line in (CYCLING / "SHA256SUMS").read_text().splitlines() if line)
    assert set(sums) == {"matr_1_train.npz", "matr_1_test.npz", "matr_2_test.npz", "hust_train.npz",
                         "snl_train.npz", "cruh_train.npz"}
    for name, digest in sums.items():
        assert hashlib.sha256((CYCLING / name).read_bytes()).hexdigest() == digest, name


def test_corrupted_copy_of_a_data_file_is_a_checksum_error(tmp_path):
    from batterytwin.cycling.loaders import load_npz_split

    d = tmp_path / "cycling"
    d.mkdir()
    shutil.copy(CYCLING / "SHA256SUMS", d)
    shutil.copy(CYCLING / "snl_train.npz", d)
    cs = load_npz_split(d / "snl_train.npz")  # intact copy: loads, checksum verified
    assert len(cs) == 37 and len(cs.excluded) == 3 and cs.qmatrix.shape[1:] == (20, 100)  # 3 all-zero matrices
    raw = bytearray((d / "snl_train.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "snl_train.npz").write_bytes(bytes(raw))
    with pytest.raises(InputError) as exc:
        load_npz_split(d / "snl_train.npz")
    msg = str(exc.value)
    assert "\n" not in msg and "snl_train.npz" in msg and "SHA-256" in msg and "9e0773d3" in msg


@pytest.mark.slow
def test_workflow_finds_the_shipped_data_and_refuses_missing_data(tmp_path):
    ok = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert f"--npz {CYCLING / 'matr_1_test.npz'}" in ok.stdout  # found from another working directory
    cfg = tmp_path / "missing.yaml"
    cfg.write_text("degradation:\n  real_data:\n    dir: nowhere/cycling\n")
    bad = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), str(cfg))
    assert bad.returncode != 0
    assert "degradation.real_data.dir: real cycling data directory 'nowhere/cycling' not found" in bad.stderr
    cfg.write_text("degradation:\n  real_data:\n    dir: nowhere/cycling\n    enabled: false\n")
    off = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), str(cfg))
    assert off.returncode == 0, off.stderr


@pytest.mark.parametrize("classes, message", [
    ({"pore": 0, "solid": 0}, "segment.classes: id 0 is given to 'pore' and 'solid'"),
    ({"pore": 1, "solid": 2}, "segment.classes: ids must be 0..1 (one per class), got [1, 2]"),
])
def test_segment_class_map_errors(classes, message):
    from batterytwin.segment.config import merge_config

    with pytest.raises(InputError) as exc:
        merge_config({"classes": classes})
    assert str(exc.value) == message
