"""Ageing sweeps: the demo's cellsim setup (config.yaml) fades like PyBaMM run directly,
and over its cycles part of its range of rate constants reaches end of life and part does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from batterytwin.cellsim.driver import simulate
from batterytwin.workflow_config import complete_config

from .cellsim_inputs import plain_capacities, plain_pv, read_group, write_microstructure

pybamm = pytest.importorskip("pybamm")
pytestmark = pytest.mark.slow  # PyBaMM ageing runs of the demo's cellsim section (up to its 200 cycles)

ROOT = Path(__file__).resolve().parents[1]
SEI_K = "SEI kinetic rate constant [m.s-1]"
EOL = 80.0  # the degradation stage's threshold end-of-life rule (degradation.sample.threshold)


def demo_section() -> dict:
    """The ``cellsim`` section ``make demo`` runs (its ageing sweep: the rate experiment is
    tested in test_cellsim_rate.py)."""
    cfg = complete_config(yaml.safe_load((ROOT / "config.yaml").read_text()))["cellsim"]  # with its defaults
    return dict(cfg, rate_capability={"enabled": False})


def phantom_like(path: Path) -> Path:
    """The demo phantom's measured cathode (10 um, active 0.48, eps 0.51, tau 1.36)."""
    return write_microstructure(path, eps=0.51, tau=1.36, thickness_um=10.0, am=0.48, radius_um=5.9)


def one_condition(cfg: dict, k_sei: float, **over) -> dict:
    axes = {"discharge_c_rate": [1.0], "charge_c_rate": [0.5], "ambient_temperature_C": [25.0], SEI_K: [k_sei]}
    return dict(cfg, compile=False, sweep={"method": "grid", "axes": axes}, **over)


def test_demo_fade_equals_plain_pybamm(tmp_path):
    """Same condition, a plain pybamm.Simulation (string experiment, numbers): same fading capacities."""
    cfg = demo_section()
    k = cfg["sweep"]["axes"][SEI_K]["high"]
    ms = phantom_like(tmp_path / "m.json")
    n = 6
    simulate(str(ms), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"),
             one_condition(cfg, k, n_cycles=n, n_early=0))
    arrays, attrs = read_group(tmp_path / "s.zarr")
    assert arrays["status"][0] == 1
    pv = plain_pv(ms, "tortuosity_factor")
    pv.update({SEI_K: k, "Negative electrode thickness [m]":
               attrs["balance"]["rescaled"]["Negative electrode thickness [m]"]["value"]})
    model = pybamm.lithium_ion.SPMe({**cfg["model_options"], "transport efficiency": "tortuosity factor"})
    direct = plain_capacities(model, pv, n)
    np.testing.assert_allclose(arrays["capacity_Ah"][0], direct, rtol=1e-3)
    # and it ages visibly: > 2 % of the first cycle lost within these few cycles, in both
    assert direct[-1] < 0.98 * direct[0] and arrays["soh"][0, -1] < 98.0


def test_demo_range_reaches_end_of_life_in_part(tmp_path):
    """The demo's cycles, stop rule and SEI rate range: the fast end crosses 80 % SOH, the slow end not;
    the degradation stage's loader and threshold rule see one end of life and one censored cell."""
    from batterytwin.cycling.life import cycle_life
    from batterytwin.degradation.data import load_sweep

    cfg = demo_section()
    axis = cfg["sweep"]["axes"][SEI_K]
    ms = phantom_like(tmp_path / "m.json")
    cfg = dict(cfg, compile=False, sweep={"method": "grid", "axes": {
        "discharge_c_rate": [1.0], "charge_c_rate": [0.5], "ambient_temperature_C": [25.0],
        SEI_K: [axis["low"], axis["high"]]}})
    summary = simulate(str(ms), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"), cfg)
    arrays, attrs = read_group(tmp_path / "s.zarr")
    k = arrays["inputs"][:, attrs["input_names"].index(SEI_K)]
    slow, fast = int(np.argmin(k)), int(np.argmax(k))
    assert list(arrays["status"]) == [1, 1]
    n = cfg["n_cycles"]
    assert summary["conditions"][slow]["cycles_completed"] == n and np.nanmin(arrays["soh"][slow]) > EOL
    fast_done = summary["conditions"][fast]["cycles_completed"]
    assert fast_done < n and "below 70" in summary["conditions"][fast]["message"]
    first_below = int(np.argmax(arrays["soh"][fast] <= EOL)) + 1
    assert 1 < first_below < fast_done
    # capacity fades monotonically after the first cycles (SEI consumes cyclable lithium)
    soh = arrays["soh"][fast, 2:fast_done]
    assert np.all(np.diff(soh) < 0)
    cs = load_sweep(tmp_path / "s.zarr", curve_length=16, cycles_per_point=4)
    life, censored = cycle_life(cs.soh, cs.valid_len, cs.eol_rule, cs.cycles_per_point, EOL)
    by_cond = dict(zip(cs.names, zip(life, censored)))
    assert bool(by_cond[f"cond{fast}"][1]) is False and bool(by_cond[f"cond{slow}"][1]) is True
    assert abs(by_cond[f"cond{fast}"][0] - (first_below - 1)) <= cs.cycles_per_point
