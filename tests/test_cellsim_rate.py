"""Rate capability and fast-charge plating (cellsim.rate_capability), and compile once per job."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from batterytwin.cellsim.driver import cell_parameters, resolve_config
from batterytwin.cellsim.params import read_microstructure
from batterytwin.cellsim.rate import run_rate_capability
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK

from .cellsim_inputs import write_microstructure
from .conftest import mpiexec

pybamm = pytest.importorskip("pybamm")

VAR_PTS = {"x_n": 8, "x_s": 5, "x_p": 8, "r_n": 8, "r_p": 8}
RATE_CFG = {"enabled": True, "c_rates": [0.5, 3.0], "charge_c_rates": [0.5, 2.0, 4.0],
            "var_pts": VAR_PTS, "perturbations": {"tortuosity": [0.8, 1.2]}}


# -- rate capability against plain PyBaMM ---------------------------------------------------------

@pytest.fixture(scope="module")
def rate(tmp_path_factory):
    root = tmp_path_factory.mktemp("rate")
    ms = write_microstructure(root / "microstructure.json", eps=0.25, tau=2.5)
    cfg = resolve_config({"rate_capability": RATE_CFG})
    block = run_rate_capability(str(ms), cfg, root / "work")
    return {"ms": ms, "cfg": cfg, "block": block, "work": root / "work"}


def _plain_discharge(pv, c_rate: float) -> float:
    """An independent PyBaMM run: string experiment, fresh DFN Simulation, numbers only."""
    v_min = float(pv["Lower voltage cut-off [V]"])
    sim = pybamm.Simulation(pybamm.lithium_ion.DFN({"transport efficiency": "tortuosity factor"}),
                            experiment=pybamm.Experiment([f"Discharge at {c_rate}C until {v_min} V"]),
                            parameter_values=pv.copy(), var_pts=VAR_PTS)
    sol = sim.solve(initial_soc=1.0)
    return float(sol["Discharge capacity [A.h]"].entries[-1])


def test_capacities_equal_plain_pybamm(rate):
    block, cfg = rate["block"], rate["cfg"]
    pv, *_ = cell_parameters(read_microstructure(str(rate["ms"])), str(rate["ms"]), cfg)
    own, *_ = cell_parameters(read_microstructure(str(rate["ms"])), "", cfg, measured=False)
    assert block["c_rates"] == [0.5, 3.0]
    for k, c in enumerate(block["c_rates"]):
        np.testing.assert_allclose(block["capacity_Ah"]["measured"][k], _plain_discharge(pv, c), rtol=1e-3)
        np.testing.assert_allclose(block["capacity_Ah"]["parameter_set"][k], _plain_discharge(own, c), rtol=1e-3)
    measured = block["capacity_Ah"]["measured"]
    assert measured[1] < measured[0]  # rate capability: less capacity at 3C


def test_plating_increases_with_c_rate(rate):
    plating = rate["block"]["plating"]
    assert plating["option"] == {"lithium plating": "irreversible"}
    plated = np.array(plating["plated_capacity_Ah"]["measured"])
    assert plated.shape == (3,) and np.all(plated > 0)
    assert np.all(np.diff(plated) > 0), plated


def test_tortuosity_sensitivity(rate):
    sens = rate["block"]["sensitivity"]
    assert sens["c_rate"] == 3.0
    rows = {(r["quantity"], r["factor"]): r for r in sens["rows"]}
    q = [rows[("tortuosity", f)]["capacity_Ah"] for f in (0.8, 1.0, 1.2)]
    assert q[0] > q[1] > q[2]  # a more tortuous cathode gives less capacity at 3C
    assert rows[("tortuosity", 0.8)]["value"] == pytest.approx(0.8 * 2.5)
    d = sens["derivatives"]["tortuosity"]
    assert d["dQ_dx"] == pytest.approx((q[2] - q[0]) / (0.4 * 2.5))


def test_resume_reads_checkpoints(rate, caplog):
    caplog.set_level("INFO", logger="batterytwin.cellsim.rate")
    again = run_rate_capability(str(rate["ms"]), rate["cfg"], rate["work"])
    assert again == rate["block"]
    assert "0 to run" in caplog.text


def test_variants_perturb_the_measurement_or_say_why_not(tmp_path):
    from batterytwin.cellsim.rate import variants

    ms = read_microstructure(str(write_microstructure(tmp_path / "m.json", eps=0.95, tau=None)))
    ms["cell"]["positive_electrode"]["bruggeman"] = 1.5
    rcfg = resolve_config({})["rate_capability"]
    items, notes = variants(ms, rcfg)
    names = [v["name"] for v in items]
    assert names == ["measured", "parameter_set", "porosity x0.9", "thickness x0.9", "thickness x1.1"]
    assert any("tortuosity x0.8" in n and "not measured" in n for n in notes)
    assert any("porosity x1.1" in n and "not a volume fraction" in n for n in notes)
    pert = items[2]["ms"]["cell"]["positive_electrode"]
    assert pert["electrolyte_volume_fraction"] == pytest.approx(0.855) and pert["bruggeman"] == 1.5  # no tau: b kept
    assert ms["cell"]["positive_electrode"]["electrolyte_volume_fraction"] == 0.95  # the original untouched


def test_bad_rate_settings():
    from batterytwin.errors import InputError

    for bad in ({"c_rates": []}, {"c_rates": [0.0, 1.0]}, {"perturbations": {"tortuosity": [0.0]}},
                {"perturbations": {"colour": [1.1]}}):
        with pytest.raises(InputError, match="rate_capability"):
            resolve_config({"rate_capability": {"enabled": True, **bad}})


def test_simulate_writes_rate_block_and_figure(tmp_path, cli):
    from batterytwin.cellsim.driver import simulate
    from batterytwin.report.cellsim import plot_rate_capability

    ms = write_microstructure(tmp_path / "microstructure.json")
    cfg = {"model": "SPM", "model_options": {}, "n_cycles": 1, "n_early": 1,
           "sweep": {"method": "grid", "axes": {"discharge_c_rate": [1.0]}},
           "rate_capability": {"enabled": True, "c_rates": [1.0, 3.0], "charge_c_rates": [1.0], "var_pts": VAR_PTS,
                               "perturbations": {"tortuosity": [], "porosity": [], "thickness": [1.1]}}}
    out = tmp_path / "sweep.zarr"
    summary = simulate(str(ms), str(out), str(tmp_path / "sweep.json"), str(tmp_path / "work"), cfg)
    block = json.loads((tmp_path / "sweep.json").read_text())["rate_capability"]
    assert block == summary["rate_capability"]
    assert set(block["capacity_Ah"]) == {"measured", "parameter_set", "thickness x1.1"}
    assert block["capacity_Ah"]["thickness x1.1"][1] != block["capacity_Ah"]["measured"][1]
    assert block["plating"]["plated_capacity_Ah"]["measured"][0] > 0
    fig = plot_rate_capability(out)
    assert [r[:2] for r in fig.rate_rows] == [["thickness", "x1"], ["thickness", "x1.1"]]
    code, err = cli("report", "rate", str(out), "--out", str(tmp_path / "rate.png"))
    assert code == EXIT_OK and (tmp_path / "rate.png").stat().st_size > 5000, err


def test_report_without_rate_block_is_input_error(tmp_path, cli):
    from batterytwin.cellsim.driver import simulate

    ms = write_microstructure(tmp_path / "microstructure.json")
    cfg = {"model": "SPM", "model_options": {}, "n_cycles": 1, "n_early": 0,
           "sweep": {"method": "grid", "axes": {"discharge_c_rate": [1.0]}}}
    simulate(str(ms), str(tmp_path / "s.zarr"), str(tmp_path / "s.json"), str(tmp_path / "w"), cfg)
    code, err = cli("report", "rate", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "rate.png"))
    assert code == EXIT_BAD_INPUT and "no rate_capability" in err and len(err.strip().splitlines()) == 1


# -- compile once per job -------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_compile_the_model_once(tmp_path):
    """2 ranks with compile on: every gcc run comes from one process, no library twice."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no C compiler")
    log = tmp_path / "gcc.log"
    wrap = tmp_path / "bin"
    wrap.mkdir()
    (wrap / "gcc").write_text(f'#!/bin/sh\necho "$PPID $*" >> {log}\nexec {gcc} "$@"\n')
    (wrap / "gcc").chmod(0o755)
    ms = write_microstructure(tmp_path / "microstructure.json")
    cfg = {"model": "SPM", "model_options": {}, "n_cycles": 2, "n_early": 1, "compile": True,
           "var_pts": {"x_n": 5, "x_s": 5, "x_p": 5, "r_n": 5, "r_p": 5},
           "sweep": {"method": "grid", "axes": {"discharge_c_rate": [0.5, 1.0, 1.5, 2.0]}}}
    (tmp_path / "cellsim.json").write_text(json.dumps({"cellsim": cfg}))
    env = {k: v for k, v in os.environ.items() if k != "PYBAMM_CASADI_AOT_CACHE"}
    env["PATH"] = f"{wrap}{os.pathsep}{os.environ.get('PATH', '')}"
    work = tmp_path / "work"
    mpiexec(2, "batterytwin", "-v", "simulate", "-i", str(ms), "-o", str(tmp_path / "s.zarr"),
                   "--summary", str(tmp_path / "s.json"), "--work-dir", str(work), "--config",
                   str(tmp_path / "cellsim.json"), env=env, timeout=240)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["counts"]["ok"] == 4
    calls = [line.split() for line in log.read_text().splitlines() if "-shared" in line]
    libraries = [c[c.index("-o") + 1].split(".")[0] for c in calls]  # stem before .<pid>.<uuid>
    assert calls, "compile on: gcc never ran"
    assert len({c[0] for c in calls}) == 1, f"more than one rank compiled:\n{log.read_text()}"
    assert len(set(libraries)) == len(libraries), f"a library compiled twice: {libraries}"
    assert len(list((work / "aot").glob("*/*.so"))) == len(libraries)  # aot/<cpu tag>/


def test_tau_perturbation_passes_the_trust_check_of_a_crosschecked_measurement(tmp_path):
    """A measured tau with TauFactor and in-plane values beside it (what the microstructure stage
    writes): tau x0.8 / x1.2 must reach PyBaMM as such, not fall back to the parameter set's tau
    because the unscaled TauFactor value now differs by 20 %."""
    from batterytwin.cellsim.rate import variants

    ms = read_microstructure(str(write_microstructure(tmp_path / "m.json", eps=0.3, tau=2.0)))
    ms["cell"]["positive_electrode"].update(tortuosity_taufactor=2.04, tortuosity_in_plane=1.9,
                                            tortuosity_converged=True)
    cfg = resolve_config({"rate_capability": RATE_CFG})
    items, _ = variants(ms, cfg["rate_capability"])
    taus = {}
    for item in items:
        if item["quantity"] in (None, "tortuosity") and item["measured"]:
            _, applied, _, cell = cell_parameters(item["ms"], "m.json", cfg)
            assert cell["microstructure_warnings"] == [], (item["name"], cell["microstructure_warnings"])
            taus[item["name"]] = {s.name: s.new for s in applied}["Positive electrode tortuosity factor (electrolyte)"]
    assert taus == pytest.approx({"measured": 2.0, "tortuosity x0.8": 1.6, "tortuosity x1.2": 2.4})
