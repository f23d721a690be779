"""``batterytwin microstructure``: labels.zarr -> microstructure.json + msd.npz."""

from __future__ import annotations

import logging

from ..cliargs import InputsOutputs, add_settings, arrange
from ..config import settings_from_args
from ..distributed import get_world
from .config import MicrostructureConfig

log = logging.getLogger(__name__)


HELP = "random-walk tortuosity, volume fractions, surface areas, percolation, lithium statistics"
DESCRIPTION = ("Measure a segmented volume: random-walk tortuosity tensor of each transport phase "
               "(TauFactor convention tau = eps*D_bulk/D_eff, with bootstrap uncertainty and a linear-regime "
               "check), the cell block for cellsim (positive electrode and separator along z), volume fractions, "
               "interface areas (marching cubes), percolation, layers, particle radii and redeposited-lithium "
               "(dendrite) statistics. Walker batches are split over MPI ranks (run under srun/mpiexec).")


def register(subparsers) -> None:
    p = subparsers.add_parser("microstructure", help=HELP, description=DESCRIPTION)
    io = InputsOutputs(p)
    io.input("labels", metavar="ZARR", old=("--labels",),
             help="label store (labels.zarr: uint8, 'classes' and voxel_size_um attributes)")
    io.output(metavar="JSON", help="output microstructure.json")
    io.add("--msd", required=True, metavar="NPZ", help="output msd.npz (MSD curves per region/phase)")
    io.add("--previous", default=None, metavar="JSON",
           help="previous frame's microstructure.json (time series): adds lithium growth between frames")
    p.add_argument("--checkpoint-dir", default=None,
                   help="directory for finished walker batches (reused on rerun); e.g. work/{sample}/microstructure")
    add_settings(p, MicrostructureConfig, "microstructure", listed=("",), flags={
        "--phases": "phases", "--electrolyte-phase": "electrolyte_phase", "--surface-area": "surface_area",
        "--model": "walk.model", "--boundary": "walk.boundary", "--walkers": "walk.n_walkers",
        "--steps": "walk.n_steps", "--records": "walk.n_records", "--batches": "walk.n_batches",
        "--step-length": "walk.step_length", "--fit-start": "walk.fit_start", "--bootstrap": "walk.n_bootstrap",
        "--seed": "walk.seed", "--device": "walk.device", "--backend": "walk.backend"})
    arrange(p, common=("--phases", "--walkers", "--steps", "--device", "--checkpoint-dir"))
    p.set_defaults(func=run)


def run(args) -> int:
    from .driver import run as drive

    params = settings_from_args(args, MicrostructureConfig, "microstructure")
    record = drive(args.labels, args.output, args.msd, params, args.checkpoint_dir, get_world(),
                   previous_json=args.previous or None)
    for name, t in record["tortuosity"].items():
        log.info("%s: tau z/y/x = %s", name,
                 [t["axes"][a]["tau"] for a in ("z", "y", "x")] if t["axes"] else t.get("flag"))
    return 0
