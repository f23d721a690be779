"""Synthetic cycling cells with a known fade law, and the generic user format written from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from batterytwin.cycling.curves import CurveSet

L_TINY, CPP = 64, 10  # curve points, cycles per point


def synthetic_cells(n: int, seed: int, rows: int = 10, volts: int = 16, length: int = L_TINY) -> CurveSet:
    """Cells whose fade rate k sets both the capacity matrix and the curve (the condition is informative).

    SOH(i) = 100 - 20 * (i / i80)**1.5 crosses 80 % at point i80 = 0.625 L / k; the record stops 6 points
    after the crossing (or at the curve end). The capacity matrix is k times a fixed smooth pattern.
    """
    rng = np.random.default_rng(seed)
    k = rng.uniform(0.9, 2.0, n)
    i80 = 0.625 * length / k
    i = np.arange(length)
    soh = 100.0 - 20.0 * (i[None, :] / i80[:, None]) ** 1.5 + rng.normal(0, 0.05, (n, length))
    soh[:, 0] = 100.0  # percent of the first cycle, by definition
    valid = np.minimum(np.ceil(i80).astype(int) + 6, length)
    soh = np.where(i[None, :] < valid[:, None], soh, np.nan)
    r = np.arange(1, rows + 1)[:, None] / rows
    v = np.sin(np.linspace(0, np.pi, volts))[None, :]
    q = -0.01 * k[:, None, None] * (r * v)[None] + rng.normal(0, 1e-4, (n, rows, volts))
    return CurveSet(soh, valid, q, CPP, "threshold", [f"c{j}" for j in range(n)], "synthetic")


def write_user_dir(cs: CurveSet, d: Path) -> None:
    """The generic user format from a curve set: capacity CSV per cycle + Q(V) npz (row k = cycle k+1)."""
    d.mkdir(parents=True, exist_ok=True)
    volts = np.linspace(3.6, 2.0, cs.qmatrix.shape[2])
    for j, name in enumerate(cs.names):
        n_pts = int(cs.valid_len[j])
        cycles = 1 + CPP * np.arange(n_pts)
        lines = ["cycle,capacity_Ah"] + [f"{c},{1.1 * s / 100:.9f}" for c, s in zip(cycles, cs.soh[j, :n_pts])]
        (d / f"{name}.capacity.csv").write_text("\n".join(lines) + "\n")
        base = np.linspace(1.1, 0.0, len(volts))
        np.savez(d / f"{name}.qv.npz", voltage_V=volts, capacity_Ah=base[None] + cs.qmatrix[j].astype(np.float64))
