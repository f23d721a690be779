"""``batterytwin denoise``: NLM-denoise a volume store into ``denoised.zarr``."""

from __future__ import annotations

import argparse
import logging

from .driver import DenoiseConfig, denoise_store

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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", help="input volume store (zarr v3, any real dtype, with voxel_size_um)")
    p.add_argument("output", help="output store to write, e.g. results/S/denoised.zarr")
    p.add_argument("--patch-size", type=int, default=5, help="patch edge in voxels (odd, >= 1)")
    p.add_argument("--search-radius", type=int, default=6,
                   help="search radius d in voxels: offsets [-d, d]^3 (skimage's patch_distance)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--h", type=float, default=None, help="filtering strength in data units (overrides --h-factor)")
    g.add_argument("--h-factor", type=float, default=1.2, help="h = h_factor * estimated noise sigma")
    p.add_argument("--subtract-sigma", action="store_true",
                   help="subtract 2 sigma^2 from patch distances (skimage's sigma= argument)")
    p.add_argument("--compat", choices=["skimage"], default=None,
                   help="reproduce skimage.restoration.denoise_nl_means(fast_mode=True) exactly "
                   "(off-centre box, fast_exp, cut-off); default: centred patch, exact exp")
    p.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto",
                   help="auto: fused Triton kernel on CUDA, PyTorch on CPU")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: one GPU per local rank if CUDA is visible, else CPU")
    p.add_argument("--threads", type=int, default=0, help="CPU worker threads per rank (0: every core this rank may use; under MPI give cores per rank)")
    p.add_argument("--sigma-max-voxels", type=int, default=1 << 24,
                   help="noise estimate reads the whole volume up to this size, else a grid of 64^3 blocks")
    p.add_argument("--chunk", type=int, default=0, help="output chunk edge (0: as the input)")
    p.add_argument("--shard", type=int, default=0, help="output shard edge = unit of work per rank (0: as the input)")
    p.add_argument("--reference", default=None,
                   help="clean store of the same shape (e.g. results/S/clean.zarr): PSNR/SSIM recorded")
    p.add_argument("--metrics", default=None, help="JSON summary path (default: denoise.json beside the output)")
    p.add_argument("--work-dir", default=None,
                   help="checkpoint folder (e.g. work/S/denoise): finished shards survive a restart")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = DenoiseConfig(patch_size=args.patch_size, search_radius=args.search_radius, h=args.h,
                        h_factor=args.h_factor, subtract_sigma=args.subtract_sigma, compat=args.compat,
                        backend=args.backend, device=args.device, threads=args.threads,
                        sigma_max_voxels=args.sigma_max_voxels, chunk=args.chunk, shard=args.shard)
    summary = denoise_store(args.input, args.output, cfg, reference=args.reference, metrics_path=args.metrics,
                            work_dir=args.work_dir)
    m = summary.get("metrics")
    log.info("denoised %s -> %s: sigma %.4g, h %.4g%s", args.input, args.output, summary["noise_sigma"],
             summary["h"], f", PSNR {m['psnr_db']:.2f} dB, SSIM {m['ssim']:.4f}" if m else "")
    return 0
