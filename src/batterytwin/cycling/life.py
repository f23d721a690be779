"""The end-of-life rule: one definition of a cell's cycle life for both stages.

Cycles are counted from the first cycle, one curve point every ``cycles_per_point`` cycles.

- ``"end_of_record"`` (MATR): the cells were stopped at end of life, so the cycle life is the
  record length, ``valid_len * cycles_per_point`` (for a sample: its predicted record length).
- ``"threshold"`` (HUST, SNL, CRUH, sweeps, user data by default): ``i * cycles_per_point`` for the
  first point ``i`` with SOH <= ``threshold`` (:data:`DEFAULT_THRESHOLD`, 80 %). A record without a
  crossing is *censored*: the truth is only a lower bound, so the cell is left out of RUL RMSE and
  coverage (counted and reported). A sampled curve without a crossing predicts its own record length.
- A record that fills the whole curve (``valid_len == L``) is censored under either rule.

:func:`cycle_life` reads measured (or sampled) records; :func:`first_crossing` reads forecast curves
(which have no record end) at the level :func:`eol_level` gives for the rule: the threshold, or under
``end_of_record`` the median SOH at the end of the training records. :func:`diffbatt_life` is
DiffBatt's scoring convention (no censoring). RUL at prediction time = cycle life - the cycles seen;
the offset is the same for truth and prediction, so RUL RMSE = cycle-life RMSE, in cycles.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EOL_RULES = ("end_of_record", "threshold")
DEFAULT_THRESHOLD = 80.0  # SOH percent of the threshold rule (degradation.sample.threshold, twin.threshold)


def default_eol_rule(path: os.PathLike | str) -> str:
    """DiffBatt splits: MATR records end at end of life; the others are read by threshold."""
    return "end_of_record" if Path(path).name.lower().startswith("matr") else "threshold"


def cycle_life(soh: np.ndarray, length: np.ndarray, rule: str, cycles_per_point: int,
               threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
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


def first_crossing(curves: np.ndarray, level: float, start: int, cycles_per_point: int) -> tuple[np.ndarray, np.ndarray]:
    """(life [...] cycles, crossed [...] bool) of curves [..., H] read from grid point ``start`` on."""
    c = np.asarray(curves, np.float64)
    H = c.shape[-1]
    below = (np.arange(H) >= start) & (np.nan_to_num(c, nan=np.inf) <= level)
    crossed = below.any(axis=-1)
    first = np.where(crossed, np.argmax(below, axis=-1), H)
    return first * float(cycles_per_point), crossed


def eol_level(rule: str, threshold: float, train_soh: np.ndarray, train_len: np.ndarray) -> float:
    """SOH level (percent) whose first crossing is the forecast end of life (module docstring)."""
    if rule == "threshold":
        return float(threshold)
    last = np.asarray(train_soh, np.float64)[np.arange(len(train_len)), np.asarray(train_len) - 1]
    full = np.asarray(train_len) >= train_soh.shape[1]
    return float(np.median(last[~full] if (~full).any() else last))


def diffbatt_life(soh: np.ndarray, length: np.ndarray, cycles_per_point: int,
                  threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Cycle life as DiffBatt scores it: the curve is padded with 0 % after its record, life is the first
    point with SOH <= ``threshold`` (so a record that ends above it ends its life), and a full-length curve
    that never crosses is scored at ``L * cycles_per_point`` (2560 cycles for the splits). No cell is
    censored: every cell is scored. soh [..., L], length [...] -> life [...] float64 cycles."""
    soh = np.asarray(soh, np.float64)
    L = soh.shape[-1]
    padded = np.where(np.arange(L) < np.asarray(length)[..., None], np.nan_to_num(soh, nan=0.0), 0.0)
    below = padded <= threshold
    return np.where(below.any(axis=-1), np.argmax(below, axis=-1), L) * float(cycles_per_point)
