"""Scores of life and curve predictions: RMSE, interval coverage, censoring-aware scores, Harrell's C-index.

Every function takes plain arrays (lives in cycles, SOH in percent) and a ``keep`` mask of the cells
scored; lives and censoring flags come from :func:`~.life.cycle_life`.
"""

from __future__ import annotations

import numpy as np


def interval_summary(life_samples: np.ndarray, level: float = 0.9) -> dict[str, np.ndarray]:
    """Point prediction (median) and the central ``level`` interval of sampled lives [n, S]."""
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {"median": np.median(life_samples, axis=1), "lo": np.quantile(life_samples, lo, axis=1),
            "hi": np.quantile(life_samples, hi, axis=1)}


def rmse(pred: np.ndarray, true: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Root-mean-square error over ``keep`` (all when None); NaN when nothing is kept."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    keep = np.ones(pred.shape, bool) if keep is None else np.asarray(keep, bool)
    return float(np.sqrt(np.mean((pred[keep] - true[keep]) ** 2))) if keep.any() else float("nan")


def coverage(lo: np.ndarray, hi: np.ndarray, true: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Fraction of ``true`` inside [lo, hi] over ``keep``."""
    inside = (np.asarray(true) >= lo) & (np.asarray(true) <= hi)
    keep = np.ones(inside.shape, bool) if keep is None else np.asarray(keep, bool)
    return float(inside[keep].mean()) if keep.any() else float("nan")


def curve_rmse(pred_soh: np.ndarray, true_soh: np.ndarray, true_len: np.ndarray) -> float:
    """SOH-curve RMSE in percentage points over the true record points: pred, true [n, L]."""
    inside = np.arange(true_soh.shape[1])[None, :] < np.asarray(true_len)[:, None]
    return rmse(pred_soh, np.nan_to_num(true_soh), inside & np.isfinite(pred_soh))


def censoring_scores(pred: np.ndarray, true: np.ndarray, censored: np.ndarray,
                     keep: np.ndarray | None = None) -> dict:
    """What the RUL RMSE (uncensored cells only) does not see, over the cells flagged ``keep``.

    For a censored cell ``true`` is a lower bound of its life: a prediction below it is an error of
    ``bound - pred`` cycles, one above it is not known to be wrong. Returns:

    - ``n_censored``, ``n_censored_pred_below_bound``;
    - ``censored_shortfall_rmse_cycles``: RMSE of ``max(bound - pred, 0)`` over the censored cells;
    - ``censoring_aware_rmse_cycles``: over every kept cell, error ``pred - true`` for uncensored cells
      and ``max(bound - pred, 0)`` for censored ones;
    - ``c_index``: Harrell's concordance of the predicted lives with the (censored) true lives.
    """
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    censored = np.asarray(censored, bool)
    keep = np.ones(pred.shape, bool) if keep is None else np.asarray(keep, bool)
    cens = keep & censored
    short = np.maximum(true - pred, 0.0)
    err = np.where(censored, short, pred - true)
    return {"n_censored": int(cens.sum()),
            "n_censored_pred_below_bound": int((cens & (pred < true)).sum()),
            "censored_shortfall_rmse_cycles": rmse(short, np.zeros_like(short), cens),
            "censoring_aware_rmse_cycles": rmse(err, np.zeros_like(err), keep),
            "c_index": concordance_index(true[keep], pred[keep], ~censored[keep])}


def concordance_index(time: np.ndarray, pred: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C-index for right-censored lives (numpy; neither scikit-survival nor lifelines is installed).

    A pair (i, j) is comparable when ``time[i] < time[j]`` and cell i's end of life was observed
    (``event[i]``); it is concordant when ``pred[i] < pred[j]``, half-concordant when the predictions tie.
    Pairs with tied times are not compared. C = (concordant + 0.5 ties) / comparable; NaN with no
    comparable pair. Higher predicted life = longer life (no sign flip).
    """
    time, pred = np.asarray(time, float), np.asarray(pred, float)
    event = np.asarray(event, bool)
    comparable = (time[:, None] < time[None, :]) & event[:, None]
    n = comparable.sum()
    if n == 0:
        return float("nan")
    conc = (pred[:, None] < pred[None, :]) & comparable
    ties = (pred[:, None] == pred[None, :]) & comparable
    return float((conc.sum() + 0.5 * ties.sum()) / n)
