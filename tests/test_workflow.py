"""The Snakemake workflow: dry-run, lint, config validation, and the whole chain end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from skimage.metrics import peak_signal_noise_ratio

from batterytwin import store
from batterytwin.ingest.phantom import make_phantom

from .conftest import REPO
from .snakemake_run import snakemake

pytestmark = pytest.mark.slow  # each test starts Snakemake on the whole workflow


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

    # twin: the same cells, end-of-life rule and diffusion lives as degradation_real of the same run, and
    # each method's RUL RMSE is that of its stored lives against the stored truth (docs/twin.md, Outputs)
    twin = json.loads((results / "twin" / "matr1.json").read_text())
    tz = zarr.open_group(str(results / "twin" / "matr1.zarr"), mode="r")
    dz = zarr.open_group(str(results / "degradation_real" / "matr1.zarr"), mode="r")
    assert tz.attrs["cell_names"] == dz.attrs["cell_names"] and twin["eol_rule"] == scored["eol_rule"]
    assert twin["n_cells"] == scored["n_cells"] == len(tz.attrs["cell_names"])
    for k in ("pred", "lo", "hi"):
        np.testing.assert_array_equal(tz["life_diffusion" + ("" if k == "pred" else f"_{k}")][:], dz[f"life_{k}"][:])
    truth = np.asarray(tz["life_true"][:], np.float64)
    np.testing.assert_array_equal(truth, dz["life_true"][:])
    keep = np.asarray(tz["evaluated"][:], bool)
    assert keep.sum() == twin["n_evaluated"] > 0
    np.testing.assert_array_equal(keep, np.asarray(dz["evaluated"][:], bool) & ~np.asarray(dz["censored"][:], bool))
    for method, lives in (("physics", "life_physics"), ("hybrid", "life_hybrid"), ("diffusion", "life_diffusion"),
                          ("variance_model", "life_variance"), ("random_forest", "life_forest")):
        pred = np.asarray(tz[lives][:], np.float64)
        assert twin[method]["rul_rmse_cycles"] == pytest.approx(np.sqrt(np.mean((pred - truth)[keep] ** 2)),
                                                                rel=1e-6), method
        if method in ("physics", "hybrid", "diffusion"):
            lo, hi = (np.asarray(tz[f"{lives}_{e}"][:], np.float64) for e in ("lo", "hi"))
            inside = (lo[keep] <= truth[keep]) & (truth[keep] <= hi[keep])
            assert twin[method]["interval_coverage"] == pytest.approx(inside.mean(), abs=1e-12), method
    for method in ("diffusion", "variance_model"):  # the same predictions scored alike by both stages
        assert twin[method]["rul_rmse_cycles"] == pytest.approx(scored[method]["rul_rmse_cycles"], rel=1e-9), method
    # the correction carries the knee the physics lacks: measured 125 vs 1148 cycles on these cells
    assert twin["hybrid"]["rul_rmse_cycles"] < 0.5 * twin["physics"]["rul_rmse_cycles"], twin

    # report: every figure the workflow promises is a non-empty PNG
    figures = sorted(results.rglob("figures/*.png"))
    assert len(figures) >= 10 and results / "figures" / "twin_matr1.png" in figures
    for png in figures:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
    assert (sample / "ome" / "volume.ome.zarr").is_dir()
