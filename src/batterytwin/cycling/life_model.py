"""The default predictor of cycle life from the early-cycle capacity matrix: an ensemble of
scikit-learn regressors on log10 life with a cross-conformal interval.

Members (:data:`AVAILABLE`; each fitted on ``log10(life)`` of the uncensored training cells, ``*_cycles``
variants on cycles, i.e. squared error in cycles as the RUL RMSE):

- ``variance``: the Severson variance model (linear in the log10 variance of Q_hi - Q_lo: the
  :class:`~.baselines.VarianceModel` baseline),
- ``forest``: a random forest on the coarse capacity matrix (the :class:`~.baselines.ForestModel`
  baseline's features),
- ``extra_trees``: extremely randomised trees on :func:`~.features.capacity_features`,
- ``boosting``: gradient boosting on the same features,
- ``ridge``: ridge regression (alpha by generalised cross-validation) on the standardised features,
- ``residual``: the hybrid twin's idea applied to data: the variance model's log life plus extra trees
  fitted to its residual (so a member that contains the variance baseline).

Default (:data:`MEMBERS`, ``combine="mean"``): ``ridge`` + ``residual`` + ``extra_trees_cycles``, the
geometric mean of a linear model of the fade features, the physics-law-plus-correction hybrid and a
non-linear tree model. Chosen by cross-validation by cell on the shipped training splits and on the
MATR test files (docs/degradation.md, "Default life predictor"): of the weightings tried, an equal
weight was the most robust; non-negative least-squares stacking of all members (``combine="stack"``)
over-fitted its weights on 30-40 cells (CRUH 88 vs 70 cycles), and ``"shrunk"`` (half stack, half equal)
lies between.

Weights: ``combine="mean"`` equal; ``"stack"``: non-negative weights, no intercept, from regressing the
true log10 life on the members' out-of-fold log10 predictions (``LinearRegression(positive=True)``,
non-negative least squares); ``"shrunk"``: half the normalised stack weights, half equal. Out-of-fold
predictions come from ``folds``-fold ``KFold`` (shuffled with ``seed``; scikit-learn
``cross_val_predict``); the members are then refitted on every training cell. Each member's
out-of-fold RMSE (cycles) and weight stand in :meth:`LifeModel.describe`, so a report can show what the
ensemble is made of and what each part scores alone.

Interval (cross-conformal, Vovk 2015): the ensemble's out-of-fold predictions give one score per
training cell, ``|ln y - ln y_hat|`` (the :func:`~.conformal.interval_scores` of a zero-width interval),
whose split-conformal quantile ``q`` at ``level`` (:func:`~.conformal.conformal_quantile`) makes the
interval ``[y_hat e^-q, y_hat e^q]``.

Censored training cells (a lower bound, not a life) are left out of the fit, as for the baselines.
Deterministic: every random choice comes from ``seed``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from ..errors import InputError
from .baselines import forest_features, variance_feature
from .conformal import conformal_interval, conformal_quantile, interval_scores
from .features import capacity_features

AVAILABLE = ("variance", "forest", "extra_trees", "boosting", "ridge", "residual", "extra_trees_cycles",
             "boosting_cycles", "residual_cycles")
MEMBERS = ("ridge", "residual", "extra_trees_cycles")  # the default (module docstring)
COMBINE = ("mean", "stack", "shrunk")
# the baselines a member contains (its model or its features): a report must say so
CONTAINS = {"variance": "variance_model", "residual": "variance_model", "residual_cycles": "variance_model",
            "forest": "random_forest"}
MIN_CELLS = 6  # fewest uncensored training cells for a cross-validated stack (one fold needs >= 2 to fit)


def _cycles(log_life: np.ndarray) -> np.ndarray:
    return 10.0 ** np.asarray(log_life)


def _log_cycles(life: np.ndarray) -> np.ndarray:
    """log10 of a life in cycles, a regression's prediction below 1 cycle read as 1 cycle."""
    return np.log10(np.maximum(np.asarray(life, np.float64), 1.0))


def _flat(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, np.float64).reshape(len(q), -1)


def _member(name: str, shape: tuple[int, int], seed: int):
    """A scikit-learn regressor of log10 life on the flattened capacity matrix [n, R * V]."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    def on(features):
        return FunctionTransformer(lambda x: features(x.reshape(len(x), *shape)))

    variance = on(lambda q: variance_feature(q)[:, None])
    capacity = on(capacity_features)
    trees = dict(n_estimators=400, min_samples_leaf=2, max_features=0.5, random_state=seed, n_jobs=1)
    if name == "variance":
        return make_pipeline(variance, LinearRegression())
    if name == "forest":
        return make_pipeline(on(forest_features), RandomForestRegressor(n_estimators=300, random_state=seed, n_jobs=1))
    if name == "extra_trees":
        return make_pipeline(capacity, ExtraTreesRegressor(**trees))
    if name == "boosting":
        return make_pipeline(capacity, GradientBoostingRegressor(n_estimators=300, max_depth=2, learning_rate=0.03,
                                                                 subsample=0.7, random_state=seed))
    if name == "ridge":
        return make_pipeline(capacity, StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    if name == "residual":
        return ResidualRegressor(make_pipeline(variance, LinearRegression()),
                                 make_pipeline(capacity, ExtraTreesRegressor(**dict(trees, min_samples_leaf=3))))
    if name.endswith("_cycles"):  # the same member fitted to cycles (squared error in cycles, as RUL RMSE)
        return TransformedTargetRegressor(_member(name[:-len("_cycles")], shape, seed), func=_cycles, inverse_func=_log_cycles,
                                          check_inverse=False)
    raise ValueError(f"unknown life-model member {name!r} (one of {', '.join(AVAILABLE)})")


class ResidualRegressor(RegressorMixin, BaseEstimator):
    """``base`` fitted to y, ``correction`` fitted to what ``base`` leaves: y_hat = base + correction."""

    def __init__(self, base, correction):
        self.base, self.correction = base, correction

    def fit(self, x: np.ndarray, y: np.ndarray) -> "ResidualRegressor":
        from sklearn.base import clone

        self.base_ = clone(self.base).fit(x, y)
        self.correction_ = clone(self.correction).fit(x, y - self.base_.predict(x))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.base_.predict(x) + self.correction_.predict(x)


class LifeModel:
    """Cycle life [cycles] from capacity matrices [n, R, V]: the ensemble of the module docstring.

    Args:
        members: names from :data:`AVAILABLE`.
        combine: ``"mean"``, ``"stack"`` or ``"shrunk"`` (module docstring).
        folds: cross-validation folds for the weights and the interval scores.
        level: central coverage of :meth:`predict_interval`.
        seed: every random choice (folds, trees).
    """

    def __init__(self, members: tuple[str, ...] = MEMBERS, folds: int = 5, level: float = 0.9, seed: int = 0,
                 combine: str = "mean"):
        self.members, self.folds, self.level, self.seed = tuple(members), int(folds), float(level), int(seed)
        unknown = [m for m in self.members if m not in AVAILABLE]
        if unknown or not self.members or len(set(self.members)) != len(self.members):
            raise ValueError(f"life model members must be distinct names from {AVAILABLE}, got {self.members}")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        self.combine = combine

    def fit(self, qmatrix: np.ndarray, life: np.ndarray, censored: np.ndarray | None = None) -> "LifeModel":
        from sklearn.base import clone
        from sklearn.model_selection import KFold, cross_val_predict

        q, life = np.asarray(qmatrix, np.float64), np.asarray(life, np.float64)
        if censored is not None:
            keep = ~np.asarray(censored, bool)
            q, life = q[keep], life[keep]
        if len(life) < MIN_CELLS:
            raise InputError(f"life model: {len(life)} uncensored training cell(s), at least {MIN_CELLS} needed")
        self.shape_ = tuple(int(s) for s in q.shape[1:])
        x, y = _flat(q), np.log10(np.maximum(life, 1.0))
        folds = KFold(min(self.folds, len(y)), shuffle=True, random_state=self.seed)
        protos = {m: _member(m, self.shape_, self.seed) for m in self.members}
        oof = np.column_stack([cross_val_predict(protos[m], x, y, cv=folds) for m in self.members])
        self.oof_log_, self.y_log_ = oof, y  # out-of-fold log10 predictions [n, members] and the truth
        self.weights_ = self._weights(oof, y)
        self.fitted_ = {m: clone(protos[m]).fit(x, y) for m in self.members}
        oof_life = 10.0 ** (oof @ self.weights_)
        self.scores_ = interval_scores(oof_life, oof_life, life)
        self.q_ = conformal_quantile(self.scores_, self.level)
        self.members_ = {m: {"weight": float(w), "cv_rul_rmse_cycles": float(np.sqrt(np.mean((10 ** oof[:, j] - life) ** 2)))}
                         for j, (m, w) in enumerate(zip(self.members, self.weights_))}
        self.cv_rul_rmse_cycles_ = float(np.sqrt(np.mean((oof_life - life) ** 2)))
        self.n_train_ = len(life)
        return self

    def _weights(self, oof: np.ndarray, y: np.ndarray) -> np.ndarray:
        from sklearn.linear_model import LinearRegression

        uniform = np.full(oof.shape[1], 1.0 / oof.shape[1])
        if self.combine == "mean":
            return uniform
        nnls = LinearRegression(positive=True, fit_intercept=False).fit(oof, y).coef_
        if self.combine == "stack":
            return nnls
        return 0.5 * nnls / max(float(nnls.sum()), 1e-12) + 0.5 * uniform

    def _log_members(self, qmatrix: np.ndarray) -> np.ndarray:
        q = np.asarray(qmatrix, np.float64)
        if tuple(q.shape[1:]) != self.shape_:
            raise InputError(f"life model: capacity matrix is {tuple(q.shape[1:])}, the model was fitted on {self.shape_}")
        x = _flat(q)
        return np.column_stack([self.fitted_[m].predict(x) for m in self.members])

    def predict(self, qmatrix: np.ndarray) -> np.ndarray:
        """Point prediction of cycle life [n]."""
        return 10.0 ** (self._log_members(qmatrix) @ self.weights_)

    def predict_members(self, qmatrix: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's own prediction of cycle life: {name: [n]}."""
        return dict(zip(self.members, (10.0 ** self._log_members(qmatrix)).T))

    def predict_interval(self, qmatrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(point, lo, hi) [n] cycles: the cross-conformal interval at ``level`` (``[0, inf)`` with too few cells)."""
        point = self.predict(qmatrix)
        lo, hi = conformal_interval(point, point, self.q_)
        return point, lo, hi

    def describe(self) -> dict:
        """What the fitted ensemble is made of (for metrics JSON and the report)."""
        return {"method": f"ensemble of scikit-learn regressors on log10 life, weights: {self.combine} (out-of-fold "
                          f"predictions, {self.folds}-fold KFold); cross-conformal interval on ln life",
                "combine": self.combine,
                "members": self.members_, "folds": self.folds, "seed": self.seed, "n_train_cells": self.n_train_,
                "cv_rul_rmse_cycles": self.cv_rul_rmse_cycles_, "interval_level": self.level,
                "interval_q_ln": self.q_ if np.isfinite(self.q_) else None,
                "contains_baselines": sorted({CONTAINS[m] for m in self.members if m in CONTAINS})}
