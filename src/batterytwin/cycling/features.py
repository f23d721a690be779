"""Features of the early-cycle capacity matrix ``qmatrix [n, R, V]`` (row k = cycle k + 1, each row the
discharge capacity vs voltage minus that of one base cycle) for the life predictors.

- :func:`delta_q_features`: Severson et al., Nature Energy 4, 383 (2019), the "discharge" model's
  summary statistics of ``dQ(V) = Q_hi(V) - Q_lo(V)`` (the variance baseline's rows,
  :func:`~.baselines.variance_rows`): log10 variance, log10 |min|, log10 |mean|, skewness and log10
  kurtosis over voltage (scipy.stats).
- :func:`capacity_features`: those, plus the trajectory of the fade over the early cycles: for
  ``trajectory_rows`` rows evenly spaced from ``lo`` to the last row, the mean change since row ``lo``
  (a capacity-loss proxy), the log10 variance of that change over voltage and its value at the last
  voltage point; plus the capacity matrix itself on a coarse grid (:func:`~.baselines.forest_features`,
  ``grid_side`` rows x voltages), which tells the chemistry and protocol apart.
"""

from __future__ import annotations

import numpy as np

from .baselines import forest_features, variance_rows

_TINY = 1e-12  # floor inside log10 of non-negative statistics (a row pair with no change at all)


def delta_q_features(qmatrix: np.ndarray) -> np.ndarray:
    """The five dQ statistics of Severson's discharge model: [n, 5] (module docstring)."""
    from scipy.stats import kurtosis, skew

    q = np.asarray(qmatrix, np.float64)
    lo, hi = variance_rows(q.shape[1])
    dq = q[:, hi] - q[:, lo]
    return np.column_stack([np.log10(np.var(dq, axis=1) + _TINY), np.log10(np.abs(dq.min(axis=1)) + _TINY),
                            np.log10(np.abs(dq.mean(axis=1)) + _TINY), np.nan_to_num(skew(dq, axis=1)),
                            np.log10(np.nan_to_num(kurtosis(dq, axis=1, fisher=False)) + _TINY)])


def capacity_features(qmatrix: np.ndarray, trajectory_rows: int = 8, grid_side: int = 10) -> np.ndarray:
    """dQ statistics, the fade trajectory and a coarse capacity matrix: [n, 5 + 3 k + grid] (module docstring)."""
    q = np.asarray(qmatrix, np.float64)
    lo, _ = variance_rows(q.shape[1])
    rows = np.unique(np.linspace(lo, q.shape[1] - 1, trajectory_rows).round().astype(int))
    change = q[:, rows] - q[:, lo][:, None]                          # [n, k, V]
    return np.column_stack([delta_q_features(q), change.mean(axis=2), np.log10(change.var(axis=2) + _TINY),
                            change[:, :, -1], forest_features(q, grid_side)])
