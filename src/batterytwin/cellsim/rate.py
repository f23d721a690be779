"""Rate capability and fast-charge lithium plating of the fresh cell (``cellsim.rate_capability``).

For each electrode *variant* -- the measured one (the sweep's substitutions), the parameter set's
own, and the measured one with its tau, porosity or thickness scaled by the configured factors --
a PyBaMM model (DFN by default) is built once with the C-rate as an ``[input]`` and solved:

- discharge capacity: constant current at each C-rate from SOC 1 to the lower cut-off;
- plating (measured and parameter-set electrodes): CC charge at each charge C-rate from SOC 0 to
  the upper cut-off, then CV until ``cv_cutoff_c_rate``, with PyBaMM's ``"lithium plating"``
  option; plated lithium = "Loss of capacity to negative lithium plating [A.h]" at the end.

Variants are independent work items over the MPI ranks (:func:`.dispatch.dynamic_items`), each
checkpointed as ``work/{sample}/cellsim/rate-<hash>/<variant>.json``; rank 0 assembles the
``rate_capability`` block of ``sweep.json`` (and the ``sweep.zarr`` attributes), including the
sensitivity table at ``sensitivity_c_rate``: ``dQ/dx`` by central difference over the factors.

Example::

    block = run_rate_capability("results/s1/microstructure.json", resolve_config(cfg), "work/s1/cellsim")
    block["capacity_Ah"]["measured"]   # one capacity per block["c_rates"]
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed import World, get_world
from ..errors import InputError
from ..store import params_sha256, write_json
from .dispatch import dynamic_items, quiet_barrier
from .cell import cell_parameters
from .params import read_microstructure

log = logging.getLogger(__name__)

PLATED = "Loss of capacity to negative lithium plating [A.h]"
# perturbed quantity -> key of cell.positive_electrode in microstructure.json
QUANTITIES = {"tortuosity": "tortuosity_electrolyte", "porosity": "electrolyte_volume_fraction",
              "thickness": "thickness_um"}
# the region's other tau measurements, scaled with a tortuosity perturbation
TAU_COMPANIONS = ("tortuosity_in_plane", "tortuosity_taufactor")
UNITS = {"tortuosity": "Ah per unit tau", "porosity": "Ah per unit volume fraction",
         "thickness": "Ah per um"}


def variants(ms: dict[str, Any], rcfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The electrode variants to run, and notes on perturbations that cannot be made.

    Each variant: ``name``, ``quantity`` and ``factor`` (None for the two references), ``value``
    (the perturbed measurement), ``measured`` (False: the parameter set's electrode), ``ms``
    (the microstructure to substitute) and ``plating`` (run the charges).
    """
    plating = bool(rcfg["charge_c_rates"])
    out = [dict(name="measured", quantity=None, factor=1.0, value=None, measured=True, ms=ms, plating=plating),
           dict(name="parameter_set", quantity=None, factor=None, value=None, measured=False, ms=ms,
                plating=plating)]
    notes = []
    block = (ms.get("cell") or {}).get("positive_electrode") or {}
    for quantity, key in QUANTITIES.items():
        for factor in rcfg["perturbations"][quantity]:
            if factor == 1.0:
                continue
            x = block.get(key)
            if x is None:
                notes.append(f"{quantity} x{factor}: cell.positive_electrode.{key} not measured")
                continue
            new = float(x) * float(factor)
            if quantity == "porosity" and not 0 < new < 1:
                notes.append(f"{quantity} x{factor}: {new:.4g} is not a volume fraction")
                continue
            pert = copy.deepcopy(ms)
            pb = pert["cell"]["positive_electrode"]
            pb[key] = new
            if quantity == "tortuosity":  # the same electrode, every tau of it scaled: the trust check
                for companion in TAU_COMPANIONS:  # (cellsim.params.untrusted_tortuosity) compares them
                    if pb.get(companion) is not None:
                        pb[companion] = float(pb[companion]) * float(factor)
            if pb.get("tortuosity_electrolyte") is not None:
                pb["bruggeman"] = None  # the Bruggeman route derives b from the (perturbed) eps, tau
            out.append(dict(name=f"{quantity} x{factor:g}", quantity=quantity, factor=float(factor), value=new,
                            measured=True, ms=pert, plating=False))
    return out, notes


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".json"


def _run_key(cfg: dict[str, Any], ms: dict[str, Any]) -> str:
    import pybamm

    key = {k: cfg[k] for k in ("parameter_set", "parameters", "rescale_nominal_capacity", "cell_form",
                               "transport", "balance", "protocol", "solver", "rate_capability")}
    key["cell"], key["classes"] = ms.get("cell"), ms.get("classes")
    key["pybamm"] = pybamm.__version__
    return params_sha256(key)[:16]


def run_rate_capability(microstructure: str, cfg: dict[str, Any], work_dir: str | Path,
                        world: World | None = None) -> dict[str, Any] | None:
    """Run (or resume) the rate experiment; call on every rank.

    Args:
        cfg: the resolved ``cellsim`` section (:func:`.driver.resolve_config`).
        work_dir: the sweep's work folder (``work/{sample}/cellsim``).

    Returns:
        the ``rate_capability`` block on rank 0, None on the other ranks.
    """
    world = world or get_world()
    rcfg = cfg["rate_capability"]
    ms = read_microstructure(microstructure)
    items, notes = variants(ms, rcfg)
    run_dir = Path(work_dir) / f"rate-{_run_key(cfg, ms)}"
    paths = [run_dir / _file_name(v["name"]) for v in items]
    todo = None
    if world.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
        todo = [i for i, p in enumerate(paths) if not _done(p)]
        log.info("rate capability: %d electrode variants, %d to run on %d rank(s)", len(items), len(todo),
                 world.size)
    todo = world.bcast(todo)
    rates = sorted(set(map(float, rcfg["c_rates"])) | {float(rcfg["sensitivity_c_rate"])})
    for i in dynamic_items(world, todo):
        result = run_variant(items[i], microstructure, cfg, rates)
        write_json(paths[i], result)
        log.info("rate capability %s: %s Ah at C-rates %s (%.1f s)", items[i]["name"],
                 [round(q, 4) for q in result["capacity_Ah"]], rates, result["wall_time_s"])
    quiet_barrier(world)
    if not world.is_root:
        return None
    results = [json.loads(p.read_text()) for p in paths]
    return assemble(items, results, notes, rcfg, rates)


def _done(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def run_variant(item: dict[str, Any], source: str, cfg: dict[str, Any], rates: list[float]) -> dict[str, Any]:
    """Discharge capacities (and plating, if ``item["plating"]``) of one electrode variant."""

    t0 = time.perf_counter()
    rcfg = cfg["rate_capability"]
    where = source if item["quantity"] is None else f"{source} ({item['name']})"
    fresh = {**cfg, "model_options": dict(rcfg["model_options"])}  # not the sweep's ageing options
    try:
        pv, _, options, cell = cell_parameters(item["ms"], where, fresh, measured=item["measured"])
    except InputError as exc:
        if item["quantity"] is None:  # the measured cell itself: the sweep reported it already
            raise
        # a perturbed electrode the substitutions refuse (e.g. N/P out of range): noted, not fatal
        return {"name": item["name"], "capacity_Ah": [float("nan")] * len(rates),
                "messages": [f"not simulated: {exc}"], "wall_time_s": time.perf_counter() - t0}
    v_min = float(cfg["protocol"]["lower_voltage_V"] or pv["Lower voltage cut-off [V]"])
    v_max = float(cfg["protocol"]["upper_voltage_V"] or pv["Upper voltage cut-off [V]"])
    messages: list[str] = list(cell["microstructure_warnings"])  # a measurement PyBaMM did not get
    caps = _solve_rates(pv, options, rcfg, cfg["solver"], rates, "discharge", v_min, v_max, messages)
    result: dict[str, Any] = {"name": item["name"], "capacity_Ah": [c["capacity_Ah"] for c in caps]}
    if item["plating"] and cell["cell_form"] == "full_cell":
        plat_opts = {**options, "lithium plating": rcfg["plating"]}
        charges = _solve_rates(pv, plat_opts, rcfg, cfg["solver"], rcfg["charge_c_rates"], "charge",
                               v_min, v_max, messages)
        result["plated_capacity_Ah"] = [c["plated_Ah"] for c in charges]
        result["charged_capacity_Ah"] = [c["capacity_Ah"] for c in charges]
    elif item["plating"]:
        messages.append("no plating runs: the lithium-metal half cell has no graphite negative electrode")
    result["messages"] = messages
    result["wall_time_s"] = time.perf_counter() - t0
    return result


def _solve_rates(pv, options, rcfg, solver_kw, rates, kind, v_min, v_max, messages) -> list[dict[str, float]]:
    """Build one Simulation with the C-rate as input; solve it at each rate."""
    import pybamm

    from .runner import make_model

    c = pybamm.InputParameter("C-rate")
    bound = 2 * 3600 / min(rates) + 3600  # a bound only: the voltage cut-off ends the step
    if kind == "discharge":
        steps = [pybamm.step.c_rate(c, duration=bound, termination=f"< {v_min} V")]
        initial_soc = 1.0
    else:
        steps = [(pybamm.step.c_rate(-c, duration=bound, termination=f"> {v_max} V"),
                  pybamm.step.voltage(v_max, duration=bound, termination=f"{rcfg['cv_cutoff_c_rate']} C"))]
        initial_soc = 0.0
    solver_kw = {k: v for k, v in dict(solver_kw or {}).items()}
    try:
        sim = pybamm.Simulation(make_model(rcfg["model"], options), experiment=pybamm.Experiment(steps),
                                parameter_values=pv.copy(), var_pts=rcfg["var_pts"],
                                solver=pybamm.IDAKLUSolver(**solver_kw))
    except pybamm.OptionError as exc:
        raise InputError(f"cellsim.rate_capability: PyBaMM cannot build {rcfg['model']} with {options}: "
                         f"{' '.join(str(exc).split())[:300]}") from None
    out = []
    for rate in rates:
        cap, plated = float("nan"), float("nan")
        try:
            sol = sim.solve(inputs={"C-rate": float(rate)}, initial_soc=initial_soc)
            q = sol["Discharge capacity [A.h]"].entries
            cap = float(q[-1] - q[0]) * (1 if kind == "discharge" else -1)
            if kind == "charge":
                plated = float(sol[PLATED].entries[-1] - sol[PLATED].entries[0])
        except (pybamm.SolverError, ValueError, ArithmeticError, RuntimeError) as exc:
            messages.append(f"{kind} at {rate}C failed: {' '.join(str(exc).split())[:200]}")
        out.append({"capacity_Ah": cap, "plated_Ah": plated})
    return out


def assemble(items, results, notes, rcfg, rates) -> dict[str, Any]:
    """The ``rate_capability`` block from the variants' results (rank 0)."""
    for r in results:  # JSON null (a failed solve) -> NaN
        for key in ("capacity_Ah", "plated_capacity_Ah", "charged_capacity_Ah"):
            if key in r:
                r[key] = [float("nan") if q is None else float(q) for q in r[key]]
    by_name = {r["name"]: r for r in results}
    measured = by_name["measured"]
    k = rates.index(float(rcfg["sensitivity_c_rate"]))
    rows, derivatives = [], {}
    for quantity, key in QUANTITIES.items():
        mine = [(v, by_name[v["name"]]) for v in items if v["quantity"] == quantity]
        if not mine:
            continue
        base_value = float(measured_value(items[0]["ms"], key))
        points = [(1.0, base_value, measured["capacity_Ah"][k])] + [
            (v["factor"], v["value"], r["capacity_Ah"][k]) for v, r in mine]
        points.sort()
        rows += [{"quantity": quantity, "factor": f, "value": x, "capacity_Ah": q} for f, x, q in points]
        (_, x0, q0), (_, x1, q1) = points[0], points[-1]
        if x1 != x0 and np.isfinite(q0) and np.isfinite(q1):
            dq = (q1 - q0) / (x1 - x0)
            q_ref = measured["capacity_Ah"][k]
            derivatives[quantity] = {"dQ_dx": dq, "unit": UNITS[quantity],
                                     "elasticity": dq * base_value / q_ref if q_ref else None,
                                     "from_factors": [points[0][0], points[-1][0]]}
    block = {
        "model": rcfg["model"], "var_pts": rcfg["var_pts"], "c_rates": rates,
        "discharge": "constant current from SOC 1 to the lower cut-off",
        "capacity_Ah": {r["name"]: r["capacity_Ah"] for r in results},
        "sensitivity": {"c_rate": float(rcfg["sensitivity_c_rate"]), "rows": rows, "derivatives": derivatives},
        "plating": None,
        "notes": notes + [f"{r['name']}: {m}" for r in results for m in r["messages"]],
        "wall_time_s": float(sum(r["wall_time_s"] for r in results)),
    }
    plated = {r["name"]: r["plated_capacity_Ah"] for r in results if "plated_capacity_Ah" in r}
    if plated:
        block["plating"] = {
            "option": {"lithium plating": rcfg["plating"]}, "c_rates": [float(c) for c in rcfg["charge_c_rates"]],
            "charge": f"CC from SOC 0 to the upper cut-off, CV until C/{1 / rcfg['cv_cutoff_c_rate']:g}",
            "plated_capacity_Ah": plated,
            "charged_capacity_Ah": {r["name"]: r["charged_capacity_Ah"] for r in results if "charged_capacity_Ah" in r},
        }
    return block


def measured_value(ms: dict[str, Any], key: str) -> float | None:
    return ((ms.get("cell") or {}).get("positive_electrode") or {}).get(key)
