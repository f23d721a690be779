"""Cell simulation stage: parameters, design, PyBaMM sweeps vs PyBaMM itself, ranks, resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from batterytwin.cellsim import checkpoint
from batterytwin.cellsim.design import make_design
from batterytwin.cellsim.driver import simulate
from batterytwin.cellsim.params import build_parameter_values, microstructure_substitutions
from batterytwin.cellsim.runner import capacity_at_voltages, soh_percent
from batterytwin.errors import EXIT_BAD_INPUT, InputError

from .cellsim_inputs import OKANE_AM, OKANE_L, plain_capacities, plain_pv, read_group, write_microstructure
from .conftest import mpiexec

pybamm = pytest.importorskip("pybamm")


# Small sweep shared by several tests: SPM + SEI, 3 cycles, 2 C-rates + one absurd C-rate.
# Pinned to the unbalanced Bruggeman route these tests were written for (the defaults are
# balanced N/P, tortuosity-factor transport; tested below).
SWEEP_CFG = {
    "transport": "bruggeman",
    "balance": {"enabled": False},
    "cell_form": "full_cell",
    "model": "SPM",
    "model_options": {"SEI": "ec reaction limited"},
    "n_cycles": 3,
    "n_early": 2,
    "voltage_grid": {"points": 24},
    "sweep": {"method": "grid", "axes": {
        "discharge_c_rate": [1.0, 2.0, 1.0e4],
        "SEI kinetic rate constant [m.s-1]": [1e-15, 1e-13],
    }},
}


# -- pure parts ----------------------------------------------------------------------------------

def test_substitutions_recorded(tmp_path):
    ms = json.loads(write_microstructure(tmp_path / "m.json", eps=0.3, tau=2.0).read_text())
    subs = microstructure_substitutions(ms, "m.json")
    pv, applied = build_parameter_values("OKane2022", subs, {"Ambient temperature [K]": 300.0})
    by_name = {s.name: s for s in applied}
    assert by_name["Positive electrode porosity"].new == 0.3
    assert by_name["Positive electrode porosity"].old == pytest.approx(0.335)
    b = 1 - math.log(2.0) / math.log(0.3)
    assert by_name["Positive electrode Bruggeman coefficient (electrolyte)"].new == pytest.approx(b, rel=1e-12)
    assert pv["Positive electrode thickness [m]"] == pytest.approx(70e-6)
    assert pv["Positive particle radius [m]"] == pytest.approx(5e-6)
    assert pv["Separator Bruggeman coefficient (electrolyte)"] == 1.6
    # nominal capacity follows the positive electrode's thickness x active fraction
    assert pv["Nominal cell capacity [A.h]"] == pytest.approx(5.0 * 70e-6 / OKANE_L * 0.62 / OKANE_AM)
    assert by_name["Ambient temperature [K]"].source == "config: cellsim.parameters"
    assert "cell.positive_electrode.tortuosity_electrolyte" in by_name[
        "Positive electrode Bruggeman coefficient (electrolyte)"].source
    # a null (unmeasured) value is skipped, never made up
    ms["cell"]["positive_electrode"]["particle_radius_um"] = None
    names = {s.name for s in microstructure_substitutions(ms, "m.json")}
    assert "Positive particle radius [m]" not in names
    # an exponent the microstructure stage flags as undetermined (eps near 1) is not re-derived
    sep = ms["cell"].setdefault("separator", {})
    sep.update({"electrolyte_volume_fraction": 0.995, "tortuosity_electrolyte": 0.943, "bruggeman": None,
                "bruggeman_flag": "undetermined: eps near 1"})
    names = {s.name for s in microstructure_substitutions(ms, "m.json")}
    assert "Separator Bruggeman coefficient (electrolyte)" not in names


def test_bad_parameter_inputs(tmp_path):
    ms = json.loads(write_microstructure(tmp_path / "m.json").read_text())
    subs = microstructure_substitutions(ms, "m.json")
    with pytest.raises(InputError, match="unknown PyBaMM parameter set 'OKane2023'"):
        build_parameter_values("OKane2023", subs)
    with pytest.raises(InputError, match="unknown PyBaMM parameter name 'Positive electrode porosityy'"):
        build_parameter_values("Chen2020", subs, {"Positive electrode porosityy": 0.3})
    ms["cell"]["positive_electrode"]["electrolyte_volume_fraction"] = 1.5
    with pytest.raises(InputError, match="electrolyte_volume_fraction"):
        microstructure_substitutions(ms, "m.json")


def test_design_grid_and_lhs():
    d = make_design({"method": "grid", "axes": {"discharge_c_rate": [1, 2], "charge_c_rate": [0.5, 1, 2]}})
    assert len(d) == 6 and d.names[:4] == ["discharge_c_rate", "charge_c_rate", "ambient_temperature_C",
                                           "depth_of_discharge"]
    assert {tuple(r[:2]) for r in d.values} == {(a, b) for a in (1, 2) for b in (0.5, 1, 2)}
    spec = {"method": "lhs", "n_samples": 10, "seed": 3,
            "axes": {"discharge_c_rate": [0.5, 3.0],
                     "SEI kinetic rate constant [m.s-1]": {"low": 1e-15, "high": 1e-12, "scale": "log"}}}
    a, b = make_design(spec), make_design(spec)
    np.testing.assert_array_equal(a.values, b.values)  # seeded
    # Latin hypercube: exactly one sample in each of the n equal strata of every varied axis
    c = (a.values[:, 0] - 0.5) / 2.5
    assert sorted(np.floor(c * 10).astype(int)) == list(range(10))
    k = (np.log(a.values[:, 4]) - np.log(1e-15)) / (np.log(1e-12) - np.log(1e-15))
    assert sorted(np.floor(k * 10).astype(int)) == list(range(10))
    assert a.varied == ["discharge_c_rate", "SEI kinetic rate constant [m.s-1]"]
    assert len(make_design({"method": "lhs", "n_samples": 5, "axes": {"charge_c_rate": 1.0}})) == 1  # nothing varies


@pytest.mark.parametrize("sweep, match", [
    ({"method": "grid", "axes": {"charge_c_rate": [-1.0, 1.0]}}, "C-rate must be > 0"),
    ({"method": "grid", "axes": {"discharge_c_rate": []}}, "empty sweep"),
    ({"method": "lhs", "n_samples": 0}, "empty sweep"),
    ({"method": "sobol"}, "'grid' or 'lhs'"),
])
def test_design_bad_input(sweep, match):
    with pytest.raises(InputError, match=match):
        make_design(sweep)


def test_capacity_at_voltages_analytic():
    q = np.linspace(0, 4, 401)
    v = 4.0 - 0.5 * q  # linear discharge from 4.0 V to 2.0 V
    grid = np.array([4.2, 3.5, 3.0, 2.25, 1.5])
    out = capacity_at_voltages(v, q, grid)
    np.testing.assert_allclose(out[1:4], (4.0 - grid[1:4]) / 0.5, rtol=1e-12)
    assert out[0] == 0.0 and np.isnan(out[4])
    np.testing.assert_allclose(soh_percent(np.array([[2.0, 1.0, np.nan]])), [[100.0, 50.0, np.nan]])


# -- the sweep against PyBaMM itself --------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("cellsim")
    ms = write_microstructure(root / "microstructure.json")
    out = {"ms": ms, "zarr": root / "sweep.zarr", "json": root / "sweep.json", "work": root / "work"}
    simulate(str(ms), str(out["zarr"]), str(out["json"]), str(out["work"]), SWEEP_CFG)
    return out


def _direct_capacities(ms_path: Path, c_dis: float, k_sei: float, n_cycles: int) -> np.ndarray:
    """An independent PyBaMM run of one condition: string experiment, numbers, fresh Simulation."""
    ms = json.loads(ms_path.read_text())["cell"]
    pe, sep = ms["positive_electrode"], ms["separator"]
    pv = pybamm.ParameterValues("OKane2022")
    pv.update({
        "Positive electrode porosity": pe["electrolyte_volume_fraction"],
        "Positive electrode Bruggeman coefficient (electrolyte)":
            1 - math.log(pe["tortuosity_electrolyte"]) / math.log(pe["electrolyte_volume_fraction"]),
        "Positive electrode active material volume fraction": pe["active_material_volume_fraction"],
        "Positive electrode thickness [m]": pe["thickness_um"] * 1e-6,
        "Positive particle radius [m]": pe["particle_radius_um"] * 1e-6,
        "Separator porosity": sep["electrolyte_volume_fraction"],
        "Separator thickness [m]": sep["thickness_um"] * 1e-6,
        "Separator Bruggeman coefficient (electrolyte)": sep["bruggeman"],
        "Nominal cell capacity [A.h]": 5.0 * (pe["thickness_um"] * 1e-6 / OKANE_L)
        * (pe["active_material_volume_fraction"] / OKANE_AM),
        "SEI kinetic rate constant [m.s-1]": k_sei,
        "Ambient temperature [K]": 298.15,
    })
    cycle = (f"Discharge at {c_dis}C until 2.5 V", "Rest for 5 minutes", "Charge at 0.5C until 4.2 V",
             "Hold at 4.2 V until C/50", "Rest for 5 minutes")
    sim = pybamm.Simulation(pybamm.lithium_ion.SPM({"SEI": "ec reaction limited"}),
                            experiment=pybamm.Experiment([cycle] * n_cycles), parameter_values=pv)
    sol = sim.solve()
    caps = []
    for cyc in sol.cycles:
        q = cyc.steps[0]["Discharge capacity [A.h]"].entries
        caps.append(q[-1] - q[0])
    return np.array(caps)


def test_stored_capacities_equal_direct_pybamm(sweep):
    arrays, attrs = read_group(sweep["zarr"])
    names = attrs["input_names"]
    i = next(j for j, row in enumerate(arrays["inputs"])
             if row[names.index("discharge_c_rate")] == 2.0
             and row[names.index("SEI kinetic rate constant [m.s-1]")] == 1e-13)
    direct = _direct_capacities(sweep["ms"], 2.0, 1e-13, 3)
    stored = arrays["capacity_Ah"][i]
    assert arrays["status"][i] == 1
    np.testing.assert_allclose(stored, direct, rtol=1e-3)
    def at(c, k):
        return next(j for j, row in enumerate(arrays["inputs"]) if row[names.index("discharge_c_rate")] == c
                    and row[names.index("SEI kinetic rate constant [m.s-1]")] == k)

    # at 1C a 100x faster SEI reaction visibly costs capacity within 3 cycles
    assert arrays["capacity_Ah"][at(1.0, 1e-13), -1] < 0.99 * arrays["capacity_Ah"][at(1.0, 1e-15), -1]
    np.testing.assert_allclose(arrays["soh"][i], 100 * stored / stored[0])
    # early Q(V): 0 above the start voltage, rising, and near the full capacity at the bottom
    qv = arrays["qv_capacity_Ah"][i]
    assert qv.shape == (2, 24) and qv[0, 0] == 0.0
    assert np.all(np.diff(qv[0]) >= 0)
    assert qv[0, -1] == pytest.approx(stored[0], rel=0.02)
    assert attrs["substitutions"]["Positive electrode porosity"]["value"] == 0.30
    assert len(attrs["voltage_grid_V"]) == 24 and attrs["n_cycles"] == 3


def test_absurd_c_rate_fails_others_complete(sweep):
    arrays, attrs = read_group(sweep["zarr"])
    summary = json.loads(sweep["json"].read_text())
    c = arrays["inputs"][:, attrs["input_names"].index("discharge_c_rate")]
    assert np.all(arrays["status"][c == 1.0e4] == 2)
    assert np.all(arrays["status"][c < 1.0e4] == 1)
    assert np.all(np.isnan(arrays["capacity_Ah"][c == 1.0e4]))
    assert np.all(np.isfinite(arrays["capacity_Ah"][c < 1.0e4]))
    failed = [cond for cond in summary["conditions"] if cond["status"] == 2]
    assert len(failed) == 2 and all("discharge infeasible" in cond["message"] for cond in failed)
    assert summary["counts"] == {"ok": 4, "failed": 2, "time_limit": 0}
    assert summary["conditions"][0]["inputs"]["depth_of_discharge"] == 1.0


def test_resume_computes_only_missing(sweep, tmp_path, caplog):
    before, _ = read_group(sweep["zarr"])
    files = sorted(sweep["work"].glob("run-*/c-*.npz"))
    assert len(files) == 6
    victim = files[2]
    victim.unlink()  # as if the job died before this condition finished
    stamps = {f: f.stat().st_mtime_ns for f in files if f != victim}
    out = tmp_path / "again.zarr"
    with caplog.at_level(logging.INFO, logger="batterytwin.cellsim"):
        simulate(str(sweep["ms"]), str(out), str(tmp_path / "again.json"), str(sweep["work"]), SWEEP_CFG)
    assert "6 conditions, 5 already in" in caplog.text and "1 to run" in caplog.text
    assert victim.exists()
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())  # others untouched
    after, _ = read_group(out)
    np.testing.assert_array_equal(after["status"], before["status"])
    np.testing.assert_allclose(after["capacity_Ah"], before["capacity_Ah"], rtol=1e-9)


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_equal_one_rank(sweep, tmp_path):
    cfg = tmp_path / "cellsim.json"
    cfg.write_text(json.dumps({"cellsim": SWEEP_CFG}))
    out = tmp_path / "sweep.zarr"
    mpiexec(2, "batterytwin", "simulate", "-i", str(sweep["ms"]), "-o", str(out), "--summary",
            str(tmp_path / "sweep.json"), "--work-dir", str(tmp_path / "work"), "--config", str(cfg),
            timeout=240)
    one, _ = read_group(sweep["zarr"])
    two, _ = read_group(out)
    for key in ("inputs", "status"):
        np.testing.assert_array_equal(two[key], one[key])
    for key in ("capacity_Ah", "soh", "qv_capacity_Ah"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-9, equal_nan=True)


# -- physics sanity and failure modes on the runner ------------------------------------------------

def _high_rate_capacity(tmp_path: Path, name: str, eps: float, tau: float) -> np.ndarray:
    ms = write_microstructure(tmp_path / f"{name}.json", eps=eps, tau=tau)
    cfg = {"model": "SPMe", "model_options": {}, "n_cycles": 1, "n_early": 0,
           "protocol": {"rest_minutes": 0, "cv_cutoff_c_rate": None},
           "sweep": {"method": "grid", "axes": {"discharge_c_rate": [3.0]}}}
    summary = simulate(str(ms), str(tmp_path / f"{name}.zarr"), str(tmp_path / f"{name}.json.out"),
                       str(tmp_path / "work"), cfg)
    assert summary["counts"]["ok"] == 1
    return read_group(tmp_path / f"{name}.zarr")[0]["capacity_Ah"][0, 0]


def test_denser_more_tortuous_cathode_gives_less_high_rate_capacity(tmp_path):
    open_cap = _high_rate_capacity(tmp_path, "open", eps=0.35, tau=1.6)
    dense_cap = _high_rate_capacity(tmp_path, "dense", eps=0.15, tau=6.0)
    assert dense_cap < 0.97 * open_cap, (dense_cap, open_cap)


def test_time_limit_recorded(tmp_path):
    ms = write_microstructure(tmp_path / "m.json")
    cfg = dict(SWEEP_CFG, time_limit_s=1e-3,
               sweep={"method": "grid", "axes": {"discharge_c_rate": [1.0]}})
    summary = simulate(str(ms), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"), cfg)
    cond = summary["conditions"][0]
    assert cond["status"] == 3 and "time limit" in cond["message"]
    res, meta = checkpoint.load_result(next((tmp_path / "w").glob("run-*/c-*.npz")))
    assert np.isnan(res.capacity_Ah[-1]) and meta["time_limit_s"] == 1e-3
    # a longer limit makes the time-limited condition count as missing again
    assert not checkpoint.is_done(next((tmp_path / "w").glob("run-*/c-*.npz")), 10.0)


def test_stop_below_soh(tmp_path):
    ms = write_microstructure(tmp_path / "m.json")
    cfg = dict(SWEEP_CFG, n_cycles=5, stop_below_soh_percent=99.0,
               sweep={"method": "grid", "axes": {"SEI kinetic rate constant [m.s-1]": [1e-13]}})
    summary = simulate(str(ms), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"), cfg)
    cond = summary["conditions"][0]
    arrays, _ = read_group(tmp_path / "s.zarr")
    k = cond["cycles_completed"]
    assert cond["status"] == 1 and "SOH" in cond["message"] and 1 < k < 5
    assert arrays["soh"][0, k - 1] < 99.0 <= arrays["soh"][0, k - 2]  # stopped at the first cycle below
    assert np.all(np.isnan(arrays["capacity_Ah"][0, k:]))


# -- CLI: clear errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ({"parameters": {"Positive electrode porosityy": 0.3}}, "unknown PyBaMM parameter name"),
    ({"parameter_set": "NoSuchSet2020"}, "unknown PyBaMM parameter set 'NoSuchSet2020'"),
    ({"sweep": {"method": "grid", "axes": {"discharge_c_rate": [-1]}}}, "C-rate must be > 0"),
    ({"sweep": {"method": "grid", "axes": {"charge_c_rate": []}}}, "empty sweep"),
    ({"sweep": {"method": "grid", "axes": {"No such parameter [m]": [1.0, 2.0]}}}, "unknown PyBaMM parameter name"),
    ({"model": "P4D"}, "cellsim.model"),
    ({"n_cyles": 3}, "unknown key"),
])
def test_cli_bad_input(cli, tmp_path, override, message):
    ms = write_microstructure(tmp_path / "m.json")
    code, err = cli("simulate", "-i", ms, "-o", tmp_path / "s.zarr", "--summary", tmp_path / "s.json",
                    "--work-dir", tmp_path / "w", "--config-json", json.dumps(override))
    assert code == EXIT_BAD_INPUT
    assert message in err and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "s.zarr").exists()


def test_cli_missing_microstructure(cli, tmp_path):
    code, err = cli("simulate", "-i", tmp_path / "nope.json", "-o", tmp_path / "s.zarr", "--summary",
                    tmp_path / "s.json", "--work-dir", tmp_path / "w")
    assert code == EXIT_BAD_INPUT and "no such microstructure file" in err


# -- electrode balance, tortuosity factor, lithium-metal form ----------------

F = 96485.33212


def _np_by_hand(pv, window) -> float:
    """N/P = Q_n / (Q_p (y_0 - y_100)) with Q = F c_max eps_active L A / 3600, written out."""
    area = pv["Electrode width [m]"] * pv["Electrode height [m]"]

    def q(d):
        return (F * pv[f"Maximum concentration in {d} electrode [mol.m-3]"]
                * pv[f"{d.capitalize()} electrode active material volume fraction"]
                * pv[f"{d.capitalize()} electrode thickness [m]"] * area / 3600)
    return q("negative") / (q("positive") * (window[1] - window[0]))


@pytest.mark.parametrize("thickness_um", [5.0, 10.0, 40.0, 120.0])
def test_balance_keeps_the_sets_n_to_p(tmp_path, thickness_um):
    from batterytwin.cellsim.balance import balance_negative, positive_window

    ms = json.loads(write_microstructure(tmp_path / "m.json", thickness_um=thickness_um, am=0.48).read_text())
    pv, _ = build_parameter_values("OKane2022", microstructure_substitutions(ms, "m.json"))
    _, _, y_100, y_0 = pybamm.lithium_ion.get_min_max_stoichiometries(pybamm.ParameterValues("OKane2022"))
    assert positive_window("OKane2022") == pytest.approx((y_100, y_0), rel=1e-12)
    np_set = _np_by_hand(pybamm.ParameterValues("OKane2022"), (y_100, y_0))
    rec = balance_negative(pv, "OKane2022", None, True, (1.0, 2.0), False, thickness_um)
    assert rec["n_to_p_parameter_set"] == pytest.approx(np_set, rel=1e-9)
    assert rec["n_to_p_before"] == pytest.approx(np_set * (OKANE_L * OKANE_AM) / (thickness_um * 1e-6 * 0.48), rel=1e-9)
    assert _np_by_hand(pv, (y_100, y_0)) == pytest.approx(np_set, rel=1e-6)
    assert rec["n_to_p_after"] == pytest.approx(np_set, rel=1e-6)
    if thickness_um == 10.0:  # the rescaled cell has the set's stoichiometry windows (PyBaMM eSOH)
        mine = pybamm.lithium_ion.get_min_max_stoichiometries(pv)
        np.testing.assert_allclose(mine, pybamm.lithium_ion.get_min_max_stoichiometries(
            pybamm.ParameterValues("OKane2022")), rtol=1e-5)
    # a configured target is met as well
    rec = balance_negative(pv, "OKane2022", 1.3, True, (1.0, 2.0), False, thickness_um)
    assert _np_by_hand(pv, (y_100, y_0)) == pytest.approx(1.3, rel=1e-6)


ONE_CONDITION = {"n_cycles": 2, "n_early": 0, "model_options": {},
                 "sweep": {"method": "grid", "axes": {"discharge_c_rate": [1.0]}}}


def test_balanced_cell_equals_plain_pybamm(tmp_path):
    ms = write_microstructure(tmp_path / "m.json", thickness_um=10.0, am=0.48)
    cfg = dict(ONE_CONDITION, model="SPM", model_options={"SEI": "ec reaction limited"}, transport="bruggeman")
    summary = simulate(str(ms), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"), cfg)
    arrays, attrs = read_group(tmp_path / "s.zarr")
    bal = attrs["balance"]
    assert summary["balance"] == bal and summary["cell_form"] == "full_cell"
    pv = plain_pv(ms)
    _, _, y_100, y_0 = pybamm.lithium_ion.get_min_max_stoichiometries(pybamm.ParameterValues("OKane2022"))
    l_n = bal["rescaled"]["Negative electrode thickness [m]"]["value"]
    assert attrs["substitutions"]["Negative electrode thickness [m]"]["value"] == l_n
    assert bal["n_to_p_before"] == pytest.approx(_np_by_hand(pv, (y_100, y_0)), rel=1e-9)  # 12.1
    pv["Negative electrode thickness [m]"] = l_n
    assert _np_by_hand(pv, (y_100, y_0)) == pytest.approx(bal["n_to_p_parameter_set"], rel=1e-6)
    assert bal["n_to_p_after"] == pytest.approx(bal["n_to_p_parameter_set"], rel=1e-6)
    direct = plain_capacities(pybamm.lithium_ion.SPM({"SEI": "ec reaction limited"}), pv, 2)
    np.testing.assert_allclose(arrays["capacity_Ah"][0], direct, rtol=1e-3)
    # the report's cell-parameter table shows the balance
    from batterytwin.report.cellsim import plot_capacity_fade

    rows = {r[0]: r for r in plot_capacity_fade(tmp_path / "s.zarr").cell_rows}
    assert rows["N/P before / after balance"][1] == f"{bal['n_to_p_before']:.4g} / {bal['n_to_p_after']:.4g}"
    assert "Negative electrode thickness [m]" in rows["N/P before / after balance"][2]
    assert "WARNING" not in rows


def test_tortuosity_factor_route_equals_plain_pybamm(tmp_path):
    ms = write_microstructure(tmp_path / "m.json", eps=0.25, tau=3.0)
    cfg = dict(ONE_CONDITION, model="SPMe", balance={"enabled": False})
    simulate(str(ms), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"), cfg)
    arrays, attrs = read_group(tmp_path / "s.zarr")
    assert attrs["transport"] == "tortuosity_factor"
    assert attrs["model_options"]["transport efficiency"] == "tortuosity factor"
    subs = attrs["substitutions"]
    assert subs["Positive electrode tortuosity factor (electrolyte)"]["value"] == 3.0
    assert "Positive electrode Bruggeman coefficient (electrolyte)" not in subs
    pv = plain_pv(ms, "tortuosity_factor")
    direct = plain_capacities(pybamm.lithium_ion.SPMe({"transport efficiency": "tortuosity factor"}), pv, 2)
    np.testing.assert_allclose(arrays["capacity_Ah"][0], direct, rtol=1e-3)
    # at the measured porosity the two routes are the same transport: same capacities
    brug = dict(cfg, transport="bruggeman")
    simulate(str(ms), str(tmp_path / "b.zarr"), str(tmp_path / "b.json"), str(tmp_path / "w"), brug)
    np.testing.assert_allclose(read_group(tmp_path / "b.zarr")[0]["capacity_Ah"][0], direct, rtol=1e-3)


def test_lithium_metal_form_equals_plain_half_cell(tmp_path):
    ms_path = write_microstructure(tmp_path / "m.json", thickness_um=10.0, am=0.48)
    ms = json.loads(ms_path.read_text())
    ms["classes"]["2"] = "lithium_metal"
    ms_path.write_text(json.dumps(ms))
    cfg = dict(ONE_CONDITION, model="SPM", cell_form="auto", transport="bruggeman",
               model_options={"SEI": "ec reaction limited"})
    summary = simulate(str(ms_path), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"), cfg)
    assert summary["cell_form"] == "lithium_metal" and "lithium_metal" in summary["cell_form_reason"]
    assert summary["balance"]["n_to_p_after"] is None
    arrays, attrs = read_group(tmp_path / "s.zarr")
    assert attrs["model_options"]["working electrode"] == "positive"
    pv = plain_pv(ms_path)
    name = "Exchange-current density for lithium metal electrode [A.m-2]"
    pv.update({name: pybamm.ParameterValues("Xu2019")[name]}, check_already_exists=False)
    y = pybamm.lithium_ion.get_initial_stoichiometry_half_cell(1.0, pv)
    y = y["x"] if isinstance(y, dict) else y
    c_max = pv["Maximum concentration in positive electrode [mol.m-3]"]
    pv["Initial concentration in positive electrode [mol.m-3]"] = y * c_max
    model = pybamm.lithium_ion.SPM({"working electrode": "positive", "SEI": "ec reaction limited"})
    direct = plain_capacities(model, pv, 2)
    assert arrays["status"][0] == 1
    np.testing.assert_allclose(arrays["capacity_Ah"][0, 0], direct[0], rtol=1e-3)
    np.testing.assert_allclose(arrays["capacity_Ah"][0], direct, rtol=1e-3)


def test_cli_refuses_n_to_p_below_one(cli, tmp_path):
    ms = write_microstructure(tmp_path / "m.json", thickness_um=120.0)
    code, err = cli("simulate", "-i", ms, "-o", tmp_path / "s.zarr", "--summary", tmp_path / "s.json",
                    "--work-dir", tmp_path / "w", "--config-json", json.dumps({"balance": {"enabled": False}}))
    pv = plain_pv(ms)
    _, _, y_100, y_0 = pybamm.lithium_ion.get_min_max_stoichiometries(pybamm.ParameterValues("OKane2022"))
    ratio = _np_by_hand(pv, (y_100, y_0))
    assert ratio < 1.0
    assert code == EXIT_BAD_INPUT and err.count("\n") == 1
    assert "120 um" in err and f"N/P = {ratio:.3f}" in err and "cellsim.balance" in err
    assert not (tmp_path / "s.zarr").exists()


def test_n_to_p_outside_range_allowed_warns(tmp_path, caplog):
    from batterytwin.cellsim.driver import prepare, resolve_config

    ms = write_microstructure(tmp_path / "m.json", thickness_um=120.0)
    cfg = resolve_config({"balance": {"enabled": False, "allow_outside_range": True}})
    with caplog.at_level(logging.WARNING, logger="batterytwin.cellsim"):
        pv, _, _, _, cell = prepare(str(ms), cfg)
    bal = cell["balance"]
    assert bal["rescaled"] == {} and bal["n_to_p_after"] == bal["n_to_p_before"] < 1.0
    name = "Negative electrode thickness [m]"
    assert pv[name] == pybamm.ParameterValues("OKane2022")[name]
    assert "120 um" in bal["warning"] and "WARNING" in caplog.text


@pytest.mark.parametrize("override, message", [
    ({"cell_form": "sodium"}, "cellsim.cell_form"),
    ({"transport": "percolation"}, "cellsim.transport"),
    ({"balance": {"range": [2.0, 1.0]}}, "cellsim.balance.range"),
    ({"balance": {"n_to_p": -1}}, "cellsim.balance.n_to_p"),
    ({"model_options": {"transport efficiency": "Bruggeman"}}, "contradicts"),
])
def test_cli_bad_cell_settings(cli, tmp_path, override, message):
    ms = write_microstructure(tmp_path / "m.json")
    code, err = cli("simulate", "-i", ms, "-o", tmp_path / "s.zarr", "--summary", tmp_path / "s.json",
                    "--work-dir", tmp_path / "w", "--config-json", json.dumps(override))
    assert code == EXIT_BAD_INPUT and message in err and err.count("\n") == 1
