"""The twin of a set of cells: fit, correct, forecast, score, and the output store.

For one split (training cells, test cells):

1. every cell's physics model is fitted to its first ``fit_cycles`` cycles (:mod:`.physics`);
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

Store ``{evaluation}.zarr``: ``soh_true`` [n, L]; ``soh_physics``, ``soh_hybrid``, ``soh_hybrid_lo``,
``soh_hybrid_hi``, ``soh_physics_lo``, ``soh_physics_hi`` [n, H]; ``life_true``, ``life_physics``
(+ ``_lo``/``_hi``), ``life_hybrid`` (+ ``_lo``/``_hi``), ``life_variance``, ``life_forest``,
``life_diffusion`` (+ ``_lo``/``_hi``) [n]; ``params``, ``param_sd`` [n, P]; ``fit_seconds``,
``fit_rmse`` [n]; ``status`` int8 [n] (0 ok, 1 excluded, 2 failed); ``censored``, ``evaluated`` int8;
the time series ``series_*`` of one cell; attributes: ``cell_names``, ``reasons``, ``param_names``,
``cycles_per_point``, ``fit_cycles``, ``eol_level``, ``metrics``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cycling.baselines import fit_baselines
from ..cycling.conformal import conformal_interval, conformal_quantile, interval_scores
from ..cycling.curves import CurveSet
from ..cycling.life import cycle_life, eol_level, first_crossing
from ..cycling.scores import coverage, rmse
from ..cycling.split import calibration_subset
from ..errors import InputError
from .correction import Correction, cell_features, point_inputs, train_correction
from .physics import FitResult, draw_params, fit_cell, make_model

log = logging.getLogger(__name__)

OK, EXCLUDED, FAILED = 0, 1, 2
METHODS = ("physics", "hybrid", "diffusion", "variance_model", "random_forest")


@dataclass
class Cells:
    """A curve set and each cell's stress factor of the empirical model."""

    cs: CurveSet
    stress: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.stress is None:
            self.stress = np.ones(len(self.cs))

    def subset(self, idx) -> "Cells":
        idx = np.asarray(idx, np.int64)
        return Cells(self.cs.subset(idx), self.stress[idx])


@dataclass
class Fits:
    """Per-cell fits of a set: results, status code, reason."""

    results: list[FitResult]
    status: np.ndarray
    reasons: list[str]
    features: np.ndarray = field(default=None)


def fit_points(settings, cycles_per_point: int) -> int:
    """Curve points in the fit window (cycle 0 .. ``fit_cycles``); InputError if below ``min_fit_points``."""
    k = settings.fit_cycles // cycles_per_point + 1
    if k < settings.min_fit_points:
        raise InputError(f"twin.fit_cycles: {settings.fit_cycles} cycles give {k} curve points at "
                         f"{cycles_per_point} cycles per point, the fit needs min_fit_points = "
                         f"{settings.min_fit_points}")
    return k


def fit_set(model, cells: Cells, k_fit: int, settings) -> Fits:
    """Fit every cell of ``cells`` to its first ``k_fit`` points (exclusions and failures recorded)."""
    cs, cpp = cells.cs, cells.cs.cycles_per_point
    results, status, reasons = [], np.zeros(len(cs), np.int8), []
    n_par = len(model.names)
    for i in range(len(cs)):
        n = int(cs.valid_len[i])
        if n < k_fit + 1:
            results.append(FitResult(False, np.full(n_par, np.nan), np.full((n_par, n_par), np.nan)))
            status[i] = EXCLUDED
            reasons.append(f"excluded: record has {n} points ({(n - 1) * cpp} cycles), the fit needs "
                           f"{k_fit} early points ({settings.fit_cycles} cycles) and one after them")
            continue
        y = cs.soh[i, :k_fit].astype(np.float64)
        cycles = np.arange(k_fit) * float(cpp)
        r = fit_cell(model, cycles, y, float(cells.stress[i]), where=cs.names[i])
        results.append(r)
        status[i] = OK if r.ok else FAILED
        reasons.append("" if r.ok else f"failed: {r.reason}")
        if not r.ok:
            log.warning("%s: fit failed (%s)", cs.names[i], r.reason)
    params = np.stack([r.params for r in results])
    return Fits(results, status, reasons, cell_features(cs.qmatrix, params))


def physics_curves(model, fits: Fits, cells: Cells, H: int) -> np.ndarray:
    """Point-estimate physics curves [n, H] (NaN for cells without a fit)."""
    grid = np.arange(H) * float(cells.cs.cycles_per_point)
    out = np.full((len(fits.results), H), np.nan)
    for i, r in enumerate(fits.results):
        if r.ok:
            out[i] = model.predict(r.params, grid, float(cells.stress[i]))
    return out


def correction_data(phys: np.ndarray, fits: Fits, cells: Cells, idx: np.ndarray, k_fit: int):
    """(inputs [N, D], residuals [N]) of the cells ``idx``: their points after the fit window."""
    cs = cells.cs
    grid = np.arange(phys.shape[1]) * float(cs.cycles_per_point)
    xs, ys = [], []
    for i in idx:
        if fits.status[i] != OK:
            continue
        n = min(int(cs.valid_len[i]), phys.shape[1])
        pts = np.arange(k_fit, n)
        if len(pts) == 0:
            continue
        xs.append(point_inputs(phys[i, pts], grid[pts], fits.features[i], grid[k_fit - 1]))
        ys.append(cs.soh[i, pts].astype(np.float64) - phys[i, pts])
    if not xs:
        return None, None
    return np.concatenate(xs), np.concatenate(ys)


def hybrid_of(phys: np.ndarray, features: np.ndarray, corr: Correction | None, k_fit: int, cpp: int) -> np.ndarray:
    """Physics curves [..., H] of one cell + the correction after the fit window."""
    if corr is None:
        return phys.copy()
    grid = np.arange(phys.shape[-1]) * float(cpp)
    out = phys.copy()
    out[..., k_fit:] += corr.residual(point_inputs(phys[..., k_fit:], grid[k_fit:], features, grid[k_fit - 1]))
    return out


def forecast_cells(model, fits: Fits, cells: Cells, idx, corr, H: int, k_fit: int, level_eol: float, settings,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Point curves, draw bands and lives of the cells ``idx`` (NaN where there is no fit)."""
    cpp = cells.cs.cycles_per_point
    grid = np.arange(H) * float(cpp)
    q_lo, q_hi = (1 - settings.level) / 2, 1 - (1 - settings.level) / 2
    n = len(idx)
    out = {k: np.full((n, H), np.nan) for k in ("soh_physics", "soh_hybrid", "soh_physics_lo", "soh_physics_hi",
                                                "soh_hybrid_lo", "soh_hybrid_hi")}
    out.update({k: np.full(n, np.nan) for k in ("life_physics", "life_physics_lo", "life_physics_hi",
                                                "life_hybrid", "life_hybrid_lo", "life_hybrid_hi")})
    for j, i in enumerate(idx):
        r = fits.results[i]
        if not r.ok:
            continue
        draws = draw_params(model, r, settings.param_draws, rng)
        phys = model.predict(draws, grid, float(cells.stress[i]))          # [K, H], row 0 = the fit
        hyb = hybrid_of(phys, fits.features[i], corr, k_fit, cpp)
        for name, curves in (("physics", phys), ("hybrid", hyb)):
            out[f"soh_{name}"][j] = curves[0]
            out[f"soh_{name}_lo"][j], out[f"soh_{name}_hi"][j] = np.quantile(curves, [q_lo, q_hi], axis=0)
            lives, _ = first_crossing(curves, level_eol, k_fit, cpp)
            out[f"life_{name}"][j] = lives[0]
            out[f"life_{name}_lo"][j], out[f"life_{name}_hi"][j] = np.quantile(lives, [q_lo, q_hi])
    return out


def forecast_split(train: Cells, test: Cells, settings, checkpoint=None, model=None) -> dict:
    """Forecast the ``test`` cells with a twin fitted on ``train``: per-test-cell arrays + run info.

    ``model``: a physics model to reuse (e.g. a PyBaMM surrogate already built); default: a new one.
    """
    if train.cs.cycles_per_point != test.cs.cycles_per_point:
        raise InputError(f"{test.cs.source}: {test.cs.cycles_per_point} cycles per point, the training cells have "
                         f"{train.cs.cycles_per_point}")
    cpp, rule = test.cs.cycles_per_point, test.cs.eol_rule
    k_fit = fit_points(settings, cpp)
    H = max(test.cs.curve_length, (settings.horizon_cycles or 0) // cpp + 1)
    model = make_model(settings) if model is None else model
    t0 = time.perf_counter()
    if hasattr(model, "build"):
        try:
            model.build()
        except Exception as exc:
            raise InputError(f"twin.pybamm: the PyBaMM surrogate could not be built "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    build_s = time.perf_counter() - t0
    fits_tr, fits_te = fit_set(model, train, k_fit, settings), fit_set(model, test, k_fit, settings)
    phys_tr = physics_curves(model, fits_tr, train, H)
    level_eol = eol_level(rule, settings.threshold, train.cs.soh, train.cs.valid_len)

    # proper-training / calibration split of the usable training cells (seeded)
    usable = np.flatnonzero(fits_tr.status == OK)
    if len(usable) < 4:
        raise InputError(f"{train.cs.source}: {len(usable)} training cells with a fit, the twin needs at least 4")
    cal, proper = calibration_subset(usable, settings.calibration_fraction, settings.seed)
    corr, t_train = None, 0.0
    if settings.correction_enabled:
        x, y = correction_data(phys_tr, fits_tr, train, proper, k_fit)
        if x is None:
            log.warning("no training points after the fit window: no correction")
        else:
            t1 = time.perf_counter()
            corr = train_correction(x, y, settings.correction, checkpoint)
            t_train = time.perf_counter() - t1
            if corr.interrupted:
                return {"interrupted": True, "step": corr.steps}

    rng = np.random.default_rng([settings.seed, 1])
    # calibration: conformal quantiles of the hybrid life interval (log life) and of the curve residuals
    fc_cal = forecast_cells(model, fits_tr, train, cal, corr, H, k_fit, level_eol, settings, rng)
    life_cal, cens_cal = cycle_life(train.cs.soh[cal], train.cs.valid_len[cal], rule, cpp, settings.threshold)
    ok_cal = ~cens_cal & np.isfinite(fc_cal["life_hybrid"])
    seen = float((k_fit - 1) * cpp)
    q_life = conformal_quantile(interval_scores(fc_cal["life_hybrid_lo"][ok_cal], fc_cal["life_hybrid_hi"][ok_cal],
                                                life_cal[ok_cal], seen), settings.level)
    res = []
    for j, i in enumerate(cal):
        n = min(int(train.cs.valid_len[i]), H)
        res.append(np.abs(train.cs.soh[i, k_fit:n] - fc_cal["soh_hybrid"][j, k_fit:n]))
    q_curve = conformal_quantile(np.concatenate(res) if res else np.zeros(0), settings.level)
    if not np.isfinite(q_life):
        log.warning("too few uncensored calibration cells (%d) for a %.0f %% conformal interval: intervals "
                    "from the parameter uncertainty only", int(ok_cal.sum()), 100 * settings.level)
    q_life_used = q_life if np.isfinite(q_life) else 0.0
    q_curve_used = q_curve if np.isfinite(q_curve) else 0.0

    out = forecast_cells(model, fits_te, test, np.arange(len(test.cs)), corr, H, k_fit, level_eol, settings, rng)
    out["life_hybrid_lo"], out["life_hybrid_hi"] = conformal_interval(out["life_hybrid_lo"], out["life_hybrid_hi"],
                                                                      q_life_used, seen)
    out["soh_hybrid_lo"] = out["soh_hybrid_lo"] - q_curve_used
    out["soh_hybrid_hi"] = out["soh_hybrid_hi"] + q_curve_used

    # baselines on the same cells and rule, refitted on the training cells
    life_tr, cens_tr = cycle_life(train.cs.soh, train.cs.valid_len, rule, cpp, settings.threshold)
    same_shape = train.cs.condition_shape == test.cs.condition_shape
    base = fit_baselines(train.cs.qmatrix, life_tr, cens_tr, settings.seed) if same_shape else {}
    for key, name in (("life_variance", "variance_model"), ("life_forest", "random_forest")):
        out[key] = base[name].predict(test.cs.qmatrix) if name in base else np.full(len(test.cs), np.nan)
    out["params"] = np.stack([r.params for r in fits_te.results])
    out["param_sd"] = np.stack([np.sqrt(np.clip(np.diag(r.cov), 0, None)) for r in fits_te.results])
    out["fit_seconds"] = np.array([r.seconds for r in fits_te.results])
    out["fit_rmse"] = np.array([r.rmse for r in fits_te.results])
    out["status"] = fits_te.status
    out["reasons"] = fits_te.reasons
    info = {"k_fit": k_fit, "horizon_points": H, "eol_level_percent": level_eol, "param_names": list(model.names),
            "physics_model": settings.physics, "surrogate_build_seconds": build_s,
            "correction_train_seconds": t_train, "correction_points": 0 if corr is None else int(len(y)),
            "correction_training_mse": None if corr is None else corr.final_loss,
            "calibration_cells": int(len(cal)), "calibration_uncensored": int(ok_cal.sum()),
            "conformal_log_life_quantile": q_life if np.isfinite(q_life) else None,
            "conformal_curve_quantile_percent": q_curve if np.isfinite(q_curve) else None,
            "train_fit_failed": int((fits_tr.status == FAILED).sum()),
            "train_excluded": int((fits_tr.status == EXCLUDED).sum())}
    if getattr(model, "simulate_seconds", None):
        info["pybamm_run_seconds_mean"] = float(np.mean(model.simulate_seconds))
        info["pybamm_runs"] = len(model.simulate_seconds)
        info["pybamm_failed_runs"] = {str(k): v for k, v in getattr(model, "failed_runs", {}).items()}
    return {"arrays": out, "info": info, "model": model, "correction": corr, "fits": fits_te, "k_fit": k_fit,
            "level_eol": level_eol, "q_life": q_life_used, "q_curve": q_curve_used}


def score(arrays: dict, test: CurveSet, settings, diffusion: dict | None = None) -> tuple[dict, dict]:
    """(metrics per method on the same cells and rule, the arrays completed with truth and flags)."""
    rule, cpp = test.eol_rule, test.cycles_per_point
    life_true, censored = cycle_life(test.soh, test.valid_len, rule, cpp, settings.threshold)
    ok = np.asarray(arrays["status"]) == OK
    keep = ok & ~censored
    a = dict(arrays)
    a["life_true"], a["censored"], a["evaluated"] = life_true, censored.astype(np.int8), keep.astype(np.int8)
    a["soh_true"] = test.soh
    n = len(test)
    if diffusion is not None:
        for k in ("pred", "lo", "hi"):
            a[f"life_diffusion{'' if k == 'pred' else '_' + k}"] = np.asarray(diffusion[f"life_{k}"], np.float64)
    metrics = {"eol_rule": rule, "threshold_percent": settings.threshold, "cycles_per_point": cpp,
               "fit_cycles": settings.fit_cycles, "interval_level": settings.level, "n_cells": int(n),
               "n_evaluated": int(keep.sum()), "n_censored": int((ok & censored).sum()),
               "n_excluded": int((np.asarray(arrays["status"]) == EXCLUDED).sum()),
               "n_failed": int((np.asarray(arrays["status"]) == FAILED).sum())}

    def entry(pred, lo=None, hi=None):
        e = {"rul_rmse_cycles": rmse(pred, life_true, keep) if pred is not None else None,
             "interval_coverage": coverage(lo, hi, life_true, keep) if lo is not None else None}
        if lo is not None:
            e["mean_interval_width_cycles"] = float(np.mean((hi - lo)[keep])) if keep.any() else None
        return e

    metrics["physics"] = entry(a["life_physics"], a["life_physics_lo"], a["life_physics_hi"])
    metrics["hybrid"] = entry(a["life_hybrid"], a["life_hybrid_lo"], a["life_hybrid_hi"])
    metrics["diffusion"] = (entry(a["life_diffusion"], a["life_diffusion_lo"], a["life_diffusion_hi"])
                            if diffusion is not None else {"rul_rmse_cycles": None, "interval_coverage": None})
    metrics["variance_model"] = entry(a["life_variance"])
    metrics["random_forest"] = entry(a["life_forest"])
    for name in ("physics", "hybrid"):
        metrics[name]["soh_curve_rmse_percent"] = _future_curve_rmse(a[f"soh_{name}"], test, keep,
                                                                      settings.fit_cycles // cpp + 1)
    ft = np.asarray(arrays["fit_seconds"])[ok]
    metrics["fit_seconds_per_cell"] = {"mean": float(ft.mean()) if ft.size else None,
                                       "max": float(ft.max()) if ft.size else None}
    metrics["cells"] = [{"name": test.names[i], "status": ("ok", "excluded", "failed")[int(arrays["status"][i])],
                         **({"reason": arrays["reasons"][i]} if arrays["reasons"][i] else {})}
                        for i in range(n) if arrays["reasons"][i]]
    return metrics, a


def _future_curve_rmse(pred: np.ndarray, test: CurveSet, keep: np.ndarray, k_fit: int) -> float:
    L = min(pred.shape[1], test.soh.shape[1])
    inside = (np.arange(L)[None] < test.valid_len[:, None]) & (np.arange(L)[None] >= k_fit) & keep[:, None]
    return rmse(np.nan_to_num(pred[:, :L]), np.nan_to_num(test.soh[:, :L]), inside)


def time_series(run: dict, test: Cells, settings) -> dict[str, np.ndarray]:
    """Refits of one evaluated cell on growing windows (warm start from the previous fit) and its forecasts.

    Windows: from the fit window evenly to the last point before the measured curve reaches the
    end-of-life level (or the end of the record).
    """
    model, corr, fits, k_fit = run["model"], run["correction"], run["fits"], run["k_fit"]
    cs, cpp = test.cs, test.cs.cycles_per_point
    ok = np.flatnonzero(fits.status == OK)
    if not settings.series.enabled or len(ok) == 0:
        return {}
    i = int(ok[min(settings.series.cell, len(ok) - 1)])
    n = int(cs.valid_len[i])
    below = np.flatnonzero(cs.soh[i, :n] <= run["level_eol"])
    stop = int(below[0]) if below.size else n  # windows end before the measured end of life
    ends = np.unique(np.linspace(k_fit, max(k_fit, stop - 1), settings.series.windows).round().astype(int))
    H = run["arrays"]["soh_physics"].shape[1]
    grid = np.arange(H) * float(cpp)
    q = [(1 - settings.level) / 2, 1 - (1 - settings.level) / 2]
    rng = np.random.default_rng([settings.seed, 2])
    x0 = fits.results[i].params
    rows = {k: [] for k in ("series_window_cycles", "series_params", "series_physics", "series_hybrid", "series_lo",
                            "series_hi", "series_life", "series_life_lo", "series_life_hi", "series_physics_life",
                            "series_physics_life_lo", "series_physics_life_hi", "series_fit_seconds", "series_nfev")}
    for end in ends:
        r = fit_cell(model, grid[:end], cs.soh[i, :end], float(test.stress[i]), x0=x0, where=cs.names[i])
        if not r.ok:
            continue
        x0 = r.params
        draws = draw_params(model, r, settings.param_draws, rng)
        phys = model.predict(draws, grid, float(test.stress[i]))
        feats = cell_features(cs.qmatrix[i:i + 1], r.params[None])[0]
        hyb = hybrid_of(phys, feats, corr, end, cpp)
        lives, _ = first_crossing(hyb, run["level_eol"], end, cpp)
        rows["series_window_cycles"].append((end - 1) * cpp)
        rows["series_params"].append(r.params)
        rows["series_physics"].append(phys[0])
        rows["series_hybrid"].append(hyb[0])
        lo, hi = np.quantile(hyb, q, axis=0)
        rows["series_lo"].append(lo - run["q_curve"])
        rows["series_hi"].append(hi + run["q_curve"])
        rows["series_life"].append(lives[0])
        l_lo, l_hi = conformal_interval(*np.quantile(lives, q), run["q_life"], float((end - 1) * cpp))
        rows["series_life_lo"].append(l_lo)
        rows["series_life_hi"].append(l_hi)
        p_lives, _ = first_crossing(phys, run["level_eol"], end, cpp)
        rows["series_physics_life"].append(p_lives[0])
        p_lo, p_hi = np.quantile(p_lives, q)
        rows["series_physics_life_lo"].append(p_lo)
        rows["series_physics_life_hi"].append(p_hi)
        rows["series_fit_seconds"].append(r.seconds)
        rows["series_nfev"].append(r.nfev)
    out = {k: np.asarray(v, np.float64) for k, v in rows.items() if v}
    out["series_cell"] = np.array([i])
    return out


def metrics_life_true(test: Cells, series: dict, threshold: float) -> float:
    i = int(series["series_cell"][0])
    life, _ = cycle_life(test.cs.soh[i:i + 1], test.cs.valid_len[i:i + 1], test.cs.eol_rule, test.cs.cycles_per_point,
                         threshold)
    return float(life[0])


def cross_validate(cells: Cells, settings, folds: int) -> tuple[dict, dict]:
    """K-fold cross-validation by cell: (arrays for every cell from the fold that held it out, info)."""
    n = len(cells.cs)
    if n < 2 * folds:
        raise InputError(f"{cells.cs.source}: {n} cells are too few for {folds}-fold cross-validation")
    fold_of = np.random.default_rng([settings.seed, 3]).permutation(n) % folds
    merged: dict = {}
    infos = []
    last = None
    model = make_model(settings)  # built once (PyBaMM surrogate), shared by the folds
    for f in range(folds):
        te, tr = np.flatnonzero(fold_of == f), np.flatnonzero(fold_of != f)
        run = forecast_split(cells.subset(tr), cells.subset(te), settings, model=model)
        if run.get("interrupted"):
            return run, {}
        last = run
        infos.append(run["info"])
        for k, v in run["arrays"].items():
            if k == "reasons":
                merged.setdefault(k, [""] * n)
                for j, i in enumerate(te):
                    merged[k][i] = v[j]
                continue
            v = np.asarray(v)
            if k not in merged:
                merged[k] = np.full((n, *v.shape[1:]), np.nan if v.dtype.kind == "f" else 0, v.dtype)
            merged[k][te] = v
    info = {**infos[0], "folds": folds, "fold_info": infos,
            "surrogate_build_seconds": float(sum(i["surrogate_build_seconds"] for i in infos)),
            "correction_train_seconds": float(sum(i["correction_train_seconds"] for i in infos))}
    return {"arrays": merged, "info": info, "last": last}, {}


def run_evaluation(train: Cells | None, test: Cells, settings, diffusion: dict | None = None,
                   checkpoint=None) -> dict:
    """One evaluation (``train`` None: cross-validation on ``test``): arrays, metrics, series."""
    t0 = time.perf_counter()
    if train is None:
        run, _ = cross_validate(test, settings, settings.folds)
        series_run = run.get("last")
        series_cells = None
    else:
        run = forecast_split(train, test, settings, checkpoint)
        series_run, series_cells = run, test
    if run.get("interrupted"):
        return run
    metrics, arrays = score(run["arrays"], test.cs, settings, diffusion)
    metrics["run"] = run["info"]
    series = {}
    if series_cells is not None:
        series = time_series(series_run, series_cells, settings)
        if series:
            w = series["series_life_hi"] - series["series_life_lo"]
            metrics["series"] = {"cell": test.cs.names[int(series["series_cell"][0])],
                                 "window_cycles": series["series_window_cycles"].tolist(),
                                 "life_interval_width_cycles": w.tolist(),
                                 "life_pred_cycles": series["series_life"].tolist(),
                                 "life_true_cycles": metrics_life_true(test, series, settings.threshold),
                                 "physics_life_pred_cycles": series["series_physics_life"].tolist(),
                                 "physics_life_interval_width_cycles": (series["series_physics_life_hi"]
                                                                        - series["series_physics_life_lo"]).tolist(),
                                 "fit_seconds": series["series_fit_seconds"].tolist(),
                                 "nfev": series["series_nfev"].tolist()}
    metrics["wall_seconds"] = time.perf_counter() - t0
    return {"arrays": arrays, "metrics": metrics, "series": series}


def write_outputs(result: dict, test: CurveSet, out: Path, metrics_path: Path | None, params: dict) -> None:
    """The store (``out``) and the metrics JSON of one evaluation."""
    from ..cycling.store import write_store
    from ..distributed import World
    from ..store import json_safe, provenance, write_json

    arrays = {k: np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else None)
              for k, v in {**result["arrays"], **result["series"]}.items() if k != "reasons"}
    arrays = {k: (v.astype(np.int8) if v.dtype == bool else v) for k, v in arrays.items()}
    m = result["metrics"]
    attrs = {**provenance("twin", params), "cell_names": list(test.names), "reasons": list(result["arrays"]["reasons"]),
             "param_names": m["run"]["param_names"], "cycles_per_point": int(test.cycles_per_point),
             "fit_cycles": m["fit_cycles"], "eol_rule": m["eol_rule"], "eol_level_percent": m["run"]["eol_level_percent"],
             "interval_level": m["interval_level"], "metrics": m}
    write_store(Path(out), arrays, json_safe(attrs), World())
    if metrics_path is not None:
        write_json(metrics_path, m)
