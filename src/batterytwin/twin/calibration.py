"""Split-conformal calibration of the hybrid forecast on held-out training cells.

The usable training cells are split (seeded) into proper-training cells, on which the correction is
trained, and calibration cells. On the calibration cells the hybrid life interval's conformity
scores (in log life) and the hybrid curve's absolute residuals give two conformal quantiles; the
test cells' life interval is then widened (or narrowed) by the first, their curve band by the second.

Example::

    cal, proper = calibration_split(fits, cells, settings)
    conformal = conformal_calibration(forecasts_of_cal, cells.cs, cal, k_fit, rule, cpp, settings)
    widen_hybrid(test_forecasts, conformal, seen=(k_fit - 1) * cpp)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..cycling.conformal import conformal_interval, conformal_quantile, interval_scores
from ..cycling.curves import CurveSet
from ..cycling.life import cycle_life
from ..cycling.split import calibration_subset
from ..errors import InputError
from .fitting import OK, Cells, Fits

log = logging.getLogger(__name__)


def calibration_split(fits: Fits, cells: Cells, settings) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, proper-training) indices of the cells with a fit (seeded); InputError below 4."""
    usable = np.flatnonzero(fits.status == OK)
    if len(usable) < 4:
        raise InputError(f"{cells.cs.source}: {len(usable)} training cells with a fit, the twin needs at least 4")
    return calibration_subset(usable, settings.calibration_fraction, settings.seed)


@dataclass
class Conformal:
    """Conformal quantiles of the calibration cells: ``life`` of the hybrid life interval (log life),
    ``curve`` of the hybrid curve residuals (% SOH); NaN where the cells are too few."""

    life: float
    curve: float
    n_uncensored: int  # calibration cells whose life was measured and forecast

    @property
    def life_used(self) -> float:
        """The life quantile applied (0: the interval from the parameter uncertainty only)."""
        return self.life if np.isfinite(self.life) else 0.0

    @property
    def curve_used(self) -> float:
        """The curve quantile applied (0 when undetermined)."""
        return self.curve if np.isfinite(self.curve) else 0.0


def conformal_calibration(forecast: dict[str, np.ndarray], cs: CurveSet, cal: np.ndarray, k_fit: int, rule: str,
                          cpp: int, settings) -> Conformal:
    """Conformal quantiles from the hybrid ``forecast`` of the calibration cells ``cal`` of ``cs``
    (their measured life by ``rule``; residuals after the fit window, inside the horizon)."""
    life, censored = cycle_life(cs.soh[cal], cs.valid_len[cal], rule, cpp, settings.threshold)
    ok = ~censored & np.isfinite(forecast["life_hybrid"])
    seen = float((k_fit - 1) * cpp)
    q_life = conformal_quantile(interval_scores(forecast["life_hybrid_lo"][ok], forecast["life_hybrid_hi"][ok],
                                                life[ok], seen), settings.level)
    H = forecast["soh_hybrid"].shape[1]
    res = []
    for j, i in enumerate(cal):
        n = min(int(cs.valid_len[i]), H)
        res.append(np.abs(cs.soh[i, k_fit:n] - forecast["soh_hybrid"][j, k_fit:n]))
    q_curve = conformal_quantile(np.concatenate(res) if res else np.zeros(0), settings.level)
    if not np.isfinite(q_life):
        log.warning("too few uncensored calibration cells (%d) for a %.0f %% conformal interval: intervals "
                    "from the parameter uncertainty only", int(ok.sum()), 100 * settings.level)
    return Conformal(q_life, q_curve, int(ok.sum()))


def widen_hybrid(forecast: dict[str, np.ndarray], conformal: Conformal, seen: float) -> None:
    """Apply the conformal quantiles to a hybrid ``forecast`` (in place): the life interval in log
    life beyond ``seen`` cycles, the curve band by the curve quantile."""
    forecast["life_hybrid_lo"], forecast["life_hybrid_hi"] = conformal_interval(
        forecast["life_hybrid_lo"], forecast["life_hybrid_hi"], conformal.life_used, seen)
    forecast["soh_hybrid_lo"] = forecast["soh_hybrid_lo"] - conformal.curve_used
    forecast["soh_hybrid_hi"] = forecast["soh_hybrid_hi"] + conformal.curve_used
