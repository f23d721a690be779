"""Connected clusters of one phase, with the dual-connectivity rule of digital topology.

**Connectivity rule** (:func:`connectivity_of`): clusters of a pore phase (:data:`PORE_PHASES`,
the continuous void / liquid-electrolyte space) are 26-connected; clusters of every solid phase
are 6-connected. A phase and its complement measured with the same connectivity contradict each
other (the "connectivity paradox": with 6 for both, a diagonal pore channel and the diagonal solid
wall across it are both broken; with 26 for both, both are connected and cross each other). The
dual pair (26, 6) makes the pore's connected paths and the solids' separating surfaces agree.
This applies to the *morphological* analysis (the ``percolation`` block, particle and lithium
cluster counts). The random walk keeps 6-connected start clusters whatever the phase: its moves
go through voxel faces only, so a pore cluster joined by an edge or a corner carries no walker
flux (the same holds for TauFactor's 6-point stencil).

A cluster *percolates* along an axis when it touches both outer faces normal to that axis. Per axis
the phase splits into percolating, dead-end (touches exactly one of the two faces: open to one side
only) and isolated (touches neither) volume; ``isolated_fraction`` counts clusters touching no
outer face at all.

Example::

    info = phase_clusters(mask)                 # mask: bool [Z, Y, X]
    info.percolating                            # (True, True, False) for (z, y, x)
    info.start_mask                             # bool [Z, Y, X]: clusters percolating along any axis
    phase_clusters(mask, connectivity_of("pore"))   # 26-connected: the pore phase
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AXES = ("z", "y", "x")
SIX = ndimage.generate_binary_structure(3, 1)
STRUCTURES = {6: SIX, 18: ndimage.generate_binary_structure(3, 2), 26: ndimage.generate_binary_structure(3, 3)}
# phases measured with 26-connectivity (the pore space); every other class is a solid (6)
PORE_PHASES: tuple[str, ...] = ("pore",)


def connectivity_of(name: str, pore_phases=PORE_PHASES) -> int:
    """The dual-connectivity rule: 26 for a pore phase (``name`` in ``pore_phases``), 6 for a solid.

    Example: ``connectivity_of("pore") == 26``, ``connectivity_of("cathode_active") == 6``.
    """
    return 26 if name in pore_phases else 6


@dataclass
class ClusterInfo:
    """Clusters of one phase; fractions are of the whole volume.

    Attributes:
        labels: int32 [Z, Y, X] cluster id (0 outside the phase); None when labelled slab by slab
            (:func:`~batterytwin.microstructure.components.mask_clusters`).
        n_clusters: number of clusters.
        percolating: per axis, whether any cluster spans it.
        spanning: per axis, bool [n_clusters + 1] (index = cluster id) spanning that axis.
        start_mask: bool [Z, Y, X], the union of clusters percolating along at least one axis
            (where walkers start); or the bit-packed ``StartVoxels`` of it.
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


def span_fractions(sizes: np.ndarray, lo: list[np.ndarray], hi: list[np.ndarray],
                   total: float) -> tuple[list[np.ndarray], dict, tuple[bool, bool, bool]]:
    """Spanning clusters, volume fractions and percolation from cluster sizes (float [n + 1], index 0
    the background with size 0) and, per axis, which clusters touch the low / high outer face (bool
    [n + 1]); ``total`` = voxels of the volume. Returns (spanning per axis, fractions, percolating)."""
    spanning, fractions, touches_any = [], {}, np.zeros(len(sizes), bool)
    for a, name in enumerate(AXES):
        span = lo[a] & hi[a]
        spanning.append(span)
        touches_any |= lo[a] | hi[a]
        fractions[name] = {
            "percolating": float(sizes[span].sum() / total),
            "dead_end": float(sizes[lo[a] ^ hi[a]].sum() / total),
            "isolated": float(sizes[~(lo[a] | hi[a])].sum() / total),
        }
    fractions["isolated_all_faces"] = float(sizes[~touches_any].sum() / total)
    return spanning, fractions, tuple(bool(s.any()) for s in spanning)


def phase_clusters(mask: np.ndarray, connectivity: int = 6) -> ClusterInfo:
    """Clusters of ``mask`` (bool [Z, Y, X]) and their percolation along z, y, x.

    Args:
        connectivity: 6 (face neighbours; the default, and what walks use), 18 or 26 (face, edge
            and corner neighbours); :func:`connectivity_of` gives the rule per phase.
    """
    if connectivity not in STRUCTURES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=STRUCTURES[connectivity])
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    sizes[0] = 0
    lo = [_face_ids(labels, a, n, 0) for a in range(3)]
    hi = [_face_ids(labels, a, n, mask.shape[a] - 1) for a in range(3)]
    spanning, fractions, percolating = span_fractions(sizes, lo, hi, float(mask.size))
    any_span = spanning[0] | spanning[1] | spanning[2]
    start = any_span[labels]
    return ClusterInfo(labels, n, percolating, spanning, start, fractions)
