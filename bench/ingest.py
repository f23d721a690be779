"""Ingest throughput and memory: batterytwin's streamed ingest vs read-all-then-write, same data.

Writes a TIFF stack of ``--size-mb`` (uint16 slices), then in separate processes (so peak RSS is
each one's own): (a) ``batterytwin ingest`` of the stack at half and full size, (b) the plain way,
``tifffile.imread`` of the whole stack + one zarr write with the same chunks/shards. Prints MB/s,
the ratio, and peak RSS as the volume doubles.

    python bench/ingest.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

PLAIN = """
import sys, time, resource, tifffile, zarr, numpy as np
from pathlib import Path
src, out, chunk, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
files = sorted(Path(src).glob('*.tif'))
vol = tifffile.imread(files)  # the whole stack in memory
a = zarr.create_array(out, shape=vol.shape, dtype=vol.dtype, chunks=(chunk,)*3, shards=(shard,)*3)
a[:] = vol
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

OURS = """
import sys, time, resource
from batterytwin.cli import main
t = time.perf_counter()
code = main(['-q', 'ingest', sys.argv[1], sys.argv[2], '--voxel-size-um', '1', '--chunk', sys.argv[3],
             '--shard', sys.argv[4], '--max-memory-mb', sys.argv[5]])
assert code == 0
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_stack(folder: Path, n_slices: int, plane: int, seed: int = 0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base = (rng.normal(20000, 3000, (plane, plane))).astype(np.uint16)
    for z in range(n_slices):  # smooth-ish content with noise, like a reconstruction
        tifffile.imwrite(folder / f"s_{z:05d}.tif", base + rng.integers(0, 500, (plane, plane), dtype=np.uint16))


def run(code: str, *args: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    seconds, rss_kb = out.stdout.split()[-2:]
    return float(seconds), float(rss_kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=1024)
    ap.add_argument("--plane", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--shard", type=int, default=256)
    ap.add_argument("--max-memory-mb", type=float, default=256)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bt-bench-ingest-"))
    try:
        n_full = int(args.size_mb * 2**20 / (args.plane**2 * 2))
        results = {}
        for label, n in (("half", n_full // 2), ("full", n_full)):
            make_stack(tmp / label, n, args.plane)
            mb = n * args.plane**2 * 2 / 2**20
            t, rss = run(OURS, str(tmp / label), str(tmp / f"{label}_ours.zarr"), str(args.chunk), str(args.shard),
                         str(args.max_memory_mb))
            results[f"ours_{label}"] = {"MB": mb, "s": t, "MB_per_s": mb / t, "peak_rss_MB": rss}
            if label == "full":
                t, rss = run(PLAIN, str(tmp / label), str(tmp / "plain.zarr"), str(args.chunk), str(args.shard))
                results["plain_full"] = {"MB": mb, "s": t, "MB_per_s": mb / t, "peak_rss_MB": rss}
            shutil.rmtree(tmp / label)
        ours, plain = results["ours_full"], results["plain_full"]
        print(json.dumps(results, indent=2))
        print(f"ingest {ours['MB']:.0f} MB TIFF stack: batterytwin {ours['MB_per_s']:.0f} MB/s, "
              f"plain tifffile+zarr {plain['MB_per_s']:.0f} MB/s, ratio {ours['MB_per_s'] / plain['MB_per_s']:.2f}x")
        print(f"peak RSS: batterytwin {results['ours_half']['peak_rss_MB']:.0f} MB at {results['ours_half']['MB']:.0f} MB, "
              f"{ours['peak_rss_MB']:.0f} MB at {ours['MB']:.0f} MB; plain {plain['peak_rss_MB']:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
