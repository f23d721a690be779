"""Loaders of real cycling data into :class:`~.curves.CurveSet`: the DiffBatt benchmark splits
(:func:`load_npz_split`, SHA-256 checked against the folder's ``SHA256SUMS``) and the generic user
format (:func:`load_user_dir`, see ``docs/degradation.md``). No loader unpickles anything.

:data:`SHIPPED_DATA` is the data directory both stages default to (``degradation.real_data.dir``;
``twin.data_dir`` null means the same directory).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .curves import CurveSet, drop_empty_conditions, resample_curve
from .life import default_eol_rule

SHIPPED_DATA = "data/cycling"  # the DiffBatt splits shipped in the repository (data/cycling/README.md)
NPZ_KEYS = ("soh", "valid_len", "qmatrix")
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
