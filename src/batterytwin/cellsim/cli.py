"""``batterytwin simulate``: PyBaMM cycling sweeps parameterised by the measured microstructure."""

from __future__ import annotations

from ..cliargs import InputsOutputs, add_settings, arrange
from ..config import settings_from_args
from .config import CellsimConfig

EPILOG = """\
The settings are the `cellsim` section of the pipeline config: give it as a YAML/JSON file
(--config; a file with a top-level `cellsim:` key or the section itself) and/or as a JSON string
(--config-json: its top-level keys replace the file's). Unset keys take the defaults in
docs/cellsim.md.

Examples:
  batterytwin simulate -i results/s1/microstructure.json -o results/s1/sweep.zarr \\
      --summary results/s1/sweep.json --work-dir work/s1/cellsim --config config.yaml
  mpiexec -n 8 batterytwin simulate ... --config-json '{"n_cycles": 500}'

A rerun with the same settings computes only the conditions missing from --work-dir.
"""


HELP = "PyBaMM cycling sweep from microstructure.json -> sweep.zarr + sweep.json"
DESCRIPTION = ("Map the measured cathode/separator microstructure onto a PyBaMM parameter set "
               "(porosity, Bruggeman exponent from tortuosity, active fraction, thickness, particle radius), "
               "then simulate a grid or Latin-hypercube sweep of cycling conditions over the MPI ranks, "
               "with per-condition checkpoints for resuming.")


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help=HELP, description=DESCRIPTION, epilog=EPILOG)
    io = InputsOutputs(p)
    io.input("microstructure", metavar="JSON", old=("--microstructure",), help="microstructure.json of the sample")
    io.output(metavar="ZARR", help="output sweep.zarr (written atomically)")
    io.add("--summary", required=True, metavar="JSON", help="output sweep.json (per-condition status and messages)")
    io.add("--work-dir", required=True, metavar="DIR",
           help="per-condition results for resuming, e.g. work/{sample}/cellsim (kept between runs)")
    add_settings(p, CellsimConfig, "cellsim", flags={"--cycles": "n_cycles", "--model": "model"})
    arrange(p, common=("--cycles", "--model"))
    p.set_defaults(func=run)


def run(args) -> int:
    from .driver import simulate

    cfg = settings_from_args(args, CellsimConfig, "cellsim").model_dump()
    summary = simulate(args.microstructure, args.output, args.summary, args.work_dir, cfg)
    counts = summary["counts"]
    import logging

    logging.getLogger(__name__).info("sweep: %d conditions: %d ok, %d failed, %d time limit -> %s",
                                     summary["n_conditions"], counts["ok"], counts["failed"],
                                     counts["time_limit"], args.output)
    return 0
