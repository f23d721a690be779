"""Benchmark: batterytwin NLM (CPU torch path, and Triton on a GPU if present) vs scikit-image.

Prints Mvoxel/s for scikit-image's ``denoise_nl_means(fast_mode=True)`` (one core), the batterytwin
CPU path (all cores given by --workers) and, where CUDA is available, the fused Triton kernel and
the unfused torch path on the GPU, all measured in the same run on the same data, with the ratios.
scikit-image's cost is linear in voxels, so for large sizes it is timed on a crop
(``--skimage-max``) and reported per voxel. Default run: 48^3, patch 5 / radius 6 and
patch 7 / radius 10 (a few minutes on 2 cores).

    python bench/denoise.py                                  # default, CPU
    python bench/denoise.py --sizes 128 256 --gpu-sizes 256 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from skimage.restoration import denoise_nl_means

from batterytwin.denoise.driver import keep_freed_memory
from batterytwin.denoise.nlm import NLMParams, cpu_threads, nlm_padded_blocked, pad_reflect


def volume(n: int, seed: int = 0) -> np.ndarray:
    """Blocks of two grey levels plus Gaussian noise, in [0, 1] (float32)."""
    idx = np.indices((n, n, n))
    clean = 0.25 + 0.5 * (((idx[0] // 9) + (idx[1] // 11) + (idx[2] // 13)) % 2)
    rng = np.random.default_rng(seed)
    return np.clip(clean + 0.08 * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[48], help="CPU volume edges")
    ap.add_argument("--gpu-sizes", type=int, nargs="+", default=[256, 512], help="GPU volume edges")
    ap.add_argument("--configs", nargs="+", default=["5/6", "7/10"], help="patch/radius pairs")
    ap.add_argument("--skimage-max", type=int, default=128, help="time scikit-image on at most this edge")
    ap.add_argument("--workers", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--h", type=float, default=0.08)
    ap.add_argument("--out", default="bench/out/denoise.json")
    args = ap.parse_args()

    keep_freed_memory()
    workers = cpu_threads(args.workers)
    rows = []
    print(f"host: {platform.node()} cpus={workers} torch={torch.__version__} "
          f"load={os.getloadavg()[0]:.1f}", flush=True)
    for cfg in args.configs:
        s, d = (int(v) for v in cfg.split("/"))
        for n in args.sizes:
            x = volume(n)
            p = NLMParams(s, d, args.h, compat="skimage")
            xp = pad_reflect(torch.from_numpy(x), p.halo)
            t_bt = timed(lambda: nlm_padded_blocked(xp, p, workers))
            m = min(n, args.skimage_max)
            xs = x[:m, :m, :m].astype(np.float64)
            ref = None

            def run_sk():
                nonlocal ref
                ref = denoise_nl_means(xs, patch_size=s, patch_distance=d, h=args.h, fast_mode=True)

            t_sk = timed(run_sk)
            ours = nlm_padded_blocked(pad_reflect(torch.from_numpy(xs.astype(np.float32)), p.halo), p, workers)
            diff = float(np.abs(ours.numpy() - ref).max())
            row = {"patch": s, "radius": d, "size": n, "skimage_size": m,
                   "skimage_mvox_s": m ** 3 / t_sk / 1e6, "cpu_mvox_s": n ** 3 / t_bt / 1e6,
                   "cpu_workers": workers, "max_abs_diff_vs_skimage": diff}
            row["cpu_over_skimage"] = row["cpu_mvox_s"] / row["skimage_mvox_s"]
            rows.append(row)
            print(f"patch {s} radius {d} {n}^3: skimage {row['skimage_mvox_s']:.4f} Mvox/s (on {m}^3), "
                  f"batterytwin CPU x{workers} {row['cpu_mvox_s']:.4f} Mvox/s -> ratio {row['cpu_over_skimage']:.2f}x "
                  f"(float32 max |diff| {diff:.2e})", flush=True)
        if torch.cuda.is_available():
            from batterytwin.denoise.nlm import nlm_padded
            from batterytwin.denoise.nlm_triton import nlm_padded_triton

            name = torch.cuda.get_device_name()
            for n in args.gpu_sizes:
                x = torch.from_numpy(volume(n)).cuda()
                p = NLMParams(s, d, args.h, compat="skimage")
                xp = pad_reflect(x, p.halo)

                def sync(fn):
                    return lambda: (fn(), torch.cuda.synchronize())

                nlm_padded_triton(xp, p)  # compile
                t_tr = timed(sync(lambda: nlm_padded_triton(xp, p)), 2)
                t_pt = timed(sync(lambda: nlm_padded(xp, p)), 1) if n <= 256 else float("nan")
                row = {"patch": s, "radius": d, "size": n, "gpu": name, "triton_mvox_s": n ** 3 / t_tr / 1e6,
                       "torch_gpu_mvox_s": n ** 3 / t_pt / 1e6}
                rows.append(row)
                print(f"patch {s} radius {d} {n}^3 on {name}: Triton {row['triton_mvox_s']:.1f} Mvox/s, "
                      f"torch (one op per offset) {row['torch_gpu_mvox_s']:.1f} Mvox/s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
