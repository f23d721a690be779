"""Forecast pieces: curve grids, life from a curve, split-conformal quantiles, the end-of-life level.

Life of a forecast curve: ``i * cycles_per_point`` for the first grid point ``i >= start`` (after the
fit window) with SOH <= the end-of-life level; a curve that does not cross inside the horizon
predicts the horizon (a lower bound). The level is ``threshold`` (80 %) under the threshold rule;
under ``end_of_record`` (MATR: cells stopped at 80 % of *nominal* capacity, 80-85 % of the first
cycle) it is the median SOH at the last point of the training records, so truth and forecast are
read by the same rule as :func:`batterytwin.degradation.evaluate.cycle_life` for the truth.
"""

from __future__ import annotations

import math

import numpy as np


def first_crossing(curves: np.ndarray, level: float, start: int, cycles_per_point: int) -> tuple[np.ndarray, np.ndarray]:
    """(life [...] cycles, crossed [...] bool) of curves [..., H] read from grid point ``start`` on."""
    c = np.asarray(curves, np.float64)
    H = c.shape[-1]
    below = (np.arange(H) >= start) & (np.nan_to_num(c, nan=np.inf) <= level)
    crossed = below.any(axis=-1)
    first = np.where(crossed, np.argmax(below, axis=-1), H)
    return first * float(cycles_per_point), crossed


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile: the ``ceil((n + 1) level)``-th smallest score (inf when n is too small)."""
    s = np.sort(np.asarray(scores, np.float64)[np.isfinite(scores)])
    n = len(s)
    k = math.ceil((n + 1) * level)
    if n == 0 or k > n:
        return float("inf")
    return float(s[k - 1])


def eol_level(rule: str, threshold: float, train_soh: np.ndarray, train_len: np.ndarray) -> float:
    """SOH level (percent) whose first crossing is the forecast end of life (module docstring)."""
    if rule == "threshold":
        return float(threshold)
    last = np.asarray(train_soh, np.float64)[np.arange(len(train_len)), np.asarray(train_len) - 1]
    full = np.asarray(train_len) >= train_soh.shape[1]
    return float(np.median(last[~full] if (~full).any() else last))


def log_interval_scores(lo: np.ndarray, hi: np.ndarray, true: np.ndarray, seen: float) -> np.ndarray:
    """Conformalised-quantile scores in log RUL (life - ``seen`` cycles): ``max(log lo - log y, log y - log hi)``."""
    lo, hi, y = (np.log(np.maximum(np.asarray(v, np.float64) - seen, 1.0)) for v in (lo, hi, true))
    return np.maximum(lo - y, y - hi)


def widen(lo: np.ndarray, hi: np.ndarray, q: float, seen: float) -> tuple[np.ndarray, np.ndarray]:
    """Interval [lo, hi] of life widened by the conformal quantile ``q`` of :func:`log_interval_scores`."""
    lo_r, hi_r = np.maximum(np.asarray(lo) - seen, 1.0), np.maximum(np.asarray(hi) - seen, 1.0)
    return seen + lo_r * np.exp(-q), seen + hi_r * np.exp(q)
