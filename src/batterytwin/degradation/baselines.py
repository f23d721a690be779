"""Reference predictors of cycle life from the early-cycle capacity matrix, fitted in the same run.

- :func:`variance_feature` / :class:`VarianceModel`: Severson et al., Nature Energy 4, 383 (2019),
  "variance" model: ``log10(life) = a + b * log10(var_V(Q_hi(V) - Q_lo(V)))`` with the cycle-100 and
  cycle-10 discharge curves (rows ``hi = R-1`` and ``lo = min(9, R-2)`` of the capacity matrix;
  rows are differences to one base cycle, so the base cancels in ``row_hi - row_lo``).
- :class:`ForestModel`: a random forest (scikit-learn) on the capacity matrix, subsampled to at most
  ``max_features_side`` rows and voltages.

Both take qmatrix [n, R, V] and return lives [n] in cycles.
"""

from __future__ import annotations

import numpy as np


def variance_rows(rows: int) -> tuple[int, int]:
    """(lo, hi) 0-based rows of the capacity matrix for the variance feature (row k = cycle k + 1).

    Severson's Q_100 - Q_10 on a 100-row matrix: rows (9, 99). With fewer rows the late cycle is the
    last one and the early cycle stays cycle 10: rows (9, R - 1), i.e. Q_20 - Q_10 on the 20-row SNL
    matrices (whose rows 0-4 sit before a step in the records, so an earlier row would measure the
    step, not the fade); below 11 rows, rows (R - 2, R - 1). Reported in the metrics as
    ``variance_model.cycles``.
    """
    return min(9, max(rows - 2, 0)), rows - 1


def variance_feature(qmatrix: np.ndarray) -> np.ndarray:
    """log10 of the variance over voltage of Q_hi(V) - Q_lo(V): qmatrix [n, R, V] -> [n].

    Raises:
        InputError: a cell whose two rows are identical (e.g. an all-zero capacity matrix): its feature
            would be log10(0); the loaders leave such cells out, so this names an unusable input.
    """
    from ..errors import InputError

    lo, hi = variance_rows(qmatrix.shape[1])
    dq = np.asarray(qmatrix[:, hi, :], np.float64) - np.asarray(qmatrix[:, lo, :], np.float64)
    var = np.var(dq, axis=1)
    if np.any(var <= 0):
        bad = np.flatnonzero(var <= 0)
        raise InputError(f"variance baseline: cell(s) {bad.tolist()[:10]} have identical capacity-matrix rows "
                         f"{lo} and {hi} (all-zero capacity matrix?): no variance feature")
    return np.log10(var)


class VarianceModel:
    """Linear model of log10(cycle life) on the variance feature (least squares)."""

    def fit(self, qmatrix: np.ndarray, life: np.ndarray) -> "VarianceModel":
        x = variance_feature(qmatrix)
        self.coef_ = np.polyfit(x, np.log10(np.maximum(life, 1.0)), 1)
        return self

    def predict(self, qmatrix: np.ndarray) -> np.ndarray:
        return 10.0 ** np.polyval(self.coef_, variance_feature(qmatrix))


def forest_features(qmatrix: np.ndarray, max_side: int = 20) -> np.ndarray:
    """Capacity matrix [n, R, V] -> features [n, <= max_side**2] (evenly subsampled rows/voltages)."""
    r = np.unique(np.linspace(0, qmatrix.shape[1] - 1, min(max_side, qmatrix.shape[1])).round().astype(int))
    v = np.unique(np.linspace(0, qmatrix.shape[2] - 1, min(max_side, qmatrix.shape[2])).round().astype(int))
    return np.asarray(qmatrix[:, r][:, :, v], np.float64).reshape(len(qmatrix), -1)


class ForestModel:
    """Random forest regression of cycle life on the (subsampled) capacity matrix; seeded."""

    def __init__(self, n_estimators: int = 300, seed: int = 0, max_side: int = 20):
        self.n_estimators, self.seed, self.max_side = n_estimators, seed, max_side

    def fit(self, qmatrix: np.ndarray, life: np.ndarray) -> "ForestModel":
        from sklearn.ensemble import RandomForestRegressor

        self.model_ = RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1)
        self.model_.fit(forest_features(qmatrix, self.max_side), life)
        return self

    def predict(self, qmatrix: np.ndarray) -> np.ndarray:
        return self.model_.predict(forest_features(qmatrix, self.max_side))
