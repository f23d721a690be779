"""Cost of verifying every chunk on read: a 256^3 store read with and without crc32c chunk checksums.

Writes the phantom's 256^3 float32 CT image with ``batterytwin phantom`` (chunks carry crc32c, the
shard index too), and a copy of the same data, chunks and shards without the chunk crc32c (zarr's
default codecs: the index keeps its crc32c). Then, alternating, reads each whole store the way stages
do (shard by shard) ``--repeats`` times, plus opening it (the metadata and manifest checks), and
reports the medians (wall and CPU seconds), the ratio and the overhead against a stage's wall time
(the 256^3 denoise of ``bench/results/chain-cpu-2026-11-28.json``).

    python bench/store_verify.py --size 256 --repeats 7 --out bench/results/store_verify-2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from batterytwin import store
from batterytwin.cli import main

CHAIN = Path(__file__).parent / "results" / "chain-cpu-2026-11-28.json"


def _read(path: Path, checked: bool) -> tuple[float, float, float]:
    """(open wall s, read wall s, read CPU s) of a whole store, shard by shard."""
    t0 = time.perf_counter()
    if checked:
        arr = store.open_volume(path).array
    else:
        arr = zarr.open_array(str(path / "0"), mode="r")
    t1, c1 = time.perf_counter(), time.process_time()
    total = 0.0
    for region in store.shard_regions(arr.shape, arr.shards):
        total += float(np.asarray(arr[region]).sum(dtype=np.float64))
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c1


def _stage_wall(size: int) -> float | None:
    try:
        stages = json.loads(CHAIN.read_text())["stages"]
        return float(stages["denoise"]["sizes"][str(size)]["wall_s"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def main_(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bt-store-verify-") as tmpdir:
        tmp = Path(tmpdir)
        checked, plain = tmp / "checked.zarr", tmp / "plain.zarr"
        t = time.perf_counter()
        assert main(["-q", "phantom", str(checked), "--shape", *[str(args.size)] * 3]) == 0
        write_checked = time.perf_counter() - t
        src = store.open_volume(checked).array
        t = time.perf_counter()
        dst = zarr.create_array(str(plain / "0"), shape=src.shape, dtype=src.dtype, chunks=src.chunks,
                                shards=src.shards, compressors=[zarr.codecs.ZstdCodec(level=0)], fill_value=0)
        for region in store.shard_regions(src.shape, src.shards):
            dst[region] = src[region]
        write_plain = time.perf_counter() - t
        meta = json.loads((plain / "0" / "zarr.json").read_text())
        assert {"name": "crc32c"} not in meta["codecs"][0]["configuration"]["codecs"]
        np.testing.assert_array_equal(dst[:8], src[:8])
        runs = {"crc32c": [], "plain": []}
        for _ in range(args.repeats):
            runs["crc32c"].append(_read(checked, True))
            runs["plain"].append(_read(plain, False))
        sizes = {k: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for k, p in
                 (("crc32c", checked), ("plain", plain))}
        # the checksum alone (what the crc32c codec computes on read), over every stored byte: low noise
        import google_crc32c

        blobs = [f.read_bytes() for f in (checked / "0" / "c").rglob("*") if f.is_file()]
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for b in blobs:
                google_crc32c.value(b)
            times.append(time.perf_counter() - t)
        crc_s = statistics.median(times)
    med = {k: {"open_s": statistics.median(r[0] for r in v), "read_wall_s": statistics.median(r[1] for r in v),
               "read_cpu_s": statistics.median(r[2] for r in v)} for k, v in runs.items()}
    overhead = (med["crc32c"]["read_wall_s"] + med["crc32c"]["open_s"]) - (med["plain"]["read_wall_s"]
                                                                           + med["plain"]["open_s"])
    stage = _stage_wall(args.size)
    result = {
        "command": "python bench/store_verify.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "host": {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg())},
        "shape": [args.size] * 3, "dtype": "float32", "chunk": list(src.chunks), "shard": list(src.shards),
        "repeats": args.repeats, "bytes_on_disk": sizes,
        "write_s": {"crc32c (batterytwin phantom, incl. rendering)": write_checked, "plain (copy)": write_plain},
        "median": med,
        "read_ratio_wall": med["crc32c"]["read_wall_s"] / med["plain"]["read_wall_s"],
        "read_ratio_cpu": med["crc32c"]["read_cpu_s"] / med["plain"]["read_cpu_s"],
        "overhead_s": overhead,
        "crc32c_compute_s": crc_s,
        "crc32c_compute_pct_of_read": 100.0 * crc_s / med["plain"]["read_wall_s"],
        "crc32c_compute_pct_of_stage": None if not stage else 100.0 * crc_s / stage,
        "note": "read_ratio and overhead_s are within run-to-run noise on this shared 2-core machine; "
                "crc32c_compute_s (google_crc32c over every stored byte) is the verification work itself",
        "stage_reference": {"denoise_256_wall_s": stage, "source": CHAIN.name},
        "overhead_pct_of_stage": None if not stage else 100.0 * overhead / stage,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main_()
