"""The ``simulate`` stage: ``microstructure.json`` + config -> ``sweep.zarr`` + ``sweep.json``.

Steps: resolve the config (defaults below), substitute the measured microstructure into the
parameter set, build the design, skip conditions already in ``work/{sample}/cellsim/``, run the
others over the MPI ranks (dynamic load balancing, one model build per rank; with ``compile``
rank 0 compiles once for the job, :func:`compile_once`), run the rate experiment if enabled
(:mod:`.rate`), then rank 0 assembles every condition into ``sweep.zarr`` and ``sweep.json``
atomically.

Example::

    summary = simulate("results/s1/microstructure.json", "results/s1/sweep.zarr",
                       "results/s1/sweep.json", "work/s1/cellsim", {"n_cycles": 5})
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import validate_settings
from ..contracts import STATUS_NAMES, STATUS_OK, SWEEP_SCHEMA
from ..distributed import World, get_world
from ..errors import InputError
from ..store import atomic_output, json_safe, params_sha256, provenance, write_json
from . import checkpoint
from .design import OPERATING, Design, make_design
from .dispatch import dynamic_items, quiet_barrier
from .config import CellsimConfig
from .cell import cell_parameters, resolve_cell_form  # noqa: F401 (resolve_cell_form: public here before)
from .params import check_parameter_name, read_microstructure
from .rate import run_rate_capability
from .runner import CellRunSpec, CellRunner, aot_cache, soh_percent

log = logging.getLogger(__name__)

def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The user's ``cellsim`` section validated and completed (:class:`~.config.CellsimConfig`)."""
    return validate_settings(CellsimConfig, config or {}, "cellsim").model_dump()


def _voltage_grid(cfg: dict[str, Any], pv) -> np.ndarray:
    g, p = cfg["voltage_grid"], cfg["protocol"]
    v_min = float(p["lower_voltage_V"] or pv["Lower voltage cut-off [V]"])
    v_max = float(p["upper_voltage_V"] or pv["Upper voltage cut-off [V]"])
    low = float(g["low_V"]) if g["low_V"] is not None else v_min + 0.005 * (v_max - v_min)
    high = float(g["high_V"]) if g["high_V"] is not None else v_max
    n = g["points"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or not low < high:
        raise InputError(f"cellsim.voltage_grid: need points >= 2 and low_V < high_V, got {g}")
    return np.linspace(high, low, n)  # descending: the order a discharge passes them


def prepare(microstructure: str, cfg: dict[str, Any]):
    """Parameter values (with substitutions), the design and the run settings (all ranks).

    Returns:
        ``(pv, applied, design, run_cfg, cell)``; ``cell``: ``cell_form``, ``cell_form_reason``,
        ``transport``, the ``balance`` record and ``microstructure_warnings`` (measurements the
        parameter set's values replaced; stored in ``sweep.zarr`` and ``sweep.json``).
    """
    design = make_design(cfg["sweep"])
    ms = read_microstructure(microstructure)
    overrides = dict(cfg["parameters"])
    from .params import load_parameter_set

    names_pv = load_parameter_set(cfg["parameter_set"])
    for name in design.names:
        if name not in OPERATING:
            check_parameter_name(names_pv, name, "cellsim.sweep.axes")
            if name not in design.varied:  # fixed axis: a plain override
                overrides[name] = float(design.values[0, design.names.index(name)])
    pv, applied, options, cell = cell_parameters(ms, str(microstructure), cfg, overrides)
    log.info("cellsim: cell form %s (%s), transport %s", cell["cell_form"], cell["cell_form_reason"],
             cfg["transport"])
    grid = _voltage_grid(cfg, pv)
    p = cfg["protocol"]
    run_cfg = CellRunSpec(
        model=cfg["model"], options=options, n_cycles=cfg["n_cycles"],
        n_early=cfg["n_early"], voltage_grid=grid, lower_voltage_V=p["lower_voltage_V"],
        upper_voltage_V=p["upper_voltage_V"], rest_minutes=float(p["rest_minutes"] or 0),
        cv_cutoff_c_rate=p["cv_cutoff_c_rate"], stop_below_soh_percent=cfg["stop_below_soh_percent"],
        solver=dict(cfg["solver"]), var_pts=cfg["var_pts"], compile=bool(cfg["compile"]))
    return pv, applied, design, run_cfg, cell


def _run_hash(cfg: dict[str, Any], applied, design: Design, grid: np.ndarray, options=None) -> str:
    import pybamm

    key = {k: cfg[k] for k in ("parameter_set", "model", "model_options", "n_cycles", "n_early",
                               "protocol", "stop_below_soh_percent", "solver", "var_pts")}
    if options is not None and options != cfg["model_options"]:  # old runs keep their hash
        key["model_options"] = options
    key["substitutions"] = [(s.name, _value(s.new)) for s in applied]
    key["input_names"] = design.names
    key["varied"] = design.varied
    key["voltage_grid"] = [float(v).hex() for v in grid]
    key["pybamm"] = pybamm.__version__
    return params_sha256(key)[:16]


def _value(x: Any) -> Any:
    """A substitution's value for hashes and attributes (numbers as float, functions by name)."""
    return float(x) if isinstance(x, (int, float, np.floating)) else str(x)


def _cost(design: Design, i: int) -> float:
    # hours of cycling ~ 1/C_dis + 1/C_ch: start the longest first (better load balance)
    c = design.condition(i)
    return 1.0 / c["discharge_c_rate"] + 1.0 / c["charge_c_rate"]


def simulate(microstructure: str, out_zarr: str, out_json: str, work_dir: str,
             config: dict[str, Any] | None, world: World | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep and write ``sweep.zarr`` + ``sweep.json``. Call on every rank.

    Returns:
        the summary written to ``sweep.json`` (on every rank).
    """
    world = world or get_world()
    cfg = resolve_config(config)
    pv, applied, design, run_cfg, cell = prepare(microstructure, cfg)
    run_dir = Path(work_dir) / f"run-{_run_hash(cfg, applied, design, run_cfg.voltage_grid, run_cfg.options)}"
    time_limit = cfg["time_limit_s"]
    paths = [checkpoint.condition_path(run_dir, design.names, design.values[i]) for i in range(len(design))]
    if world.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(design)) if not checkpoint.is_done(paths[i], time_limit)]
        todo.sort(key=lambda i: -_cost(design, i))
        log.info("cellsim: %d conditions, %d already in %s, %d to run on %d rank(s)",
                 len(design), len(design) - len(todo), run_dir, len(todo), world.size)
    else:
        todo = None
    todo = world.bcast(todo)

    def make_runner() -> CellRunner:
        return CellRunner(pv, run_cfg, design.names, design.varied,
                          min_c_rate=float(design.values[:, :2].min()))

    t0 = time.perf_counter()
    n_mine = 0
    with aot_cache(Path(work_dir) / "aot" if run_cfg.compile else None):
        runner = compile_once(world, make_runner, design.condition(todo[0])) \
            if run_cfg.compile and todo else None
        for i in dynamic_items(world, todo):
            if runner is None:
                runner = make_runner()
            result = runner.run(design.condition(i), time_limit_s=time_limit)
            checkpoint.save_result(paths[i], result, design.names, design.values[i], time_limit)
            n_mine += 1
            log.log(logging.INFO if result.status == STATUS_OK else logging.WARNING,
                    "condition %d: %s, %s (%.1f s)", i, STATUS_NAMES[result.status], result.message,
                    result.wall_time_s)
    log.info("rank %d ran %d condition(s) in %.1f s", world.rank, n_mine, time.perf_counter() - t0)
    quiet_barrier(world)
    log.info("sweep phase: %d condition(s) on %d rank(s) in %.2f s", len(todo), world.size,
             time.perf_counter() - t0)
    rate = None
    if cfg["rate_capability"]["enabled"]:
        t1 = time.perf_counter()
        rate = run_rate_capability(microstructure, cfg, work_dir, world)
        log.info("rate capability phase: %.1f s", time.perf_counter() - t1)
    summary = None
    with atomic_output(out_zarr, world) as tmp:
        if world.is_root:
            summary = _assemble(tmp, paths, design, applied, cfg, run_cfg, cell, rate)
    if world.is_root:
        write_json(out_json, summary)
    return world.bcast(summary)


def compile_once(world: World, make_runner, condition: dict[str, float]) -> CellRunner | None:
    """With ``compile``: rank 0 builds the model and compiles it (a discarded first cycle of
    ``condition`` sets up every step, :meth:`~.runner.CellRunner.warm_up`) while the other ranks
    wait; then they build theirs when they get a condition, and load rank 0's libraries from
    the AOT cache instead of compiling them again: one compile per job, not per rank. Call on
    every rank (inside :func:`~.runner.aot_cache`); returns rank 0's runner (None elsewhere)."""
    runner = None
    if world.is_root:
        runner = make_runner()
        log.info("compiled the model on rank 0 in %.1f s (the other ranks wait)",
                 runner.warm_up(condition))
    quiet_barrier(world)
    return runner


def _assemble(tmp: Path, paths, design: Design, applied, cfg, run_cfg: CellRunSpec,
              cell: dict[str, Any], rate: dict[str, Any] | None = None) -> dict[str, Any]:
    import zarr

    n, n_cyc, n_early, n_v = len(design), run_cfg.n_cycles, run_cfg.n_early, len(run_cfg.voltage_grid)
    status = np.zeros(n, np.int8)
    caps = np.full((n, n_cyc), np.nan)
    qv = np.full((n, n_early, n_v), np.nan)
    wall = np.zeros(n)
    conditions = []
    for i, path in enumerate(paths):
        if not path.exists():
            raise RuntimeError(f"{path}: result of condition {i} missing after the sweep")
        res, meta = checkpoint.load_result(path)
        status[i], caps[i], wall[i] = res.status, res.capacity_Ah, res.wall_time_s
        qv[i] = res.qv_capacity_Ah
        conditions.append({"index": i, "inputs": design.condition(i), "status": int(res.status),
                           "status_name": STATUS_NAMES[res.status], "message": res.message,
                           "cycles_completed": int(res.cycles_completed),
                           "wall_time_s": float(res.wall_time_s)})
    substitutions = {s.name: {"value": _value(s.new), "from": s.source, "old": s.old} for s in applied}
    prov = provenance("cellsim", cfg)
    attrs = {
        **prov, "schema": SWEEP_SCHEMA, "parameter_set": cfg["parameter_set"], "model": cfg["model"],
        "model_options": run_cfg.options, **cell, "input_names": design.names,
        "varied_inputs": design.varied, "substitutions": substitutions, "n_cycles": n_cyc,
        "n_early": n_early, "voltage_grid_V": [float(v) for v in run_cfg.voltage_grid],
        "protocol": cfg["protocol"], "status_codes": {str(k): v for k, v in STATUS_NAMES.items()},
        "sweep": cfg["sweep"],
    }
    if rate is not None:  # small (tens of numbers): the report's rate figure reads it from here
        attrs["rate_capability"] = json_safe(rate)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3, attributes=attrs)
    rows = max(1, min(n, 4096))
    arrays = {
        "inputs": (design.values.astype(np.float64), ("condition", "input")),
        "status": (status, ("condition",)),
        "capacity_Ah": (caps, ("condition", "cycle")),
        "soh": (soh_percent(caps), ("condition", "cycle")),
        "qv_capacity_Ah": (qv, ("condition", "early_cycle", "voltage")),
        "wall_time_s": (wall, ("condition",)),
    }
    for name, (data, dims) in arrays.items():
        chunks = (rows,) + tuple(max(1, s) for s in data.shape[1:])
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                 fill_value=np.nan if data.dtype.kind == "f" else 0,
                                 dimension_names=dims)
        arr[...] = data
    counts = {v: int(np.sum(status == k)) for k, v in STATUS_NAMES.items()}
    return {"schema": SWEEP_SCHEMA, "producer": prov["producer"], "created": prov["created"],
            "parameter_set": cfg["parameter_set"], "model": cfg["model"],
            "model_options": run_cfg.options, **cell, "input_names": design.names, "n_conditions": n, "counts": counts,
            "substitutions": substitutions, "conditions": conditions,
            **({"rate_capability": rate} if rate is not None else {})}
