"""Curve sets of real (or simulated) cells: SOH curves + early-cycle capacity matrices.

A :class:`CurveSet` holds ``n`` cells:

- ``soh`` float32 [n, L]: state of health in percent of the first cycle's discharge capacity, one
  point every ``cycles_per_point`` cycles (point ``i`` = cycle ``i * cycles_per_point`` counted from
  the first cycle), NaN after the end of the record (``valid_len``).
- ``qmatrix`` float32 [n, R, V]: the condition, the early-cycle capacity matrix: row ``k`` is
  ``Q_{k+1}(V) - Q_base(V)``, discharge capacity on a common voltage grid of cycle ``k + 1`` minus
  that of a base cycle (``R`` early cycles, ``V`` voltages).
- ``eol_rule``: how the true end of life is read from the curve (:mod:`.life`):
  ``"end_of_record"`` (MATR: cells stopped at 80 % of nominal capacity) or ``"threshold"``
  (first point with SOH <= threshold; no crossing = censored).

Loaders: :mod:`.loaders` (DiffBatt ``.npz`` splits, the generic user format); cellsim sweeps are read
by :func:`batterytwin.degradation.data.load_sweep` (only the diffusion stage trains on them).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .life import EOL_RULES

@dataclass
class CurveSet:
    """SOH curves and capacity matrices of ``n`` cells (shapes in the module docstring)."""

    soh: np.ndarray
    valid_len: np.ndarray
    qmatrix: np.ndarray
    cycles_per_point: int = 10
    eol_rule: str = "threshold"
    names: list[str] = field(default_factory=list)
    source: str = ""
    excluded: list[str] = field(default_factory=list)  # cells the loader left out, with the reason

    def __post_init__(self) -> None:
        self.soh = np.asarray(self.soh, dtype=np.float32)
        self.valid_len = np.asarray(self.valid_len, dtype=np.int64)
        self.qmatrix = np.asarray(self.qmatrix, dtype=np.float32)
        if not self.names:
            self.names = [f"cell{i}" for i in range(len(self.soh))]
        where = self.source or "curve set"
        if self.soh.ndim != 2 or self.qmatrix.ndim != 3:
            raise InputError(f"{where}: soh must be [cells, points] and qmatrix [cells, rows, voltages], "
                             f"got {self.soh.shape} and {self.qmatrix.shape}")
        if not (len(self.soh) == len(self.valid_len) == len(self.qmatrix) == len(self.names)):
            raise InputError(f"{where}: soh, valid_len, qmatrix and names disagree on the number of cells "
                             f"({len(self.soh)}, {len(self.valid_len)}, {len(self.qmatrix)}, {len(self.names)})")
        if len(self.soh) == 0:
            raise InputError(f"{where}: empty dataset (no cells)")
        if self.eol_rule not in EOL_RULES:
            raise InputError(f"{where}: eol_rule must be one of {EOL_RULES}, got {self.eol_rule!r}")
        if int(self.cycles_per_point) < 1:
            raise InputError(f"{where}: cycles_per_point must be >= 1, got {self.cycles_per_point}")
        if np.any(self.valid_len < 2) or np.any(self.valid_len > self.soh.shape[1]):
            raise InputError(f"{where}: valid_len must lie in [2, {self.soh.shape[1]}] "
                             f"(got {int(self.valid_len.min())}..{int(self.valid_len.max())})")
        if not np.all(np.isfinite(self.qmatrix)):
            raise InputError(f"{where}: qmatrix contains NaN or inf")
        idx = np.arange(self.soh.shape[1])[None, :]
        inside = idx < self.valid_len[:, None]
        if not np.all(np.isfinite(self.soh[inside])):
            raise InputError(f"{where}: soh has NaN/inf before the end of a record (valid_len)")
        check_soh_percent(self.soh, self.valid_len, self.names, where)

    def __len__(self) -> int:
        return len(self.soh)

    def curve_digest(self, i: int) -> str:
        """SHA-256 of cell ``i``'s recorded SOH curve (float32, up to ``valid_len``) and capacity matrix."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.soh[i, :self.valid_len[i]], np.float32).tobytes())
        h.update(np.ascontiguousarray(self.qmatrix[i], np.float32).tobytes())
        return h.hexdigest()

    def digest(self) -> str:
        """SHA-256 identifying the cells in order (their curves and capacity matrices): a store of
        predictions records it, so that a reader can tell it scores this very dataset."""
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(self.curve_digest(i).encode())
        return h.hexdigest()

    @property
    def curve_length(self) -> int:
        return int(self.soh.shape[1])

    @property
    def condition_shape(self) -> tuple[int, int]:
        return int(self.qmatrix.shape[1]), int(self.qmatrix.shape[2])

    def subset(self, index: Sequence[int] | np.ndarray) -> "CurveSet":
        index = np.asarray(index, dtype=np.int64)
        return CurveSet(self.soh[index], self.valid_len[index], self.qmatrix[index], self.cycles_per_point,
                        self.eol_rule, [self.names[i] for i in index], self.source, list(self.excluded))

    def check_compatible(self, curve_length: int, condition_shape: Sequence[int], cycles_per_point: int,
                         what: str = "model") -> None:
        """Raise :class:`InputError` unless curves and capacity matrices match the ``what`` shapes."""
        where = self.source or "curve set"
        if self.curve_length != int(curve_length):
            raise InputError(f"{where}: curves have {self.curve_length} points, the {what} expects "
                             f"{curve_length} (curves of wrong length)")
        if tuple(self.condition_shape) != tuple(int(c) for c in condition_shape):
            raise InputError(f"{where}: capacity matrix is {self.condition_shape} (rows, voltages), the {what} "
                             f"expects {tuple(condition_shape)} (capacity matrix shape mismatch)")
        if int(self.cycles_per_point) != int(cycles_per_point):
            raise InputError(f"{where}: {self.cycles_per_point} cycles per point, the {what} expects "
                             f"{cycles_per_point}")


SOH_FIRST_RANGE = (80.0, 120.0)  # percent of the first cycle's capacity: the first point is ~100
SOH_MAX = 150.0  # no cell gains half its capacity
SOH_FRACTION_MAX = 1.5  # every value at most this: a 0-1 fraction, not percent


def check_soh_percent(soh: np.ndarray, valid_len: np.ndarray, names: Sequence[str], where: str) -> None:
    """Refuse SOH curves that are not in percent of the first cycle: a 0-1 fraction, values above
    :data:`SOH_MAX` (a 1e6 % typo, capacity in mAh), negative values, or a first point outside
    :data:`SOH_FIRST_RANGE` (one line naming the first offending cell)."""
    inside = np.arange(soh.shape[1])[None, :] < valid_len[:, None]
    rec = np.where(inside, soh, np.nan)
    with np.errstate(invalid="ignore"):
        top = np.nanmax(rec, axis=1)
        low = np.nanmin(rec, axis=1)
    if np.all(top <= SOH_FRACTION_MAX):
        raise InputError(f"{where}: soh is at most {float(np.max(top)):.4g} in every cell: a 0-1 fraction? SOH must be "
                         "in percent of the first cycle's capacity (100 at the start)")
    for i in range(len(soh)):
        problem = None
        if top[i] > SOH_MAX:
            problem = f"reaches {float(top[i]):.6g} % (> {SOH_MAX:g} %)"
        elif low[i] < 0:
            problem = f"goes negative ({float(low[i]):.6g} %)"
        elif not SOH_FIRST_RANGE[0] <= soh[i, 0] <= SOH_FIRST_RANGE[1]:
            problem = (f"starts at {float(soh[i, 0]):.6g} % (expected ~100, within {SOH_FIRST_RANGE[0]:g}.."
                       f"{SOH_FIRST_RANGE[1]:g})")
        if problem:
            raise InputError(f"{where}: cell {names[i]}: soh {problem}: SOH must be in percent of the first cycle's "
                             "capacity")


def check_distinct_cells(sets: dict[str, "CurveSet | None"]) -> None:
    """Refuse a cell given twice, within one role or across roles (``{"--train": cs, "--test": cs}``):
    the same id, or the same curve and capacity matrix under another id. A duplicate lands in both
    sides of a cross-validation fold (or in training and test) and inflates every score.

    Raises:
        InputError: one line naming both occurrences.
    """
    seen_id: dict[str, str] = {}
    seen_curve: dict[str, str] = {}
    for role, cs in sets.items():
        if cs is None:
            continue
        for i, name in enumerate(cs.names):
            here = f"{role} cell {name}"
            digest = cs.curve_digest(i)
            if name in seen_id:
                raise InputError(f"{cs.source}: {here} is given twice (also {seen_id[name]}): each cell once, or the "
                                 "cross-validation and test scores are inflated by copies")
            if digest in seen_curve:
                raise InputError(f"{cs.source}: {here} has the same SOH curve and capacity matrix as "
                                 f"{seen_curve[digest]}: a duplicated cell (each cell once, or the scores are inflated "
                                 "by copies)")
            seen_id[name] = here
            seen_curve[digest] = here


def concat(sets: Sequence[CurveSet]) -> CurveSet:
    """One set from several (same curve length, capacity-matrix shape, spacing and EOL rule)."""
    if not sets:
        raise InputError("no training data given (empty dataset): pass --sweep, --npz or --user-dir")
    first = sets[0]
    for s in sets[1:]:
        s.check_compatible(first.curve_length, first.condition_shape, first.cycles_per_point,
                           what=f"first dataset ({first.source})")
        if s.eol_rule != first.eol_rule:
            raise InputError(f"{s.source}: end-of-life rule {s.eol_rule!r} differs from {first.source} "
                             f"({first.eol_rule!r}); train on one rule at a time")
    return CurveSet(np.concatenate([s.soh for s in sets]), np.concatenate([s.valid_len for s in sets]),
                    np.concatenate([s.qmatrix for s in sets]), first.cycles_per_point, first.eol_rule,
                    [f"{Path(s.source).name}:{n}" for s in sets for n in s.names],
                    "+".join(s.source for s in sets), [e for s in sets for e in s.excluded])


def drop_empty_conditions(cs: CurveSet) -> CurveSet:
    """Leave out cells whose capacity matrix is all zeros (no early-cycle information: three SNL cells),
    named in ``excluded`` with the reason, and logged. Every cell empty is an error (empty dataset)."""
    empty = np.all(cs.qmatrix == 0, axis=(1, 2))
    if not empty.any():
        return cs
    if empty.all():
        raise InputError(f"{cs.source}: every capacity matrix is all zeros (no condition): empty dataset")
    names = [cs.names[i] for i in np.flatnonzero(empty)]
    logging.getLogger(__name__).warning("%s: %d cell(s) with an all-zero capacity matrix left out: %s", cs.source,
                                        len(names), ", ".join(names))
    out = cs.subset(np.flatnonzero(~empty))
    out.excluded = list(cs.excluded) + [f"{n}: capacity matrix all zeros" for n in names]
    return out


def resample_curve(cycles: np.ndarray, soh: np.ndarray, curve_length: int,
                   cycles_per_point: int) -> tuple[np.ndarray, int]:
    """SOH per cycle -> fixed grid ``cycle_0 + i * cycles_per_point`` (linear interpolation).

    Args:
        cycles: [m] increasing cycle numbers; soh: [m] percent.
    Returns:
        (curve [curve_length] with NaN after the record, valid_len).
    """
    grid = cycles[0] + cycles_per_point * np.arange(curve_length)
    valid = int(np.sum(grid <= cycles[-1]))
    out = np.full(curve_length, np.nan, np.float32)
    out[:valid] = np.interp(grid[:valid], cycles, soh)
    return out, valid


def mean_sample_curve(soh_samples: np.ndarray) -> np.ndarray:
    """Mean over samples [n, S, L] -> [n, L]; where every sample has ended, hold the last mean value."""
    import warnings

    with np.errstate(all="ignore"):
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


