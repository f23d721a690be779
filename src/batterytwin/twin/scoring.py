"""Scores of one evaluation: life and curve errors and interval coverage per method, on the same cells
and end-of-life rule (physics, hybrid, the diffusion model's store when given, the baselines).

Example::

    metrics, arrays = score(run["arrays"], test_curves, settings)
    metrics["hybrid"]["rul_rmse_cycles"], metrics["hybrid"]["interval_coverage"]
"""

from __future__ import annotations

import numpy as np

from ..cycling.curves import CurveSet
from ..cycling.life import cycle_life
from ..cycling.scores import coverage, rmse
from .fitting import EXCLUDED, FAILED, OK


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
