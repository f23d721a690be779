"""The morphology blocks of ``microstructure.json`` from a label store, slab by slab over MPI ranks.

Three passes over the store's z slabs (:class:`~.slabs.LabelSlabs`), each rank a contiguous block
of slabs (interface areas: round robin over the marching-cubes slabs); no rank holds the volume:

1. per-z-slice class counts (volume fractions, layers, the cell block's regions), the class pairs
   that touch (across a slab's top face too: one plane of halo) and the lowest lithium-metal z of
   every column (MPI min);
2. interface areas: the marching-cubes z slabs of :func:`.stats.surface_area_um2` with their halos,
   each meshed in y-x blocks (memory per block), summed in order (equal to the whole-volume areas
   to float rounding);
3. connected components of every class (26-connected pore, 6-connected solids), labelled per slab
   and merged exactly across slab faces (:mod:`.components`); neighbouring ranks exchange the one
   boundary plane of labels they need. Lithium components also carry their largest protrusion and
   whether they touch the anode (one plane of halo each side for the 26-neighbourhood).

Rank 0 gets percolation, particles and lithium (as :func:`.driver.measure` has them on rank 0 only);
every rank gets ``slice_counts``, volume fractions and layers.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy import ndimage

from ..distributed import World, split_evenly
from . import stats
from .clusters import AXES, connectivity_of
from .components import Merged, face_pairs, label, merge, merged_fractions, slab_parts
from .slabs import LabelSlabs

NEAR = np.ones((3, 3, 3), bool)  # the anode's 26-neighbourhood (lithium_stats)


def _allreduce_min(world: World, arr: np.ndarray) -> np.ndarray:
    if world.comm is None or world.size == 1:
        return arr
    from mpi4py import MPI

    out = np.empty_like(arr)
    world.comm.Allreduce(arr, out, op=MPI.MIN)
    return out


def _gather_dicts(world: World, mine: dict) -> dict:
    out: dict = {}
    for part in world.allgather(mine):
        out.update(part)
    return out


def _touch_codes(lab: np.ndarray, core: int) -> set[tuple[int, int]]:
    """Pairs (a, b) of different ids that are face neighbours: along z over all planes of ``lab``
    (core planes + one halo plane above), along y and x over the first ``core`` planes."""
    pairs: set[tuple[int, int]] = set()
    for ax in range(3):
        s = lab if ax == 0 else lab[:core]
        n = s.shape[ax]
        x, y = np.take(s, np.arange(n - 1), axis=ax), np.take(s, np.arange(1, n), axis=ax)
        d = x != y
        codes = np.unique(x[d].astype(np.uint16) * 256 + y[d])
        pairs.update((int(c) >> 8, int(c) & 255) for c in codes)
    return pairs


def pass_counts(reader: LabelSlabs, anode: int | None, world: World) -> tuple[np.ndarray, set, np.ndarray | None]:
    """Pass 1: slice counts int64 [Z, 256], touching id pairs, lowest anode z per column (-1: none)."""
    nz, ny, nx = reader.shape
    counts, touch = {}, set()
    big = np.iinfo(np.int64).max
    first = np.full((ny, nx), big, np.int64) if anode is not None else None
    for i in reader.my_slabs(world):
        z0, z1 = reader.bounds[i]
        lab = reader.read(z0, min(z1 + 1, nz))
        core = lab[:z1 - z0]
        counts[i] = np.stack([np.bincount(plane.ravel(), minlength=256) for plane in core]).astype(np.int64)
        touch |= _touch_codes(lab, z1 - z0)
        if anode is not None:
            metal = core == anode
            has = metal.any(axis=0)
            np.minimum(first, np.where(has, z0 + metal.argmax(axis=0), big), out=first)
    parts = _gather_dicts(world, counts)
    slice_counts = np.concatenate([parts[i] for i in range(len(reader.bounds))])
    touch = set().union(*world.allgather(touch))
    if first is not None:
        first = _allreduce_min(world, first)
        first[first == big] = -1
    return slice_counts, touch, first


AREA_TILE = 64  # y and x cells per marching-cubes block: memory per block, not per slab


def slab_areas(lab: np.ndarray, z: tuple[int, int], keys: list, voxel_size_um, tile: int = AREA_TILE) -> dict:
    """Boundary areas in the cells between planes z[0] .. z[1] of ``lab`` (a slab with its halo) of
    each class id / id pair (union) in ``keys``, meshed in y-x blocks of ``tile`` cells."""
    out = {}
    for key in keys:
        mask = (lab == key) if not isinstance(key, tuple) else (lab == key[0]) | (lab == key[1])
        out[key] = stats.slab_area(mask, z[0], z[1], voxel_size_um, tile)
    return out


def pass_areas(reader: LabelSlabs, singles: list[int], unions: list[tuple[int, int]], voxel_size_um,
               world: World) -> dict:
    """Pass 2: boundary areas {class id or (a, b): um^2}: the z slabs of :func:`.stats.surface_area_um2`
    (round robin over ranks), each in y-x blocks (:func:`slab_areas`), summed on every rank in slab order."""
    slabs = stats.surface_slabs(reader.shape[0])
    mine = {}
    for j in world.my_items(len(slabs)):
        z0, z1, a0, a1 = slabs[j]
        mine[j] = slab_areas(reader.read(a0, a1), (z0 - a0, z1 - a0), [*singles, *unions], voxel_size_um)
    parts = _gather_dicts(world, mine)
    out = {}
    for key in [*singles, *unions]:
        area = 0.0
        for j in range(len(slabs)):
            area += parts[j][key]
        out[key] = area
    return out


def _owners(n_slabs: int, world: World) -> list[int]:
    own = [0] * n_slabs
    for r in range(world.size):
        for i in split_evenly(range(n_slabs), World(rank=r, size=world.size)):
            own[i] = r
    return own


def pass_components(reader: LabelSlabs, tasks: list[tuple[int, int]], lithium: tuple[int, int] | None,
                    surface: np.ndarray | None, world: World) -> dict[tuple[int, int], Merged] | None:
    """Pass 3: components of class c with connectivity k for every (c, k) in ``tasks``, merged on
    rank 0 (None on the others). ``lithium`` = (redeposited id, anode id): its 6-connected task also
    gets "protrusion" (max of surface z - z, voxels) and "attached" (touches the anode's 26-neighbourhood)."""
    nz = reader.shape[0]
    n_slabs = len(reader.bounds)
    mine = reader.my_slabs(world)
    parts: dict[tuple, dict[int, Any]] = {t: {} for t in tasks}
    pairs: dict[tuple, dict[int, np.ndarray]] = {t: {} for t in tasks}
    tops: dict[tuple, np.ndarray] = {}
    first_bottom: dict[tuple, np.ndarray] = {}
    for i in mine:
        z0, z1 = reader.bounds[i]
        h0, h1 = max(0, z0 - 1), min(nz, z1 + 1)
        ext = reader.read(h0, h1)
        core = ext[z0 - h0:z1 - h0]
        for t in tasks:
            c, conn = t
            mask = core == c
            lab, n = label(mask, conn)
            sp = slab_parts(lab, n, i == 0, i == n_slabs - 1)
            if lithium is not None and t == (lithium[0], 6) and n == 0:
                sp.extra.update(protrusion=np.zeros(0), attached=np.zeros(0))
            elif lithium is not None and t == (lithium[0], 6):
                zz, yy, xx = np.nonzero(mask)
                vals = surface[yy, xx] - (z0 + zz)
                idx = np.arange(1, n + 1)
                sp.extra["protrusion"] = np.asarray(ndimage.maximum(vals, lab[mask], index=idx), np.float64).reshape(n)
                near = ndimage.binary_dilation(ext == lithium[1], structure=NEAR)[z0 - h0:z1 - h0]
                att = np.zeros(n + 1, bool)
                att[np.unique(lab[near & mask])] = True
                sp.extra["attached"] = att[1:].astype(np.float64)
            parts[t][i] = sp
            if i - 1 in parts[t]:
                pairs[t][i - 1] = face_pairs(tops[t], lab[0], conn)
            elif i > 0:
                first_bottom[t] = lab[0].copy()
            tops[t] = lab[-1].copy()
    # the face between this rank's last slab and the next rank's first
    if world.size > 1 and world.comm is not None:
        own = _owners(n_slabs, world)
        reqs = []
        if mine and mine[0] > 0:
            reqs.append(world.comm.isend(first_bottom, dest=own[mine[0] - 1], tag=29))
        if mine and mine[-1] + 1 < n_slabs:
            below = world.comm.recv(source=own[mine[-1] + 1], tag=29)
            for t in tasks:
                pairs[t][mine[-1]] = face_pairs(tops[t], below[t], t[1])
        for r in reqs:
            r.wait()
    gathered = world.allgather({t: (parts[t], pairs[t]) for t in tasks}) if world.size > 1 else \
        [{t: (parts[t], pairs[t]) for t in tasks}]
    if not world.is_root:
        return None
    out = {}
    empty = np.zeros((0, 2), np.int64)
    for t in tasks:
        allp, allq = {}, {}
        for g in gathered:
            allp.update(g[t][0])
            allq.update(g[t][1])
        out[t] = merge([allp[i] for i in range(n_slabs)], [allq.get(i, empty) for i in range(n_slabs)])
    return out


def store_stats(reader: LabelSlabs, classes: dict[int, str], voxel_size_um, p, world: World) -> dict[str, Any]:
    """Volume fractions, layers, interfaces, percolation, particles and lithium of a label store, as
    :func:`.driver.measure` computes them from the whole volume, plus ``slice_counts`` (int64 [Z, 256]).

    Args:
        p: the ``microstructure`` settings (``MicrostructureConfig``).
    """
    ids = {name: c for c, name in classes.items()}
    vs = [float(v) for v in voxel_size_um]
    nz, ny, nx = reader.shape
    size = nz * ny * nx
    anode = ids.get(p.anode_phase)
    red = ids.get(p.redeposited_phase)
    slice_counts, touch, first = pass_counts(reader, anode, world)
    total = slice_counts.sum(axis=0)
    out: dict[str, Any] = {"slice_counts": slice_counts,
                           "volume_fractions": stats.counts_volume_fractions(slice_counts, classes),
                           "layers": stats.counts_layers(slice_counts, classes, ny * nx, vs, p.layer_min_fraction)}
    present = [c for c in sorted(classes) if total[c] > 0]
    active = ids.get(p.active_phase)
    singles = [c for c in present if total[c] < size and (p.surface_area or c == active)]
    unions = [(a, b) for a, b in itertools.combinations(present, 2)
              if ((a, b) in touch or (b, a) in touch)] if p.surface_area else []
    areas = pass_areas(reader, singles, [u for u in unions if total[u[0]] + total[u[1]] < size], vs, world)
    if p.surface_area:
        volume = size * float(np.prod(vs))
        inter = {}
        for a, b in unions:
            area = max(0.0, 0.5 * (areas.get(a, 0.0) + areas.get(b, 0.0) - areas.get((a, b), 0.0)))
            inter[f"{classes[a]}|{classes[b]}"] = {"area_um2": area, "specific_area_per_um": area / volume}
        out["interfaces"] = inter
    tasks = [(c, connectivity_of(classes[c])) for c in present]
    for c in (active, red):
        if c is not None and c in present and (c, 6) not in tasks:
            tasks.append((c, 6))
    has_anode = anode is not None and total[anode] > 0
    surface = stats.anode_surface(first) if has_anode and red is not None and total[red] > 0 else None
    merged = pass_components(reader, tasks, (red, anode) if surface is not None else None, surface, world)
    if merged is None:
        return out
    perc = {}
    for c in present:
        conn = connectivity_of(classes[c])
        m = merged[(c, conn)]
        _, fractions, percolating = merged_fractions(m, float(size))
        perc[classes[c]] = {"connectivity": conn, "percolating": dict(zip(AXES, percolating)),
                            "n_clusters": m.n, "fractions": fractions}
    out["percolation"] = perc
    if active is not None:
        if total[active] == 0:
            out["particles"] = {"count": 0, "mean_radius_um": None, "equivalent_radii_um": []}
        else:
            out["particles"] = stats.particle_record(merged[(active, 6)].sizes, int(total[active]),
                                                     areas.get(active, 0.0), vs)
    if red is not None:
        if total[red] == 0:
            out["lithium"] = {"count": 0, "volumes_um3": [], "equivalent_diameters_um": [], "total_volume_um3": 0.0,
                              "dendrite_length_um": 0.0, "max_protrusion_um": 0.0, "attached_count": 0}
        else:
            m = merged[(red, 6)]
            rec = stats.lithium_record(m.sizes, vs)
            if surface is None:
                out["lithium"] = stats.lithium_unanchored(rec)
            else:
                out["lithium"] = stats.lithium_anchored(rec, m.extra["protrusion"], m.extra["attached"] > 0, vs[0])
    return out
