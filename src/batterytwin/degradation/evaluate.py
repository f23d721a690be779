"""End of life, RUL error, curve error, prediction intervals and their coverage.

End-of-life rule (the same for the truth and for every sampled curve; cycles counted from the first
cycle, one curve point every ``cycles_per_point`` cycles):

- ``"end_of_record"`` (MATR): the cells were stopped at end of life, so the cycle life is the
  record length, ``valid_len * cycles_per_point`` (for a sample: its predicted record length, read
  from the end-of-record channel).
- ``"threshold"`` (HUST, SNL, CRUH, sweeps, user data by default): ``i * cycles_per_point`` for the
  first point ``i`` with SOH <= ``threshold`` (80 %). A record without a crossing is *censored*:
  the truth is only a lower bound, so the cell is left out of RUL RMSE and coverage (counted and
  reported). A sampled curve without a crossing predicts its own record length (a lower bound).
- A record that fills the whole curve (``valid_len == L``) is censored under either rule.

RUL at prediction time = cycle life - the cycles seen by the condition; the offset is the same for
truth and prediction, so RUL RMSE = cycle-life RMSE, in cycles.
"""

from __future__ import annotations

import numpy as np


def cycle_life(soh: np.ndarray, length: np.ndarray, rule: str, cycles_per_point: int,
               threshold: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """Cycle life of curves under ``rule``.

    Args:
        soh: [..., L] percent, NaN after the record; length: [...] record lengths in points.
    Returns:
        (life [...] float64 cycles, censored [...] bool).
    """
    soh = np.asarray(soh, dtype=np.float64)
    length = np.asarray(length)
    L = soh.shape[-1]
    if rule == "end_of_record":
        return length * float(cycles_per_point), length >= L
    if rule != "threshold":
        raise ValueError(f"unknown end-of-life rule {rule!r}")
    inside = np.arange(L) < length[..., None]
    below = inside & (np.nan_to_num(soh, nan=np.inf) <= threshold)
    crossed = below.any(axis=-1)
    first = np.where(crossed, np.argmax(below, axis=-1), length)
    return first * float(cycles_per_point), ~crossed


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


def mean_sample_curve(soh_samples: np.ndarray) -> np.ndarray:
    """Mean over samples [n, S, L] -> [n, L]; where every sample has ended, hold the last mean value."""
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(soh_samples, axis=1)
    out = m.copy()
    for i in range(len(out)):
        finite = np.isfinite(out[i])
        if not finite.any():
            continue
        last = out[i][finite][-1]
        idx = np.where(finite, np.arange(out.shape[1]), 0)
        idx = np.maximum.accumulate(idx)  # forward-fill
        out[i] = np.where(finite, out[i], out[i][idx])
        out[i][~np.isfinite(out[i])] = last
    return out


def curve_rmse(pred_soh: np.ndarray, true_soh: np.ndarray, true_len: np.ndarray) -> float:
    """SOH-curve RMSE in percentage points over the true record points: pred, true [n, L]."""
    inside = np.arange(true_soh.shape[1])[None, :] < np.asarray(true_len)[:, None]
    return rmse(pred_soh, np.nan_to_num(true_soh), inside & np.isfinite(pred_soh))


def mean_curve_predictor(train_soh: np.ndarray, train_len: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The no-information reference: every cell gets the training set's mean curve.

    Returns (soh [n, L] pointwise mean of the training records, held after the longest, and a
    length [n] = median training length).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(train_soh, axis=0)
    mean = mean_sample_curve(mean[None, None, :])[0]
    return np.repeat(mean[None], n, axis=0), np.full(n, int(np.median(train_len)))


# ---------------------------------------------------------------- DiffBatt's convention
def diffbatt_life(soh: np.ndarray, length: np.ndarray, cycles_per_point: int, threshold: float = 80.0) -> np.ndarray:
    """Cycle life as DiffBatt scores it: the curve is padded with 0 % after its record, life is the first
    point with SOH <= ``threshold`` (so a record that ends above it ends its life), and a full-length curve
    that never crosses is scored at ``L * cycles_per_point`` (2560 cycles for the splits). No cell is
    censored: every cell is scored. soh [..., L], length [...] -> life [...] float64 cycles."""
    soh = np.asarray(soh, np.float64)
    L = soh.shape[-1]
    padded = np.where(np.arange(L) < np.asarray(length)[..., None], np.nan_to_num(soh, nan=0.0), 0.0)
    below = padded <= threshold
    return np.where(below.any(axis=-1), np.argmax(below, axis=-1), L) * float(cycles_per_point)


# ---------------------------------------------------------------- censoring
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


# ---------------------------------------------------------------- conformal intervals
def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile of calibration scores: the ``ceil((n + 1) level)``-th smallest of the ``n``
    scores (numpy; no conformal library is installed), i.e. ``np.quantile(scores, ceil((n+1) level) / n,
    method="higher")``. Infinite when ``ceil((n + 1) level) > n`` (too few calibration cells for the level)."""
    s = np.sort(np.asarray(scores, float))
    n = len(s)
    k = int(np.ceil((n + 1) * level))
    return float(s[k - 1]) if 1 <= k <= n else float("inf")


def cqr_scores(lo: np.ndarray, hi: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Conformalized-quantile-regression scores (Romano et al. 2019) in log10 life:
    ``max(log lo - log y, log y - log hi)``; lives in cycles (> 0)."""
    ly = np.log10(np.maximum(np.asarray(true, float), 1.0))
    return np.maximum(np.log10(np.maximum(lo, 1.0)) - ly, ly - np.log10(np.maximum(hi, 1.0)))


def conformal_interval(lo: np.ndarray, hi: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The CQR interval ``[lo / 10**q, hi * 10**q]`` (q from :func:`conformal_quantile`; q < 0 shrinks it)."""
    if not np.isfinite(q):
        return np.zeros_like(np.asarray(lo, float)), np.full_like(np.asarray(hi, float), np.inf)
    f = 10.0 ** q
    return np.asarray(lo, float) / f, np.asarray(hi, float) * f
