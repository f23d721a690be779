"""One PyBaMM cycling simulation, built once per rank and solved per condition.

The operating conditions enter the built model as ``[input]`` parameters, so a rank processes
and discretises the model and compiles the solver once and then only integrates:

- discharge / charge C-rates: ``pybamm.step.c_rate(InputParameter(...))`` steps;
- depth of discharge: a step termination ``t - t_start >= 3600 DoD / C`` (DoD of the nominal
  capacity; DoD = 1 means "until the lower cut-off voltage" only);
- ambient (and initial) temperature: ``"Ambient temperature [K]" = InputParameter``;
- swept PyBaMM parameters (degradation rate constants, ...): ``"[input]"``.

One cycle of the protocol: discharge at ``C_dis`` until ``V_min`` (or the DoD), rest, charge at
``C_ch`` until ``V_max``, hold at ``V_max`` until ``C/cv_cutoff``, rest. PyBaMM sees each cycle
as two experiment "cycles" (discharge half, charge half) so that the discharge capacity of every
cycle is a per-cycle summary variable (change of throughput capacity), available without
keeping the cycle's time series (bounded memory over 1000+ cycles). Steps other than the early
discharges store only their first and last state (IDAKLU ``store_first_last``); with
``compile`` the model's casadi functions are compiled to C once (IDAKLU option ``compile``).

Example::

    runner = CellRunner(pv, CellRunSpec(model="SPMe", options={"SEI": "reaction limited"},
                        n_cycles=10, n_early=3, voltage_grid=np.linspace(4.1, 2.6, 50)),
                        input_names=design.names, varied=design.varied, min_c_rate=0.5)
    res = runner.run(design.condition(0), time_limit_s=600)
    res.capacity_Ah   # float64 [n_cycles], NaN after the run stopped
    res.qv_capacity_Ah  # float64 [n_early, len(voltage_grid)]
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contracts import STATUS_FAILED, STATUS_OK, STATUS_TIME_LIMIT
from ..errors import InputError
from .config import MODELS

log = logging.getLogger(__name__)

T_INPUT = "Ambient temperature input [K]"
OUTPUT_VARIABLES = ["Battery voltage [V]", "Discharge capacity [A.h]", "Throughput capacity [A.h]"]


@dataclass
class CellRunSpec:
    """What a rank builds: model, options, protocol, solver (same for every condition)."""

    model: str = "SPMe"
    options: dict[str, Any] = field(default_factory=dict)
    n_cycles: int = 10
    n_early: int = 3
    voltage_grid: np.ndarray | None = None  # float64 [n_v], descending
    lower_voltage_V: float | None = None
    upper_voltage_V: float | None = None
    rest_minutes: float = 5.0
    cv_cutoff_c_rate: float | None = 0.02
    stop_below_soh_percent: float | None = None
    solver: dict[str, Any] = field(default_factory=dict)  # rtol, atol, options (IDAKLU)
    var_pts: dict[str, int] | None = None
    compile: bool = False  # IDAKLU option "compile": casadi functions compiled to C (gcc -O3)


@dataclass
class ConditionResult:
    """The outcome of one condition (see ``sweep.zarr`` in docs/interfaces.md)."""

    capacity_Ah: np.ndarray   # float64 [n_cycles]
    qv_capacity_Ah: np.ndarray  # float64 [n_early, n_v]
    status: int
    message: str
    cycles_completed: int
    wall_time_s: float

    @property
    def soh(self) -> np.ndarray:
        return soh_percent(self.capacity_Ah)


def soh_percent(capacity: np.ndarray) -> np.ndarray:
    """State of health, % of the first cycle's discharge capacity (NaN stays NaN).

    Args:
        capacity: float64 [..., n_cycles].
    """
    capacity = np.asarray(capacity, dtype=np.float64)
    first = capacity[..., :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(first > 0, 100.0 * capacity / first, np.nan)


def capacity_at_voltages(voltage: np.ndarray, capacity: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Discharge capacity when the voltage first falls to each grid voltage.

    Args:
        voltage: float [n_t], battery voltage along a discharge.
        capacity: float [n_t], capacity discharged since the step start (non-decreasing).
        grid: float [n_v], voltages (any order).

    Returns:
        float64 [n_v]: 0 above the starting voltage, NaN below the lowest voltage reached.
    """
    v = np.minimum.accumulate(np.asarray(voltage, dtype=np.float64))  # first passage: monotone
    q = np.asarray(capacity, dtype=np.float64)
    out = np.interp(-np.asarray(grid, dtype=np.float64), -v, q)
    out[np.asarray(grid) > v[0]] = 0.0
    out[np.asarray(grid) < v[-1]] = np.nan
    return out


class _Stop(Exception):
    """Raised from the callback to end a condition early (time limit or SOH threshold)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class CellRunner:
    """A PyBaMM ``Simulation`` with ``[input]`` operating conditions, reused across conditions.

    Args:
        parameter_values: ``pybamm.ParameterValues`` with the microstructure substitutions.
        config: :class:`CellRunSpec`.
        input_names: the design's input names (operating inputs + PyBaMM names).
        varied: names that vary over the design; the PyBaMM names among them become
            ``[input]`` (fixed PyBaMM axes must already be set in ``parameter_values``).
        min_c_rate: smallest C-rate of the design (bounds the step duration).
    """

    def __init__(self, parameter_values, config: CellRunSpec, input_names: list[str],
                 varied: list[str], min_c_rate: float):
        import pybamm

        self.cfg = config
        self.input_names = list(input_names)
        self.pybamm_inputs = [n for n in input_names if n in varied and n in parameter_values.keys()]
        pv = parameter_values.copy()
        self.v_min = float(config.lower_voltage_V or pv["Lower voltage cut-off [V]"])
        self.v_max = float(config.upper_voltage_V or pv["Upper voltage cut-off [V]"])
        if not self.v_min < self.v_max:
            raise InputError(f"cellsim.protocol: lower voltage {self.v_min} >= upper voltage {self.v_max}")
        temperature = pybamm.InputParameter(T_INPUT)
        pv.update({"Ambient temperature [K]": temperature, "Initial temperature [K]": temperature})
        for name in self.pybamm_inputs:
            pv[name] = "[input]"
        self._pv = pv
        self.model = make_model(config.model, config.options)
        self.experiment = self._experiment(min_c_rate)
        solver_kw = dict(config.solver or {})
        if config.compile:
            solver_kw["options"] = {"compile": True, **dict(solver_kw.get("options") or {})}
        solver = pybamm.IDAKLUSolver(output_variables=OUTPUT_VARIABLES, **solver_kw)
        self.sim = pybamm.Simulation(self.model, experiment=self.experiment, parameter_values=pv,
                                     solver=solver, var_pts=config.var_pts)
        self._built = False

    # -- protocol ------------------------------------------------------------------------
    def _experiment(self, min_c_rate: float):
        import pybamm

        cfg = self.cfg
        c_dis = pybamm.InputParameter("discharge_c_rate")
        c_ch = pybamm.InputParameter("charge_c_rate")
        dod = pybamm.InputParameter("depth_of_discharge")

        def dod_event(variables):
            # positive until 3600 DoD / C seconds into the step; never fires for DoD = 1
            elapsed = variables["Time [s]"] - pybamm.InputParameter("start time")
            return 3600 * dod / c_dis + 1e9 * (dod >= 1) - elapsed

        max_s = 2 * 3600 / max(min_c_rate, 1e-3) + 3600  # a bound only: events end the steps
        self._dis = pybamm.step.c_rate(
            c_dis, duration=max_s, description="discharge",
            termination=[f"< {self.v_min} V", pybamm.step.CustomTermination("Depth of discharge", dod_event)])
        charge = pybamm.step.c_rate(-c_ch, duration=max_s, termination=f"> {self.v_max} V",
                                    description="charge")
        rest = [pybamm.step.rest(duration=60 * cfg.rest_minutes)] if cfg.rest_minutes else []
        hold = []
        if cfg.cv_cutoff_c_rate:
            hold = [pybamm.step.voltage(self.v_max, duration=max_s,
                                        termination=f"{cfg.cv_cutoff_c_rate} C")]
        half_dis = tuple([self._dis, *rest])
        half_ch = tuple([charge, *hold, *rest])
        return pybamm.Experiment([half_dis, half_ch] * int(self.cfg.n_cycles))

    # -- build -------------------------------------------------------------------------------
    def _inputs(self, condition: dict[str, float]) -> dict[str, float]:
        inputs = {n: float(condition[n]) for n in ("discharge_c_rate", "charge_c_rate", "depth_of_discharge")}
        inputs[T_INPUT] = float(condition["ambient_temperature_C"]) + 273.15
        inputs.update({n: float(condition[n]) for n in self.pybamm_inputs})
        return inputs

    def build(self, condition: dict[str, float]) -> None:
        """Process, discretise and compile once (done by the first :meth:`run`)."""
        import pybamm

        t0 = time.perf_counter()
        try:
            self.sim.build_for_experiment(inputs=self._inputs(condition))
        except (pybamm.OptionError, pybamm.ModelError, KeyError) as exc:
            raise InputError(f"cellsim: PyBaMM cannot build {self.cfg.model} with options "
                             f"{self.cfg.options}: {exc}") from None
        used = set()
        for m in self.sim.steps_to_built_models.values():
            used |= {p.name for p in m.input_parameters}
        unused = [n for n in self.pybamm_inputs if n not in used]
        if unused:
            raise InputError(f"cellsim.sweep.axes: {unused} have no effect in {self.cfg.model} with "
                             f"options {self.cfg.options} (choose parameters the model uses)")
        self._wrap_discharge_solver()
        self._built = True
        log.info("built %s %s in %.1f s", self.cfg.model, self.cfg.options, time.perf_counter() - t0)

    def _wrap_discharge_solver(self) -> None:
        # Capture the early-cycle discharge curves as each step finishes, so they survive a
        # time limit and no cycle's full time series has to be kept. Every other step (and the
        # discharges after the early cycles) stores only its first and last state
        # (``store_first_last``): the summary variables and the next step need no more, and
        # the solver skips building each step's time series.
        key = self.sim.experiment.steps[0].basic_repr()  # the first step is the discharge
        for other in self.sim.steps_to_built_solvers.values():
            other.store_first_last = True
        solver = self.sim.steps_to_built_solvers[key]
        original = solver.step
        runner = self
        grid = self.cfg.voltage_grid
        n_curves = self.cfg.n_early if grid is not None and len(grid) else 0

        def step(*args, **kwargs):
            mon = runner._monitor
            solver.store_first_last = mon is None or len(mon.capacities) >= n_curves
            try:
                sol = original(*args, **kwargs)
            except Exception as exc:
                if mon is not None and "non-positive at initial conditions" in str(exc):
                    mon.on_discharge(None)  # PyBaMM skips the step; we record why
                raise
            if mon is not None:
                mon.on_discharge(sol)
            # PyBaMM chooses a step's output times (setup_timestepping) from this flag before it
            # calls step(): set it now for the next discharge (the len(capacities)+1-th, 0-based)
            solver.store_first_last = mon is None or len(mon.capacities) + 1 >= n_curves
            return sol

        solver.step = step
        self._discharge_solver, self._n_curves = solver, n_curves

    # -- run -------------------------------------------------------------------------------
    _monitor = None

    def warm_up(self, condition: dict[str, float]) -> float:
        """Build, then run the first cycle of ``condition`` and discard it: every step of the
        protocol is set up once, so with ``compile`` every library of the model is compiled
        (and on disk in the AOT cache) when this returns. Returns the seconds it took."""
        import pybamm

        t0 = time.perf_counter()
        if not self._built:
            self.build(condition)
        mon = _Monitor(self, None, stop_after=2)  # two PyBaMM "cycles" = one protocol cycle
        self._monitor = mon
        self._discharge_solver.store_first_last = self._n_curves == 0  # the first discharge's curve is kept
        try:
            self.sim.solve(inputs=self._inputs(condition), save_at_cycles=[1], callbacks=[mon])
        except (_Stop, pybamm.SolverError, ValueError, ArithmeticError, RuntimeError):
            pass  # a failing condition still set up the steps it reached; the run records it
        finally:
            self._monitor = None
        return time.perf_counter() - t0

    def run(self, condition: dict[str, float], time_limit_s: float | None = None) -> ConditionResult:
        """Simulate one condition; solver failures and time limits are recorded, not raised."""
        import pybamm

        if not self._built:
            self.build(condition)
        n_v = 0 if self.cfg.voltage_grid is None else len(self.cfg.voltage_grid)
        mon = _Monitor(self, time_limit_s)
        self._monitor = mon
        self._discharge_solver.store_first_last = self._n_curves == 0  # the first discharge's curve is kept
        t0 = time.perf_counter()
        status, message = STATUS_OK, ""
        try:
            self.sim.solve(inputs=self._inputs(condition), save_at_cycles=[1], callbacks=[mon])
        except _Stop as stop:
            status, message = stop.status, stop.message
        except pybamm.SolverError as exc:
            status, message = STATUS_FAILED, f"solver error in cycle {mon.cycle}: {_one_line(exc)}"
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            status, message = STATUS_FAILED, f"{type(exc).__name__} in cycle {mon.cycle}: {_one_line(exc)}"
        finally:
            self._monitor = None
        wall = time.perf_counter() - t0
        caps = np.full(self.cfg.n_cycles, np.nan)
        caps[: len(mon.capacities)] = mon.capacities
        qv = np.full((self.cfg.n_early, n_v), np.nan)
        for k, row in mon.qv.items():
            if k < self.cfg.n_early:
                qv[k] = row
        done = len(mon.capacities)
        if status == STATUS_OK:
            if mon.error is not None:
                status, message = STATUS_FAILED, mon.error
            elif mon.skipped_discharge is not None:
                status, message = STATUS_FAILED, mon.skipped_discharge
            elif not message:
                message = (f"completed {done} cycles" if done == self.cfg.n_cycles
                           else f"stopped after {done} of {self.cfg.n_cycles} cycles")
                if done < self.cfg.n_cycles:
                    status = STATUS_FAILED
        return ConditionResult(caps, qv, status, message, done, wall)


AOT_CACHE_ENV = "PYBAMM_CASADI_AOT_CACHE"


def cpu_tag() -> str:
    """A short tag of this node's CPU type (architecture, model name, flags): PyBaMM compiles
    with ``-march=native``, so a library may only be loaded on the CPU type that built it."""
    import hashlib
    import platform

    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    lines.append(line.strip())
                elif not line.strip() and lines:
                    break  # the first processor's block is enough
    except OSError:
        pass
    blob = "\n".join([platform.machine(), platform.processor(), *lines])
    return f"{platform.machine()}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@contextlib.contextmanager
def aot_cache(directory):
    """PyBaMM's AOT cache (the ``compile`` libraries) in ``directory/<cpu tag>`` for the block.

    A directory of the job (on the shared file system) lets every rank, on any node of the same
    CPU type (:func:`cpu_tag`), load the libraries rank 0 compiled, and a rerun finds them. A
    cache the user chose (``$PYBAMM_CASADI_AOT_CACHE``) is kept; ``directory`` None changes
    nothing. Yields the cache directory in use (or None).
    """
    if directory is None or os.environ.get(AOT_CACHE_ENV):
        yield os.environ.get(AOT_CACHE_ENV) if directory is not None else None
        return
    path = os.path.join(str(directory), cpu_tag())
    os.makedirs(path, exist_ok=True)
    os.environ[AOT_CACHE_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(AOT_CACHE_ENV, None)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def make_model(name: str, options: dict[str, Any] | None):
    """A PyBaMM lithium-ion model by name (SPM, SPMe, DFN) with ``options``."""
    import pybamm

    if name not in MODELS:
        raise InputError(f"cellsim.model: one of {', '.join(MODELS)}, got {name!r}")
    try:
        return getattr(pybamm.lithium_ion, name)(dict(options or {}))
    except pybamm.OptionError as exc:
        raise InputError(f"cellsim.model_options: {_one_line(exc)}") from None


class _Monitor:
    """PyBaMM callback: per-cycle discharge capacity, early Q(V), time limit, SOH stop."""

    def __init__(self, runner: CellRunner, time_limit_s: float | None, stop_after: int | None = None):
        self.runner = runner
        self.stop_after = stop_after  # PyBaMM cycles (warm-up)
        self.deadline = None if not time_limit_s else time.perf_counter() + float(time_limit_s)
        self.time_limit_s = time_limit_s
        self.capacities: list[float] = []
        self.qv: dict[int, np.ndarray] = {}
        self.cycle = 1
        self.error: str | None = None
        self.skipped_discharge: str | None = None

    def _check_time(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise _Stop(STATUS_TIME_LIMIT, f"time limit {self.time_limit_s} s reached in cycle {self.cycle}")

    def on_discharge(self, sol) -> None:
        import pybamm

        k = len(self.capacities)  # 0-based index of the cycle being discharged
        if sol is None or isinstance(sol, pybamm.EmptySolution):
            if self.skipped_discharge is None:
                self.skipped_discharge = (f"discharge infeasible at the start of cycle {k + 1} "
                                          "(voltage already below the cut-off at this C-rate)")
            return
        grid = self.runner.cfg.voltage_grid
        if k < self.runner.cfg.n_early and grid is not None and len(grid):
            v = sol["Battery voltage [V]"].entries
            q = sol["Discharge capacity [A.h]"].entries
            self.qv[k] = capacity_at_voltages(v, q - q[0], grid)

    # pybamm.callbacks.Callback interface
    def on_experiment_start(self, logs): pass
    def on_cycle_start(self, logs): self.cycle = (logs["cycle number"][0] + 1) // 2
    def on_step_start(self, logs): pass
    def on_step_end(self, logs): self._check_time()
    def on_experiment_end(self, logs): pass

    def on_cycle_end(self, logs):
        if self.stop_after and logs["cycle number"][0] >= self.stop_after:
            raise _Stop(STATUS_OK, "warm-up done")
        if self.skipped_discharge is not None:  # the cell cannot discharge: stop here
            raise _Stop(STATUS_FAILED, self.skipped_discharge)
        if logs["cycle number"][0] % 2 == 1:  # odd PyBaMM "cycles" are the discharge halves
            q = float(logs["summary variables"]["Change in throughput capacity [A.h]"])
            self.capacities.append(q)
            limit = self.runner.cfg.stop_below_soh_percent
            if limit and len(self.capacities) > 1 and self.capacities[0] > 0:
                soh = 100 * q / self.capacities[0]
                if soh < limit:
                    raise _Stop(STATUS_OK, f"SOH {soh:.2f}% below {limit}% in cycle {len(self.capacities)}")
        self._check_time()

    def on_experiment_error(self, logs):
        self.error = f"solver error in cycle {self.cycle}: {_one_line(logs.get('error'))}"

    def on_experiment_infeasible_time(self, logs):
        self.error = f"infeasible in cycle {self.cycle}: a step reached its maximum duration"

    def on_experiment_infeasible_event(self, logs):
        self.error = f"infeasible in cycle {self.cycle}: {logs.get('termination')}"
