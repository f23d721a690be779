"""The Snakemake workflow: dry-run, lint, config validation, and the whole chain end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from skimage.metrics import peak_signal_noise_ratio

from batterytwin import store
from batterytwin.ingest.phantom import make_phantom

from .conftest import BIN, REPO


def snakemake(workdir: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_dry_run_plans_every_stage(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for rule in ("phantom", "denoise", "train_seg", "segment", "microstructure", "simulate"):
        assert f"{rule} " in proc.stdout, rule


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_violating_the_schema_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("samples:\n  s1:\n    source: data/x.h5\n")  # no voxel_size_um
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "voxel_size_um" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_whole_chain_on_a_tiny_phantom(tmp_path):
    # the real cycling data shipped in data/cycling (the default dir, found from any working directory)
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", str(REPO / "config.yaml"),
                     str(REPO / "tests" / "config.e2e.yaml"))
    assert proc.returncode == 0, proc.stderr[-6000:]
    results = tmp_path / "results"
    sample = results / "phantom"
    assert not list(results.rglob("*.tmp-*"))

    # ingest: the stores hold exactly the phantom generated in memory
    image, labels, clean = make_phantom((32, 40, 40), seed=2, with_clean=True)
    vol = store.open_volume(sample / "volume.zarr")
    np.testing.assert_array_equal(vol.array[:], image)
    np.testing.assert_array_equal(store.open_volume(sample / "truth.zarr").array[:], labels)
    assert vol.shards == (32, 32, 32)
    assert (tmp_path / "logs" / "phantom" / "phantom.log").exists()

    # denoise: PSNR as scikit-image computes it, and better than the noisy input
    denoised = store.open_volume(sample / "denoised.zarr").array[:]
    metrics = json.loads((sample / "denoise.json").read_text())["metrics"]
    data_range = float(clean.max() - clean.min())
    psnr = peak_signal_noise_ratio(clean, denoised, data_range=data_range)
    assert metrics["psnr_db"] == pytest.approx(psnr, abs=1e-3)
    assert psnr > peak_signal_noise_ratio(clean, image, data_range=data_range) + 3

    # segment: a label store with the classes, agreeing with the ground truth on most voxels
    seg = store.open_volume(sample / "labels.zarr")
    assert seg.classes[4] == "redeposited_lithium" and seg.array.dtype == np.uint8
    assert (seg.array[:] == labels).mean() > 0.8

    # microstructure: volume fractions are those of the label store; the cell block is there
    micro = json.loads((sample / "microstructure.json").read_text())
    counts = np.bincount(seg.array[:].ravel(), minlength=6) / seg.array.size
    for k, name in seg.classes.items():
        assert micro["volume_fractions"][name] == pytest.approx(counts[k], abs=1e-9)
    pe = micro["cell"]["positive_electrode"]
    assert 0 < pe["electrolyte_volume_fraction"] < 1 and pe["thickness_um"] > 0

    # cell simulation: SOH is capacity over the first cycle's, for every completed condition
    sweep = zarr.open_group(str(sample / "sweep.zarr"), mode="r")
    ok = np.asarray(sweep["status"][:]) == 1
    assert ok.sum() >= 3
    cap, soh = np.asarray(sweep["capacity_Ah"][:]), np.asarray(sweep["soh"][:])
    np.testing.assert_allclose(soh[ok, :5], 100 * cap[ok, :5] / cap[ok, :1], rtol=1e-9)
    summary = json.loads((sample / "sweep.json").read_text())
    assert len(summary["conditions"]) == len(ok)

    # degradation: sampled SOH curves for the sweep's conditions, intervals that contain the median
    deg = zarr.open_group(str(sample / "degradation.zarr"), mode="r")
    samples = np.asarray(deg["soh_samples"][:])
    assert samples.shape[0] == len(ok) and samples.shape[-1] == 16  # a curve per condition and sample
    lo, mid, hi = (np.asarray(deg[k][:]) for k in ("life_lo", "life_pred", "life_hi"))
    finite = np.isfinite(lo) & np.isfinite(hi)
    assert finite.any() and (lo[finite] <= mid[finite]).all() and (mid[finite] <= hi[finite]).all()
    # the sweep's few conditions: the default predictor is the stack, or the diffusion model with the reason
    swept = json.loads((sample / "degradation.json").read_text())
    assert swept["diffusion"]["name"] == "diffusion"
    assert swept["model"]["name"] == "stack" or swept["model"]["reason"]
    # the shipped real MATR split: the default predictor is the stack fitted on matr_1_train's 41 cells, the
    # diffusion model is scored beside it, and the best point predictor is the lowest RMSE of the same JSON
    scored = json.loads((results / "degradation_real" / "matr1.json").read_text())
    assert scored["model"]["name"] == "stack" and scored["model"]["members"] and scored["diffusion"]["soh_curve_rmse_percent"]
    assert "life_stack" in zarr.open_group(str(results / "degradation_real" / "matr1.zarr"), mode="r")
    rmses = {k: scored[k]["rul_rmse_cycles"] for k in ("model", "diffusion", "variance_model", "random_forest",
                                                       "mean_curve")}
    assert scored["best_point_predictor"] == min(rmses, key=rmses.get)

    # report: every figure the workflow promises is a non-empty PNG
    figures = sorted(results.rglob("figures/*.png"))
    assert len(figures) >= 10
    for png in figures:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
    assert (sample / "ome" / "volume.ome.zarr").is_dir()
