"""Small stage outputs for the report tests, written in the formats of docs/interfaces.md.

The CT stores come from the real phantom (``make_phantom``); the later stages' outputs are
derived from it with simple, seeded stand-ins (a Gaussian filter for NLM, perturbed truth for the
segmentation, Einstein-relation MSD lines, an analytic fade for the sweep), so that the figures can
be checked against numbers the test knows, without running the heavy stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

from batterytwin import store
from batterytwin.contracts import SWEEP_SCHEMA
from batterytwin.ingest.phantom import CLASSES, make_phantom

CLASS_ATTRS = {str(k): v for k, v in CLASSES.items()}


def write_volume(path: Path, data: np.ndarray, voxel, stage: str, **extra) -> Path:
    attrs = store.volume_attrs(stage, voxel, {"test": True}, {"path": "synthetic"}, **extra)
    arr = store.create_volume(path, data.shape, data.dtype, attrs, chunk=16, shard=32)
    arr[...] = data
    return path


def write_ct(sample_dir: Path, shape=(24, 32, 32), seed: int = 1, voxel=(1.0, 0.5, 0.5)):
    """volume.zarr, clean.zarr, truth.zarr of a phantom; returns (image, labels, clean)."""
    image, labels, clean = make_phantom(shape, seed=seed, with_clean=True)
    write_volume(sample_dir / "volume.zarr", image, voxel, "phantom")
    write_volume(sample_dir / "clean.zarr", clean, voxel, "phantom")
    write_volume(sample_dir / "truth.zarr", labels, voxel, "phantom", classes=CLASS_ATTRS, ignore_label=255)
    return image, labels, clean


def write_denoise(sample_dir: Path, image, clean, voxel, seed: int = 0) -> dict:
    """denoised.zarr (+ attrs ``nlm``, ``metrics``) and denoise.json, as the denoise stage writes them."""
    den = ndimage.gaussian_filter(image, 0.8 + 0.1 * seed).astype(np.float32)
    rng = float(clean.max() - clean.min())
    mse = float(np.mean((den.astype(np.float64) - clean) ** 2))
    metrics = {"psnr_db": 10 * np.log10(rng**2 / mse), "ssim": 0.91 - 0.01 * seed, "rmse": mse**0.5,
               "data_range": rng}
    nlm = {"patch_size": 3, "search_radius": 2, "h": 0.04, "noise_sigma": 0.05}
    write_volume(sample_dir / "denoised.zarr", den, voxel, "denoise", nlm=nlm, noise_sigma=0.05, metrics=metrics)
    summary = {"store": str(sample_dir / "denoised.zarr"), "noise_sigma": 0.05, "h": 0.04, "params": nlm,
               "metrics": metrics}
    (sample_dir / "denoise.json").write_text(json.dumps(summary))
    return metrics


def write_segment(sample_dir: Path, labels, voxel, seed: int = 0, uncertainty: bool = True) -> np.ndarray:
    """labels.zarr = truth with ~2 % of voxels flipped (seeded), and uncertainty.zarr (float16)."""
    rng = np.random.default_rng(seed)
    pred = labels.copy()
    flip = rng.random(labels.shape) < 0.02
    pred[flip] = rng.integers(0, 6, int(flip.sum()))
    write_volume(sample_dir / "labels.zarr", pred, voxel, "segment", classes=CLASS_ATTRS, ignore_label=255)
    if uncertainty:
        ent = ndimage.gaussian_filter((pred != labels).astype(np.float32), 1.0).astype(np.float16)
        write_volume(sample_dir / "uncertainty.zarr", ent, voxel, "segment", quantity="softmax entropy", units="nats")
    return pred


def segment_metrics(seed: int = 0, steps: int = 60) -> dict:
    rng = np.random.default_rng(seed)
    loss = 1.5 * np.exp(-np.arange(1, steps + 1) / (15 + 5 * seed)) + 0.2 + 0.03 * rng.random(steps)
    val = []
    for s in range(20, steps + 1, 20):
        dice = [float(min(1.0, 0.4 + 0.01 * s * (k + 1) / 6 + 0.02 * seed)) for k in range(6)]
        dice[4] = None if s < steps else 0.35  # a rare class absent early
        val.append({"step": s, "dice": dice, "mean_dice": float(np.mean([d for d in dice if d is not None]))})
    final = val[-1]["dice"]
    return {"schema": "batterytwin.segment.metrics/1", "classes": CLASS_ATTRS, "steps": steps,
            "loss_curve": [{"step": i + 1, "loss": float(v), "lr": 1e-3} for i, v in enumerate(loss)],
            "validation": val, "final_dice": {CLASSES[k]: final[k] for k in range(6)},
            "final_mean_dice": val[-1]["mean_dice"]}


def microstructure(labels: np.ndarray, voxel, seed: int = 0, frame: int = 0) -> tuple[dict, dict]:
    """microstructure.json (fractions measured from ``labels``) and msd.npz arrays (the stage's layout).

    MSD curves follow ``<dx_i^2> = r_i * free_slope_i * t`` for t >= 50 steps with a curved start,
    so the Einstein fit of the long-time window (200..400 steps) has slope ratio r_i exactly.
    """
    counts = np.bincount(labels.ravel(), minlength=6)[:6]
    fractions = {CLASSES[k]: float(counts[k] / labels.size) for k in range(6)}
    t = np.arange(0, 401, 10, dtype=np.float64)
    h2 = np.asarray(voxel, dtype=np.float64) ** 2
    free = 2 * h2 / 6.0                                  # lattice walk: D_bulk = 1/6 voxel^2 per step
    ratios = {"volume.solid_electrolyte": np.array([0.30, 0.55, 0.60]) + 0.02 * seed,
              "volume.pore": np.array([0.0, 0.05, 0.04]),
              "positive_electrode.solid_electrolyte": np.array([0.50, 0.52, 0.51]),
              "separator.solid_electrolyte": np.array([0.90, 0.91, 0.92])}
    arrays = {"components": np.array(["zz", "yy", "xx", "zy", "zx", "yx"])}
    records = {}
    for key, r in ratios.items():
        diag = r[None, :] * free[None, :] * t[:, None]
        diag[t < 50] *= (1 + 0.5 * (1 - t[t < 50] / 50))[:, None]  # short-time, non-linear regime
        arrays[f"{key}.t_steps"] = t
        arrays[f"{key}.msd_um2"] = np.concatenate([diag, np.zeros((t.size, 3))], axis=1)
        arrays[f"{key}.free_slope_um2_per_step"] = free
        eps = fractions[key.split(".")[1]]
        axes = {}
        for i, a in enumerate("zyx"):
            perc = bool(r[i] > 0)
            axes[a] = {"eps": eps, "D_pore_over_D_bulk": float(r[i]),
                       "D_eff_over_D_bulk": float(r[i] * eps) if perc else 0.0,
                       "tau": float(1 / r[i]) if perc else None, "tau_pore": float(1 / r[i]) if perc else None,
                       "tau_std": 0.01 if perc else None, "percolating": perc, "linear_regime": True if perc else None}
        records[key] = {"convention": "tau = eps * D_bulk / D_eff (TauFactor)", "axes": axes,
                        "tensor_D_eff_over_D_bulk": (np.diag(r * eps)).tolist(),
                        "walk": {"model": "lattice", "n_steps": 400, "fit_window_steps": [200.0, 400.0]}}
    cell = {"stacking_axis": "z", "electrolyte_phase": "solid_electrolyte",
            "positive_electrode": {"z_range": [2, 10], "thickness_um": 10.0, "electrolyte_volume_fraction": 0.45,
                                   "active_material_volume_fraction": 0.5, "porosity_void": 0.05,
                                   "tortuosity_electrolyte": 2.0, "bruggeman": 1.9, "particle_radius_um": 1.6,
                                   "tortuosity_detail": records["positive_electrode.solid_electrolyte"]},
            "separator": {"z_range": [10, 15], "thickness_um": 6.0, "electrolyte_volume_fraction": 0.99,
                          "tortuosity_electrolyte": 1.1, "bruggeman": 10.5,
                          "tortuosity_detail": records["separator.solid_electrolyte"]}}
    micro = {
        "schema": "batterytwin.microstructure/1", "voxel_size_um": list(voxel), "classes": CLASS_ATTRS,
        "volume_fractions": fractions,
        "tortuosity": {k.split(".")[1]: v for k, v in records.items() if k.startswith("volume.")},
        "cell": cell,
        "percolation": {"pore": {"percolating": {"z": False, "y": True, "x": True}, "n_clusters": 4}},
        "interfaces": {"cathode_active|solid_electrolyte": {"area_um2": 100.0, "specific_area_per_um": 0.8 + 0.1 * seed}},
        "lithium": {"count": 3 + frame, "dendrite_length_um": 0.5 + 1.5 * frame, "total_volume_um3": 2.0 * (1 + frame)},
    }
    return micro, arrays


def write_microstructure(sample_dir: Path, labels, voxel, seed: int = 0, frame: int = 0) -> tuple[dict, dict]:
    micro, arrays = microstructure(labels, voxel, seed, frame)
    (sample_dir / "microstructure.json").write_text(json.dumps(micro))
    np.savez(sample_dir / "msd.npz", **arrays)
    return micro, arrays


def write_sweep(path: Path, seed: int = 0, n_cycles: int = 12) -> dict[str, np.ndarray]:
    """sweep.zarr: 6 conditions (3 C-rates x 2 temperatures), one failed after 7 cycles."""
    c_rates = np.array([0.5, 1.0, 2.0])
    temps = np.array([298.15, 318.15])
    inputs = np.array([[c, t] for t in temps for c in c_rates])
    n = len(inputs)
    grid = np.linspace(4.2, 3.0, 25)
    fade = 0.15 + 0.3 * inputs[:, 0] + 0.01 * (inputs[:, 1] - 298.15) + 0.05 * seed    # % per cycle
    cap0 = 5.0 - 0.3 * inputs[:, 0]
    capacity = cap0[:, None] * (1 - fade[:, None] / 100 * np.arange(n_cycles)[None, :])
    status = np.ones(n, np.int8)
    status[4] = 2
    capacity[4, 7:] = np.nan
    soh = 100 * capacity / capacity[:, :1]
    frac = ((4.2 - grid) / 1.2) ** 0.8
    qv = capacity[:, :3, None] * frac[None, None, :]
    g = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={
        "schema": SWEEP_SCHEMA, "producer": {"stage": "cellsim"}, "parameter_set": "Chen2020", "model": "SPMe",
        "input_names": ["C_rate", "temperature_K"], "varied_inputs": ["C_rate", "temperature_K"],
        "n_cycles": n_cycles, "n_early": 3, "voltage_grid_V": grid.tolist()})
    arrays = {"inputs": inputs, "status": status, "capacity_Ah": capacity, "soh": soh, "qv_capacity_Ah": qv,
              "wall_time_s": np.ones(n)}
    for k, v in arrays.items():
        g.create_array(k, data=v)
    return arrays


def write_degradation(path: Path, seed: int = 0, n: int = 8, samples: int = 16, length: int = 40,
                      stack: bool = True) -> dict:
    """degradation.zarr as batterytwin.degradation.predict writes it (n cells, S samples, L points); with
    ``stack`` the default predictor is the stack (``life_stack*``, metrics ``model.name: stack``), else the
    store is one written by an older batterytwin (``model`` is the diffusion model)."""
    rng = np.random.default_rng(seed)
    cyc = np.arange(length) * 10.0
    rate = 0.04 + 0.02 * rng.random(n)
    true = 100 - rate[:, None] * cyc[None, :]
    samp = true[:, None, :] * (1 + 0.01 * rng.standard_normal((n, samples, 1))) \
        + 0.3 * rng.standard_normal((n, samples, length))
    samp[:, :, -3:] = np.nan  # every sample ended before the last points
    life_true = (20.0 / rate).astype(np.float32)
    life_s = life_true[:, None] * (1 + 0.1 * rng.standard_normal((n, samples)))
    arrays = {
        "soh_samples": samp.astype(np.float32), "soh_true": true.astype(np.float32),
        "soh_pred": np.concatenate([samp[:, :, :-3].mean(axis=1), np.full((n, 3), np.nan)], axis=1).astype(np.float32),
        "life_samples": life_s.astype(np.float32), "life_true": life_true,
        "life_pred": np.median(life_s, axis=1).astype(np.float32),
        "life_lo": np.quantile(life_s, 0.05, axis=1).astype(np.float32),
        "life_hi": np.quantile(life_s, 0.95, axis=1).astype(np.float32),
        "censored": (np.arange(n) == 1).astype(np.int8), "evaluated": (np.arange(n) % 2 == 1).astype(np.int8),
    }
    diffusion = {"rul_rmse_cycles": 12.5 + seed, "interval_coverage": 0.875, "soh_curve_rmse_percent": 0.4}
    metrics = {"model": diffusion}
    if stack:
        arrays["life_stack"] = (life_true * (1 + 0.05 * rng.standard_normal(n))).astype(np.float32)
        arrays["life_stack_lo"], arrays["life_stack_hi"] = arrays["life_stack"] * 0.8, arrays["life_stack"] * 1.25
        metrics = {"model": {"name": "stack", "rul_rmse_cycles": 9.5 + seed, "interval_coverage": 1.0,
                             "contains_baselines": ["variance"],
                             "members": {"variance": {"weight": 0.25, "rul_rmse_cycles": 11.0},
                                         "ridge": {"weight": 0.75, "rul_rmse_cycles": 10.0}}},
                   "diffusion": {"name": "diffusion", **diffusion},
                   "variance_model": {"rul_rmse_cycles": 11.0}, "random_forest": {"rul_rmse_cycles": 8.0 + seed},
                   "mean_curve": {"rul_rmse_cycles": 30.0}, "best_point_predictor": "random_forest"}
    g = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={
        "cycles_per_point": 10, "interval_level": 0.9, "threshold_percent": 80.0,
        "cell_names": [f"cell{i}" for i in range(n)], "metrics": metrics})
    for k, v in arrays.items():
        g.create_array(k, data=v)
    return arrays


def write_all(results: Path, sample: str, shape, seed: int, voxel, phantom_seed: int | None = None,
              with_ct: bool = True) -> None:
    """Every stage output of one sample (and the shared model/degradation outputs) under ``results``.

    ``with_ct=False``: the CT stores are left to the workflow's phantom rule; the derived stores use
    the same phantom (``make_phantom`` with ``phantom_seed``), so shapes and values match.
    """
    d = results / sample
    d.mkdir(parents=True, exist_ok=True)
    if with_ct:
        image, labels, clean = write_ct(d, shape, phantom_seed if phantom_seed is not None else seed, voxel)
    else:
        image, labels, clean = make_phantom(shape, seed=phantom_seed, with_clean=True)
    write_denoise(d, image, clean, voxel, seed)
    write_segment(d, labels, voxel, seed)
    write_microstructure(d, labels, voxel, seed)
    write_sweep(d / "sweep.zarr", seed)
    (results / "models" / "segment").mkdir(parents=True, exist_ok=True)
    (results / "models" / "segment" / "metrics.json").write_text(json.dumps(segment_metrics(seed)))
    write_degradation(d / "degradation.zarr", seed)
