"""``batterytwin inspect PATH``: what a store holds, where it came from, and its value statistics."""

from __future__ import annotations

import argparse
import json

import numpy as np

from .store import open_volume


def describe(path: str, sample_voxels: int = 2_000_000) -> dict:
    """Shape, dtype, chunks/shards, voxel size, provenance and value statistics of a volume store.

    Statistics come from a strided subsample of at most ``sample_voxels`` voxels (bounded cost on
    huge stores); label stores also get per-class voxel fractions.
    """
    vol = open_volume(path, validate=False)
    arr = vol.array
    step = max(1, int(round((arr.size / sample_voxels) ** (1 / 3))))
    sample = np.asarray(arr[::step, ::step, ::step])
    info = {
        "path": str(vol.path),
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": list(arr.chunks),
        "shards": list(arr.shards or arr.chunks),
        "voxel_size_um": vol.attrs.get("voxel_size_um"),
        "producer": vol.attrs.get("producer"),
        "created": vol.attrs.get("created"),
        "source": {k: v for k, v in vol.attrs.get("source", {}).items() if k != "phantom"},
        "sample_stride": step,
        "statistics": {"min": float(sample.min()), "max": float(sample.max()),
                       "mean": float(sample.mean()), "std": float(sample.std())},
    }
    if "classes" in vol.attrs:
        counts = np.bincount(sample.ravel().astype(np.int64), minlength=256)
        info["class_fractions"] = {name: float(counts[int(k)] / sample.size) for k, name in vol.attrs["classes"].items()}
    return info


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="print a store's shape, dtype, chunks/shards, voxel size, provenance, statistics")
    p.add_argument("path", help="a batterytwin volume or label store (.zarr)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
