"""Stages refuse what they cannot answer: each class tried with several members.

Every refusal: exit status 2, one line on stderr naming the file or setting, nothing at the output
path, and the inputs byte for byte as they were.

- no contrast (constant, near-constant, specks on a blank, a noise-free ramp) in denoise and segment;
  a non-finite NLM result never written;
- a store of the wrong kind (labels, uncertainty, CT) given to denoise, segment, train-seg;
- an output path equal to, inside or containing an input, or two outputs at one path (every command);
- the GMM on bright specks and on a small phase (fits), and on phases the volume does not show apart
  (refused);
- the twin's cells: duplicated cells, a diffusion store of other cells, SOH not in percent;
- implausible sizes: voxel sizes, derived thicknesses, phantom shapes, NLM search radii.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from batterytwin import store
from batterytwin.contracts import CLASSES
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK

from .conftest import REPO

ID = {name: cid for cid, name in CLASSES.items()}
GMM3 = ["lithium_metal", "solid_electrolyte", "cathode_active"]


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders): inputs must not change."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def write_volume(path: Path, img: np.ndarray, stage: str = "denoise", **attrs) -> Path:
    with store.atomic_output(path, World()) as t:
        store.create_volume(t, img.shape, img.dtype, store.volume_attrs(stage, 0.5, **attrs), chunk=16,
                            shard=32)[...] = img
    return path


def write_labels(path: Path, labels: np.ndarray, classes: dict[int, str] | None = None) -> Path:
    classes = classes or CLASSES
    return write_volume(path, labels.astype(np.uint8), "segment", classes={str(k): v for k, v in classes.items()},
                        ignore_label=255)


def three_phases(n: int = 32, seed: int = 0, fractions=(0.3, 0.4, 0.3), levels=(0.1, 0.45, 0.9), noise=0.04):
    """(truth uint8, float32 image) of a smooth random three-phase field with exact fractions."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 3.0, mode="wrap")
    truth = np.digitize(f, np.quantile(f, np.cumsum(fractions)[:-1])).astype(np.uint8)
    img = np.asarray(levels, np.float32)[truth] + rng.normal(0, noise, truth.shape).astype(np.float32)
    return truth, img.astype(np.float32)


def refused(code: int, err: str, *names) -> None:
    lines = err.strip().splitlines()
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1, err
    for name in names:
        assert str(name) in lines[0], (name, err)


def no_contrast_volumes(n: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    specks = np.full((n, n, n), 0.4, np.float32)
    specks.ravel()[rng.choice(n ** 3, n ** 3 // 200, replace=False)] = 3.0  # 0.5 % bright specks on a blank
    return {
        "zeros": np.zeros((n, n, n), np.float32),
        "constant": np.full((n, n, n), 7.25, np.float32),
        "rounding-noise": (1000.0 + rng.normal(0, 1e-5, (n, n, n))).astype(np.float32),
        "specks-on-blank": specks,
        "constant-uint16": np.full((n, n, n), 1200, np.uint16),
    }


# ------------------------------------------------------------------------------- class 3: no contrast

@pytest.mark.parametrize("name", list(no_contrast_volumes()))
def test_no_contrast_is_refused_by_denoise_and_segment(tmp_path, cli, name):
    vol = write_volume(tmp_path / "vol.zarr", no_contrast_volumes()[name])
    before = snapshot(vol)
    runs = [("denoise", vol, tmp_path / "den.zarr"),
            ("segment", "--input", vol, "--output", tmp_path / "gmm.zarr", "--method", "gmm"),
            ("segment", "--input", vol, "--output", tmp_path / "net.zarr", "--model", "pretrained", "--device", "cpu")]
    labels = write_labels(tmp_path / "lab.zarr", np.indices(vol_shape(vol)).sum(0) % 3)
    runs.append(("train-seg", "--volume", vol, "--labels", labels, "--model-out", tmp_path / "m.pt",
                 "--metrics-out", tmp_path / "m.json", "--config-json",
                 json.dumps({"train": {"steps": 1, "init_from": None, "checkpoint_dir": str(tmp_path / "ck")}})))
    for argv in runs:
        code, err = cli(*argv)
        refused(code, err, vol, "no contrast")
    assert snapshot(vol) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.zarr", "vol.zarr"]


def vol_shape(path: Path) -> tuple[int, ...]:
    return store.open_volume(path).shape


def test_denoise_refuses_a_noise_free_volume_without_h_and_accepts_it_with_h(tmp_path, cli):
    z, y, x = np.mgrid[:24, :24, :24].astype(np.float32)
    ramp = write_volume(tmp_path / "ramp.zarr", (0.01 * z + 0.02 * y + 0.005 * x).astype(np.float32))
    code, err = cli("denoise", ramp, tmp_path / "out.zarr", "--patch-size", 3, "--search-radius", 1)
    refused(code, err, ramp, "noise sigma", "denoise.h")
    assert not (tmp_path / "out.zarr").exists()
    code, err = cli("denoise", ramp, tmp_path / "out.zarr", "--patch-size", 3, "--search-radius", 1, "--h", 0.05)
    assert code == EXIT_OK, err
    assert np.isfinite(store.open_volume(tmp_path / "out.zarr").array[...]).all()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_nlm_result_is_never_written(tmp_path, cli, monkeypatch, value):
    """Whatever makes the NLM emit a non-finite voxel (an underflowing h, a kernel fault), the one check
    before each write stops the run and the output is never committed."""
    import batterytwin.denoise.driver as driver

    real = driver.run_padded

    def faulty(*args, **kwargs):
        out = real(*args, **kwargs)
        out.view(-1)[out.numel() // 2] = value
        return out

    monkeypatch.setattr(driver, "run_padded", faulty)
    _, img = three_phases(24, seed=3)
    vol = write_volume(tmp_path / "vol.zarr", img)
    before = snapshot(vol)
    code, err = cli("denoise", vol, tmp_path / "out.zarr", "--patch-size", 3, "--search-radius", 1)
    refused(code, err, tmp_path / "out.zarr", "NaN/inf", "nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.zarr"] and snapshot(vol) == before


# ------------------------------------------------------------------------- class 3: the GMM segmenter

def gmm_segment(cli, tmp_path, img, classes, **gmm):
    vol = write_volume(tmp_path / "vol.zarr", img)
    out = tmp_path / "labels.zarr"
    code, err = cli("segment", "--input", vol, "--output", out, "--method", "gmm", "--config-json",
                    json.dumps({"gmm": {"classes": classes, "clean_radius": 0, **gmm}}))
    return code, err, out


@pytest.mark.parametrize("case", ["specks", "small-pore-phase", "dark-and-bright-outliers"])
def test_gmm_finds_every_phase_despite_outliers_and_uneven_peaks(tmp_path, cli, case):
    rng = np.random.default_rng(11)
    fractions = (0.072, 0.6, 0.328) if case == "small-pore-phase" else (0.3, 0.4, 0.3)
    truth, img = three_phases(48, seed=7, fractions=fractions)
    flat = img.reshape(-1)
    if case == "specks":  # 0.3 % of voxels far brighter than anything in the cell
        flat[rng.choice(flat.size, int(0.003 * flat.size), replace=False)] = rng.uniform(5, 10)
    if case == "dark-and-bright-outliers":
        idx = rng.choice(flat.size, int(0.004 * flat.size), replace=False)
        flat[idx] = np.where(np.arange(idx.size) % 2, 25.0, -20.0)
    code, err, out = gmm_segment(cli, tmp_path, img, GMM3)
    assert code == EXIT_OK, err
    lab = store.open_volume(out).array[...]
    ids = np.array([ID[n] for n in GMM3], np.uint8)
    est = np.array([(lab == c).mean() for c in ids])
    true = np.bincount(truth.ravel(), minlength=3) / truth.size
    assert np.abs(est - true).max() < 0.02, (est, true)


@pytest.mark.parametrize("case", ["two-phases-three-classes", "two-phases-four-classes", "one-noisy-phase"])
def test_gmm_refuses_phases_the_volume_does_not_show_apart(tmp_path, cli, case):
    rng = np.random.default_rng(2)
    if case == "one-noisy-phase":
        img = (0.5 + rng.normal(0, 0.05, (32, 32, 32))).astype(np.float32)
        classes = ["pore", "solid_electrolyte"]
    else:
        _, img = three_phases(32, seed=1, fractions=(0.5, 0.0001, 0.4999), levels=(0.1, 0.1, 0.9))
        classes = GMM3 if case == "two-phases-three-classes" else ["pore", *GMM3]
    code, err, out = gmm_segment(cli, tmp_path, img, classes)
    refused(code, err, "segment.gmm")
    assert "share one intensity peak" in err or "no intensity mode" in err or "vanished" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------ class 3: store kinds

def test_a_store_of_the_wrong_kind_is_refused(tmp_path, cli):
    truth, img = three_phases(32)
    ct = write_volume(tmp_path / "ct.zarr", img)
    labels = write_labels(tmp_path / "labels.zarr", truth)
    unc = write_volume(tmp_path / "unc.zarr", img.astype(np.float16), "segment", quantity="softmax entropy")
    before = snapshot(tmp_path)
    out = tmp_path / "out.zarr"
    seg = ["--config-json", json.dumps({"train": {"init_from": None, "steps": 1,
                                                  "checkpoint_dir": str(tmp_path / "ck")}})]
    runs = [(labels, "denoise input", ("denoise", labels, out)),
            (unc, "denoise input", ("denoise", unc, out)),
            (labels, "denoise --reference", ("denoise", ct, out, "--reference", labels)),
            (labels, "segment --input", ("segment", "--input", labels, "--output", out, "--method", "gmm")),
            (unc, "segment --input", ("segment", "--input", unc, "--output", out, "--method", "gmm")),
            (labels, "segment --input", ("segment", "--input", labels, "--output", out, "--model", "pretrained")),
            (ct, "train-seg --labels", ("train-seg", "--volume", ct, "--labels", ct, "--model-out", tmp_path / "m.pt",
                                        "--metrics-out", tmp_path / "m.json", *seg)),
            (labels, "train-seg --volume", ("train-seg", "--volume", labels, "--labels", labels, "--model-out",
                                            tmp_path / "m.pt", "--metrics-out", tmp_path / "m.json", *seg)),
            (ct, "classes", ("microstructure", "--labels", ct, "--output", tmp_path / "ms.json", "--msd",
                             tmp_path / "msd.npz")),
            (unc, "classes", ("microstructure", "--labels", unc, "--output", tmp_path / "ms.json", "--msd",
                              tmp_path / "msd.npz")),
            (labels, "report slices --raw", ("report", "slices", "--raw", labels, "--out", tmp_path / "s.png")),
            (ct, "report slices --labels", ("report", "slices", "--labels", ct, "--out", tmp_path / "s.png")),
            (ct, "report slices --uncertainty", ("report", "slices", "--uncertainty", ct, "--out", tmp_path / "s.png")),
            (labels, "report nlm --denoised", ("report", "nlm", "--noisy", ct, "--denoised", labels, "--out",
                                               tmp_path / "n.png")),
            (labels, "report ome --input", ("report", "ome", "-i", labels, "-o", tmp_path / "o.zarr")),
            (ct, "report ome --labels seg", ("report", "ome", "--volume", ct, "--labels", f"seg={ct}", "--out",
                                             tmp_path / "o.zarr"))]
    for path, role, argv in runs:
        code, err = cli(*argv)
        refused(code, err, path, role)
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


# ------------------------------------------------------------------ class 3: output destroys an input

def test_an_output_that_would_destroy_an_input_is_refused(tmp_path, cli):
    truth, img = three_phases(24)
    vol = write_volume(tmp_path / "vol.zarr", img)
    labels = write_labels(tmp_path / "labels.zarr", truth)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("denoise:\n  patch_size: 3\n")
    shutil.copy(REPO / "data/cycling/matr_1_test.npz", tmp_path / "cells.npz")
    before = snapshot(tmp_path)
    runs = [
        (("denoise", vol, vol), "the same path"),
        (("denoise", vol, tmp_path / "vol.zarr" / "inner.zarr"), "is inside"),
        (("denoise", vol, tmp_path / "." / "vol.zarr" / ".." / "vol.zarr"), "the same path"),
        (("denoise", vol, tmp_path), "contains"),
        (("denoise", vol, tmp_path / "d.zarr", "--metrics", vol / "zarr.json"), "is inside"),
        (("denoise", vol, cfg, "--config", cfg), "the same path"),
        (("segment", "--input", vol, "--output", vol, "--method", "gmm"), "the same path"),
        (("segment", "--input", vol, "--output", tmp_path / "l.zarr", "--uncertainty", tmp_path / "l.zarr",
          "--method", "gmm"), "two outputs"),
        (("segment", "--input", vol, "--output", vol / "0", "--method", "gmm"), "is inside"),
        (("microstructure", "--labels", labels, "--output", labels, "--msd", tmp_path / "m.npz"), "the same path"),
        (("twin", "--train", tmp_path / "cells.npz", "--out", tmp_path / "cells.npz"), "the same path"),
        (("phantom", tmp_path / "p.zarr", "--labels", tmp_path / "p.zarr"), "two outputs"),
        (("ingest", tmp_path / "cells.npz", tmp_path / "cells.npz"), "the same path"),
        (("denoise", vol, tmp_path / "d.zarr", "--work-dir", vol), "the same path"),
        (("denoise", vol, tmp_path / "d.zarr", "--work-dir", vol / "work"), "is inside"),
        (("twin", "--train", tmp_path / "cells.npz", "--out", tmp_path / "t.zarr", "--checkpoint",
          tmp_path / "cells.npz"), "the same path"),
    ]
    for argv, relation in runs:
        code, err = cli(*argv)
        refused(code, err, relation)
    assert snapshot(tmp_path) == before
    # a symlink to the input is the input
    (tmp_path / "link.zarr").symlink_to(vol)
    code, err = cli("denoise", vol, tmp_path / "link.zarr")
    refused(code, err, "the same path")
    assert snapshot(vol) == {k: v for k, v in before.items() if k.startswith(str(vol))}


# --------------------------------------------------------------------------------- class 5: the twin

def save_cells(path: Path, soh: np.ndarray, valid: np.ndarray, q: np.ndarray) -> Path:
    np.savez(path, soh=soh, valid_len=valid, qmatrix=q, cycles_per_point=np.int64(10))
    return path


def cells_of(name: str):
    with np.load(REPO / "data/cycling" / name) as d:
        return d["soh"].astype(np.float32), d["valid_len"].astype(np.int64), d["qmatrix"].astype(np.float32)


def test_duplicate_cells_are_refused(tmp_path, cli):
    soh, valid, q = cells_of("matr_1_test.npz")
    a = save_cells(tmp_path / "a.npz", soh, valid, q)
    b = save_cells(tmp_path / "b.npz", *cells_of("matr_1_train.npz"))
    copy = save_cells(tmp_path / "copy.npz", soh[:5], valid[:5], q[:5])  # five cells of a.npz, other file name
    dup = save_cells(tmp_path / "dup.npz", np.concatenate([soh, soh[3:4]]), np.concatenate([valid, valid[3:4]]),
                     np.concatenate([q, q[3:4]]))  # one cell twice in one file
    before = snapshot(tmp_path)
    out = tmp_path / "t.zarr"
    runs = [("--train", a, a), ("--train", a, "--test", a), ("--train", b, copy, "--test", a),
            ("--train", dup), ("--train", b, "--test", dup), ("--train", a, "--test", copy)]
    for argv in runs:
        code, err = cli("twin", *argv, "--out", out)
        refused(code, err)
        assert "twice" in err or "same SOH curve" in err, err
    assert not out.exists() and snapshot(tmp_path) == before


def test_a_diffusion_store_of_other_cells_is_refused(tmp_path, cli):
    from batterytwin.cycling.loaders import load_npz_split
    from batterytwin.cycling.store import write_store

    a = save_cells(tmp_path / "a.npz", *cells_of("matr_1_test.npz"))
    soh, valid, q = cells_of("matr_2_test.npz")
    n = len(load_npz_split(a))
    other = save_cells(tmp_path / "other.npz", soh[:n], valid[:n], q[:n])  # another dataset, same cell count
    lives = {k: np.full(n, 500.0, np.float32) for k in ("life_pred", "life_lo", "life_hi")}
    rule = {"eol_rule": "end_of_record", "threshold_percent": 80.0}
    stores = {"hash": {**rule, "cells_sha256": load_npz_split(other).digest()},
              "names": {**rule, "cell_names": [f"matr_2_test[{i}]" for i in range(n)]},
              "none": dict(rule)}
    for name, attrs in stores.items():
        write_store(tmp_path / f"{name}.zarr", lives, attrs, World())
    before = snapshot(tmp_path)
    for name, expect in (("hash", "another dataset"), ("names", "other cells"), ("none", "cannot tell")):
        code, err = cli("twin", "--train", REPO / "data/cycling/matr_1_train.npz",
                        "--test", a, "--diffusion", tmp_path / f"{name}.zarr", "--out", tmp_path / "t.zarr",
                        "--eol-rule", "end_of_record")
        refused(code, err, tmp_path / f"{name}.zarr", expect)
    assert not (tmp_path / "t.zarr").exists() and snapshot(tmp_path) == before


@pytest.mark.parametrize("case, expect", [("fraction", "fraction"), ("times-1e4", "> 150"),
                                          ("first-at-60", "starts at 60"), ("negative", "negative"),
                                          ("one-cell-in-mAh", "> 150")])
def test_soh_not_in_percent_is_refused(tmp_path, cli, case, expect):
    soh, valid, q = cells_of("matr_1_test.npz")
    soh = soh.copy()
    if case == "fraction":
        soh /= 100.0
    elif case == "times-1e4":
        soh *= 1e4
    elif case == "first-at-60":
        soh[4, 0] = 60.0
    elif case == "negative":
        soh[2, 5] = -3.0
    else:
        soh[7] *= 30.0
    bad = save_cells(tmp_path / "bad.npz", soh, valid, q)
    before = snapshot(bad)
    for argv in (("twin", "--train", bad, "--out", tmp_path / "t.zarr"),
                 ("train-degradation", "--npz", bad, "--out", tmp_path / "m.pt")):
        code, err = cli(*argv)
        refused(code, err, bad, "soh", expect)
    assert snapshot(bad) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


# ------------------------------------------------------------------------- class 6: implausible sizes

@pytest.mark.parametrize("size", ["1e9", "1e-9", "0.00001", "2e4"])
def test_implausible_voxel_sizes_are_refused(tmp_path, cli, size):
    np.save(tmp_path / "scan.npy", np.random.default_rng(0).random((16, 16, 16), np.float32))
    for argv in (("phantom", tmp_path / "p.zarr", "--shape", 16, 16, 16, "--voxel-size-um", size),
                 ("ingest", tmp_path / "scan.npy", tmp_path / "v.zarr", "--voxel-size-um", size)):
        code, err = cli(*argv)
        refused(code, err, "voxel_size_um")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.npy"]


def test_a_store_carrying_an_implausible_voxel_size_is_refused_by_its_readers(tmp_path, cli):
    import zarr

    truth, img = three_phases(24)
    vol = write_volume(tmp_path / "vol.zarr", img)
    labels = write_labels(tmp_path / "labels.zarr", truth)
    for p in (vol, labels):  # as another tool (or an older version) might have written them
        zarr.open_group(str(p), mode="r+").attrs["voxel_size_um"] = [1e9, 1e9, 1e9]
        store.write_manifest(p)
    before = snapshot(tmp_path)
    for argv in (("denoise", vol, tmp_path / "d.zarr"),
                 ("segment", "--input", vol, "--output", tmp_path / "l.zarr", "--method", "gmm"),
                 ("microstructure", "--labels", labels, "--output", tmp_path / "ms.json", "--msd", tmp_path / "m.npz")):
        code, err = cli(*argv)
        refused(code, err, "voxel_size_um", "plausible")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key, value", [("thickness_um", 1e9), ("thickness_um", 1e-6), ("particle_radius_um", 5e5)])
def test_implausible_derived_lengths_never_reach_pybamm(key, value):
    from batterytwin.cellsim.params import microstructure_substitutions
    from batterytwin.errors import InputError

    ms = {"cell": {"positive_electrode": {"electrolyte_volume_fraction": 0.3, "thickness_um": 60.0,
                                          "particle_radius_um": 4.0, key: value}}}
    with pytest.raises(InputError, match=f"cell.positive_electrode.{key}.*plausible"):
        microstructure_substitutions(ms, "ms.json")


@pytest.mark.parametrize("shape", [("100000", "100000", "100000"), ("16", "16", "10000000000"),
                                   ("4096", "4096", "4096")])
def test_a_phantom_too_large_is_refused_before_allocating(tmp_path, cli, shape):
    code, err = cli("phantom", tmp_path / "p.zarr", "--shape", *shape)
    refused(code, err, "phantom", "shape", "limit")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, expect", [(("--search-radius", 100), "at most 24"),
                                          (("--search-radius", 20), "smallest edge"),
                                          (("--search-radius", 16, "--patch-size", 3), "smallest edge"),
                                          (("--config-json", '{"search_radius": 1000}'), "at most 24")])
def test_search_radius_beyond_the_volume_is_refused(tmp_path, cli, argv, expect):
    _, img = three_phases(32)
    vol = write_volume(tmp_path / "vol.zarr", img)
    code, err = cli("denoise", vol, tmp_path / "out.zarr", *argv)
    refused(code, err, "search_radius")
    assert "<= 24" in err or expect in err, err
    assert not (tmp_path / "out.zarr").exists()


def test_an_output_inside_a_plain_input_folder_is_allowed_but_not_inside_a_store(tmp_path):
    from batterytwin.errors import InputError
    from batterytwin.paths import check_paths

    data = tmp_path / "data"
    data.mkdir()
    (data / "cells.npz").write_bytes(b"x")
    check_paths({"train_user_dir": str(data)}, {"out": str(data / "twin.zarr")})  # a folder of files: fine
    _, img = three_phases(16)
    vol = write_volume(tmp_path / "vol.zarr", img)
    with pytest.raises(InputError, match="is inside"):
        check_paths({"input": str(vol)}, {"output": str(vol / "twin.zarr")})
    with pytest.raises(InputError, match="contains"):
        check_paths({"train_user_dir": str(data)}, {"out": str(tmp_path)})
