"""Checks of stored voxel data, streamed shard by shard: finite values, known label ids.

Each refusal is one :class:`~batterytwin.errors.InputError` line with the count of bad voxels and
the first position (z, y, x).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..contracts import CLASSES, IGNORE_LABEL
from ..distributed import World
from ..errors import InputError
from .blocks import shard_regions
from .volumes import Volume, read_region


def check_finite(vol: Volume, world: World | None = None) -> None:
    """Refuse non-finite voxels in a float volume: count and first position, one line.

    Streams shard by shard (memory: one shard); with ``world`` (collective), ranks split the shards.
    Integer volumes pass without reading.
    """
    arr = vol.array
    if np.dtype(arr.dtype).kind not in "fc":
        return
    regions = shard_regions(arr.shape, vol.shards)
    items = world.my_items(len(regions)) if world is not None else range(len(regions))
    count, first = 0, None
    for i in items:
        block = read_region(vol, regions[i])
        bad = ~np.isfinite(block)
        n = int(bad.sum())
        if n:
            count += n
            if first is None:
                first = tuple(int(a) + s.start for a, s in zip(np.argwhere(bad)[0], regions[i]))
    if world is not None and world.size > 1:
        parts = world.allgather((count, first))
        count = sum(c for c, _ in parts)
        first = min((f for _, f in parts if f is not None), default=None)
    if count:
        raise InputError(f"{vol.path}: {count} NaN/infinite voxel(s), first at (z, y, x) = {first}; "
                         "fix or mask them (ingest --nan-fill) before this stage")


def check_labels(vol: Volume, allowed: Iterable[int] | None = None, ignore: int | None = None) -> None:
    """Refuse label ids outside ``allowed`` (default: the store's ``classes``) and ``ignore``.

    Streams shard by shard; one line with the unknown ids, their voxel count and the first position.
    """
    arr = vol.array
    if np.dtype(arr.dtype).kind not in "iub":
        raise InputError(f"{vol.path}: labels must be an integer type, got {arr.dtype}")
    ok = set(int(k) for k in (allowed if allowed is not None else (vol.classes or CLASSES)))
    ok.add(IGNORE_LABEL if ignore is None else int(ignore))
    lut_ok = np.array(sorted(ok))
    unknown: set[int] = set()
    count, first = 0, None
    for region in shard_regions(arr.shape, vol.shards):
        block = read_region(vol, region)
        # plane by plane: np.isin's temporaries (int64 copies) stay the size of one plane, not of the shard
        for k, plane in enumerate(block if block.ndim >= 3 else [block]):
            bad = ~np.isin(plane, lut_ok)
            n = int(bad.sum())
            if n:
                count += n
                unknown.update(int(v) for v in np.unique(plane[bad])[:20])
                if first is None:
                    at = (k, *np.argwhere(bad)[0]) if block.ndim >= 3 else np.argwhere(bad)[0]
                    first = tuple(int(a) + s.start for a, s in zip(at, region))
    if count:
        raise InputError(f"{vol.path}: unknown label id(s) {sorted(unknown)[:10]} in {count} voxel(s), first at "
                         f"(z, y, x) = {first}; allowed: {sorted(ok)}")
