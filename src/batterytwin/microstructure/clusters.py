"""Connected clusters of one phase (6-connectivity, as the 6-neighbour transport stencil sees it).

A cluster *percolates* along an axis when it touches both outer faces normal to that axis. Per axis
the phase splits into percolating, dead-end (touches exactly one of the two faces: open to one side
only) and isolated (touches neither) volume; ``isolated_fraction`` counts clusters touching no
outer face at all.

Example::

    info = phase_clusters(mask)                 # mask: bool [Z, Y, X]
    info.percolating                            # (True, True, False) for (z, y, x)
    info.start_mask                             # bool [Z, Y, X]: clusters percolating along any axis
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AXES = ("z", "y", "x")
SIX = ndimage.generate_binary_structure(3, 1)


@dataclass
class ClusterInfo:
    """Clusters of one phase; fractions are of the whole volume.

    Attributes:
        labels: int32 [Z, Y, X] cluster id (0 outside the phase).
        n_clusters: number of clusters.
        percolating: per axis, whether any cluster spans it.
        spanning: per axis, bool [n_clusters + 1] (index = cluster id) spanning that axis.
        start_mask: bool [Z, Y, X], the union of clusters percolating along at least one axis
            (where walkers start).
        fractions: per axis {"percolating", "dead_end", "isolated"} volume fractions, plus
            "isolated_all_faces" (clusters touching no outer face).
    """

    labels: np.ndarray
    n_clusters: int
    percolating: tuple[bool, bool, bool]
    spanning: list[np.ndarray]
    start_mask: np.ndarray
    fractions: dict


def _face_ids(labels: np.ndarray, axis: int, n: int, end: int) -> np.ndarray:
    face = np.take(labels, end, axis=axis)
    hit = np.zeros(n + 1, bool)
    hit[np.unique(face)] = True
    hit[0] = False
    return hit


def phase_clusters(mask: np.ndarray) -> ClusterInfo:
    """Clusters of ``mask`` (bool [Z, Y, X]) and their percolation along z, y, x."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=SIX)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    sizes[0] = 0
    total = float(mask.size)
    spanning, fractions, touches_any = [], {}, np.zeros(n + 1, bool)
    for a, name in enumerate(AXES):
        lo = _face_ids(labels, a, n, 0)
        hi = _face_ids(labels, a, n, mask.shape[a] - 1)
        span = lo & hi
        spanning.append(span)
        touches_any |= lo | hi
        fractions[name] = {
            "percolating": float(sizes[span].sum() / total),
            "dead_end": float(sizes[lo ^ hi].sum() / total),
            "isolated": float(sizes[~(lo | hi)].sum() / total),
        }
    fractions["isolated_all_faces"] = float(sizes[~touches_any].sum() / total)
    any_span = spanning[0] | spanning[1] | spanning[2]
    start = any_span[labels]
    return ClusterInfo(labels, n, tuple(bool(s.any()) for s in spanning), spanning, start, fractions)
