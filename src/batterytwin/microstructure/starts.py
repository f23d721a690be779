"""The start voxels of a random walk, held plane by plane (or bit-packed) instead of as an int64
index array: what :mod:`.tortuosity` draws walkers from and :mod:`.components` builds slab by slab."""

from __future__ import annotations

import copy

import numpy as np
import torch


class StartVoxels:
    """The start voxels of a walk (a bool mask), indexable like ``np.flatnonzero(mask)`` (C order)
    without holding that int64 array (8 B per start voxel: 0.5 GB for half of a 512^3 volume, 54 GB
    for half of a 2048 x 2560^2 frame); holds the per-plane counts and looks walkers' voxels up plane
    by plane.

    Example: ``StartVoxels(mask, "cpu")[torch.tensor([0, 5])]`` == ``np.flatnonzero(mask)[[0, 5]]``.
    """

    def __init__(self, mask: np.ndarray | None, device: torch.device | str = "cpu"):
        self.packed = None  # bit-packed planes (from_packed): uint8 [Z, ceil(Y * X / 8)]
        if mask is not None:
            self.planes = np.ascontiguousarray(mask, dtype=bool).reshape(mask.shape[0], -1)  # a view: [Z, Y * X]
            self.counts = np.count_nonzero(self.planes, axis=1).astype(np.int64)
            self.plane_size = self.planes.shape[1]
            self.ends = np.cumsum(self.counts)
        self.device = torch.device(device)

    @classmethod
    def from_packed(cls, packed: np.ndarray, shape, device: torch.device | str = "cpu") -> "StartVoxels":
        """From bit-packed planes (``np.packbits`` of each z plane of the mask, uint8 [Z, ceil(Y * X / 8)]):
        1/8 B per voxel."""
        self = cls(None, device)
        self.packed, self.plane_size = packed, int(shape[1]) * int(shape[2])
        self.counts = np.array([int(np.unpackbits(p, count=self.plane_size).sum()) for p in packed], np.int64)
        self.ends = np.cumsum(self.counts)
        return self

    def to(self, device: torch.device | str) -> "StartVoxels":
        """The same start voxels, walker indices returned on ``device``."""
        out = copy.copy(self)
        out.device = torch.device(device)
        return out

    def mean(self) -> float:
        """Fraction of the volume's voxels that are start voxels (as ``mask.mean()``)."""
        return len(self) / float(len(self.counts) * self.plane_size)

    def _plane(self, z: int) -> np.ndarray:
        if self.packed is None:
            return self.planes[z]
        return np.unpackbits(self.packed[z], count=self.plane_size).view(bool)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, ranks: torch.Tensor) -> torch.Tensor:
        r = ranks.cpu().numpy()
        z = np.searchsorted(self.ends, r, side="right")
        within = r - (self.ends[z] - self.counts[z])
        out = np.empty_like(r)
        order = np.argsort(z, kind="stable")
        bounds = np.searchsorted(z[order], np.arange(len(self.ends) + 1))
        for plane in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[plane]:bounds[plane + 1]]
            out[sel] = plane * self.plane_size + np.flatnonzero(self._plane(plane))[within[sel]]
        return torch.from_numpy(out).to(ranks.device)
