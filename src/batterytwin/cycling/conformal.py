"""Split-conformal calibration of life intervals (numpy; no conformal library is installed).

One quantile and one score convention for both stages:

- :func:`conformal_quantile`: the ``k``-th smallest of ``n`` calibration scores, ``k = ceil((n + 1) level)``
  (Vovk et al. 2005; Lei et al. 2018), i.e. ``numpy.quantile(scores, k / n, method="inverted_cdf")``;
  infinite when ``k > n`` (too few calibration cells for the level). A NaN score (a calibration cell
  whose interval could not be scored) counts as a miss: it stays in ``n`` as ``+inf``, so the
  guarantee ``P(test score <= q) >= level`` still holds (conservative; never dropped silently).
- :func:`interval_scores`: conformalised-quantile-regression scores (Romano et al. 2019) in the
  **natural log** of the remaining life ``life - seen`` (``seen``: cycles already observed when the
  forecast is made; 0 for a whole-life prediction such as the diffusion model's), remaining lives
  clipped at 1 cycle: ``max(ln lo' - ln y', ln y' - ln hi')``. A score ``<= 0`` means the truth lies
  inside the interval.
- :func:`conformal_interval`: the interval widened (``q > 0``) or narrowed (``q < 0``) by the
  quantile on the same scale, ``[seen + lo' e^-q, seen + hi' e^q]``.

The log makes the correction multiplicative in the remaining life, so one quantile serves short- and
long-lived cells; the base of the log does not change any interval (``q`` scales with it), only the
reported ``q`` (natural log).
"""

from __future__ import annotations

import math

import numpy as np


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile of calibration ``scores`` [n] at ``level`` (module docstring): a float,
    ``inf`` when ``ceil((n + 1) level) > n`` or there are no scores."""
    s = np.asarray(scores, np.float64).ravel()
    s = np.sort(np.where(np.isnan(s), np.inf, s))
    n = len(s)
    k = math.ceil(round((n + 1) * float(level), 9))  # round: (n + 1) * level = 7.000000000000001 is 7
    return float(s[k - 1]) if 1 <= k <= n else float("inf")


def interval_scores(lo: np.ndarray, hi: np.ndarray, true: np.ndarray, seen: float = 0.0) -> np.ndarray:
    """CQR scores [n] of intervals ``[lo, hi]`` for lives ``true`` (cycles), in ln remaining life."""
    lo, hi, y = (np.log(np.maximum(np.asarray(v, np.float64) - seen, 1.0)) for v in (lo, hi, true))
    return np.maximum(lo - y, y - hi)


def conformal_interval(lo: np.ndarray, hi: np.ndarray, q: float, seen: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The interval ``[lo, hi]`` of lives widened by the quantile ``q`` of :func:`interval_scores`
    (``q`` not finite: too few calibration cells, ``[0, inf)``)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if not np.isfinite(q):
        return np.zeros_like(lo), np.full_like(hi, np.inf)
    lo_r, hi_r = np.maximum(lo - seen, 1.0), np.maximum(hi - seen, 1.0)
    return seen + lo_r * np.exp(-q), seen + hi_r * np.exp(q)
