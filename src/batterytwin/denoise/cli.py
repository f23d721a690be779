"""``batterytwin denoise``: NLM-denoise a volume store into ``denoised.zarr``."""

from __future__ import annotations

import argparse
import logging

from ..config import add_config_arguments, settings_from_args
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
    p.add_argument("input", help="input volume store (zarr v3, any real dtype, with voxel_size_um)")
    p.add_argument("output", help="output store to write, e.g. results/S/denoised.zarr")
    add_config_arguments(p, DenoiseConfig, "denoise", flags={
        "--patch-size": "patch_size", "--search-radius": "search_radius", "--h": "h", "--h-factor": "h_factor",
        "--subtract-sigma": "subtract_sigma", "--compat": "compat", "--backend": "backend", "--device": "device",
        "--threads": "threads", "--chunk": "chunk", "--shard": "shard"})
    p.add_argument("--reference", default=None,
                   help="clean store of the same shape (e.g. results/S/clean.zarr): PSNR/SSIM recorded")
    p.add_argument("--metrics", default=None, help="JSON summary path (default: denoise.json beside the output)")
    p.add_argument("--work-dir", default=None,
                   help="checkpoint folder (e.g. work/S/denoise): finished shards survive a restart")
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
