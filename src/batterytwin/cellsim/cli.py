"""``batterytwin simulate``: PyBaMM cycling sweeps parameterised by the measured microstructure."""

from __future__ import annotations

import argparse

from ..config_io import section_from_file, section_from_json

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


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="PyBaMM cycling sweep from microstructure.json -> sweep.zarr + sweep.json",
        description="Map the measured cathode/separator microstructure onto a PyBaMM parameter set "
        "(porosity, Bruggeman exponent from tortuosity, active fraction, thickness, particle radius), "
        "then simulate a grid or Latin-hypercube sweep of cycling conditions over the MPI ranks, "
        "with per-condition checkpoints for resuming.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--microstructure", required=True, help="microstructure.json of the sample")
    p.add_argument("-o", "--output", required=True, help="output sweep.zarr (written atomically)")
    p.add_argument("--summary", required=True, help="output sweep.json (per-condition status and messages)")
    p.add_argument("--work-dir", required=True,
                   help="per-condition results for resuming, e.g. work/{sample}/cellsim (kept between runs)")
    p.add_argument("--config", help="YAML or JSON file with the `cellsim` section")
    p.add_argument("--config-json", help="JSON object with `cellsim` settings (overrides --config)")
    p.set_defaults(func=run)


def load_section(path: str | None, text: str | None) -> dict:
    """The ``cellsim`` settings from a file and/or a JSON string (string keys win)."""
    cfg = section_from_file(path, "cellsim") if path else {}
    if text:
        cfg.update(section_from_json(text, "cellsim"))
    return cfg


def run(args) -> int:
    from .driver import simulate

    cfg = load_section(args.config, args.config_json)
    summary = simulate(args.microstructure, args.output, args.summary, args.work_dir, cfg)
    counts = summary["counts"]
    import logging

    logging.getLogger(__name__).info("sweep: %d conditions: %d ok, %d failed, %d time limit -> %s",
                                     summary["n_conditions"], counts["ok"], counts["failed"],
                                     counts["time_limit"], args.output)
    return 0
