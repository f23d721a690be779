"""``batterytwin denoise``: NLM-denoise a volume store into ``denoised.zarr``."""

from __future__ import annotations

import argparse
import logging

from ..cliargs import InputsOutputs, add_settings, arrange
from ..config import settings_from_args
from .config import DenoiseConfig

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "denoise",
        help="fast 3-D non-local means: volume.zarr -> denoised.zarr (float32)",
        description="Blockwise fast non-local means (Darbon et al. 2008) over a sharded volume store, "
        "shard by shard with exact halos (patch radius + search radius; reflection only at the volume "
        "borders), shards split over MPI ranks (run under srun/mpiexec). The noise sigma is estimated "
        "once for the whole volume; h is given directly or as h_factor * sigma, in the data's own units "
        "(the data are not rescaled). With --reference, PSNR and SSIM are recorded. Writes the store "
        "atomically and a JSON summary beside it.",
    )
    io = InputsOutputs(p)
    io.input(metavar="IN", positional=True, help="volume store (zarr v3, any real dtype, with voxel_size_um)")
    io.output(metavar="OUT", positional=True, help="output store, e.g. results/S/denoised.zarr")
    io.add("--reference", default=None,
           help="clean store of the same shape (e.g. results/S/clean.zarr): PSNR/SSIM recorded")
    io.add("--metrics", default=None, help="JSON summary path (default: denoise.json beside the output)")
    io.add("--work-dir", default=None,
           help="checkpoint folder (e.g. work/S/denoise): finished shards survive a restart")
    add_settings(p, DenoiseConfig, "denoise", flags={
        "--h": "h", "--h-factor": "h_factor", "--device": "device", "--threads": "threads",
        "--patch-size": "patch_size", "--search-radius": "search_radius", "--subtract-sigma": "subtract_sigma",
        "--compat": "compat", "--backend": "backend", "--chunk": "chunk", "--shard": "shard"})
    arrange(p, common=("--h", "--h-factor", "--device", "--threads"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = settings_from_args(args, DenoiseConfig, "denoise")
    from .driver import denoise_store

    summary = denoise_store(args.input, args.output, cfg, reference=args.reference, metrics_path=args.metrics,
                            work_dir=args.work_dir)
    m = summary.get("metrics")
    log.info("denoised %s -> %s: sigma %.4g, h %.4g%s", args.input, args.output, summary["noise_sigma"],
             summary["h"], f", PSNR {m['psnr_db']:.2f} dB, SSIM {m['ssim']:.4f}" if m else "")
    return 0
