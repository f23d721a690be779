"""Benchmark: peak RSS and cost of the microstructure stage (slab-wise reading) vs volume.

Per edge N: a phantom label store N^3 (ground-truth labels of the built-in cell phantom, written
shard by shard: chunk 64, shard 256 as the pipeline writes them), then ``batterytwin microstructure``
in a subprocess; its peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper process, as
bench/chain.py measures stages), wall and CPU time. ``--baseline DIR`` also runs the stage with
the package found under DIR/src (e.g. an export of main: ``git archive main src | tar -x -C DIR``)
on the same stores. Reported: bytes per voxel, the exponents of CPU time and of RSS - constant vs
voxels (bench/chain.py's fit), and the 2048 x 2560^2 frame's projection per rank (1 B/voxel for
the phase mask of the walk + the per-slab part measured here, scaled by the slab's Y * X).

A short walk by default (``--walkers 1024 --steps 200``, no extension): the walk's memory is the
phase mask and a few arrays per walker, independent of the walk's length; the CPU time then
measures the morphology passes plus a short walk (the walk's own cost is linear in walker-steps).

    python bench/microstructure_memory.py --sizes 128 256 512 [--baseline /tmp/main-src] \
        [--out bench/results/microstructure_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from chain import MEASURE, fit_exponent  # noqa: E402

from batterytwin import store  # noqa: E402
from batterytwin.distributed import World  # noqa: E402
from batterytwin.ingest.phantom import CLASSES, CellGeometry, PhantomParams  # noqa: E402

BIN = Path(sys.executable).parent
FRAME = (2048, 2560, 2560)


def write_labels(path: Path, shape, seed: int = 0) -> None:
    """Ground-truth phantom labels of ``shape``, one shard at a time."""
    geometry = CellGeometry.build(PhantomParams(shape=tuple(shape), seed=seed))
    attrs = store.volume_attrs("phantom", 0.5, classes={str(k): v for k, v in CLASSES.items()}, ignore_label=255)
    with store.atomic_output(path, World()) as tmp:
        arr = store.create_volume(tmp, tuple(shape), np.uint8, attrs)
        for region in store.shard_regions(arr.shape, arr.shards or arr.chunks):
            arr[region] = geometry.labels(region)


def run_stage(labels: Path, work: Path, src: Path, walk: list[str], ranks: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [str(BIN / "batterytwin"), "-q", "microstructure", "--labels", str(labels), "--output",
           str(work / "m.json"), "--msd", str(work / "msd.npz"), *walk]
    if ranks > 1:
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks), *cmd]
    out = subprocess.run([sys.executable, "-c", MEASURE, str(work / "log.txt"), *cmd], env=env,
                         capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    if rec["rc"] != 0:
        raise SystemExit(f"microstructure failed at {labels}: see {work / 'log.txt'}")
    rec["record"] = json.loads((work / "m.json").read_text())
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--walkers", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--wide", type=int, default=0, help="also run a Z x 2560 x 2560 store (the frame's planes): "
                    "its per-slab buffers are the frame's; the projection adds 1 B/voxel-level growth to it")
    ap.add_argument("--baseline", type=Path, default=None, help="a directory holding the reference src/")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "microstructure_memory.json")
    a = ap.parse_args()
    walk = ["--walkers", str(a.walkers), "--steps", str(a.steps), "--records", "8", "--batches", "4",
            "--bootstrap", "50", "--config-json",
            json.dumps({"walk": {"max_steps": a.steps, "max_walkers": a.walkers}})]
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-ms-"))
    variants = {"sharded": REPO / "src"}
    if a.baseline:
        variants["whole_volume"] = a.baseline / "src"
    rows: dict[str, list] = {k: [] for k in variants}
    shapes = [(e, e, e) for e in a.sizes] + ([(a.wide, *FRAME[1:])] if a.wide else [])
    wide = None
    for shape in shapes:
        edge = shape[1]
        tag = "x".join(map(str, shape)) if shape[0] != edge else str(edge)
        labels = work / f"labels{tag}.zarr"
        if not labels.exists():
            write_labels(labels, shape)
        for name, src in variants.items():
            if shape[0] != edge and name != "sharded":
                continue
            w = work / f"{name}{tag}"
            w.mkdir(parents=True, exist_ok=True)
            r = run_stage(labels, w, src, walk, a.ranks)
            rec = r.pop("record")
            vox = int(np.prod(shape))
            r.update(shape=list(shape), voxels=vox, bytes_per_voxel=r["peak_rss_mb"] * 2 ** 20 / vox,
                     tau_pore=[rec["tortuosity"]["pore"]["axes"][x]["tau"] for x in "zyx"]
                     if rec["tortuosity"].get("pore", {}).get("axes") else None,
                     n_clusters={k: v["n_clusters"] for k, v in rec.get("percolation", {}).items()})
            if shape[0] != edge:
                wide = r
            else:
                rows[name].append(r)
            print(f"{name:13s} {tag:>14s} wall {r['wall_s']:7.1f} s cpu {r['cpu_s']:7.1f} s "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB ({r['bytes_per_voxel']:.2f} B/voxel)", flush=True)
    out = {"ranks": a.ranks, "walk": {"walkers": a.walkers, "steps": a.steps, "note": "short fixed walk"},
           "store": {"chunk": store.DEFAULT_CHUNK, "shard": store.DEFAULT_SHARD}, "runs": rows, "wide": wide,
           "fits": {}}
    for name, rs in rows.items():
        if len(rs) < 2:
            continue
        vox = [r["voxels"] for r in rs]
        # RSS = constant + b * voxels, least squares over the sizes
        slope, base = np.polyfit(vox, [r["peak_rss_mb"] for r in rs], 1)
        fit = {"cpu_exponent": fit_exponent(vox, [r["cpu_s"] for r in rs]),
               "wall_exponent": fit_exponent(vox, [r["wall_s"] for r in rs]),
               "rss_constant_mb": float(base), "rss_bytes_per_voxel": float(slope * 2 ** 20)}
        if name == "sharded" and wide is not None:
            # the wide store has the frame's planes, so its slabs (and their buffers) are the frame's;
            # the frame adds the fitted per-voxel growth (the walk's bool phase mask: every rank holds
            # one of the whole frame) for its remaining voxels
            frame_vox = float(np.prod(FRAME))
            fit["frame_projection_gb_per_rank"] = (wide["peak_rss_mb"]
                                                  + slope * (frame_vox - wide["voxels"])) / 1024
            fit["frame_projection_note"] = (f"peak RSS of {wide['shape']} (the frame's 2560^2 planes: the same slab "
                                            "buffers) + fitted B/voxel x the frame's other voxels; the same on "
                                            "every rank whatever the rank count (16x4 ranks)")
        out["fits"][name] = fit
        print(name, json.dumps(fit, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
