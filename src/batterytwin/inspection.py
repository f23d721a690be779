"""``batterytwin inspect PATH``: what a store holds, where it came from, and its value statistics."""

from __future__ import annotations

import argparse
import json

import numpy as np

from .errors import InputError
from .store import open_volume, read_region, verify_store


def describe(path: str, sample_voxels: int = 2_000_000, verify: bool = False) -> dict:
    """Shape, dtype, chunks/shards, voxel size, provenance and value statistics of a volume store.

    Statistics come from a strided subsample of at most ``sample_voxels`` voxels (bounded cost on
    huge stores); label stores also get per-class voxel fractions. With ``verify``, every file of
    the store is checked against its manifest (sizes and CRC-32s: reads the whole store).
    """
    vol = open_volume(path, validate=False)
    arr = vol.array
    if arr.ndim == 0 or arr.size == 0:
        raise InputError(f"{vol.path}: the array is empty (shape {tuple(arr.shape)})")
    verified = verify_store(vol.path, checksums=True) if verify else None
    step = max(1, int(round((arr.size / sample_voxels) ** (1 / 3))))
    sample = read_region(vol, (slice(None, None, step),) * arr.ndim)
    finite = sample[np.isfinite(sample)] if sample.dtype.kind in "fc" else sample
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
        "statistics": {"min": float(finite.min()) if finite.size else None,
                       "max": float(finite.max()) if finite.size else None,
                       "mean": float(finite.mean()) if finite.size else None,
                       "std": float(finite.std()) if finite.size else None,
                       "nonfinite_in_sample": int(sample.size - finite.size)},
    }
    if verify:
        info["verified_files"] = verified
    if isinstance(vol.attrs.get("classes"), dict) and sample.dtype.kind in "iub":
        vals, cnt = np.unique(sample, return_counts=True)
        counts = dict(zip(vals.tolist(), cnt.tolist()))
        info["class_fractions"] = {name: counts.get(int(k) if str(k).lstrip("-").isdigit() else k, 0) / sample.size
                                   for k, name in vol.attrs["classes"].items()}
    return info


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="print a store's shape, dtype, chunks/shards, voxel size, provenance, statistics")
    p.add_argument("path", help="a batterytwin volume or label store (.zarr)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--verify", action="store_true",
                   help="check every file of the store against its manifest (sizes and CRC-32 checksums)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    info = describe(args.path, verify=args.verify)
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
