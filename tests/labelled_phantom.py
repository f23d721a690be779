"""Phantom volume and label stores written as ingest writes them: the segmentation tests' inputs."""

from __future__ import annotations

from pathlib import Path

from batterytwin import store
from batterytwin.distributed import World
from batterytwin.ingest.phantom import CLASSES, make_phantom


def write_stores(root: Path, shape=(32, 32, 32), seed=0, labels=None, classes=None):
    """Phantom volume + label stores (tests' stand-in for ingest), small chunks and shards."""
    img, lab = make_phantom(shape, seed=seed)
    lab = lab if labels is None else labels
    classes = classes or {str(k): v for k, v in CLASSES.items()}
    vol_p, lab_p = root / f"volume{seed}.zarr", root / f"truth{seed}.zarr"
    with store.atomic_output(vol_p, World()) as t:
        store.create_volume(t, img.shape, "float32", store.volume_attrs("ingest", 0.5), chunk=16, shard=16)[...] = img
    with store.atomic_output(lab_p, World()) as t:
        store.create_volume(t, lab.shape, "uint8", store.volume_attrs("ingest", 0.5, classes=classes,
                                                                        ignore_label=255),
                            chunk=16, shard=16)[...] = lab
    return vol_p, lab_p
