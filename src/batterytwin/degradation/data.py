"""The diffusion stage's own data: cellsim sweeps as curve sets, the sweep held-out split, and the
model's encoding of curves.

Curve sets, the real-data loaders and the end-of-life rule live in :mod:`batterytwin.cycling` (shared
with the twin); only what the diffusion model alone uses is here:

- :func:`load_sweep` / :func:`sweep_indices` / :func:`held_out`: curves and capacity matrices of the
  conditions of a cellsim ``sweep.zarr`` and its seeded held-out split;
- :func:`encode_curves` / :func:`decode_curves`: SOH curves <-> the two-channel training target.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contracts import STATUS_OK, SWEEP_SCHEMA
from ..cycling.curves import CurveSet, resample_curve
from ..errors import InputError
from ..store import open_group


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
