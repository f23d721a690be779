"""The hybrid twin's curves: the correction trained on the physics residuals, and each cell's forecast
(physics and physics + correction) with a band and a life interval from parameter draws.

Example::

    corr, seconds, n_points = train_split_correction(phys, fits, cells, proper, k_fit, settings)
    out = forecast_cells(model, fits, cells, idx, corr, H, k_fit, level_eol, settings, rng)
    out["soh_hybrid"], out["life_hybrid_lo"], out["life_hybrid_hi"]
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..cycling.life import first_crossing
from .correction import Correction, point_inputs, train_correction
from .fitting import OK, Cells, Fits
from .physics import draw_params

log = logging.getLogger(__name__)


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


def train_split_correction(phys: np.ndarray, fits: Fits, cells: Cells, idx: np.ndarray, k_fit: int, settings,
                           checkpoint=None) -> tuple[Correction | None, float, int]:
    """The correction trained on the residuals of the cells ``idx`` after the fit window: (correction,
    training seconds, training points); (None, 0.0, 0) when disabled or without a point to train on."""
    if not settings.correction_enabled:
        return None, 0.0, 0
    x, y = correction_data(phys, fits, cells, idx, k_fit)
    if x is None:
        log.warning("no training points after the fit window: no correction")
        return None, 0.0, 0
    t1 = time.perf_counter()
    corr = train_correction(x, y, settings.correction, checkpoint)
    return corr, time.perf_counter() - t1, int(len(y))


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
