"""Seeded splits of a set of cells: training vs calibration cells.

Both are functions of ``(seed, number of cells)`` only -- no global RNG state, no rank, no clock --
so every rank of a run and every later run agree on them without sharing a file.

- :func:`calibration_split` (diffusion model, and the default for new predictors): ``round(fraction * n)``
  cells held out of training, at least 2 left to train, none when that is below ``min_cells``.
- :func:`calibration_subset` (hybrid twin): at least 2 calibration cells among the usable cells
  (those with a physics fit). Kept as the twin has always drawn it, so its figures do not move.
"""

from __future__ import annotations

import numpy as np


def calibration_split(n: int, fraction: float, seed: int, min_cells: int = 1) -> np.ndarray:
    """Flags [n] of the cells held out for conformal calibration (seeded permutation).

    ``round(fraction * n)`` cells, at least 2 cells left to train; none when that is below ``min_cells``
    (too few to calibrate: better to train on them).
    """
    k = min(int(round(fraction * n)), n - 2)
    if k < max(int(min_cells), 1):
        k = 0
    flags = np.zeros(n, bool)
    if k > 0:
        flags[np.random.default_rng([int(seed), 7]).permutation(n)[:k]] = True
    return flags


def calibration_subset(usable: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, proper-training) cell indices, sorted: ``max(2, round(fraction * len(usable)))``
    of ``usable`` drawn by a permutation seeded with ``seed``."""
    usable = np.asarray(usable, np.int64)
    perm = np.random.default_rng(seed).permutation(usable)
    n_cal = max(2, int(round(fraction * len(usable))))
    return np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
