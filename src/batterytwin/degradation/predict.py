"""Inference driver: sampled SOH curves per cell, life intervals, metrics, baselines, the output store.

Output store ``degradation.zarr`` (zarr v3 group; ``n`` cells, ``S`` samples, ``L`` curve points):

- ``soh_samples`` float32 [n, S, L]: sampled curves (percent; NaN after each sample's predicted end).
- ``soh_pred`` float32 [n, L]: mean sampled curve; ``soh_true`` float32 [n, L] (NaN after the record).
- ``life_samples`` float32 [n, S]; ``life_pred`` (median), ``life_lo``, ``life_hi`` (the central interval,
  conformally calibrated when the model holds calibration cells: metrics ``interval``),
  ``life_true``, ``life_variance``, ``life_forest``, ``life_mean`` (baselines) float32 [n]; ``life_pred_diffbatt``
  (median sampled life under DiffBatt's convention, :func:`batterytwin.cycling.life.diffbatt_life`); ``censored`` int8 [n];
  ``evaluated`` int8 [n] (1: held-out cell counted in the metrics). ``life_*`` without a suffix are the
  diffusion model's (the twin reads them as such).
- ``life_stack``, ``life_stack_lo``, ``life_stack_hi`` float32 [n]: the default RUL predictor
  (:class:`~batterytwin.cycling.life_model.LifeModel`, metrics ``model`` with ``name: stack``) and its
  cross-conformal interval; absent when the stack was not fitted (metrics ``model.name: diffusion``).
- ``synthetic_soh`` float32 [m, L]: curves generated without a condition (augmentation), if asked.

Attributes: provenance, ``eol_rule``, ``cycles_per_point``, ``threshold``, ``interval_level``, the
sampler settings, ``cell_names`` and ``metrics`` (also written as JSON beside the store).

Metrics: ``model`` is the default RUL predictor (``degradation.sample.predictor``): the stack
(``name: stack``; its members with weight, cross-validated and test RMSE) or, when it cannot be fitted
or is not asked for, the diffusion model's figures (``name: diffusion`` with a ``reason``). ``diffusion``
is always the diffusion model (curve RMSE, calibrated interval, roughness, its RUL RMSE); the baselines
``variance_model``, ``random_forest``, ``mean_curve``; ``best_point_predictor`` names the entry of
:data:`POINT_PREDICTORS` with the lowest ``rul_rmse_cycles``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..cycling.baselines import ForestModel, fit_baselines as fit_life_baselines, forest_grid, variance_rows
from ..cycling.conformal import conformal_interval, conformal_quantile, interval_scores
from ..cycling.curves import CurveSet, mean_sample_curve
from ..cycling.life import cycle_life, diffbatt_life
from ..cycling.scores import censoring_scores, coverage, curve_rmse, interval_summary, rmse
from ..cycling.store import write_store
from ..distributed import World, get_world
from ..errors import InputError
from ..store import json_safe, provenance, write_json
from .basis import CurveBasis, roughness
from .config import SampleSettings
from .data import decode_curves
from .diffusion import Diffusion
from .nets import DegradationNet

log = logging.getLogger(__name__)
POINT_PREDICTORS = ("model", "diffusion", "variance_model", "random_forest", "mean_curve")  # metrics entries ranked


def sample_curves(net: DegradationNet, payload: dict, qmatrix: np.ndarray, st: SampleSettings,
                  device: torch.device | None = None, cell_offset: int = 0) -> np.ndarray:
    """Draw ``st.samples`` curves for each capacity matrix.

    Args:
        qmatrix: [n, R, V] raw capacity matrices (scaled here by the training ``q_scale``).
        cell_offset: global index of the first cell (seeds depend on the global cell, not the rank).
    Returns:
        x float32 [n, S, C, L'] in model units (decode with :func:`decode`): [n, S, 2, L] curves for the
        U-Net, [n, S, 1, D] basis coefficients for the basis model.
    """
    device = device or torch.device("cpu")
    cfg = payload["config"]
    diffusion = Diffusion(cfg["timesteps"], cfg["schedule"], cfg.get("prediction", "eps"))
    basis = payload.get("basis")
    C, L = (1, len(basis["components"]) + 1) if basis else (2, int(payload["curve_length"]))
    S = int(st.samples)
    q = torch.from_numpy(np.asarray(qmatrix, np.float32) / float(payload["q_scale"])).to(device)
    clip = torch.as_tensor(payload["x0_range"], dtype=torch.float32) if "x0_range" in payload else None
    out = np.empty((len(q), S, C, L), np.float32)
    per_call = max(1, st.batch // S)  # cells per network call
    for c0 in range(0, len(q), per_call):
        cells = range(c0, min(c0 + per_call, len(q)))
        g = torch.Generator(device=device).manual_seed(int(st.seed) * 1_000_003 + cell_offset + c0)
        qq = q[list(cells)].repeat_interleave(S, dim=0)
        x = _sample(diffusion, net, qq, (len(qq), C, L), st, g, clip)
        out[c0:c0 + len(cells)] = x.reshape(len(cells), S, C, L).cpu().numpy()
    return out


def decode(payload: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model samples [..., C, L'] -> (soh [..., L] percent, NaN after the predicted end; length [...])."""
    if payload.get("basis"):
        return CurveBasis.from_payload(payload["basis"]).decode(x)
    cfg = payload["config"]
    return decode_curves(x, cfg["soh_center"], cfg["soh_scale"])


def _sample(diffusion: Diffusion, net: DegradationNet, q: torch.Tensor, shape, st: SampleSettings, g,
            clip: torch.Tensor | None) -> torch.Tensor:
    if st.sampler not in ("ancestral", "ddim"):
        raise ValueError(f"unknown sampler {st.sampler!r}")
    return diffusion.sample(net, q, shape, st.sampler, st.ddim_steps, st.guidance, g, clip)


def generate_unconditional(net: DegradationNet, payload: dict, n: int, st: SampleSettings,
                           device: torch.device | None = None) -> np.ndarray:
    """``n`` synthetic SOH curves from the unconditional model (guidance 0): [n, L] percent, NaN after end."""
    cond_shape = tuple(payload["condition_shape"])
    st0 = st.model_copy(update={"samples": 1, "guidance": 0.0, "seed": st.seed + 7919})
    x = sample_curves(net, payload, np.zeros((n, *cond_shape), np.float32), st0, device)[:, 0]
    return decode(payload, x)[0]


def training_cells(payload: dict, rule: str, threshold: float) -> dict[str, np.ndarray]:
    """The model file's training cells (every cell of the training set, calibration cells included):
    ``soh`` [n, L], ``valid_len`` [n], ``qmatrix`` [n, R, V] (float32; absent in model files written
    by an older batterytwin) and their ``life`` [n] and ``censored`` [n] under ``rule`` -- what any baseline or life
    predictor needs to be refitted through its ``.fit``."""
    tr = payload["train"]
    out = {"soh": tr["soh"].numpy(), "valid_len": tr["valid_len"].numpy()}
    if "qmatrix" in tr:
        out["qmatrix"] = tr["qmatrix"].numpy()
    out["life"], out["censored"] = cycle_life(out["soh"], out["valid_len"], rule, payload["cycles_per_point"],
                                              threshold)
    return out


def fit_baselines(payload: dict, rule: str, threshold: float, seed: int) -> dict:
    """The baselines of :func:`batterytwin.cycling.baselines.fit_baselines`, fitted through ``.fit`` on the
    model file's training cells (uncensored cells only): name -> fitted model.

    Model files written by an older batterytwin hold only the two capacity-matrix rows of the variance feature
    (``q_variance_rows``) and the forest's grid of it (``forest_x``): each baseline is fitted on its own
    part (the same fit, since the features are the same); a predictor that needs the whole capacity
    matrix needs the model retrained.
    """
    cells = training_cells(payload, rule, threshold)
    life, cens, soh, vl = cells["life"], cells["censored"], cells["soh"], cells["valid_len"]
    if "qmatrix" in cells:
        return fit_life_baselines(cells["qmatrix"], life, cens, seed, soh, vl)
    log.warning("%s: model file without train.qmatrix (written by an older batterytwin): baselines refitted from "
                "q_variance_rows and forest_x; retrain it for predictors that need the whole capacity matrix",
                payload.get("source", "model"))
    tr = payload["train"]
    models = fit_life_baselines(tr["q_variance_rows"].numpy(), life, cens, seed, soh, vl)  # rows (lo, hi) = (0, 1)
    if "random_forest" in models:
        r, v = forest_grid(*payload["condition_shape"])
        grid_q = tr["forest_x"].numpy().reshape(len(soh), len(r), len(v))  # forest_features is idempotent on it
        models["random_forest"] = ForestModel(seed=seed).fit(grid_q, life, cens)
    return models


def fit_life_model(payload: dict, rule: str, st: SampleSettings):
    """The stack (:class:`~batterytwin.cycling.life_model.LifeModel`) fitted on the model file's training
    cells, seeded from the sampling seed: (model, None), or (None, why not) when ``st.predictor`` is
    ``diffusion``, the model file holds no ``train.qmatrix`` (written by an older batterytwin) or too few
    uncensored training cells."""
    if st.predictor == "diffusion":
        return None, "degradation.sample.predictor: diffusion"
    from ..cycling.life_model import MIN_CELLS, LifeModel

    cells = training_cells(payload, rule, st.threshold)
    source = payload.get("source", "model")
    if "qmatrix" not in cells:
        return None, (f"{source}: model file without train.qmatrix (written by an older batterytwin): the stack needs the "
                      f"training cells' capacity matrices; retrain the model")
    n_ok = int((~cells["censored"]).sum())
    if n_ok < MIN_CELLS:
        return None, (f"{source}: {n_ok} uncensored training cell(s) (of {len(cells['life'])}), the stack needs at "
                      f"least {MIN_CELLS}")
    model = LifeModel(**life_model_settings(st), level=st.level, seed=st.seed)
    return model.fit(cells["qmatrix"], cells["life"], cells["censored"]), None


def life_model_settings(st: SampleSettings) -> dict:
    """The keyword arguments of ``LifeModel`` set in ``degradation.sample.life_model`` (null: LifeModel's
    default): ``members`` (names of ``life_model.AVAILABLE``), ``folds``, ``combine``; a name it does not
    know is a one-line InputError naming the key (checked before any work)."""
    from ..cycling import life_model

    lm, out = st.life_model, {}
    known = getattr(life_model, "AVAILABLE", life_model.MEMBERS)
    if lm.members is not None:
        unknown = [m for m in lm.members if m not in known]
        if unknown or len(set(lm.members)) != len(lm.members):
            raise InputError(f"degradation.sample.life_model.members: {', '.join(unknown) or 'a repeated name'} "
                             f"(distinct names of {', '.join(known)})")
        out["members"] = tuple(lm.members)
    if lm.combine is not None:
        combine = getattr(life_model, "COMBINE", ())
        if lm.combine not in combine:
            raise InputError(f"degradation.sample.life_model.combine: {lm.combine!r} (one of {', '.join(combine)})")
        out["combine"] = lm.combine
    if lm.folds is not None:
        out["folds"] = lm.folds
    return out


def best_point_predictor(metrics: dict) -> str | None:
    """The entry of :data:`POINT_PREDICTORS` with the lowest finite ``rul_rmse_cycles`` (the first on a tie:
    ``model`` before ``diffusion``); None when none is finite (no uncensored evaluated cell)."""
    scored = [(metrics[k]["rul_rmse_cycles"], i, k) for i, k in enumerate(POINT_PREDICTORS)
              if k in metrics and isinstance(metrics[k].get("rul_rmse_cycles"), (int, float))
              and np.isfinite(metrics[k]["rul_rmse_cycles"])]
    return min(scored)[2] if scored else None


def check_rule(payload: dict, cs: CurveSet) -> None:
    """The end-of-life rule is part of the model (stored at training): test data read by another rule is an error."""
    rule = payload.get("eol_rule")
    if rule is not None and rule != cs.eol_rule:
        raise InputError(f"{cs.source or 'test data'}: end-of-life rule {cs.eol_rule!r} differs from the model's "
                         f"{rule!r} (trained on {payload.get('source', '?')}); use data of the model's rule or set "
                         f"degradation.eol_rule to {rule!r}")


def _sample_all(net: DegradationNet, payload: dict, qmatrix: np.ndarray, st: SampleSettings, world: World,
                device, offset: int = 0) -> tuple[np.ndarray, float]:
    """Sample every cell, cells shared out over the ranks in fixed chunks (seeds depend on the chunk, not on
    the rank): (x [n, S, C, L'], rank-seconds summed over ranks)."""
    n = len(qmatrix)
    per_call = max(1, st.batch // max(1, st.samples))
    chunks = [(c0, min(c0 + per_call, n)) for c0 in range(0, n, per_call)]
    t0 = time.perf_counter()
    parts = {}
    for k in world.my_items(len(chunks)):
        a, b = chunks[k]
        parts[a] = sample_curves(net, payload, qmatrix[a:b], st, device, cell_offset=offset + a)
    seconds = world.allreduce_sum(time.perf_counter() - t0)
    gathered = {}
    for d in world.allgather(parts):
        gathered.update(d)
    return np.concatenate([gathered[a] for a, _ in chunks]), seconds


CALIBRATION_OFFSET = 1_000_000  # seed offset of the calibration cells (never a test cell's chunk)


def calibrate(net: DegradationNet, payload: dict, st: SampleSettings, rule: str, world: World, device) -> dict:
    """Split-conformal calibration of the life interval on the model file's calibration cells.

    The calibration cells were held out of training (``calibration_fraction``); they are sampled here
    with the same sampler settings as the test cells; their CQR scores (:func:`~.evaluate.cqr_scores`,
    log10 life, uncensored cells only: a censored life has no exact score) give the finite-sample quantile
    ``q`` (:func:`~.evaluate.conformal_quantile`) that widens (or narrows) every sampled interval.
    Returns a dict with ``q`` (None when not calibrated), ``n_cal`` and ``reason``.
    """
    cal = payload.get("calibration") or {}
    n_cal = len(cal.get("names", []))
    out = {"method": "split conformal, CQR scores on ln life (Romano et al. 2019), finite-sample quantile "
                     "ceil((n+1)(level))/n (numpy, batterytwin.cycling.conformal)", "level": st.level,
           "n_calibration_cells": n_cal, "q_ln": None, "calibrated": False}
    if n_cal == 0:
        out["reason"] = "no calibration cells (calibration_fraction 0 or too few training cells): raw sampled interval"
        return out
    x, _ = _sample_all(net, payload, cal["qmatrix"].numpy(), st, world, device, CALIBRATION_OFFSET)
    soh_s, len_s = decode(payload, x)
    life_s, _ = cycle_life(soh_s, len_s, rule, payload["cycles_per_point"], st.threshold)
    summ = interval_summary(life_s, st.level)
    life, cens = cycle_life(cal["soh"].numpy(), cal["valid_len"].numpy(), rule, payload["cycles_per_point"],
                            st.threshold)
    scores = interval_scores(summ["lo"][~cens], summ["hi"][~cens], life[~cens])
    q = conformal_quantile(scores, st.level)
    out.update(n_scored=int(len(scores)), n_censored=int(cens.sum()),
               raw_coverage=float(np.mean(scores <= 0)) if len(scores) else float("nan"))
    if not np.isfinite(q):
        out["reason"] = (f"{len(scores)} uncensored calibration cells are too few for level {st.level} "
                         f"(need ceil((n+1) level) <= n): raw sampled interval")
        return out
    out.update(q_ln=q, calibrated=True)
    return out


def evaluate(net: DegradationNet, payload: dict, cs: CurveSet, st: SampleSettings, evaluated: np.ndarray | None = None,
             world: World | None = None, device: torch.device | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Sample every cell of ``cs``, then score the cells flagged ``evaluated`` (default: all).

    Cells are shared out over the ranks; every rank returns the full result.

    Returns:
        (arrays for the store, metrics dict).
    """
    world = world or get_world()
    cs.check_compatible(payload["curve_length"], payload["condition_shape"], payload["cycles_per_point"])
    check_rule(payload, cs)
    n = len(cs)
    evaluated = np.ones(n, bool) if evaluated is None else np.asarray(evaluated, bool)
    x, seconds = _sample_all(net, payload, cs.qmatrix, st, world, device)
    soh_s, len_s = decode(payload, x)
    rule, cpp = cs.eol_rule, cs.cycles_per_point
    life_s, _ = cycle_life(soh_s, len_s, rule, cpp, st.threshold)
    summ = interval_summary(life_s, st.level)
    conformal = calibrate(net, payload, st, rule, world, device)
    if conformal["calibrated"]:
        lo, hi = conformal_interval(summ["lo"], summ["hi"], conformal["q_ln"])
        # q < 0 narrows the sampled interval: keep the point prediction inside (only widens: coverage holds)
        lo, hi = np.minimum(lo, summ["median"]), np.maximum(hi, summ["median"])
    else:
        lo, hi = summ["lo"], summ["hi"]
    life_true, censored = cycle_life(cs.soh, cs.valid_len, rule, cpp, st.threshold)
    soh_pred = mean_sample_curve(soh_s)
    keep = evaluated & ~censored

    # DiffBatt's convention: padded curves, first point <= threshold, full-length non-crossing at L * cpp
    db_true = diffbatt_life(cs.soh, cs.valid_len, cpp, st.threshold)
    db_model = np.median(diffbatt_life(soh_s, len_s, cpp, st.threshold), axis=1)

    # Point predictors of life fitted on the model file's training cells (fit_baselines; a new predictor
    # is fitted the same way from training_cells(payload, ...)) and scored on the same cells: life_scores.
    baselines = fit_baselines(payload, rule, st.threshold, st.seed)
    lives = {name: (baselines[name].predict(cs.qmatrix) if name in baselines else np.full(n, np.nan))
             for name in ("variance_model", "random_forest", "mean_curve")}
    mean_soh, _ = baselines["mean_curve"].predict_curves(n)

    def life_scores(pred: np.ndarray) -> dict:
        return {"rul_rmse_cycles": rmse(pred, life_true, keep),
                "censoring": censoring_scores(pred, life_true, censored, evaluated),
                "diffbatt_convention_rmse_cycles": rmse(pred, db_true, evaluated)}

    diffusion = {
        "name": "diffusion",
        "rul_rmse_cycles": rmse(summ["median"], life_true, keep),
        "soh_curve_rmse_percent": curve_rmse(soh_pred[evaluated], cs.soh[evaluated], cs.valid_len[evaluated]),
        "interval_coverage": coverage(lo, hi, life_true, keep),
        "raw_interval_coverage": coverage(summ["lo"], summ["hi"], life_true, keep),
        "mean_interval_width_cycles": float(np.mean((hi - lo)[keep])) if keep.any() else float("nan"),
        "censoring": censoring_scores(summ["median"], life_true, censored, evaluated),
        "diffbatt_convention_rmse_cycles": rmse(db_model, db_true, evaluated),
        "sample_roughness_soh_per_10_cycles": roughness(soh_s[evaluated], cpp),
    }
    # The default RUL predictor (metrics "model"): the stack, else the diffusion model with the reason
    stack, reason = fit_life_model(payload, rule, st)
    stack_arrays = {}
    if stack is None:
        if st.predictor != "diffusion":
            log.warning("default RUL predictor: the diffusion model, not the stack: %s", reason)
        model = {**diffusion, "reason": reason}
    else:
        point, s_lo, s_hi = stack.predict_interval(cs.qmatrix)
        desc = stack.describe()
        member_lives = stack.predict_members(cs.qmatrix)
        members = {k: {**v, "rul_rmse_cycles": rmse(member_lives[k], life_true, keep)}  # beside weight and CV RMSE
                   for k, v in desc["members"].items()}
        model = {"name": "stack", **life_scores(point),
                 "interval_coverage": coverage(s_lo, s_hi, life_true, keep),
                 "mean_interval_width_cycles": float(np.mean((s_hi - s_lo)[keep])) if keep.any() else float("nan"),
                 "contains_baselines": desc.get("contains_baselines", []), "members": members,
                 "life_model": {k: v for k, v in desc.items() if k != "members"}}
        stack_arrays = {"life_stack": np.asarray(point, np.float32), "life_stack_lo": np.asarray(s_lo, np.float32),
                        "life_stack_hi": np.asarray(s_hi, np.float32)}

    n_curves = n * st.samples
    lo_row, hi_row = variance_rows(cs.qmatrix.shape[1])
    metrics = {
        "eol_rule": rule, "threshold_percent": st.threshold, "cycles_per_point": cpp,
        "n_cells": int(n), "n_evaluated": int(keep.sum()), "n_censored": int((evaluated & censored).sum()),
        "excluded_cells": list(getattr(cs, "excluded", [])),
        "interval_level": st.level,
        "predictor": st.predictor,
        "model": model,
        "diffusion": diffusion,
        "interval": conformal,
        "variance_model": {**life_scores(lives["variance_model"]),
                           "rows": [lo_row, hi_row], "cycles": [lo_row + 1, hi_row + 1]},
        "random_forest": life_scores(lives["random_forest"]),
        "mean_curve": {"rul_rmse_cycles": rmse(lives["mean_curve"], life_true, keep),
                       "soh_curve_rmse_percent": curve_rmse(mean_soh[evaluated], cs.soh[evaluated],
                                                            cs.valid_len[evaluated]),
                       "diffbatt_convention_rmse_cycles": rmse(lives["mean_curve"], db_true, evaluated)},
        "data_roughness_soh_per_10_cycles": roughness(cs.soh[evaluated], cpp),
        "sampling": {"sampler": st.sampler, "steps": st.ddim_steps if st.sampler == "ddim" else int(payload["config"]["timesteps"]),
                     "guidance": st.guidance, "samples_per_cell": st.samples, "curves": n_curves,
                     "sampling_rank_seconds": seconds, "curves_per_second_per_rank": n_curves / max(seconds, 1e-9)},
    }
    metrics["best_point_predictor"] = best_point_predictor(metrics)
    arrays = {
        "soh_samples": soh_s.astype(np.float32), "life_samples": life_s.astype(np.float32),
        "soh_pred": soh_pred.astype(np.float32), "soh_true": cs.soh.astype(np.float32),
        "life_pred": summ["median"].astype(np.float32), "life_lo": np.asarray(lo, np.float32),
        "life_hi": np.asarray(hi, np.float32), "life_true": life_true.astype(np.float32),
        "life_variance": np.asarray(lives["variance_model"], np.float32),
        "life_forest": np.asarray(lives["random_forest"], np.float32),
        "censored": censored.astype(np.int8), "evaluated": evaluated.astype(np.int8),
        "life_mean": np.asarray(lives["mean_curve"], np.float32), "life_pred_diffbatt": db_model.astype(np.float32),
        **stack_arrays,
    }
    return arrays, metrics


def run_prediction(model_path: Path, cs: CurveSet, out: Path, metrics_path: Path | None, st: SampleSettings,
                   evaluated: np.ndarray | None = None, n_synthetic: int = 0, params: dict | None = None,
                   device: torch.device | None = None, world: World | None = None,
                   extra_arrays: dict[str, np.ndarray] | None = None) -> dict:
    """Model file + curve set -> ``degradation.zarr`` (+ metrics JSON). Returns the metrics."""
    from .train import load_model

    world = world or get_world()
    net, payload = load_model(model_path, device)
    arrays, metrics = evaluate(net, payload, cs, st, evaluated, world, device)
    if n_synthetic > 0:
        t0 = time.perf_counter()
        arrays["synthetic_soh"] = generate_unconditional(net, payload, n_synthetic, st, device) if world.is_root \
            else np.zeros((n_synthetic, payload["curve_length"]), np.float32)
        metrics["synthetic"] = {"curves": n_synthetic, "seconds": time.perf_counter() - t0}
    arrays.update(extra_arrays or {})
    metrics["model_file"] = str(model_path)
    metrics["data"] = cs.source
    attrs = {**provenance("degradation", params or {}), "eol_rule": cs.eol_rule,
             "cycles_per_point": int(cs.cycles_per_point), "threshold_percent": st.threshold,
             "interval_level": st.level, "sampler": st.model_dump(), "cell_names": list(cs.names),
             "cells_sha256": cs.digest(), "metrics": metrics}
    write_store(out, arrays, json_safe(attrs), world)
    if metrics_path is not None and world.is_root:
        write_json(metrics_path, metrics)  # NaN (nothing to score) -> null: strict JSON
    world.barrier()
    return metrics
