"""Inputs and by-hand references of the cell-simulation tests: a ``microstructure.json``, OKane2022
written out with plain PyBaMM, and a reader of the sweep store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

OKANE_L, OKANE_AM = 75.6e-6, 0.665  # OKane2022 positive thickness and active fraction


def write_microstructure(path: Path, eps=0.30, tau=2.0, thickness_um=70.0, am=0.62, radius_um=5.0,
                         sep_eps=0.45, sep_b=1.6) -> Path:
    """A small ``microstructure.json`` (schema batterytwin.microstructure/1, ``cell`` block)."""
    ms = {
        "schema": "batterytwin.microstructure/1",
        "voxel_size_um": [0.5, 0.5, 0.5],
        "classes": {"0": "pore", "1": "solid_electrolyte", "3": "cathode_active"},
        "cell": {
            "stacking_axis": "z", "electrolyte_phase": "solid_electrolyte",
            "positive_electrode": {"thickness_um": thickness_um, "electrolyte_volume_fraction": eps,
                                   "active_material_volume_fraction": am, "porosity_void": 0.02,
                                   "tortuosity_electrolyte": tau, "bruggeman": None,
                                   "particle_radius_um": radius_um},
            "separator": {"thickness_um": 15.0, "electrolyte_volume_fraction": sep_eps,
                          "tortuosity_electrolyte": None, "bruggeman": sep_b},
        },
    }
    path.write_text(json.dumps(ms))
    return path


def read_group(path):
    """The arrays and attributes of the zarr group at ``path``."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    return {k: g[k][...] for k in g.array_keys()}, dict(g.attrs)


def plain_pv(ms_path: Path, transport: str = "bruggeman"):
    """OKane2022 with the measured values of the microstructure file at ``ms_path`` written out by hand
    (no batterytwin code)."""
    import pybamm

    ms = json.loads(ms_path.read_text())["cell"]
    pe, sep = ms["positive_electrode"], ms["separator"]
    pv = pybamm.ParameterValues("OKane2022")
    pv.update({
        "Positive electrode porosity": pe["electrolyte_volume_fraction"],
        "Positive electrode active material volume fraction": pe["active_material_volume_fraction"],
        "Positive electrode thickness [m]": pe["thickness_um"] * 1e-6,
        "Positive particle radius [m]": pe["particle_radius_um"] * 1e-6,
        "Separator porosity": sep["electrolyte_volume_fraction"],
        "Separator thickness [m]": sep["thickness_um"] * 1e-6,
        "Nominal cell capacity [A.h]": 5.0 * (pe["thickness_um"] * 1e-6 / OKANE_L)
        * (pe["active_material_volume_fraction"] / OKANE_AM),
        "Ambient temperature [K]": 298.15,
    })
    if transport == "bruggeman":
        pv.update({
            "Positive electrode Bruggeman coefficient (electrolyte)":
                1 - math.log(pe["tortuosity_electrolyte"]) / math.log(pe["electrolyte_volume_fraction"]),
            "Separator Bruggeman coefficient (electrolyte)": sep["bruggeman"]})
    else:  # PyBaMM's B = phase fraction / tau; unmeasured tau = phi^(1-b) of the set's exponents
        eps_n = pv["Negative electrode porosity"]
        pv.update({
            "Positive electrode tortuosity factor (electrolyte)": pe["tortuosity_electrolyte"],
            "Separator tortuosity factor (electrolyte)": sep["electrolyte_volume_fraction"] ** (1 - sep["bruggeman"]),
            "Negative electrode tortuosity factor (electrolyte)":
                eps_n ** (1 - pv["Negative electrode Bruggeman coefficient (electrolyte)"]),
            "Negative electrode tortuosity factor (electrode)":
                (1 - eps_n) ** (1 - pv["Negative electrode Bruggeman coefficient (electrode)"]),
            "Positive electrode tortuosity factor (electrode)": (1 - pe["electrolyte_volume_fraction"])
                ** (1 - pv["Positive electrode Bruggeman coefficient (electrode)"]),
        }, check_already_exists=False)
    return pv


PLAIN_CYCLE = ("Discharge at 1.0C until 2.5 V", "Rest for 5 minutes", "Charge at 0.5C until 4.2 V",
          "Hold at 4.2 V until C/50", "Rest for 5 minutes")


def plain_capacities(model, pv, n_cycles: int) -> np.ndarray:
    """Discharge capacity (A h) of each of ``n_cycles`` :data:`PLAIN_CYCLE` cycles, by PyBaMM alone."""
    import pybamm

    sim = pybamm.Simulation(model, experiment=pybamm.Experiment([PLAIN_CYCLE] * n_cycles), parameter_values=pv)
    sol = sim.solve()
    q = [c.steps[0]["Discharge capacity [A.h]"].entries for c in sol.cycles]
    return np.array([x[-1] - x[0] for x in q])
