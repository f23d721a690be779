"""Benchmark: cellsim sweep throughput (conditions / hour / core) vs a naive PyBaMM loop.

Same run, same conditions (seeded Latin hypercube, SPMe with SEI growth):

- pipeline: ``mpiexec -n R batterytwin simulate`` (one model build per rank, ``[input]``
  parameters, dynamic load balancing), timed end to end (process start, imports, builds,
  per-condition checkpoints and the final sweep.zarr included), for R = 1 and R = --ranks;
- naive: a loop that builds a new ``pybamm.Simulation`` (string experiment, numbers) per
  condition and solves it, timed in this process after the imports (its start-up is free).

Prints conditions/hour/core for each, the ratio pipeline(1 rank) / naive (wall and CPU
seconds: on a shared machine the CPU ratio is the per-core figure), the 1 -> R rank speed-up and
the largest relative difference between the capacities of the two. The pipeline compiles its
model to C (``cellsim.compile``) into a fresh, empty AOT cache for each timed run, so the
compile time is inside its figures; ``--warm`` adds a 1-rank run on the filled cache (what a
rerun or another sample with the same parameters costs). Each run also counts its compiles: ``gcc``
is a wrapper that logs the calling process, so ``compiles`` / ``compiling_processes`` show one
compile per job (rank 0 compiles, the other ranks load its libraries).

Writes ``bench/results/cellsim-<date>.json`` (one entry per cycle count, merged into the file of
the day; ``--out`` to change).

Usage::

    python bench/cellsim.py                       # short: 10 conditions x 10 cycles
    python bench/cellsim.py --cycles 100          # the issue's 100-cycle sweep
    python bench/cellsim.py --cycles 500 --conditions 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
MICROSTRUCTURE = {
    "schema": "batterytwin.microstructure/1",
    "voxel_size_um": [0.5, 0.5, 0.5],
    "cell": {"stacking_axis": "z", "electrolyte_phase": "solid_electrolyte",
             "positive_electrode": {"thickness_um": 75.6, "electrolyte_volume_fraction": 0.30,
                                    "active_material_volume_fraction": 0.665, "porosity_void": 0.02,
                                    "tortuosity_electrolyte": 2.0, "bruggeman": None, "particle_radius_um": 5.22},
             "separator": {"thickness_um": 12.0, "electrolyte_volume_fraction": 0.47,
                           "tortuosity_electrolyte": None, "bruggeman": 1.5}},
}


def config(n: int, cycles: int, model: str) -> dict:
    # the naive loop below builds the Bruggeman-route cell; the set's own cathode needs no balancing
    # compile: one C build of the [input]-parameter model serves every condition (a naive loop,
    # with numbers baked into each condition's model, would compile once per condition)
    return {"model": model, "model_options": {"SEI": "ec reaction limited"}, "n_cycles": cycles,
            "transport": "bruggeman", "cell_form": "full_cell", "compile": True,
            "n_early": min(3, cycles),
            "sweep": {"method": "lhs", "n_samples": n, "seed": 1, "axes": {
                "discharge_c_rate": [0.5, 2.0], "charge_c_rate": [0.5, 1.0],
                "ambient_temperature_C": [15.0, 35.0],
                "SEI kinetic rate constant [m.s-1]": {"low": 1e-15, "high": 1e-13, "scale": "log"}}}}


def run_pipeline(tmp: Path, ranks: int, cfg_path: Path, ms_path: Path, tag: str,
                 cache: Path) -> tuple[float, float, float, Path, dict]:
    """Wall time end to end, CPU seconds of all ranks, wall time of the sweep phase (builds and
    solves, as logged by rank 0), the output path and the compile count (``gcc`` runs and the
    processes that ran them). ``cache``: PyBaMM's AOT cache directory."""
    out = tmp / f"sweep_{tag}.zarr"
    cmd = [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "batterytwin"), "simulate",
           "-i", str(ms_path), "-o", str(out), "--summary", str(tmp / f"sweep_{tag}.json"),
           "--work-dir", str(tmp / f"work_{tag}"), "--config", str(cfg_path)]
    wrap, log = _gcc_wrapper(tmp, tag)
    env = dict(os.environ, PATH=f"{wrap}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYBAMM_CASADI_AOT_CACHE=str(cache))
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"pipeline failed:\n{proc.stderr[-3000:]}")
    phase = re.search(r"sweep phase: .* in ([0-9.]+) s", proc.stderr)
    calls = [line.split()[0] for line in (log.read_text().splitlines() if log.exists() else []) if "-shared" in line]
    compiles = {"compiles": len(calls), "compiling_processes": len(set(calls))}
    return wall, cpu, float(phase.group(1)) if phase else math.nan, out, compiles


def _gcc_wrapper(tmp: Path, tag: str) -> tuple[Path, Path]:
    """A ``gcc`` that logs its parent process (the rank) and runs the real one."""
    import shutil

    wrap, log = tmp / f"gcc_{tag}", tmp / f"gcc_{tag}.log"
    wrap.mkdir(exist_ok=True)
    real = shutil.which("gcc")
    if real:
        (wrap / "gcc").write_text(f'#!/bin/sh\necho "$PPID $*" >> {log}\nexec {real} "$@"\n')
        (wrap / "gcc").chmod(0o755)
    return wrap, log


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes (mpiexec and its ranks)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_naive(cfg: dict, names: list[str], values: np.ndarray) -> tuple[float, float, np.ndarray]:
    """A new pybamm.Simulation per condition, as one would write it by hand."""
    import pybamm

    from batterytwin.cellsim.params import build_parameter_values, microstructure_substitutions

    base, _ = build_parameter_values("OKane2022", microstructure_substitutions(MICROSTRUCTURE, "bench"))
    caps = np.full((len(values), cfg["n_cycles"]), np.nan)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i, row in enumerate(values):
        c = dict(zip(names, row))
        pv = base.copy()
        t_k = c["ambient_temperature_C"] + 273.15
        pv.update({"Ambient temperature [K]": t_k, "Initial temperature [K]": t_k,
                   "SEI kinetic rate constant [m.s-1]": c["SEI kinetic rate constant [m.s-1]"]})
        cycle = (f"Discharge at {c['discharge_c_rate']}C until 2.5 V", "Rest for 5 minutes",
                 f"Charge at {c['charge_c_rate']}C until 4.2 V", "Hold at 4.2 V until C/50",
                 "Rest for 5 minutes")
        model = getattr(pybamm.lithium_ion, cfg["model"])(cfg["model_options"])
        sim = pybamm.Simulation(model, experiment=pybamm.Experiment([cycle] * cfg["n_cycles"]),
                                parameter_values=pv)
        sol = sim.solve()
        for k, cyc in enumerate(sol.cycles):
            q = cyc.steps[0]["Discharge capacity [A.h]"].entries
            caps[i, k] = q[-1] - q[0]
    return time.perf_counter() - t0, time.process_time() - cpu0, caps


def bench_one(args, cycles: int) -> dict:
    """One cycle count: pipeline 1 rank, R ranks (cold AOT caches), optionally warm, and naive."""
    import zarr

    cfg = config(args.conditions, cycles, args.model)
    n = args.conditions
    rec: dict = {"conditions": n, "cycles": cycles, "model": args.model, "options": cfg["model_options"],
                 "ranks": args.ranks, "cores_visible": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench_cellsim_") as d:
        tmp = Path(d)
        ms_path = tmp / "microstructure.json"
        ms_path.write_text(json.dumps(MICROSTRUCTURE))
        cfg_path = tmp / "cellsim.json"
        cfg_path.write_text(json.dumps({"cellsim": cfg}))
        print(f"cellsim bench: {n} conditions x {cycles} cycles, {args.model} + SEI, "
              f"{os.cpu_count()} cores visible, load average {rec['load_avg_start']:.1f}", flush=True)
        wall1, cpu1, phase1, out1, comp1 = run_pipeline(tmp, 1, cfg_path, ms_path, "1", tmp / "aot_1")
        g = zarr.open_group(str(out1), mode="r")
        names, values = list(g.attrs["input_names"]), g["inputs"][...]
        caps1, status = g["capacity_Ah"][...], g["status"][...]
        print(f"pipeline 1 rank : {wall1:7.1f} s wall end to end ({phase1:.1f} s sweep phase), {cpu1:7.1f} CPU s: "
              f"{n / (wall1 / 3600):8.1f} conditions/h/core (wall), {n / (cpu1 / 3600):8.1f} per CPU-hour "
              f"({int(np.sum(status == 1))} ok)", flush=True)
        wallr, cpur, phaser, outr, compr = run_pipeline(tmp, args.ranks, cfg_path, ms_path, str(args.ranks),
                                                        tmp / f"aot_{args.ranks}")
        capsr = zarr.open_group(str(outr), mode="r")["capacity_Ah"][...]
        same = bool(np.allclose(capsr, caps1, rtol=1e-9, equal_nan=True))
        print(f"pipeline {args.ranks} ranks: {wallr:7.1f} s wall end to end ({phaser:.1f} s sweep phase), "
              f"{cpur:7.1f} CPU s: {n / (wallr / 3600) / args.ranks:8.1f} conditions/h/core (wall), "
              f"{n / (cpur / 3600):8.1f} per CPU-hour; same results as 1 rank: {same}", flush=True)
        print(f"speed-up 1 -> {args.ranks} ranks: {wall1 / wallr:.2f}x end to end, {phase1 / phaser:.2f}x sweep "
              f"phase (goal >= 1.8x); CPU work {cpur / cpu1:.2f}x of 1 rank; compiles: 1 rank {comp1['compiles']}, "
              f"{args.ranks} ranks {compr['compiles']} in {compr['compiling_processes']} process(es)", flush=True)
        rec["pipeline_1"] = {"wall_s": wall1, "cpu_s": cpu1, "sweep_phase_s": phase1, "ok": int(np.sum(status == 1)),
                             **comp1}
        rec[f"pipeline_{args.ranks}"] = {"wall_s": wallr, "cpu_s": cpur, "sweep_phase_s": phaser,
                                         "same_as_1_rank": same, **compr}
        rec["speedup_ranks_wall"] = wall1 / wallr
        rec["speedup_ranks_sweep_phase"] = phase1 / phaser
        if args.warm:
            wallw, cpuw, phasew, _, compw = run_pipeline(tmp, 1, cfg_path, ms_path, "warm", tmp / "aot_1")
            print(f"pipeline 1 rank, warm AOT cache: {wallw:7.1f} s wall end to end ({phasew:.1f} s sweep phase), "
                  f"{cpuw:7.1f} CPU s", flush=True)
            rec["pipeline_1_warm"] = {"wall_s": wallw, "cpu_s": cpuw, "sweep_phase_s": phasew, **compw}
        if args.skip_naive:
            return rec
        walln, cpun, capsn = run_naive(cfg, names, values)
        ok = status == 1
        rel = float(np.nanmax(np.abs(caps1[ok] - capsn[ok]) / capsn[ok])) if ok.any() else math.nan
        print(f"naive loop      : {walln:7.1f} s wall (after imports), {cpun:7.1f} CPU s: "
              f"{n / (walln / 3600):8.1f} conditions/h/core (wall), {n / (cpun / 3600):8.1f} per CPU-hour",
              flush=True)
        print(f"pipeline (1 rank) / naive: {walln / wall1:.2f}x wall end to end, {walln / phase1:.2f}x sweep "
              f"phase, {cpun / cpu1:.2f}x CPU (goal >= 3x); max relative capacity difference: {rel:.2e}", flush=True)
        rec["naive"] = {"wall_s": walln, "cpu_s": cpun}
        rec["ratio_vs_naive"] = {"wall_end_to_end": walln / wall1, "wall_sweep_phase": walln / phase1,
                                 "cpu": cpun / cpu1}
        if args.warm:
            rec["ratio_vs_naive"]["cpu_warm_cache"] = cpun / rec["pipeline_1_warm"]["cpu_s"]
            print(f"pipeline (1 rank, warm cache) / naive: {cpun / rec['pipeline_1_warm']['cpu_s']:.2f}x CPU",
                  flush=True)
        rec["max_rel_capacity_difference"] = rel
    rec["load_avg_end"] = os.getloadavg()[0]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", type=int, default=10, help="number of sweep conditions (default 10)")
    ap.add_argument("--cycles", type=int, nargs="+", default=[10],
                    help="cycles per condition, one run each (default 10; the issue: 100 and 500)")
    ap.add_argument("--ranks", type=int, default=2, help="ranks of the scaled run (default 2)")
    ap.add_argument("--model", default="SPMe", choices=["SPM", "SPMe", "DFN"])
    ap.add_argument("--skip-naive", action="store_true", help="time only the pipeline")
    ap.add_argument("--warm", action="store_true", help="also time 1 rank on the filled AOT cache")
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/cellsim-<date>.json)")
    args = ap.parse_args()

    out = Path(args.out or ROOT / "bench" / "results" / f"cellsim-{datetime.date.today().isoformat()}.json")
    for cycles in args.cycles:
        rec = bench_one(args, cycles)
        runs = json.loads(out.read_text())["runs"] if out.exists() else {}
        runs[f"{args.model}-{args.conditions}x{cycles}"] = dict(rec, command=" ".join(sys.argv))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"bench": "cellsim", "runs": runs}, indent=1) + "\n")
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
