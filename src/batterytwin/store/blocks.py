"""Block layout of a volume store: chunk shapes for reading, shard shapes for writing.

A shard holds whole chunks and is the unit of parallel writing: ranks own disjoint sets of whole
shards (:func:`shard_regions` + :meth:`World.my_items <batterytwin.distributed.World.my_items>`).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from ..errors import InputError

AXES = ("z", "y", "x")
DEFAULT_CHUNK = 64
DEFAULT_SHARD = 256


def block_shapes(shape: Sequence[int], chunk: int | Sequence[int] = DEFAULT_CHUNK,
                 shard: int | Sequence[int] = DEFAULT_SHARD,
                 where: str = "store") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunk and shard shapes for ``shape``: no larger than needed, shards a multiple of chunks.

    Raises:
        InputError: an edge below 1, or a shard smaller than its chunk (``where`` names the command).
    """
    nd = len(shape)
    chunk = (chunk,) * nd if np.isscalar(chunk) else tuple(chunk)
    shard = (shard,) * nd if np.isscalar(shard) else tuple(shard)
    check_blocks(chunk, shard, where)
    chunks = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunk, shape))
    shards = tuple(
        c * max(1, min(math.ceil(int(h) / c), math.ceil(int(s) / c)))
        for c, h, s in zip(chunks, shard, shape)
    )
    return chunks, shards


def check_blocks(chunk: int | Sequence[int], shard: int | Sequence[int], where: str = "store") -> None:
    """Refuse chunk/shard edges below 1 and a shard smaller than its chunk (one line naming the option).

    Example: ``check_blocks(64, 16)`` -> InputError ``store: --shard 16 is smaller than --chunk 64 ...``
    """
    chunk = list(chunk) if isinstance(chunk, (list, tuple)) else [chunk]
    shard = list(shard) if isinstance(shard, (list, tuple)) else [shard]
    for name, values in (("chunk", chunk), ("shard", shard)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{where}: --{name} must be an integer >= 1 (voxels), got {v!r}")
    for c, h in zip(chunk, shard):
        if h < c:
            raise InputError(f"{where}: --shard {h} is smaller than --chunk {c}; a shard holds whole chunks "
                             "(give shard >= chunk)")


def shard_regions(shape: Sequence[int], shards: Sequence[int]) -> list[tuple[slice, ...]]:
    """Whole-shard regions covering ``shape`` in C order (the unit of parallel writing)."""
    ranges = [range(0, s, h) for s, h in zip(shape, shards)]
    return [tuple(slice(o, min(o + h, s)) for o, h, s in zip(origin, shards, shape))
            for origin in itertools.product(*ranges)]
