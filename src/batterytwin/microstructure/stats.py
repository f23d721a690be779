"""Morphology of a label volume: volume fractions, interface areas, layers, particles, lithium.

All functions take ``labels`` uint8 [Z, Y, X] (z = stacking axis, z = 0 at the current collector)
and return plain dicts/numbers (JSON-ready). Lengths in micrometres from ``voxel_size_um`` (z, y, x).

Example::

    volume_fractions(labels, {0: "pore", 1: "solid_electrolyte"})   # {"pore": 0.3, ...}
    interface_areas(labels, classes, (0.5, 0.5, 0.5))               # {"pore|solid_electrolyte": {...}}
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import measure

from ..contracts import IGNORE_LABEL
from .clusters import AXES, PORE_PHASES, STRUCTURES, connectivity_of, phase_clusters


def volume_fractions(labels: np.ndarray, classes: dict[int, str], ignore_label: int = IGNORE_LABEL) -> dict[str, float]:
    """Fraction of the whole volume per class (and ``"unlabelled"`` for ``ignore_label`` voxels)."""
    counts = np.bincount(labels.ravel(), minlength=256).astype(np.float64) / labels.size
    out = {name: float(counts[c]) for c, name in sorted(classes.items())}
    if counts[ignore_label] > 0:
        out["unlabelled"] = float(counts[ignore_label])
    return out


SMOOTH_SIGMA = 0.7  # voxels: marching cubes on a raw binary mask overestimates areas by ~9 %
SMOOTH_RADIUS = int(4.0 * SMOOTH_SIGMA + 0.5)  # scipy's gaussian_filter kernel radius (truncate=4)
SURFACE_SLAB = 64  # z planes per marching-cubes slab: memory ~ the slab's field and mesh, not the volume's


def surface_area_um2(mask: np.ndarray, voxel_size_um, slab: int = SURFACE_SLAB, tile: int | None = None) -> float:
    """Area of the boundary of ``mask`` (bool [Z, Y, X]) inside the volume, by marching cubes.

    The mask is smoothed with a Gaussian of ``SMOOTH_SIGMA`` voxels first: on raw binary masks the
    staircase mesh overestimates areas by ~9 % (spheres of any radius); smoothed, a sphere of radius
    >= 5 voxels is within 2-4 % (-9 % at radius 3). The outer faces of the volume are not counted
    (the mesh is open there).

    Computed in z slabs of ``slab`` cells: each slab's field is filtered with a halo of the kernel
    radius (so it equals the whole volume's field there) and meshed on its own; marching cubes is
    local to each cell, so the sum of the slabs' areas is the whole volume's, with the float32
    field and the mesh of one slab in memory instead of the volume's (4 B/voxel + the mesh);
    ``tile`` also splits each slab in y-x blocks (:func:`slab_area`).
    """
    if not mask.any() or mask.all():
        return 0.0
    area = 0.0
    for z0, z1, a0, a1 in surface_slabs(mask.shape[0], slab):
        area += slab_area(mask[a0:a1], z0 - a0, z1 - a0, voxel_size_um, tile)
    return area


def surface_slabs(nz: int, slab: int = SURFACE_SLAB) -> list[tuple[int, int, int, int]]:
    """(z0, z1, a0, a1) per slab of :func:`surface_area_um2`: the cells between planes z0 .. z1,
    read as planes a0:a1 (with the smoothing kernel's halo)."""
    out = []
    for z0 in range(0, nz - 1, max(1, slab)):
        z1 = min(z0 + max(1, slab), nz - 1)
        out.append((z0, z1, max(0, z0 - SMOOTH_RADIUS), min(nz, z1 + 1 + SMOOTH_RADIUS)))
    return out


def slab_area(mask: np.ndarray, z0: int, z1: int, voxel_size_um, tile: int | None = None) -> float:
    """Boundary area in the cells between planes ``z0 .. z1`` of ``mask`` (bool, a slab with its halo);
    with ``tile``, meshed in y-x blocks of ``tile`` cells (memory per block; the same area to float
    rounding)."""
    ny, nx = mask.shape[1:]
    if tile is None:
        return window_area(mask, ((z0, z1), (0, ny - 1), (0, nx - 1)), voxel_size_um)
    area = 0.0
    for y0, y1, b0, b1 in surface_slabs(ny, tile):
        for x0, x1, c0, c1 in surface_slabs(nx, tile):
            area += window_area(mask[:, b0:b1, c0:c1], ((z0, z1), (y0 - b0, y1 - b0), (x0 - c0, x1 - c0)),
                                voxel_size_um)
    return area


def window_area(mask: np.ndarray, cells, voxel_size_um) -> float:
    """Boundary area in the cells between planes ``lo .. hi`` along each axis (``cells`` = three
    (lo, hi) pairs, relative to ``mask``: a block of the volume with the smoothing kernel's halo
    where it is not at the volume's border). Marching cubes is local to each cell, so the areas of
    blocks that tile the cells add up to the volume's."""
    field = ndimage.gaussian_filter(mask.astype(np.float32), SMOOTH_SIGMA, mode="nearest")
    field = field[tuple(slice(lo, hi + 1) for lo, hi in cells)]
    if min(field.shape) < 2 or field.max() < 0.5 or field.min() > 0.5:
        return 0.0  # no crossing here (features of about one voxel vanish under the smoothing)
    verts, faces, _, _ = measure.marching_cubes(field, level=0.5, spacing=tuple(float(v) for v in voxel_size_um))
    return float(measure.mesh_surface_area(verts, faces))


def _touching(labels: np.ndarray, a: int, b: int) -> bool:
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        x, y = labels[tuple(lo)], labels[tuple(hi)]
        if np.any((x == a) & (y == b)) or np.any((x == b) & (y == a)):
            return True
    return False


def interface_areas(labels: np.ndarray, classes: dict[int, str], voxel_size_um) -> dict[str, dict[str, float]]:
    """Interface area between every pair of touching classes (marching cubes).

    Area(a|b) = (S(a) + S(b) - S(a u b)) / 2 with S the boundary area of a set: the shared
    interface is counted in S(a) and S(b) but not in S(a u b).

    Returns:
        {"a|b": {"area_um2": A, "specific_area_per_um": A / V_total}} for touching pairs.
    """
    volume = labels.size * float(np.prod(voxel_size_um))
    present = [c for c in sorted(classes) if np.any(labels == c)]
    single = {c: surface_area_um2(labels == c, voxel_size_um) for c in present}
    out = {}
    for a, b in itertools.combinations(present, 2):
        if not _touching(labels, a, b):
            continue
        union = surface_area_um2((labels == a) | (labels == b), voxel_size_um)
        area = max(0.0, 0.5 * (single[a] + single[b] - union))
        out[f"{classes[a]}|{classes[b]}"] = {"area_um2": area, "specific_area_per_um": area / volume}
    return out


def layer_ranges(labels: np.ndarray, class_id: int, min_fraction: float = 0.01) -> tuple[int, int] | None:
    """First and last+1 z slice where class ``class_id`` covers >= ``min_fraction`` of the slice."""
    frac = (labels == class_id).mean(axis=(1, 2))
    idx = np.flatnonzero(frac >= min_fraction)
    if len(idx) == 0:
        return None
    return int(idx[0]), int(idx[-1]) + 1


def layers(labels: np.ndarray, classes: dict[int, str], voxel_size_um, min_fraction: float = 0.01) -> dict:
    """Per class: z range (slices where it covers >= ``min_fraction``) and its thickness in um."""
    out = {}
    for c, name in sorted(classes.items()):
        r = layer_ranges(labels, c, min_fraction)
        if r is not None:
            out[name] = {"z_start": r[0], "z_stop": r[1], "thickness_um": (r[1] - r[0]) * float(voxel_size_um[0])}
    return out


def counts_volume_fractions(slice_counts: np.ndarray, classes: dict[int, str],
                            ignore_label: int = IGNORE_LABEL) -> dict[str, float]:
    """:func:`volume_fractions` from per-z-slice class counts (int64 [Z, 256])."""
    total = slice_counts.sum(axis=0)
    size = float(total.sum())
    out = {name: float(total[c] / size) for c, name in sorted(classes.items())}
    if total[ignore_label] > 0:
        out["unlabelled"] = float(total[ignore_label] / size)
    return out


def counts_layer_ranges(slice_counts: np.ndarray, class_id: int, plane_voxels: int,
                        min_fraction: float = 0.01) -> tuple[int, int] | None:
    """:func:`layer_ranges` from per-z-slice class counts (int64 [Z, 256]; ``plane_voxels`` = Y * X)."""
    idx = np.flatnonzero(slice_counts[:, class_id] / float(plane_voxels) >= min_fraction)
    if len(idx) == 0:
        return None
    return int(idx[0]), int(idx[-1]) + 1


def counts_layers(slice_counts: np.ndarray, classes: dict[int, str], plane_voxels: int, voxel_size_um,
                  min_fraction: float = 0.01) -> dict:
    """:func:`layers` from per-z-slice class counts (int64 [Z, 256]; ``plane_voxels`` = Y * X)."""
    out = {}
    for c, name in sorted(classes.items()):
        r = counts_layer_ranges(slice_counts, c, plane_voxels, min_fraction)
        if r is not None:
            out[name] = {"z_start": r[0], "z_stop": r[1], "thickness_um": (r[1] - r[0]) * float(voxel_size_um[0])}
    return out


def percolation(labels: np.ndarray, classes: dict[int, str], pore_phases=PORE_PHASES) -> dict[str, Any]:
    """Per class present: clusters and percolation with the dual-connectivity rule.

    Pore phases (``pore_phases``) are 26-connected, solids 6-connected
    (:func:`~batterytwin.microstructure.clusters.connectivity_of`).

    Returns:
        {name: {"connectivity": 26 | 6, "percolating": {"z": bool, "y": ..., "x": ...},
        "n_clusters": int, "fractions": {...}}} (fractions as :class:`ClusterInfo`).
    """
    out = {}
    for c, name in sorted(classes.items()):
        m = labels == c
        if m.any():
            conn = connectivity_of(name, pore_phases)
            info = phase_clusters(m, conn)
            out[name] = {"connectivity": conn, "percolating": dict(zip(AXES, info.percolating)),
                         "n_clusters": info.n_clusters, "fractions": info.fractions}
    return out


def particle_stats(mask: np.ndarray, voxel_size_um) -> dict[str, Any]:
    """Active-material particles: mean radius r = 3 V / S and the equivalent-radius distribution.

    ``mean_radius_um`` = 3 V / S is exact for equal spheres and does not need touching particles to
    be separated; the distribution is of 6-connected components (a solid, by the dual-connectivity
    rule; touching particles merge).
    """
    if not mask.any():
        return {"count": 0, "mean_radius_um": None, "equivalent_radii_um": []}
    lab, n = ndimage.label(mask, structure=STRUCTURES[6])
    return particle_record(np.bincount(lab.ravel())[1:], int(mask.sum()), surface_area_um2(mask, voxel_size_um),
                           voxel_size_um)


def particle_record(sizes: np.ndarray, voxels: int, area: float, voxel_size_um) -> dict[str, Any]:
    """:func:`particle_stats` from the particles' sizes (voxels, label order), the phase's voxels
    and boundary area (um^2)."""
    vox = float(np.prod(voxel_size_um))
    vols = np.asarray(sizes) * vox
    radii = np.cbrt(3 * vols / (4 * math.pi))
    return {"count": int(len(sizes)), "mean_radius_um": float(3 * voxels * vox / area) if area > 0 else None,
            "equivalent_radii_um": sorted((float(r) for r in radii), reverse=True)[:1000],
            "equivalent_radius_mean_um": float(radii.mean()), "equivalent_radius_std_um": float(radii.std())}


def lithium_stats(labels: np.ndarray, redeposited: int, anode: int | None, voxel_size_um) -> dict[str, Any]:
    """Redeposited lithium: agglomerates (6-connected components: a solid, by the dual-connectivity
    rule) and dendrite length.

    Protrusion of a redeposited voxel = (anode surface z in its column - its z) * voxel z size,
    with the anode surface the lowest lithium-metal z of the column (the median surface where a
    column has none). ``dendrite_length_um`` is the largest protrusion of a component that touches
    the anode; ``max_protrusion_um`` the largest of any component.
    """
    vz = float(voxel_size_um[0])
    mask = labels == redeposited
    if not mask.any():
        return {"count": 0, "volumes_um3": [], "equivalent_diameters_um": [], "total_volume_um3": 0.0,
                "dendrite_length_um": 0.0, "max_protrusion_um": 0.0, "attached_count": 0}
    lab, n = ndimage.label(mask, structure=STRUCTURES[6])
    out = lithium_record(np.bincount(lab.ravel(), minlength=n + 1)[1:], voxel_size_um)
    if anode is None or not np.any(labels == anode):
        return lithium_unanchored(out)
    metal = labels == anode
    has = metal.any(axis=0)
    surface = np.where(has, metal.argmax(axis=0), 0).astype(np.float64)
    surface[~has] = np.median(surface[has])
    z = np.arange(labels.shape[0])[:, None, None]
    prot = np.where(mask, surface[None] - z, -np.inf)
    per_comp = ndimage.maximum(prot, lab, index=np.arange(1, n + 1))
    near = ndimage.binary_dilation(metal, structure=np.ones((3, 3, 3), bool))
    attached = np.zeros(n + 1, bool)
    attached[np.unique(lab[near & mask])] = True
    return lithium_anchored(out, np.asarray(per_comp, dtype=np.float64), attached[1:], vz)


def lithium_record(sizes: np.ndarray, voxel_size_um) -> dict[str, Any]:
    """The agglomerate part of :func:`lithium_stats` from the components' sizes (voxels, label order)."""
    vols = np.asarray(sizes) * float(np.prod(voxel_size_um))
    return {"count": int(len(sizes)), "total_volume_um3": float(vols.sum()),
            "volumes_um3": [float(v) for v in vols],
            "equivalent_diameters_um": [float(d) for d in np.cbrt(6 * vols / math.pi)]}


def lithium_unanchored(out: dict) -> dict:
    """:func:`lithium_stats` without a lithium-metal anode: protrusion undefined."""
    out.update(dendrite_length_um=None, max_protrusion_um=None, attached_count=None,
               flag="no lithium-metal anode in the volume: protrusion undefined")
    return out


def lithium_anchored(out: dict, per_comp: np.ndarray, attached: np.ndarray, vz: float) -> dict:
    """:func:`lithium_stats`' protrusion part from each component's largest (anode surface z - z) in
    voxels and whether it touches the anode (26-neighbourhood), in label order."""
    per_comp = np.maximum(per_comp, 0) * vz
    out.update(dendrite_length_um=float(per_comp[attached].max()) if attached.any() else 0.0,
               max_protrusion_um=float(per_comp.max()), attached_count=int(attached.sum()),
               protrusions_um=[float(p) for p in per_comp])
    return out


def anode_surface(first_z: np.ndarray) -> np.ndarray:
    """Anode surface z per column (float64 [Y, X]) from the lowest lithium-metal z of each column
    (``first_z``, -1 where the column has none): the median surface there."""
    has = first_z >= 0
    surface = np.where(has, first_z, 0).astype(np.float64)
    surface[~has] = np.median(surface[has])
    return surface
