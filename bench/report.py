"""Benchmark of the report stage: bounded reads for figures, and the OME-Zarr export.

1. Orthogonal-slice figure of an N^3 float32 store (three planes read) against the reference of
   reading the whole volume and slicing it in memory (what a naive figure script does).
2. OME-Zarr export (dask, chunk by chunk) throughput in MB/s against the reference of reading the
   whole volume and building the same local-mean pyramid in memory with scikit-image.

    python bench/report.py              # N = 256 (about a minute here)
    python bench/report.py --size 512   # bigger
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_store(path: Path, n: int, chunk: int, shard: int):
    from batterytwin import store

    attrs = store.volume_attrs("bench", 0.5, {"n": n}, {"path": "synthetic"})
    arr = store.create_volume(path, (n, n, n), "float32", attrs, chunk=chunk, shard=shard)
    rng = np.random.default_rng(0)
    for region in store.shard_regions(arr.shape, arr.shards):
        arr[region] = rng.random(tuple(s.stop - s.start for s in region), dtype=np.float32)
    return store.open_volume(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="edge of the cubic test volume")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--shard", type=int, default=128)
    ap.add_argument("--levels", type=int, default=2, help="OME-Zarr extra levels")
    args = ap.parse_args()

    from skimage.transform import downscale_local_mean

    from batterytwin.report import style, volumes
    from batterytwin.report.ome import export_ome

    tmp = Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        n = args.size
        vol = make_store(tmp / "v.zarr", n, args.chunk, args.shard)
        mb = n**3 * 4 / 1e6
        print(f"volume {n}^3 float32 ({mb:.0f} MB), chunks {vol.array.chunks}, shards {vol.shards}")

        t0 = time.perf_counter()
        fig = volumes.plot_orthoslices([volumes.Panel("raw", vol)])
        style.save(fig, tmp / "slices.png")
        t_fig = time.perf_counter() - t0
        t0 = time.perf_counter()
        whole = np.asarray(vol.array[:])
        c = n // 2
        _ = (whole[c].copy(), whole[:, c].copy(), whole[:, :, c].copy())
        t_ref = time.perf_counter() - t0
        print(f"slices figure (3 planes read + draw + PNG): {t_fig:.2f} s; reference read whole volume + slice "
              f"(no drawing): {t_ref:.2f} s; ratio reference/figure {t_ref / t_fig:.2f}")

        t0 = time.perf_counter()
        export_ome(tmp / "v.zarr", tmp / "v.ome.zarr", levels=args.levels, chunk=args.chunk)
        t_ome = time.perf_counter() - t0
        t0 = time.perf_counter()
        whole = np.asarray(vol.array[:])
        pyramid = [whole]
        for _ in range(args.levels):
            pyramid.append(downscale_local_mean(pyramid[-1], (2, 2, 2)).astype(np.float32))
        t_ref = time.perf_counter() - t0
        print(f"OME-Zarr export ({args.levels} extra levels, written): {t_ome:.2f} s = {mb / t_ome:.0f} MB/s; "
              f"reference in-memory pyramid (read + skimage, nothing written): {t_ref:.2f} s; "
              f"ratio {t_ome / t_ref:.2f}x the reference time, memory bounded by chunks instead of the volume")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
