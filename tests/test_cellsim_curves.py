"""The early-cycle Q(V) curves of a sweep are the simulated discharges, not lines between their ends.

PyBaMM chooses a step's output times before it calls the solver's ``step``: the discharge solver's
``store_first_last`` flag must already say "keep the time series" when the first discharge of each
condition is set up, or the stored curve has two points (start and cut-off) and is a straight line.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from batterytwin.cellsim.driver import simulate

from .test_cellsim import write_microstructure

pytest.importorskip("pybamm")

CFG = {"transport": "bruggeman", "balance": {"enabled": False}, "cell_form": "full_cell", "model": "SPM",
       "n_cycles": 3, "n_early": 1, "voltage_grid": {"points": 24},
       "sweep": {"method": "grid", "axes": {"discharge_c_rate": [1.0, 2.0]}}}


def straightness(q: np.ndarray) -> float:
    """Largest distance of a Q(V) curve from the line between its first and last stored capacity,
    as a fraction of its capacity (0: the curve is that line)."""
    q = q[np.isfinite(q)]
    line = np.linspace(q[0], q[-1], q.size)
    return float(np.max(np.abs(q - line)) / q[-1])


def test_first_discharge_of_every_condition_is_a_curve(tmp_path):
    ms = write_microstructure(tmp_path / "microstructure.json")
    simulate(str(ms), str(tmp_path / "sweep.zarr"), str(tmp_path / "sweep.json"), str(tmp_path / "work"), CFG)
    g = zarr.open_group(str(tmp_path / "sweep.zarr"), mode="r")
    qv = np.asarray(g["qv_capacity_Ah"][...])
    assert qv.shape == (2, 1, 24)
    # a discharge at 1-2C has a plateau: its Q(V) is far from the straight line between its ends
    # (a two-point curve, interpolated on the grid, is that line: straightness 0)
    for i in range(2):
        assert straightness(qv[i, 0]) > 0.1, f"condition {i}: the first discharge curve is a straight line"
