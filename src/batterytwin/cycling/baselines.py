"""Reference predictors of cycle life from the early-cycle capacity matrix (scikit-learn style).

- :func:`variance_feature` / :class:`VarianceModel`: Severson et al., Nature Energy 4, 383 (2019),
  "variance" model: ``log10(life) = a + b * log10(var_V(Q_hi(V) - Q_lo(V)))`` with the cycle-100 and
  cycle-10 discharge curves (rows ``hi = R-1`` and ``lo = min(9, R-2)`` of the capacity matrix;
  rows are differences to one base cycle, so the base cancels in ``row_hi - row_lo``).
- :class:`ForestModel`: a random forest (scikit-learn) on the capacity matrix, subsampled to at most
  ``max_side`` rows and voltages.
- :class:`MeanCurveModel`: the no-information reference: the training cells' mean life (and mean curve).

Every model is fitted by ``fit(qmatrix [n, R, V], life [n], censored [n] | None)`` (uncensored cells only:
a censored life is a lower bound, not a target), returns ``self``, and predicts ``predict(qmatrix) ->
life [n]`` in cycles. Nothing is fitted by setting attributes from outside; :func:`fit_baselines` fits
all three the same way for both stages.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .curves import mean_sample_curve


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
    lo, hi = variance_rows(qmatrix.shape[1])
    dq = np.asarray(qmatrix[:, hi, :], np.float64) - np.asarray(qmatrix[:, lo, :], np.float64)
    var = np.var(dq, axis=1)
    if np.any(var <= 0):
        bad = np.flatnonzero(var <= 0)
        raise InputError(f"variance baseline: cell(s) {bad.tolist()[:10]} have identical capacity-matrix rows "
                         f"{lo} and {hi} (all-zero capacity matrix?): no variance feature")
    return np.log10(var)


def _uncensored(qmatrix: np.ndarray, life: np.ndarray, censored: np.ndarray | None, what: str, need: int = 2):
    q, life = np.asarray(qmatrix), np.asarray(life, np.float64)
    if censored is not None:
        keep = ~np.asarray(censored, bool)
        q, life = q[keep], life[keep]
    if len(life) < need:
        raise InputError(f"{what}: {len(life)} uncensored training cell(s), at least {need} needed")
    return q, life


class VarianceModel:
    """Linear model of log10(cycle life) on the variance feature (least squares); ``coef_`` = (slope, intercept)."""

    def fit(self, qmatrix: np.ndarray, life: np.ndarray, censored: np.ndarray | None = None) -> "VarianceModel":
        q, life = _uncensored(qmatrix, life, censored, "variance model")
        self.coef_ = np.polyfit(variance_feature(q), np.log10(np.maximum(life, 1.0)), 1)
        return self

    def predict(self, qmatrix: np.ndarray) -> np.ndarray:
        return 10.0 ** np.polyval(self.coef_, variance_feature(qmatrix))


def forest_grid(rows: int, volts: int, max_side: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Row and voltage indices [<= max_side] of the capacity matrix the forest sees (evenly spaced)."""
    r = np.unique(np.linspace(0, rows - 1, min(max_side, rows)).round().astype(int))
    v = np.unique(np.linspace(0, volts - 1, min(max_side, volts)).round().astype(int))
    return r, v


def forest_features(qmatrix: np.ndarray, max_side: int = 20) -> np.ndarray:
    """Capacity matrix [n, R, V] -> features [n, <= max_side**2] (evenly subsampled rows/voltages).

    Idempotent on its own grid: ``forest_features(forest_features(q).reshape(n, r, v))`` equals
    ``forest_features(q)`` (``r, v`` the sizes of :func:`forest_grid`), so a matrix already reduced to
    the grid fits the same forest.
    """
    r, v = forest_grid(qmatrix.shape[1], qmatrix.shape[2], max_side)
    return np.asarray(qmatrix[:, r][:, :, v], np.float64).reshape(len(qmatrix), -1)


class ForestModel:
    """Random forest regression of cycle life on the (subsampled) capacity matrix; seeded."""

    def __init__(self, n_estimators: int = 300, seed: int = 0, max_side: int = 20):
        self.n_estimators, self.seed, self.max_side = n_estimators, seed, max_side

    def fit(self, qmatrix: np.ndarray, life: np.ndarray, censored: np.ndarray | None = None) -> "ForestModel":
        from sklearn.ensemble import RandomForestRegressor

        q, life = _uncensored(qmatrix, life, censored, "random forest")
        self.model_ = RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1)
        self.model_.fit(forest_features(q, self.max_side), life)
        return self

    def predict(self, qmatrix: np.ndarray) -> np.ndarray:
        return self.model_.predict(forest_features(qmatrix, self.max_side))


class MeanCurveModel:
    """Every cell gets the training cells' mean life (uncensored cells) and, when fitted with the curves,
    their mean SOH curve (pointwise mean of every training record, held after the longest) with the
    median training record length."""

    def fit(self, qmatrix: np.ndarray, life: np.ndarray, censored: np.ndarray | None = None,
            soh: np.ndarray | None = None, valid_len: np.ndarray | None = None) -> "MeanCurveModel":
        import warnings

        _, kept = _uncensored(qmatrix, life, censored, "mean-curve model", need=0)
        self.life_ = float(np.mean(kept)) if len(kept) else float("nan")
        self.curve_, self.length_ = None, None
        if soh is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.asarray(soh), axis=0)
            self.curve_ = mean_sample_curve(mean[None, None, :])[0]
            self.length_ = int(np.median(valid_len))
        return self

    def predict(self, qmatrix: np.ndarray) -> np.ndarray:
        return np.full(len(qmatrix), self.life_)

    def predict_curves(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(soh [n, L] percent, length [n]) -- the mean curve for every cell (fit with ``soh``)."""
        if self.curve_ is None:
            raise ValueError("MeanCurveModel was fitted without curves (pass soh and valid_len to fit)")
        return np.repeat(self.curve_[None], n, axis=0), np.full(n, self.length_)


BASELINES = ("variance_model", "random_forest", "mean_curve")


def fit_baselines(qmatrix: np.ndarray, life: np.ndarray, censored: np.ndarray, seed: int = 0,
                  soh: np.ndarray | None = None, valid_len: np.ndarray | None = None) -> dict:
    """The baselines fitted on the same training cells: ``{"variance_model": VarianceModel,
    "random_forest": ForestModel, "mean_curve": MeanCurveModel}``. The variance model and the forest are
    left out when fewer than 2 training cells are uncensored (the mean curve's life is then NaN or the
    one life)."""
    out = {}
    if int((~np.asarray(censored, bool)).sum()) >= 2:
        out["variance_model"] = VarianceModel().fit(qmatrix, life, censored)
        out["random_forest"] = ForestModel(seed=seed).fit(qmatrix, life, censored)
    out["mean_curve"] = MeanCurveModel().fit(qmatrix, life, censored, soh, valid_len)
    return out
