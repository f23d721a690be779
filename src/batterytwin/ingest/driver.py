"""Ingest drivers: a reader or the phantom in, sharded volume stores out.

File ingest streams z slabs (crop, bin, NaN policy, dtype) into one store; memory stays near one
slab, whose depth is the shard depth when that fits ``max_memory_mb`` and a chunk depth otherwise.
The phantom is written shard by shard, shards partitioned over MPI ranks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from .. import store
from ..contracts import CLASSES, IGNORE_LABEL
from ..distributed import World, get_world
from ..errors import InputError
from ..progress import progress
from .phantom import CellGeometry, PhantomParams, render_region

log = logging.getLogger(__name__)


def parse_crop(crop: Any, shape: Sequence[int], where: str = "crop") -> tuple[slice, slice, slice]:
    """Crop as ``[[z0, z1], [y0, y1], [x0, x1]]`` (``None`` = whole axis) or ``"z0:z1,y0:y1,x0:x1"``."""
    if crop is None:
        return tuple(slice(0, n) for n in shape)
    if isinstance(crop, str):
        parts = crop.split(",")
        try:
            crop = [[None if v.strip() == "" else int(v) for v in part.split(":")] if part.strip() else None
                    for part in parts]
        except ValueError:
            raise InputError(f"{where}: {crop!r} is not 'z0:z1,y0:y1,x0:x1' (integers; empty = whole axis)") from None
        if any(r is not None and len(r) != 2 for r in crop):
            raise InputError(f"{where}: {','.join(parts)!r}: each range is 'start:stop'")
    if not isinstance(crop, (list, tuple)) or len(crop) != 3:
        raise InputError(f"{where}: need three ranges (z, y, x), got {crop!r}")
    out = []
    for axis, (rng, n) in enumerate(zip(crop, shape)):
        lo, hi = (0, n) if rng is None else (rng[0] if rng[0] is not None else 0, rng[1] if rng[1] is not None else n)
        if not (0 <= lo < hi <= n):
            raise InputError(f"{where}: range {lo}:{hi} on axis {'zyx'[axis]} is outside the volume (size {n})")
        out.append(slice(int(lo), int(hi)))
    return tuple(out)


def ingested_shape(shape: Sequence[int], crop: Any = None, bin_factor: int = 1, where: str = "crop") -> tuple[int, ...]:
    """The shape of the volume ingest writes from a source of ``shape``: ``crop`` (:func:`parse_crop`),
    then ``bin_factor`` (trailing voxels that do not fill a bin are dropped, as in :func:`bin_volume`)."""
    return tuple((s.stop - s.start) // int(bin_factor) for s in parse_crop(crop, shape, where))


def bin_volume(block: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``^3 blocks; trailing voxels that do not fill a block are dropped."""
    if factor == 1:
        return block
    z, y, x = (s // factor for s in block.shape)
    b = block[: z * factor, : y * factor, : x * factor].astype(np.float32)
    return b.reshape(z, factor, y, factor, x, factor).mean(axis=(1, 3, 5), dtype=np.float32)


def ingest_volume(reader, out_path: Path | str, *, voxel_size_um: Any, crop: Any = None, bin_factor: int = 1,
                  output_dtype: str = "auto", nan_fill: float | None = None, chunk: int = store.DEFAULT_CHUNK,
                  shard: int = store.DEFAULT_SHARD, max_memory_mb: float = 2048, checksum: bool = True,
                  params: dict | None = None, overwrite: bool = False, clip: bool = False) -> Path:
    """Stream ``reader`` into a sharded volume store at ``out_path`` (atomically).

    Args:
        reader: from :func:`~batterytwin.ingest.readers.open_reader`.
        voxel_size_um: of the source; multiplied by ``bin_factor`` in the output.
        crop: source-space ranges (see :func:`parse_crop`), applied before binning.
        output_dtype: ``auto`` keeps the source dtype (float32 when binning).
        nan_fill: value for NaN/Inf in float input (finite); ``None`` rejects such input.
        clip: clip values outside ``output_dtype``'s range to it; without, such values are refused
            (never wrapped around, never rounded to infinity).
        max_memory_mb: budget for one slab (source + binned + output copies).
        overwrite: replace ``out_path`` even when it is not a volume store (a file, another folder).
    """
    where = str(reader.path)
    store.check_output(out_path, overwrite)
    if nan_fill is not None and not (isinstance(nan_fill, (int, float)) and math.isfinite(nan_fill)):
        raise InputError(f"--nan-fill must be a finite number, got {nan_fill!r} (a store never holds NaN/Inf)")
    voxel = store.check_voxel_size(voxel_size_um, where)
    if not (isinstance(max_memory_mb, (int, float)) and math.isfinite(max_memory_mb) and max_memory_mb > 0):
        raise InputError(f"--max-memory-mb must be a finite number > 0 (megabytes), got {max_memory_mb!r}")
    if int(bin_factor) < 1:
        raise InputError(f"{where}: bin must be a positive integer, got {bin_factor}")
    bin_factor = int(bin_factor)
    region = parse_crop(crop, reader.shape, f"{where}: crop")
    cropped = [s.stop - s.start for s in region]
    out_shape = ingested_shape(reader.shape, crop, bin_factor, f"{where}: crop")
    if min(out_shape) < 1:
        raise InputError(f"{where}: bin {bin_factor} leaves an empty volume from crop {cropped}")
    if output_dtype == "auto":
        dtype = np.dtype(np.float32) if bin_factor > 1 else np.dtype(reader.dtype).newbyteorder("=")
    else:
        try:
            dtype = np.dtype(output_dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in "iuf" or dtype.itemsize > 8:
            raise InputError(f"--output-dtype: {output_dtype!r} is not a real number type "
                             "(auto, uint8, uint16, int16, float32, ...)")
    chunks, shards = store.block_shapes(out_shape, chunk, shard, where="ingest")

    # Slab depth (output z): a whole shard row when it fits the budget, else whole chunk rows.
    plane_bytes = cropped[1] * cropped[2] * (np.dtype(reader.dtype).itemsize + 8) * bin_factor
    budget = max_memory_mb * 2**20
    fits = max(1, int(budget // max(plane_bytes, 1)))
    depth = shards[0] if fits >= shards[0] else max(chunks[0], (fits // chunks[0]) * chunks[0])
    log.info("ingest %s: %s %s -> %s %s, slab depth %d", where, list(reader.shape), reader.dtype,
             list(out_shape), dtype, depth)

    source = {"path": str(reader.path), "format": type(reader).__name__, "shape": list(reader.shape),
              "dtype": str(reader.dtype), "crop": [[s.start, s.stop] for s in region], "bin": bin_factor}
    if checksum:
        source["sha256"] = store.sha256_files(reader.files)
    attrs = store.volume_attrs("ingest", [v * bin_factor for v in voxel], params, source)
    world = World()  # file ingest is one sequential writer (I/O bound); MPI ranks would only contend
    with store.atomic_output(out_path, world) as tmp:
        arr = store.create_volume(tmp, out_shape, dtype, attrs, chunk=chunks, shard=shards)
        stats = _RunningStats()
        for oz0 in progress(range(0, out_shape[0], depth), "ingest", math.ceil(out_shape[0] / depth)):
            oz1 = min(oz0 + depth, out_shape[0])
            sz0 = region[0].start + oz0 * bin_factor
            block = reader.read(sz0, sz0 + (oz1 - oz0) * bin_factor)[:, region[1], region[2]]
            block = _finite(block, nan_fill, where, sz0)
            block = _cast(bin_volume(block, bin_factor), dtype, where, clip, sz0)
            # One shard column at a time: zarr encodes every shard of a write concurrently,
            # so writing a whole slab at once would hold a full row of encoded shards.
            for _, ys, xs in store.shard_regions((1, *out_shape[1:]), (1, *shards[1:])):
                arr[oz0:oz1, ys, xs] = block[:, ys, xs]
            stats.add(block)
        zarr.open_group(str(tmp), mode="r+").attrs.update({"statistics": stats.result()})
    return Path(out_path)


def _finite(block: np.ndarray, nan_fill: float | None, where: str, z0: int) -> np.ndarray:
    if block.dtype.kind != "f":
        return block
    bad = ~np.isfinite(block)
    if bad.any():
        if nan_fill is None:
            z = z0 + int(np.argwhere(bad)[0][0])
            raise InputError(f"{where}: {int(bad.sum())} NaN/Inf value(s), first in slice z={z}; "
                             "set nan_fill in the config to replace them")
        block = np.where(bad, np.asarray(nan_fill, block.dtype), block)
    return block


def _cast(block: np.ndarray, dtype: np.dtype, where: str, clip: bool = False, z0: int = 0) -> np.ndarray:
    """``block`` as ``dtype``: values outside its range are refused (or clipped with ``clip``), never
    wrapped around (uint16 300 -> uint8 44) nor rounded to infinity (float64 1e300 -> float32)."""
    if block.size == 0:
        return block.astype(dtype, copy=False)
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    lo, hi = block.min(), block.max()
    if lo < info.min or hi > info.max:
        if not clip:
            raise InputError(f"{where}: values {lo}..{hi} (slab from z={z0}) do not fit output_dtype {dtype} "
                             f"({info.min}..{info.max}); choose a wider --output-dtype or pass --clip")
        block = np.clip(block, info.min, info.max)
    if dtype.kind in "iu" and block.dtype.kind == "f":
        block = np.rint(block)
    out = block.astype(dtype, copy=False)
    if out.dtype.kind == "f" and not np.isfinite(out).all():  # never commit NaN/Inf
        raise InputError(f"{where}: NaN/Inf value(s) in the slab from z={z0} after conversion to {dtype}")
    return out


class _RunningStats:
    """Min, max, mean, std of the ingested volume, accumulated slab by slab."""

    def __init__(self) -> None:
        self.n, self.s, self.s2, self.lo, self.hi = 0, 0.0, 0.0, math.inf, -math.inf

    def add(self, block: np.ndarray) -> None:
        for plane in block:  # plane by plane: float64 copies of a whole slab would double memory
            p = plane.astype(np.float64)
            self.n += p.size
            self.s += float(p.sum())
            self.s2 += float(np.dot(p.ravel(), p.ravel()))
        self.lo, self.hi = min(self.lo, float(block.min())), max(self.hi, float(block.max()))

    def result(self) -> dict[str, float | None]:
        """Min, max, mean, std; a value beyond float64 (|x| near 1e154 and up squared) is None, not a crash."""
        with np.errstate(over="ignore", invalid="ignore"):
            mean = np.float64(self.s) / self.n
            var = np.float64(self.s2) / self.n - mean * mean
            std = np.sqrt(max(var, 0.0)) if np.isfinite(var) else np.float64("nan")
        return store.json_safe({"min": self.lo, "max": self.hi, "mean": mean, "std": std})


def write_phantom(params: PhantomParams, volume: Path | str, clean: Path | str | None = None,
                  labels: Path | str | None = None, *, chunk: int = store.DEFAULT_CHUNK,
                  shard: int = store.DEFAULT_SHARD, world: World | None = None) -> None:
    """Write the phantom's CT image (and optionally the clean image and labels) shard by shard.

    Every rank renders and writes its own whole shards; memory is a few shards per rank.
    """
    world = world or get_world()
    store.check_blocks(chunk, shard, "phantom")
    geometry = CellGeometry.build(params)
    p = params.to_dict()
    source = {"path": "synthetic", "phantom": p, "sha256": store.params_sha256(p)}
    layers = {k: list(v) for k, v in params.layers.items()}
    common = dict(phantom=p, layers_z=layers, ground_truth=True)
    outputs = {"image": (volume, np.float32, {}), "clean": (clean, np.float32, {}),
               "labels": (labels, np.uint8, {"classes": {str(k): v for k, v in CLASSES.items()},
                                             "ignore_label": IGNORE_LABEL})}
    outputs = {k: v for k, v in outputs.items() if v[0] is not None}
    with contextlib.ExitStack() as stack:  # all outputs appear together, or none does
        tmps = [stack.enter_context(store.atomic_output(v[0], world)) for v in outputs.values()]
        arrays = {}
        for (key, (_, dtype, extra)), tmp in zip(outputs.items(), tmps):
            if world.is_root:
                attrs = store.volume_attrs("phantom", params.voxel_size_um, p, source, **common, **extra)
                store.create_volume(tmp, params.shape, dtype, attrs, chunk=chunk, shard=shard)
        world.barrier()
        for key, tmp in zip(outputs, tmps):
            arrays[key] = store.open_volume(tmp, mode="r+", validate=False).array
        regions = store.shard_regions(params.shape, arrays["image"].shards)
        for i in progress(world.my_items(len(regions)), "phantom", len(world.my_items(len(regions)))):
            rendered = render_region(geometry, regions[i])
            for key, arr in arrays.items():
                arr[regions[i]] = rendered[key]

