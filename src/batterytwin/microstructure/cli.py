"""``batterytwin microstructure``: labels.zarr -> microstructure.json + msd.npz."""

from __future__ import annotations

import argparse
import json
import logging

from ..distributed import get_world
from ..errors import InputError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "microstructure",
        help="random-walk tortuosity, volume fractions, surface areas, percolation, lithium statistics",
        description="Measure a segmented volume: random-walk tortuosity tensor of each transport phase "
        "(TauFactor convention tau = eps*D_bulk/D_eff, with bootstrap uncertainty and a linear-regime "
        "check), the cell block for cellsim (positive electrode and separator along z), volume fractions, "
        "interface areas (marching cubes), percolation, layers, particle radii and redeposited-lithium "
        "(dendrite) statistics. Walker batches are split over MPI ranks (run under srun/mpiexec).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--labels", required=True,
                   help="input label store (labels.zarr: uint8, 'classes' and voxel_size_um attributes)")
    p.add_argument("--output", required=True, help="output microstructure.json")
    p.add_argument("--msd", required=True, help="output msd.npz (MSD curves per region/phase)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="directory for finished walker batches (reused on rerun); e.g. work/{sample}/microstructure")
    p.add_argument("--previous", default=None,
                   help="previous frame's microstructure.json (time series): adds lithium growth between frames")
    p.add_argument("--params", default=None,
                   help="JSON object with the whole 'microstructure' config section; the flags below override it")
    p.add_argument("--phases", nargs="+", default=None, help="transport phases (class names) to walk in, whole volume "
                   "[default: pore solid_electrolyte]")
    p.add_argument("--electrolyte-phase", default=None, help="electrolyte class for the cell block [solid_electrolyte]")
    p.add_argument("--model", choices=["lattice", "offlattice"], default=None,
                   help="walk model: lattice (pytrax-like rejection) or offlattice (specular reflection) [lattice]")
    p.add_argument("--boundary", choices=["mirror", "periodic"], default=None, help="outer boundaries [mirror]")
    p.add_argument("--walkers", type=int, default=None, help="number of walkers [16384]")
    p.add_argument("--steps", type=int, default=None, help="steps per walker [4000]")
    p.add_argument("--records", type=int, default=None, help="MSD records [40]")
    p.add_argument("--batches", type=int, default=None, help="walker batches (MPI/checkpoint/bootstrap unit) [16]")
    p.add_argument("--step-length", type=float, default=None, help="off-lattice step in smallest voxel edges [0.5]")
    p.add_argument("--fit-start", type=float, default=None, help="Einstein fit over t in [fit_start*T, T] [0.5]")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples [400]")
    p.add_argument("--seed", type=int, default=None, help="seed of walker starts and steps [0]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="walk device [auto]")
    p.add_argument("--backend", choices=["auto", "c", "torch", "triton"], default=None,
                   help="walk kernel: auto = C on CPU, Triton (lattice) or torch on GPU [auto]")
    p.add_argument("--no-surface-area", action="store_true", help="skip marching-cubes interface areas")
    p.set_defaults(func=run)


_WALK_FLAGS = {"model": "model", "boundary": "boundary", "walkers": "n_walkers", "steps": "n_steps",
               "records": "n_records", "batches": "n_batches", "step_length": "step_length",
               "fit_start": "fit_start", "bootstrap": "n_bootstrap", "seed": "seed", "device": "device",
               "backend": "backend"}


def params_from_args(args) -> "MicrostructureParams":
    from .driver import MicrostructureParams

    try:
        section = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"--params: not a JSON object ({exc})") from None
    if not isinstance(section, dict):
        raise InputError("--params: must be a JSON object (the 'microstructure' config section)")
    walk = dict(section.get("walk") or {})
    for flag, key in _WALK_FLAGS.items():
        if getattr(args, flag) is not None:
            walk[key] = getattr(args, flag)
    section["walk"] = walk
    if args.phases:
        section["phases"] = args.phases
    if args.electrolyte_phase:
        section["electrolyte_phase"] = args.electrolyte_phase
    if args.no_surface_area:
        section["surface_area"] = False
    try:
        return MicrostructureParams.from_dict(section)
    except TypeError as exc:
        raise InputError(f"microstructure config: {exc}") from None


def run(args) -> int:
    from .driver import run as drive

    params = params_from_args(args)
    params.walk.check()
    record = drive(args.labels, args.output, args.msd, params, args.checkpoint_dir, get_world(),
                   previous_json=args.previous or None)
    for name, t in record["tortuosity"].items():
        log.info("%s: tau z/y/x = %s", name,
                 [t["axes"][a]["tau"] for a in ("z", "y", "x")] if t["axes"] else t.get("flag"))
    return 0
