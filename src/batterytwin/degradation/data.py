"""Capacity-fade curve datasets: SOH curves + early-cycle capacity matrices, and their loaders.

A :class:`CurveSet` holds ``n`` cells:

- ``soh`` float32 [n, L]: state of health in percent of the first cycle's discharge capacity, one
  point every ``cycles_per_point`` cycles (point ``i`` = cycle ``i * cycles_per_point`` counted from
  the first cycle), NaN after the end of the record (``valid_len``).
- ``qmatrix`` float32 [n, R, V]: the condition, the early-cycle capacity matrix: row ``k`` is
  ``Q_{k+1}(V) - Q_base(V)``, discharge capacity on a common voltage grid of cycle ``k + 1`` minus
  that of a base cycle (``R`` early cycles, ``V`` voltages).
- ``eol_rule``: how the true end of life is read from the curve (see :mod:`.evaluate`):
  ``"end_of_record"`` (MATR: cells stopped at 80 % of nominal capacity) or ``"threshold"``
  (first point with SOH <= threshold; no crossing = censored).

Sources: ``sweep.zarr`` from cellsim (:func:`load_sweep`), the DiffBatt benchmark splits
(:func:`load_npz_split`) and the generic user format (:func:`load_user_dir`, see
``docs/degradation.md``). No loader unpickles anything.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contracts import STATUS_OK, SWEEP_SCHEMA, open_group
from ..errors import InputError

EOL_RULES = ("end_of_record", "threshold")
NPZ_KEYS = ("soh", "valid_len", "qmatrix")


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

    def __len__(self) -> int:
        return len(self.soh)

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
    import logging

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


def default_eol_rule(path: os.PathLike | str) -> str:
    """DiffBatt splits: MATR records end at end of life; the others are read by threshold."""
    return "end_of_record" if Path(path).name.lower().startswith("matr") else "threshold"


CHECKSUMS = "SHA256SUMS"


def verify_checksum(path: os.PathLike | str) -> bool:
    """Check ``path`` against the ``SHA256SUMS`` file of its folder (``sha256sum`` format), if it is listed.

    Returns:
        True when the file is listed and matches; False when there is no list or it does not name the file.

    Raises:
        InputError: the digest differs (one line naming the file and both digests).
    """
    import hashlib

    p = Path(path)
    sums = p.parent / CHECKSUMS
    if not sums.is_file():
        return False
    expected = None
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition(" ")
        if name.strip().lstrip("*") == p.name:
            expected = digest.lower()
    if expected is None:
        return False
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise InputError(f"{p}: SHA-256 {h.hexdigest()[:16]}... does not match {sums} ({expected[:16]}...): the file "
                         "is corrupt or was changed (restore it, e.g. git checkout data/cycling)")
    return True


def load_npz_split(path: os.PathLike | str, eol_rule: str | None = None) -> CurveSet:
    """Load one DiffBatt benchmark split (``soh``, ``valid_len``, ``qmatrix``, ``cycles_per_point``).

    A file listed in the ``SHA256SUMS`` of its folder (as in the shipped ``data/cycling``) is checked
    against it first (:func:`verify_checksum`).

    Returns:
        CurveSet with soh [cells, 256] in percent and qmatrix [cells, rows, 100].
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file (DiffBatt split .npz)")
    verify_checksum(p)
    try:
        with np.load(p, allow_pickle=False) as d:
            missing = [k for k in NPZ_KEYS if k not in d.files]
            if missing:
                raise InputError(f"{p}: missing array(s) {', '.join(missing)} (need {', '.join(NPZ_KEYS)})")
            arrays = {k: d[k] for k in d.files}
    except InputError:
        raise
    except (ValueError, OSError) as exc:
        raise InputError(f"{p}: not a readable .npz without pickles ({exc})") from None
    cpp = int(arrays["cycles_per_point"]) if "cycles_per_point" in arrays else 10
    soh = arrays["soh"].astype(np.float32)
    valid = arrays["valid_len"].astype(np.int64)
    if soh.ndim == 2:  # NaN padding is the contract; make it so even if the file padded otherwise
        soh = np.where(np.arange(soh.shape[1])[None, :] < valid[:, None], soh, np.nan)
    return drop_empty_conditions(CurveSet(soh, valid, arrays["qmatrix"], cpp, eol_rule or default_eol_rule(p),
                                          [f"{p.stem}[{i}]" for i in range(len(soh))], str(p)))


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


def load_sweep(path: os.PathLike | str, curve_length: int = 256, cycles_per_point: int = 10,
               base_row: int = 0, statuses: Sequence[int] = (STATUS_OK,)) -> CurveSet:
    """Curves and capacity matrices of the conditions of a cellsim ``sweep.zarr``.

    Uses ``soh`` [n, n_cycles] and ``qv_capacity_Ah`` [n, n_early, n_v]; the capacity matrix is
    ``Q_k(V) - Q_base(V)`` with ``base_row`` the 0-based early cycle used as the base. Conditions whose
    ``status`` is not in ``statuses`` are left out (the names keep their sweep index).

    Returns:
        CurveSet (``eol_rule="threshold"``; names ``"cond<i>"``).
    """
    p = Path(path)
    g = open_group(p, "sweep store", arrays=("soh", "qv_capacity_Ah", "status"), schema=SWEEP_SCHEMA)
    soh_all = np.asarray(g["soh"][...], dtype=np.float64)
    qv = np.asarray(g["qv_capacity_Ah"][...], dtype=np.float64)
    status = np.asarray(g["status"][...])
    if soh_all.ndim != 2 or qv.ndim != 3 or len(qv) != len(soh_all) or len(status) != len(soh_all):
        raise InputError(f"{p}: soh {soh_all.shape}, qv_capacity_Ah {qv.shape}, status {status.shape} do not "
                         f"describe the same conditions")
    if not 0 <= base_row < qv.shape[1]:
        raise InputError(f"{p}: base_row {base_row} outside the {qv.shape[1]} early cycles of qv_capacity_Ah")
    keep, curves, lens = [], [], []
    for i in range(len(soh_all)):
        if int(status[i]) not in statuses:
            continue
        finite = np.isfinite(soh_all[i])
        n_ok = int(np.argmin(finite)) if not finite.all() else len(finite)  # leading finite cycles
        if n_ok < max(2, qv.shape[1]) or not np.all(np.isfinite(qv[i])):
            continue  # too short to give a capacity matrix and a curve
        curve, valid = resample_curve(np.arange(n_ok, dtype=np.float64), soh_all[i, :n_ok], curve_length,
                                      cycles_per_point)
        if valid < 2:
            continue
        keep.append(i)
        curves.append(curve)
        lens.append(valid)
    if not keep:
        raise InputError(f"{p}: no usable condition (status in {list(statuses)}, at least "
                         f"{max(2, qv.shape[1])} cycles): empty dataset")
    q = qv[keep] - qv[keep][:, base_row:base_row + 1, :]
    return CurveSet(np.stack(curves), np.asarray(lens), q.astype(np.float32), cycles_per_point, "threshold",
                    [f"cond{i}" for i in keep], str(p))


def sweep_indices(cs: CurveSet) -> np.ndarray:
    """Sweep condition index of each cell of a :func:`load_sweep` set."""
    return np.array([int(n.split(":")[-1].removeprefix("cond")) for n in cs.names], dtype=np.int64)


# ---------------------------------------------------------------- generic user format
def _read_csv(path: Path, columns: Sequence[str]) -> np.ndarray:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(line for line in f if line.strip() and not line.startswith("#")))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if not rows:
        raise InputError(f"{path}: empty CSV file")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"{path}: CSV header lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
    cols = [header.index(c) for c in columns]
    try:
        data = np.array([[float(r[c]) for c in cols] for r in rows[1:]], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise InputError(f"{path}: non-numeric or missing value ({exc})") from None
    if len(data) == 0 or not np.all(np.isfinite(data)):
        raise InputError(f"{path}: no data rows, or NaN/inf values")
    return data.reshape(-1, len(columns))


def _read_qv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-cycle Q(V): returns (voltage_V [V], capacity_Ah [cycles, V]) ordered by cycle."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as d:
                if "voltage_V" not in d.files or "capacity_Ah" not in d.files:
                    raise InputError(f"{path}: needs arrays 'voltage_V' [V] and 'capacity_Ah' [cycles, V]")
                v, q = d["voltage_V"].astype(np.float64), d["capacity_Ah"].astype(np.float64)
        except InputError:
            raise
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npz without pickles ({exc})") from None
        if v.ndim != 1 or q.ndim != 2 or q.shape[1] != len(v):
            raise InputError(f"{path}: capacity_Ah must be [cycles, {len(v)}] to match voltage_V, got {q.shape}")
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(v))):
            raise InputError(f"{path}: NaN/inf in voltage_V or capacity_Ah")
        return v, q
    data = _read_csv(path, ("cycle", "voltage_V", "capacity_Ah"))
    cycles = np.unique(data[:, 0])
    v = data[data[:, 0] == cycles[0], 1]
    q = []
    for c in cycles:
        rows = data[data[:, 0] == c]
        if len(rows) != len(v) or not np.allclose(rows[:, 1], v):
            raise InputError(f"{path}: cycle {c:g} has a different voltage grid from cycle {cycles[0]:g} "
                             f"(use one common grid)")
        q.append(rows[:, 2])
    return v, np.stack(q)


def load_user_dir(path: os.PathLike | str, curve_length: int = 256, cycles_per_point: int = 10,
                  n_early: int | None = None, base_row: int = 0, eol_rule: str = "threshold") -> CurveSet:
    """Cells in the generic format: ``<cell>.capacity.csv`` + ``<cell>.qv.npz`` (or ``<cell>.qv.csv``).

    ``<cell>.capacity.csv``: columns ``cycle,capacity_Ah`` (increasing cycles). ``<cell>.qv.npz``:
    ``voltage_V`` [V] and ``capacity_Ah`` [cycles, V] (row k = cycle k+1, the first ``n_early`` rows are
    used); or ``<cell>.qv.csv`` in long form ``cycle,voltage_V,capacity_Ah``. Every cell must share the
    voltage grid length and have at least ``n_early`` Q(V) cycles.

    Returns:
        CurveSet with qmatrix [cells, n_early, V] = Q_k(V) - Q_base(V).
    """
    d = Path(path)
    if not d.is_dir():
        raise InputError(f"{d}: no such directory (generic cycling data)")
    caps = sorted(d.glob("*.capacity.csv"))
    if not caps:
        raise InputError(f"{d}: no '<cell>.capacity.csv' files (empty dataset)")
    curves, lens, qs, names = [], [], [], []
    for cap_file in caps:
        cell = cap_file.name.removesuffix(".capacity.csv")
        qv_file = next((f for f in (d / f"{cell}.qv.npz", d / f"{cell}.qv.csv") if f.is_file()), None)
        if qv_file is None:
            raise InputError(f"{cap_file}: no matching {cell}.qv.npz or {cell}.qv.csv (per-cycle Q(V))")
        data = _read_csv(cap_file, ("cycle", "capacity_Ah"))
        cyc, cap = data[:, 0], data[:, 1]
        if np.any(np.diff(cyc) <= 0) or cap[0] <= 0:
            raise InputError(f"{cap_file}: cycles must increase and the first capacity must be > 0")
        curve, valid = resample_curve(cyc, 100.0 * cap / cap[0], curve_length, cycles_per_point)
        if valid < 2:
            raise InputError(f"{cap_file}: record shorter than two curve points ({cycles_per_point} cycles apart)")
        _, q = _read_qv(qv_file)
        rows = n_early or len(q)
        if len(q) < rows or not 0 <= base_row < rows:
            raise InputError(f"{qv_file}: has {len(q)} Q(V) cycles, need {rows} (n_early) with base row {base_row}")
        curves.append(curve)
        lens.append(valid)
        qs.append((q[:rows] - q[base_row]).astype(np.float32))
        names.append(cell)
    shapes = {q.shape for q in qs}
    if len(shapes) > 1:
        raise InputError(f"{d}: cells have different capacity-matrix shapes {sorted(shapes)} (capacity matrix "
                         f"shape mismatch: set n_early and use one voltage grid)")
    return drop_empty_conditions(CurveSet(np.stack(curves), np.asarray(lens), np.stack(qs), cycles_per_point,
                                          eol_rule, names, str(d)))


# ---------------------------------------------------------------- model encoding
def encode_curves(soh: np.ndarray, valid_len: np.ndarray, center: float, scale: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """SOH curves -> the diffusion model's two-channel target and loss weights.

    Channel 0: ``(soh - center) / scale``, held at its last value after the record (the padding is
    masked out of the loss: it carries no information). Channel 1: +1 while the record lasts, -1 after
    (not masked: this is how the model learns where a record ends).

    Args:
        soh: [n, L] percent (NaN after the record); valid_len: [n].
    Returns:
        x0 float32 [n, 2, L], weight float32 [n, 2, L].
    """
    n, L = soh.shape
    inside = np.arange(L)[None, :] < np.asarray(valid_len)[:, None]
    last = soh[np.arange(n), np.asarray(valid_len) - 1]
    filled = np.where(inside, soh, last[:, None])
    x0 = np.stack([(filled - center) / scale, np.where(inside, 1.0, -1.0)], axis=1).astype(np.float32)
    weight = np.stack([inside, np.ones_like(inside)], axis=1).astype(np.float32)
    return x0, weight


def decode_curves(x: np.ndarray, center: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Model samples [..., 2, L] -> (soh [..., L] percent with NaN after the predicted end, length [...]).

    The predicted record length is the number of points whose end-of-record channel is positive
    (robust to an isolated sign flip, and equal to the first negative index for a clean step).
    """
    L = x.shape[-1]
    length = np.clip(np.sum(x[..., 1, :] > 0, axis=-1), 1, L)
    soh = x[..., 0, :] * scale + center
    soh = np.where(np.arange(L) < length[..., None], soh, np.nan).astype(np.float32)
    return soh, length.astype(np.int64)


def held_out(cs: CurveSet, fraction: float, seed: int) -> np.ndarray:
    """Deterministic held-out flags [n] for sweep conditions: a function of (seed, condition index) only,
    so training and prediction agree without sharing a file. ``fraction = 0``: nothing held out."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"test_fraction must be in [0, 1), got {fraction}")
    idx = sweep_indices(cs) if all(n.split(":")[-1].startswith("cond") for n in cs.names) else np.arange(len(cs))
    return np.array([np.random.default_rng([int(seed), int(i)]).random() < fraction for i in idx], dtype=bool)
