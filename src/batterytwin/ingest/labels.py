"""Hand-label import: a label image in any ingest format -> a label store (uint8, ``classes``, 255).

``batterytwin ingest -i LABELS -o OUT --labels --classes pore=0,solid_electrolyte=1 --like VOLUME`` reads
the label image with the ingest readers (TIFF folder, multi-page TIFF, HDF5, ``.npy``, raw), slab by
slab (memory bounded like a volume ingest), and writes a store in the format of the phantom's truth
store and of the network's output: ``uint8``, attribute ``classes`` (``{"0": "pore", ...}``),
``ignore_label`` 255 (unlabelled voxels).

Checks, each one :class:`~batterytwin.errors.InputError` line, with nothing left at the output path:

- every id of the image is a class of the map (or 255, or the ``unlabelled`` id): an unknown id is
  named with the number of voxels that carry it;
- the class map names each class once and each id once, ids in 0..254;
- the image has the shape of the sample's volume store (``like``, after the same ``crop``), whose
  voxel size the label store takes.

The store's ``label_counts`` attribute holds the voxels of each class and the unlabelled ones.

Example::

    reader = open_reader("scan_labels.tif")
    import_labels(reader, "results/s1/hand_labels.zarr", parse_class_map("0=pore,1=solid_electrolyte"),
                  like="results/s1/volume.zarr")
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from .. import store
from ..contracts import CLASSES, IGNORE_LABEL, format_class_map
from ..distributed import World
from ..errors import InputError
from ..progress import progress
from .driver import parse_crop

log = logging.getLogger(__name__)


def parse_class_map(text: str | Mapping | None, where: str = "--classes") -> dict[int, str]:
    """Class map from ``"0=pore,1=solid_electrolyte"``, an id -> name or a name -> id mapping.

    ``None`` gives the contract's classes (:data:`~batterytwin.contracts.CLASSES`).

    Raises:
        InputError: a malformed item, an id outside 0..254, an id or a class named twice.
    """
    if text is None:
        return dict(CLASSES)
    if isinstance(text, Mapping):
        items = [(v, k) if isinstance(v, int) and not isinstance(k, int) else (k, v) for k, v in text.items()]
    else:
        items = []
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            key, sep, name = part.partition("=")
            if not sep or not name.strip():
                raise InputError(f"{where}: expected ID=NAME items separated by commas, got {part!r}")
            items.append((key.strip(), name.strip()))
    if not items:
        raise InputError(f"{where}: the class map is empty")
    out: dict[int, str] = {}
    seen: dict[str, int] = {}
    for key, name in items:
        try:
            cid = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{where}: class id {key!r} is not an integer") from None
        name = str(name)
        if not 0 <= cid < IGNORE_LABEL:
            raise InputError(f"{where}: class id {cid} of '{name}' is outside 0..{IGNORE_LABEL - 1} "
                             f"({IGNORE_LABEL} = unlabelled)")
        if cid in out:
            raise InputError(f"{where}: class id {cid} is given twice ('{out[cid]}' and '{name}')")
        if name in seen:
            raise InputError(f"{where}: class '{name}' is named twice (ids {seen[name]} and {cid})")
        out[cid], seen[name] = name, cid
    return dict(sorted(out.items()))


def import_labels(reader, out_path: Path | str, classes: Mapping[int, str] | None = None, *,
                  like: Path | str | None = None, voxel_size_um: Any = None, crop: Any = None,
                  unlabelled: int = IGNORE_LABEL, chunk: int = store.DEFAULT_CHUNK,
                  shard: int = store.DEFAULT_SHARD, max_memory_mb: float = 2048, checksum: bool = True,
                  params: dict | None = None) -> dict[str, int]:
    """Stream the label image of ``reader`` into a label store at ``out_path`` (atomically).

    Args:
        reader: from :func:`~batterytwin.ingest.readers.open_reader` (integer data, or floats
            holding whole numbers).
        classes: id -> name of the ids in the image (default: the contract's classes).
        like: the sample's volume store: the (cropped) label image must have its shape; the voxel
            size comes from it.
        voxel_size_um: used when ``like`` is not given.
        crop: source-space crop, as for the volume (labels drawn on the uncropped scan).
        unlabelled: an id of the image that means "not labelled" (written as 255).

    Returns:
        class name (and ``"unlabelled"``) -> voxel count.
    """
    where = str(reader.path)
    classes = parse_class_map(classes)
    unlabelled = int(unlabelled)
    if unlabelled != IGNORE_LABEL and unlabelled in classes:
        raise InputError(f"{where}: unlabelled id {unlabelled} is also the class '{classes[unlabelled]}'")
    if np.dtype(reader.dtype).kind not in "iuf":
        raise InputError(f"{where}: label data type {reader.dtype} is not numeric")
    region = parse_crop(crop, reader.shape, f"{where}: crop")
    out_shape = tuple(s.stop - s.start for s in region)
    if like is not None:
        ref = store.open_volume(like)
        if tuple(ref.shape) != out_shape:
            what = "cropped label image" if crop else "label image"
            raise InputError(f"{where}: {what} shape {list(out_shape)} differs from the volume {like} "
                             f"shape {list(ref.shape)}")
        voxel_size_um = ref.voxel_size_um
    voxel = store.check_voxel_size(voxel_size_um, where)
    chunks, shards = store.block_shapes(out_shape, chunk, shard)

    # slab depth: a shard row when it fits the budget (source + uint8 + an int64 plane for counting)
    plane_bytes = out_shape[1] * out_shape[2] * (np.dtype(reader.dtype).itemsize + 2) + out_shape[1] * out_shape[2] * 8
    fits = max(1, int(max_memory_mb * 2**20 // max(plane_bytes, 1)))
    depth = shards[0] if fits >= shards[0] else max(chunks[0], (fits // chunks[0]) * chunks[0])

    ids = np.array(sorted(classes), np.int64)
    lut = np.full(256, False)
    lut[ids] = True
    lut[IGNORE_LABEL] = True
    counts = np.zeros(256, np.int64)
    unknown: dict[int, int] = {}
    source = {"path": where, "format": type(reader).__name__, "shape": list(reader.shape),
              "dtype": str(reader.dtype), "crop": [[s.start, s.stop] for s in region]}
    if checksum:
        source["sha256"] = store.sha256_files(reader.files)
    attrs = store.volume_attrs("import_labels", voxel, params, source,
                               classes={str(k): v for k, v in classes.items()}, ignore_label=IGNORE_LABEL,
                               hand_labels=True)
    log.info("import labels %s: %s %s -> %s uint8, classes %s, slab depth %d", where, list(reader.shape),
             reader.dtype, list(out_shape), format_class_map(classes), depth)
    with store.atomic_output(out_path, World()) as tmp:
        arr = store.create_volume(tmp, out_shape, np.uint8, attrs, chunk=chunks, shard=shards,
                                  fill_value=IGNORE_LABEL)
        for oz0 in progress(range(0, out_shape[0], depth), "labels", math.ceil(out_shape[0] / depth)):
            oz1 = min(oz0 + depth, out_shape[0])
            block = reader.read(region[0].start + oz0, region[0].start + oz1)[:, region[1], region[2]]
            out = np.empty(block.shape, np.uint8)
            for k, plane in enumerate(block):  # plane by plane: counting copies stay one plane
                out[k] = _plane_ids(plane, unlabelled, lut, counts, unknown, where, region[0].start + oz0 + k)
            for _, ys, xs in store.shard_regions((1, *out_shape[1:]), (1, *shards[1:])):
                arr[oz0:oz1, ys, xs] = out[:, ys, xs]
        if unknown:
            items = sorted(unknown.items())
            listed = ", ".join(f"{i} ({n} voxel{'s' if n != 1 else ''})" for i, n in items[:6])
            more = f" and {len(items) - 6} more" if len(items) > 6 else ""
            raise InputError(f"{where}: label id{'s' if len(items) > 1 else ''} {listed}{more} "
                             f"{'are' if len(items) > 1 else 'is'} not in the class map "
                             f"({format_class_map(classes)}; {IGNORE_LABEL} = unlabelled); "
                             "give every id with --classes (segment.classes in the workflow)")
        summary = {name: int(counts[cid]) for cid, name in classes.items()}
        summary["unlabelled"] = int(counts[IGNORE_LABEL])
        zarr.open_group(str(tmp), mode="r+").attrs.update({"label_counts": summary})
    total = int(np.prod(out_shape))
    log.info("labelled voxels: %d of %d (%.4f %%)", total - summary["unlabelled"], total,
             100.0 * (total - summary["unlabelled"]) / total)
    if summary["unlabelled"] == total:
        log.warning("%s: no voxel is labelled (all %d)", where, IGNORE_LABEL)
    return summary


def _plane_ids(plane: np.ndarray, unlabelled: int, lut: np.ndarray, counts: np.ndarray,
               unknown: dict[int, int], where: str, z: int) -> np.ndarray:
    """One z plane as uint8 ids; counts known ids, collects unknown ones (id -> voxels)."""
    if plane.dtype.kind == "f":
        if not np.all(np.isfinite(plane)) or not np.all(plane == np.rint(plane)):
            raise InputError(f"{where}: slice z={z} holds values that are not whole numbers (labels must be "
                             "integer class ids)")
    if unlabelled != IGNORE_LABEL:
        plane = np.where(plane == unlabelled, IGNORE_LABEL, plane)
    if plane.dtype == np.uint8:
        ids = plane
    else:
        inside = (plane >= 0) & (plane <= 255)
        if not inside.all():
            values, n = np.unique(plane[~inside], return_counts=True)
            for v, c in zip(values.tolist(), n.tolist()):
                v = int(v) if float(v).is_integer() else v
                unknown[v] = unknown.get(v, 0) + int(c)
        ids = np.where(inside, plane, IGNORE_LABEL).astype(np.uint8)
    hist = np.bincount(ids.ravel(), minlength=256)
    bad = np.flatnonzero(hist * ~lut)
    for v in bad.tolist():
        unknown[v] = unknown.get(v, 0) + int(hist[v])
    hist[~lut] = 0
    counts += hist
    # out-of-range voxels were counted as 255 above: take them back off the unlabelled count
    if plane.dtype != np.uint8:
        counts[IGNORE_LABEL] -= int(plane.size - np.count_nonzero((plane >= 0) & (plane <= 255)))
    return ids
