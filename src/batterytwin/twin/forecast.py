"""Forecast of test cells with a twin fitted on training cells.

For one split (training cells, test cells):

1. every cell's physics model (:mod:`.physics`) is fitted to its first ``fit_cycles`` cycles (:mod:`.fitting`);
   cells whose record is too short are *excluded* (recorded with the reason), fits that fail are
   *failed* (recorded with the reason); the evaluation goes on;
2. the training cells are split (seeded) into proper-training and calibration cells; the correction
   MLP (:mod:`.correction`) is trained on the proper-training cells' residuals after the fit window;
3. each cell's forecast: the physics curve and ``param_draws`` curves from the fit covariance, each
   plus the correction -> hybrid curve, life (first crossing of the end-of-life level) and its
   interval from the draws; the hybrid interval is then widened (or narrowed) by the split-conformal
   quantile of the calibration cells (conformalised quantiles, in log life), the hybrid curve band
   by the conformal quantile of the calibration residuals;
4. baselines on the same cells and rule: Severson variance model and random forest (refitted on the
   training cells), and the diffusion model's store of the same evaluation when given.

Example::

    run = forecast_split(Cells(train_curves), Cells(test_curves), TwinConfig())
    run["arrays"]["life_hybrid"], run["arrays"]["life_hybrid_lo"], run["info"]["k_fit"]
"""

from __future__ import annotations

import time

import numpy as np

from ..cycling.baselines import fit_baselines
from ..cycling.life import cycle_life, eol_level
from ..errors import InputError
from .calibration import Conformal, calibration_split, conformal_calibration, widen_hybrid
from .correction import Correction
from .fitting import EXCLUDED, FAILED, Cells, Fits, fit_arrays, fit_points, fit_set, physics_curves
from .hybrid import forecast_cells, train_split_correction
from .physics import make_model


def check_same_spacing(train: Cells, test: Cells) -> None:
    """InputError unless the training and test curves have the same cycles per point."""
    if train.cs.cycles_per_point != test.cs.cycles_per_point:
        raise InputError(f"{test.cs.source}: {test.cs.cycles_per_point} cycles per point, the training cells have "
                         f"{train.cs.cycles_per_point}")


def built_model(settings, model=None):
    """(the physics model, seconds to build it): ``model`` or a new one, its surrogate built;
    InputError when the PyBaMM surrogate cannot be built."""
    model = make_model(settings) if model is None else model
    t0 = time.perf_counter()
    if hasattr(model, "build"):
        try:
            model.build()
        except Exception as exc:
            raise InputError(f"twin.pybamm: the PyBaMM surrogate could not be built "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    return model, time.perf_counter() - t0


def baseline_lives(train: Cells, test: Cells, rule: str, cpp: int, settings) -> dict[str, np.ndarray]:
    """``life_variance`` and ``life_forest`` of the test cells: the Severson variance model and the
    random forest refitted on the training cells (NaN when the cells' condition matrices differ)."""
    life_tr, cens_tr = cycle_life(train.cs.soh, train.cs.valid_len, rule, cpp, settings.threshold)
    same_shape = train.cs.condition_shape == test.cs.condition_shape
    base = fit_baselines(train.cs.qmatrix, life_tr, cens_tr, settings.seed) if same_shape else {}
    return {key: base[name].predict(test.cs.qmatrix) if name in base else np.full(len(test.cs), np.nan)
            for key, name in (("life_variance", "variance_model"), ("life_forest", "random_forest"))}


def split_info(model, settings, k_fit: int, H: int, level_eol: float, build_s: float, corr: Correction | None,
               t_train: float, n_points: int, cal: np.ndarray, conformal: Conformal, fits_train: Fits) -> dict:
    """The run information of one split (the JSON's ``run``)."""
    info = {"k_fit": k_fit, "horizon_points": H, "eol_level_percent": level_eol, "param_names": list(model.names),
            "physics_model": settings.physics, "surrogate_build_seconds": build_s,
            "correction_train_seconds": t_train, "correction_points": n_points,
            "correction_training_mse": None if corr is None else corr.final_loss,
            "calibration_cells": int(len(cal)), "calibration_uncensored": conformal.n_uncensored,
            "conformal_log_life_quantile": conformal.life if np.isfinite(conformal.life) else None,
            "conformal_curve_quantile_percent": conformal.curve if np.isfinite(conformal.curve) else None,
            "train_fit_failed": int((fits_train.status == FAILED).sum()),
            "train_excluded": int((fits_train.status == EXCLUDED).sum())}
    if getattr(model, "simulate_seconds", None):
        info["pybamm_run_seconds_mean"] = float(np.mean(model.simulate_seconds))
        info["pybamm_runs"] = len(model.simulate_seconds)
        info["pybamm_failed_runs"] = {str(k): v for k, v in getattr(model, "failed_runs", {}).items()}
    return info


def forecast_split(train: Cells, test: Cells, settings, checkpoint=None, model=None) -> dict:
    """Forecast the ``test`` cells with a twin fitted on ``train``: per-test-cell arrays + run info.

    ``model``: a physics model to reuse (e.g. a PyBaMM surrogate already built); default: a new one.
    """
    check_same_spacing(train, test)
    cpp, rule = test.cs.cycles_per_point, test.cs.eol_rule
    k_fit = fit_points(settings, cpp)
    H = max(test.cs.curve_length, (settings.horizon_cycles or 0) // cpp + 1)
    model, build_s = built_model(settings, model)
    fits_tr, fits_te = fit_set(model, train, k_fit, settings), fit_set(model, test, k_fit, settings)
    phys_tr = physics_curves(model, fits_tr, train, H)
    level_eol = eol_level(rule, settings.threshold, train.cs.soh, train.cs.valid_len)
    cal, proper = calibration_split(fits_tr, train, settings)
    corr, t_train, n_points = train_split_correction(phys_tr, fits_tr, train, proper, k_fit, settings, checkpoint)
    if corr is not None and corr.interrupted:
        return {"interrupted": True, "step": corr.steps}

    rng = np.random.default_rng([settings.seed, 1])  # the calibration cells' draws, then the test cells'
    fc_cal = forecast_cells(model, fits_tr, train, cal, corr, H, k_fit, level_eol, settings, rng)
    conformal = conformal_calibration(fc_cal, train.cs, cal, k_fit, rule, cpp, settings)
    out = forecast_cells(model, fits_te, test, np.arange(len(test.cs)), corr, H, k_fit, level_eol, settings, rng)
    widen_hybrid(out, conformal, float((k_fit - 1) * cpp))
    out.update(baseline_lives(train, test, rule, cpp, settings))
    out.update(fit_arrays(fits_te))
    info = split_info(model, settings, k_fit, H, level_eol, build_s, corr, t_train, n_points, cal, conformal, fits_tr)
    return {"arrays": out, "info": info, "model": model, "correction": corr, "fits": fits_te, "k_fit": k_fit,
            "level_eol": level_eol, "q_life": conformal.life_used, "q_curve": conformal.curve_used}
