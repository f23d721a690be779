"""OME-Zarr (OME-NGFF 0.5, zarr v3) export of a volume and its label images, for napari/neuroglancer.

Layout written (ome-zarr-py's writer)::

    volume.ome.zarr/            multiscales image "volume": s0 (full resolution), s1 (/2), s2 (/4) ...
        labels/<name>/          image-label multiscales (nearest-neighbour pyramid), class colours
                                and names as ``image-label`` ``colors`` / ``properties``

Physical scale: ``coordinateTransformations`` scale = voxel_size_um (micrometer) at s0, times the
downsampling factor at each level. The pyramid is computed by dask from the source store chunk
by chunk (memory bounded by a few chunks, not by the volume).

Example::

    export_ome("results/s1/volume.zarr", "results/s1/ome/volume.ome.zarr",
               labels={"segmentation": "results/s1/labels.zarr"}, levels=3)
    # napari results/s1/ome/volume.ome.zarr  (with the napari-ome-zarr plugin)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..distributed import World
from ..errors import InputError
from ..kinds import require_kind
from ..store import Volume, atomic_output, check_finite, check_labels, open_volume
from . import style

AXES = "zyx"
MAX_LEVELS = 16  # 2**16 downsampling: beyond any volume


def level_factors(shape, levels: int, min_size: int = 8) -> list[dict[str, int]]:
    """Isotropic factors 2, 4, ... for ``levels`` extra levels, stopping before an axis < ``min_size``."""
    out = []
    for k in range(1, int(levels) + 1):
        f = 2**k
        if min(shape) // f < min_size:
            break
        out.append({a: f for a in AXES})
    return out


def _rgba(colour: str) -> list[int]:
    import matplotlib.colors as mcolors

    return [int(round(255 * c)) for c in mcolors.to_rgba(colour)]


def label_metadata(vol: Volume) -> dict:
    """OME-NGFF ``image-label`` colours and properties from a label store's ``classes``."""
    classes = vol.classes
    return {
        "colors": [{"label-value": k, "rgba": _rgba(style.class_colour(k, n))} for k, n in sorted(classes.items())],
        "properties": [{"label-value": k, "class": n} for k, n in sorted(classes.items())],
    }


def _dask(vol: Volume):
    import dask.array as da

    return da.from_zarr(vol.array)


def export_ome(volume: os.PathLike | str, out: os.PathLike | str, labels: Mapping[str, os.PathLike | str] | None = None,
               levels: int = 3, chunk: int = 64) -> Path:
    """Write ``volume`` (and each label store of ``labels``: name -> path) as one OME-Zarr image.

    Raises:
        InputError: a store is missing/incomplete, or a label store's shape differs from the volume's.
    """
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image, write_labels
    import zarr

    if not isinstance(levels, int) or not 0 <= levels <= MAX_LEVELS:
        raise InputError(f"report ome: --levels must be an integer in 0..{MAX_LEVELS}, got {levels!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"report ome: --chunk must be an integer >= 1, got {chunk!r}")
    vol = open_volume(volume)
    require_kind(vol, "ct", "report ome --input")
    check_finite(vol)
    lab = {name: open_volume(p) for name, p in (labels or {}).items()}
    for name, lv in lab.items():
        require_kind(lv, "labels", f"report ome --labels {name}")
        if lv.shape != vol.shape:
            raise InputError(f"{lv.path}: label shape {lv.shape} differs from the volume {vol.path} {vol.shape}")
        if lv.array.dtype.kind not in "ui":
            raise InputError(f"{lv.path}: labels must be integers, got {lv.array.dtype}")
        check_labels(lv)
    factors = level_factors(vol.shape, levels)
    scale = dict(zip(AXES, (float(v) for v in vol.voxel_size_um)))
    units = {a: "micrometer" for a in AXES}
    chunks = tuple(min(int(chunk), s) for s in vol.shape)
    with atomic_output(out, World()) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        image = _dask(vol)
        # local mean: each coarse voxel is the mean of the fine voxels it covers (no aliasing)
        write_image(image, root, scale_factors=factors, method=Methods.LOCAL_MEAN, axes=AXES, scale=scale,
                    axes_units=units, storage_options={"chunks": chunks}, name=Path(str(volume)).name.split(".")[0])
        for name, lv in lab.items():
            write_labels(_dask(lv), root, name=name, scaler=None, scale_factors=factors, method=Methods.NEAREST,
                         axes=AXES, scale=scale, axes_units=units, storage_options={"chunks": chunks},
                         label_metadata=label_metadata(lv))
        root.attrs["batterytwin"] = {"source": str(volume), "labels": {k: str(v) for k, v in (labels or {}).items()},
                                     "voxel_size_um": vol.voxel_size_um,
                                     "producer": vol.attrs.get("producer", {}).get("stage")}
    return Path(out)
