"""What a walk records and its free-space reference: the moment components, the record times, the
free-space step and diffusivity per axis.

A walk of settings :class:`~.config.WalkSettings` records the second moments of the walkers'
unwrapped displacement, the components :data:`PAIRS` of ``<d_i d_j>``, at the steps
:func:`record_times`. A free walk (no obstacle) has ``<d_i^2> = 2 D_bulk,i t`` with
:func:`bulk_diffusivity`; tortuosity is measured against it.

Example::

    p = WalkSettings(n_steps=200, n_records=4)
    record_times(p)                     # [0, 50, 100, 150, 200]
    record_times(p, 6)                  # [0, 50, ..., 300]: an extended walk keeps the spacing
    bulk_diffusivity(p, (1, 1, 1))      # [1/6, 1/6, 1/6] voxel^2 per step (lattice walk)
"""

from __future__ import annotations

import numpy as np

from .config import WalkSettings

PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # stored moment components


def step_voxels(params: WalkSettings, voxel_size_um) -> np.ndarray:
    """Free-space step per axis in voxels: 1 (lattice) or ``s * min(h) / h_i`` (off-lattice)."""
    h = np.asarray(voxel_size_um, dtype=np.float64)
    if params.model == "lattice":
        return np.ones(3)
    return params.step_length * h.min() / h


def bulk_diffusivity(params: WalkSettings, voxel_size_um) -> np.ndarray:
    """Free-space D per axis in voxel^2 per step: ``<d_i^2> = 2 D t`` (1/6 for the lattice walk)."""
    return step_voxels(params, voxel_size_um) ** 2 / 6.0


def record_times(params: WalkSettings, n_records: int | None = None) -> np.ndarray:
    """Steps at which moments are recorded: int64 [R + 1], record i at ``i * n_steps / n_records``
    (R = ``n_records`` by default; an extended walk keeps the spacing and has more records)."""
    r = params.n_records if n_records is None else int(n_records)
    return np.round(np.arange(r + 1) * (params.n_steps / params.n_records)).astype(np.int64)
