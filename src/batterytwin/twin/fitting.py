"""Per-cell physics fits of a set of cells, with the cells that cannot be fitted recorded.

Every cell's physics model (:mod:`.physics`) is fitted to its first ``fit_cycles`` cycles; a cell
whose record is too short is *excluded* and a fit that fails is *failed*, each with its reason, and
the evaluation goes on without them.

Example::

    k_fit = fit_points(settings, cells.cs.cycles_per_point)
    fits = fit_set(model, cells, k_fit, settings)
    fits.status                        # OK, EXCLUDED or FAILED per cell
    physics_curves(model, fits, cells, H)   # [n, H], NaN for cells without a fit
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..cycling.curves import CurveSet
from ..errors import InputError
from .correction import cell_features
from .physics import FitResult, fit_cell

log = logging.getLogger(__name__)

OK, EXCLUDED, FAILED = 0, 1, 2


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


def fit_arrays(fits: Fits) -> dict:
    """The per-cell fit outputs of the store: ``params``, ``param_sd`` [n, P]; ``fit_seconds``,
    ``fit_rmse``, ``status`` [n]; ``reasons`` (list)."""
    return {"params": np.stack([r.params for r in fits.results]),
            "param_sd": np.stack([np.sqrt(np.clip(np.diag(r.cov), 0, None)) for r in fits.results]),
            "fit_seconds": np.array([r.seconds for r in fits.results]),
            "fit_rmse": np.array([r.rmse for r in fits.results]),
            "status": fits.status, "reasons": fits.reasons}
