"""A label store read in z slabs: the slab grid, per-z-slice class counts and one-class masks.

The microstructure stage never holds the uint8 label volume: it reads ``labels.zarr`` slab by slab
(a slab = the z planes of one row of the store's chunk grid; sharded zarr reads only those inner
chunks) and keeps at most a bool mask of one class (1 B/voxel) for the random walk.

Example::

    reader = LabelSlabs(open_volume("labels.zarr"))
    counts = reader.slice_counts(world)        # int64 [Z, 256]: voxels of each class per z slice
    m = reader.region_mask(10, 40, class_id)   # bool [30, Y, X], built slab by slab
"""

from __future__ import annotations

import numpy as np

from ..distributed import World, split_evenly
from ..store import Volume, read_region

N_IDS = 256  # uint8 label ids
SLAB_VOXELS = 1 << 22  # voxels per slab to aim at: the per-slab buffers (~15 B/voxel) stay ~60 MB
MIN_DEPTH = 8  # planes: thinner slabs re-decode a chunk row too often (a 2560^2 frame: 8 planes)


def slab_depth(plane_voxels: int, most: int, least: int = MIN_DEPTH) -> int:
    """z planes per slab: a divisor of ``most`` (the chunk depth: slabs never straddle a chunk row)
    of about :data:`SLAB_VOXELS` voxels and at least ``least`` planes where ``most`` allows."""
    target = max(int(least), SLAB_VOXELS // max(1, int(plane_voxels)))
    divisors = [d for d in range(1, int(most) + 1) if int(most) % d == 0]
    return max([d for d in divisors if d <= target] or [divisors[0]])


class LabelSlabs:
    """Slab reader of a uint8 [Z, Y, X] label store (``vol``); ``depth`` z planes per slab
    (default: :func:`slab_depth`, at most the z edge of the store's chunks)."""

    def __init__(self, vol: Volume, depth: int | None = None):
        self.vol = vol
        self.shape = tuple(int(s) for s in vol.shape)
        self.depth = max(1, int(depth or slab_depth(self.shape[1] * self.shape[2], vol.array.chunks[0])))

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(z0, z1) of every slab, in z order."""
        nz = self.shape[0]
        return [(z, min(z + self.depth, nz)) for z in range(0, nz, self.depth)]

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Labels of z planes ``z0:z1`` (uint8 [z1 - z0, Y, X]); a corrupt shard is one InputError."""
        return read_region(self.vol, (slice(z0, z1), slice(None), slice(None)))

    def my_slabs(self, world: World) -> list[int]:
        """Indices of the slabs this rank works on: a contiguous block (neighbours share faces)."""
        return list(split_evenly(range(len(self.bounds)), world))

    def slice_counts(self, world: World | None = None) -> np.ndarray:
        """Voxels of each class id per z slice: int64 [Z, 256], the same on every rank (ranks split
        the slabs and gather)."""
        world = world or World()
        mine = {}
        for i in self.my_slabs(world):
            z0, z1 = self.bounds[i]
            lab = self.read(z0, z1)
            mine[i] = np.stack([np.bincount(plane.ravel(), minlength=N_IDS) for plane in lab]).astype(np.int64)
        parts: dict[int, np.ndarray] = {}
        for part in world.allgather(mine):
            parts.update(part)
        return np.concatenate([parts[i] for i in range(len(self.bounds))])

    def region_mask(self, z0: int, z1: int, class_id: int) -> np.ndarray:
        """bool [z1 - z0, Y, X]: voxels of class ``class_id`` in planes ``z0:z1``, filled slab by slab
        (no whole labels array, no ``labels == id`` temporary of the region)."""
        out = np.empty((z1 - z0, *self.shape[1:]), dtype=bool)
        for a, b in self.bounds:
            lo, hi = max(a, z0), min(b, z1)
            if lo < hi:
                np.equal(self.read(lo, hi), class_id, out=out[lo - z0:hi - z0])
        return out

    def phase_mask(self, class_id: int) -> np.ndarray:
        """bool [Z, Y, X] of one class over the whole volume (:meth:`region_mask`)."""
        return self.region_mask(0, self.shape[0], class_id)
