"""``batterytwin inspect PATH``: what a store holds, where it came from, and its value statistics."""

from __future__ import annotations

import argparse
import json

import numpy as np

from .contracts import IGNORE_LABEL
from .errors import InputError
from .store import open_volume, read_region, verify_store


SAMPLE_VOXELS = 2_000_000  # statistics read at most this many voxels (a strided sample)


def describe(path: str, sample_voxels: int = SAMPLE_VOXELS, verify: bool = False) -> dict:
    """Shape, dtype, chunks/shards, voxel size, provenance and value statistics of a volume store.

    Statistics come from a strided subsample of at most ``sample_voxels`` voxels (bounded cost on
    huge stores). Label stores also get per-class voxel counts and fractions of the labelled voxels
    (:func:`label_statistics`); their unlabelled voxels (the ignore label) enter no statistic. With
    ``verify``, every file of the store is checked against its manifest (sizes and CRC-32s: reads
    the whole store).
    """
    vol = open_volume(path, validate=False)
    arr = vol.array
    if arr.ndim == 0 or arr.size == 0:
        raise InputError(f"{vol.path}: the array is empty (shape {tuple(arr.shape)})")
    verified = verify_store(vol.path, checksums=True) if verify else None
    step = max(1, int(round((arr.size / sample_voxels) ** (1 / 3))))
    sample = read_region(vol, (slice(None, None, step),) * arr.ndim)
    classes = vol.attrs.get("classes")
    is_labels = isinstance(classes, dict) and sample.dtype.kind in "iub"
    ignore = int(vol.attrs.get("ignore_label", IGNORE_LABEL))
    finite = (sample[sample != ignore] if is_labels else
              sample[np.isfinite(sample)] if sample.dtype.kind in "fc" else sample.ravel())
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
                       **({"unlabelled_in_sample": int(sample.size - finite.size)} if is_labels else
                          {"nonfinite_in_sample": int(sample.size - finite.size)})},
    }
    if verify:
        info["verified_files"] = verified
    if is_labels:
        info.update(label_statistics(finite, classes))
    return info


def label_statistics(labelled: np.ndarray, classes: dict) -> dict:
    """Voxel count and fraction of each class among the ``labelled`` voxels (ignore label removed).

    Args:
        classes: the store's ``classes`` attribute, id (a string in JSON) -> name.
    """
    ids, counts = np.unique(labelled, return_counts=True)
    found = dict(zip(ids.tolist(), counts.tolist()))
    total = max(labelled.size, 1)
    voxels = {name: found.get(int(cid), 0) if str(cid).lstrip("-").isdigit() else 0 for cid, name in classes.items()}
    return {"class_voxels": voxels, "class_fractions": {name: n / total for name, n in voxels.items()}}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="print a store's shape, dtype, chunks/shards, voxel size, provenance, statistics",
        description="Describe a volume or label store: shape, dtype, chunks and shards, voxel size, the "
        "producing stage and its source, and value statistics (min, max, mean, std) of a strided sample of "
        f"at most {SAMPLE_VOXELS:,} voxels. Label stores: voxel count and fraction of each class; unlabelled voxels "
        f"({IGNORE_LABEL}) are left out of every statistic and counted apart. Reads only; --verify reads "
        "the whole store.")
    p.add_argument("path", metavar="PATH", help="a batterytwin volume or label store (.zarr)")
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
