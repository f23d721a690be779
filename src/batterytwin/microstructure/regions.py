"""The ``cell`` block: positive electrode and separator along z, and their electrolyte transport.

Regions are found from per-z-slice class counts (``slice_counts`` int64 [Z, 256]: voxels of class
id c in slice z), never from the label volume, so that a reader can build them shard by shard;
walks and particle statistics get their masks from ``region_mask(z0, z1, class_id)`` (bool
[z1 - z0, Y, X]).

Region rule (robust to segmentation noise at interfaces, docs/microstructure.md "The cell block"):

* a class's **layer** is the longest contiguous run of z slices where it covers at least
  ``max(layer_min_fraction, layer_relative_fraction x its largest slice fraction)`` of the slice
  (single-slice dips inside a run are bridged): a few stray voxels in a neighbouring layer's
  slice do not reach that share and cannot move a boundary;
* positive electrode = the layer of ``active_phase``; anode = the layer of ``anode_phase`` among
  the slices *above* the electrode (lithium voxels segmented inside the cathode are ignored);
  separator = from the electrode's end to the anode's start;
* through-plane transport is walked on the region's **transport slab**: the region less its
  leading/trailing slices whose electrolyte fraction is below ``transport_trim_fraction`` x the
  region's median slice fraction (an interface slice with no or little electrolyte would
  otherwise block or throttle the z flux and measure the interface, not the electrode).

Example::

    counts = slice_counts(labels)
    cell = cell_block(counts, lambda z0, z1, c: labels[z0:z1] == c, ids, params, vs, world, None, {})
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

from ..contracts import bruggeman
from ..distributed import World
from ..errors import InputError
from . import stats
from .components import mask_components
from .sharded import AREA_TILE
from .config import MicrostructureConfig, WalkSettings
from .crosscheck import crosscheck
from .tortuosity import walk_tortuosity

log = logging.getLogger(__name__)

RegionMask = Callable[[int, int, int], np.ndarray]

# A Bruggeman exponent less certain than this is reported as null (cellsim then keeps its default).
BRUGGEMAN_MAX_STD = 0.5


def slice_counts(labels: np.ndarray) -> np.ndarray:
    """Per-z-slice class counts of a uint8 label volume: int64 [Z, 256]."""
    return np.stack([np.bincount(s.ravel(), minlength=256)[:256] for s in labels]).astype(np.int64) \
        if len(labels) else np.zeros((0, 256), np.int64)


def particle_stats(mask: np.ndarray, voxel_size_um) -> dict[str, Any]:
    """:func:`.stats.particle_stats` labelled slab by slab (:func:`.components.mask_components`):
    the same numbers without an int32 labels volume of the region."""
    if not mask.any():
        return {"count": 0, "mean_radius_um": None, "equivalent_radii_um": []}
    return stats.particle_record(mask_components(mask, 6).sizes, int(np.count_nonzero(mask)),
                                 stats.surface_area_um2(mask, voxel_size_um, tile=AREA_TILE), voxel_size_um)


def _fractions(counts: np.ndarray, class_id: int) -> np.ndarray:
    total = counts.sum(axis=1).astype(np.float64)
    return np.divide(counts[:, class_id], total, out=np.zeros(len(counts)), where=total > 0)


def layer_run(counts: np.ndarray, class_id: int, min_fraction: float = 0.01,
              relative_fraction: float = 0.3) -> tuple[int, int] | None:
    """The layer of ``class_id``: [start, stop) of the longest run of slices where it covers at least
    ``max(min_fraction, relative_fraction * max slice fraction)`` (single-slice gaps bridged);
    the first of equally long runs. None when the class never reaches ``min_fraction``."""
    frac = _fractions(counts, class_id)
    if len(frac) == 0 or frac.max() <= 0 or frac.max() < min_fraction:
        return None
    on = frac >= max(min_fraction, relative_fraction * frac.max())
    if len(on) > 2:
        on[1:-1] |= on[:-2] & on[2:]  # one noisy slice inside a layer does not split it
    best, start = None, None
    for z, v in enumerate(np.append(on, False)):
        if v and start is None:
            start = z
        elif not v and start is not None:
            if best is None or z - start > best[1] - best[0]:
                best = (start, z)
            start = None
    return best


def transport_range(counts: np.ndarray, z0: int, z1: int, class_id: int, trim_fraction: float = 0.5
                    ) -> tuple[int, int]:
    """The region [z0, z1) less its boundary slices whose ``class_id`` fraction is below
    ``trim_fraction`` x the region's median slice fraction (empty when nothing is left)."""
    e = _fractions(counts[z0:z1], class_id)
    if len(e) == 0:
        return z0, z0
    ref = trim_fraction * float(np.median(e))
    a, b = 0, len(e)
    while a < b and (e[a] <= 0 or e[a] < ref):
        a += 1
    while b > a and (e[b - 1] <= 0 or e[b - 1] < ref):
        b -= 1
    return z0 + a, z0 + b


def find_regions(counts: np.ndarray, ids: dict[str, int], p: MicrostructureConfig
                 ) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Positive electrode and separator z ranges from the slice counts, and the flags of missing ones.

    Returns:
        ({"positive_electrode": (z0, z1), "separator": (z1, a0)} for those found,
        {"flag" | "separator_flag": why one is missing}).
    """
    regions: dict[str, tuple[int, int]] = {}
    flags: dict[str, str] = {}
    rel = p.layer_relative_fraction
    pe = layer_run(counts, ids[p.active_phase], p.layer_min_fraction, rel) if p.active_phase in ids else None
    if pe is None:
        flags["flag"] = f"no {p.active_phase} in the volume: positive electrode not found"
        return regions, flags
    regions["positive_electrode"] = pe
    an = None
    if p.anode_phase in ids:  # the anode layer among the slices above the electrode only
        an = layer_run(counts[pe[1]:], ids[p.anode_phase], p.layer_min_fraction, rel)
    if p.anode_phase is None:
        flags["separator_flag"] = "microstructure.anode_phase is null (no anode in the scan): separator not sought"
    elif an is None or an[0] == 0:
        flags["separator_flag"] = (f"no {p.anode_phase} layer above the positive electrode (z >= {pe[1]}): "
                                   "separator not found")
    else:
        regions["separator"] = (pe[1], pe[1] + an[0])
    return regions, flags


def undetermined_bruggeman(b: float | None, b_std: float | None, eps: float) -> str | None:
    """Why a measured Bruggeman exponent is not usable, or None when it is.

    Near eps = 1, ln(eps) ~ 0 turns the walk's statistical error in tau into any b at all.
    """
    if b is None or (b > 0 and (b_std is None or b_std <= BRUGGEMAN_MAX_STD)):
        return None
    return (f"undetermined: b = {b:.3g} +/- {b_std:.2g} at eps = {eps:.4f} "
            "(eps near 1 fixes no exponent); the parameter set keeps its value")


def _public(tort: dict) -> dict:
    return {k: v for k, v in tort.items() if not k.startswith("_")}


def _region_walk(mask: np.ndarray, params: WalkSettings, vs, world, ck, where: str) -> tuple[dict | None, str | None]:
    try:
        return walk_tortuosity(mask, params, vs, world, ck, where=where), None
    except InputError as exc:  # a thin or empty region: the value is missing, not the whole run
        return None, str(exc)


def _taufactor(mask: np.ndarray, tort: dict, p: MicrostructureConfig, world: World, where: str) -> None:
    """TauFactor's z tau of the transport slab beside the walk's (``tort["taufactor"]``, and
    ``tau_taufactor`` / ``walk_minus_taufactor_rel`` on the z axis) when the slab has at most
    ``crosscheck_max_voxels`` voxels (larger: only with ``crosscheck_taufactor``, which then flags the skip)."""

    if not tort["axes"]["z"]["percolating"] or (mask.size > p.crosscheck_max_voxels and not p.crosscheck_taufactor):
        return
    try:
        res = crosscheck(mask, tort, p.crosscheck_max_voxels, world, where, axes=("z",))
        log.info("%s: TauFactor z tau %s in %.2f s", where, tort["axes"]["z"].get("tau_taufactor"),
                 res.get("wall_time_s", 0.0))
        res.pop("wall_time_s", None)  # the record stays the same on a rerun from checkpoints
        tort["taufactor"] = res
    except InputError as exc:  # taufactor not installed: required only when asked for
        if p.crosscheck_taufactor:
            raise
        tort["taufactor"] = {"skipped": str(exc)}


def _region_record(name: str, z0: int, z1: int, counts: np.ndarray, region_mask: RegionMask, ids: dict[str, int],
                   p: MicrostructureConfig, vs, world: World, ck, msd: dict) -> dict[str, Any]:
    elec = ids[p.electrolyte_phase]
    sub = counts[z0:z1]
    total = float(sub.sum())
    eps = float(sub[:, elec].sum()) / total
    rec: dict[str, Any] = {"z_range": [z0, z1], "thickness_um": (z1 - z0) * float(vs[0]),
                           "electrolyte_volume_fraction": eps}
    if name == "positive_electrode":
        act = ids[p.active_phase]
        rec["active_material_volume_fraction"] = float(sub[:, act].sum()) / total
        rec["porosity_void"] = float(sub[:, ids["pore"]].sum()) / total if "pore" in ids else 0.0
        rec["particle_radius_um"] = particle_stats(region_mask(z0, z1, act), vs)["mean_radius_um"]
    t0, t1 = transport_range(counts, z0, z1, elec, p.transport_trim_fraction)
    rec["transport_z_range"] = [t0, t1]
    where = f"cell.{name}.{p.electrolyte_phase}"
    if t1 > t0:
        mask = region_mask(t0, t1, elec)
        tort, err = _region_walk(mask, p.walk, vs, world, ck, where)
    else:
        mask, tort, err = None, None, f"{where}: no slice of the region holds {p.electrolyte_phase}"
    z = tort["axes"]["z"] if tort else {}
    tau = z.get("tau")
    if tort is not None and tau is not None:
        _taufactor(mask, tort, p, world, where)
    rec["tortuosity_electrolyte"] = tau
    rec["tortuosity_electrolyte_std"] = z.get("tau_std")
    rec["tortuosity_converged"] = z.get("converged") if tort else None
    inplane = [tort["axes"][a]["tau"] for a in ("y", "x")] if tort else []
    rec["tortuosity_in_plane"] = float(np.mean(inplane)) if inplane and None not in inplane else None
    rec["tortuosity_taufactor"] = z.get("tau_taufactor")
    rec["walk_minus_taufactor_rel"] = z.get("walk_minus_taufactor_rel")
    rec["bruggeman"] = bruggeman(eps, tau)
    # d b = -(d tau / tau) / ln(eps): large when eps is near 1 (a dense separator)
    std = rec["tortuosity_electrolyte_std"]
    rec["bruggeman_std"] = (abs(std / tau / math.log(eps)) if rec["bruggeman"] is not None and std is not None
                            else None)
    flag = undetermined_bruggeman(rec["bruggeman"], rec["bruggeman_std"], eps)
    if flag:
        rec["bruggeman"], rec["bruggeman_flag"] = None, flag
    if tort is None:
        rec["flag"] = err
    elif tau is None:
        rec["flag"] = z.get("flag") or f"{where}: no percolating path along z in z {t0}..{t1}"
    if tort is not None:
        rec["tortuosity_detail"] = _public(tort)
        msd[f"{name}.{p.electrolyte_phase}"] = tort
    return rec


def cell_block(counts: np.ndarray, region_mask: RegionMask, ids: dict[str, int], p: MicrostructureConfig, vs,
               world: World, ck, msd: dict) -> dict[str, Any]:
    """The ``cell`` block of ``microstructure.json`` (what cellsim reads).

    Args:
        counts: per-z-slice class counts, int64 [Z, 256] (:func:`slice_counts`).
        region_mask: ``(z0, z1, class_id) -> bool [z1 - z0, Y, X]``.
        ids: class name -> id.
        msd: gains the region walks ("<region>.<phase>": tortuosity dict with MSD arrays).
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] < 256:
        raise InputError(f"microstructure: slice_counts must be [Z, 256], got shape {counts.shape}")
    cell: dict[str, Any] = {"stacking_axis": "z", "electrolyte_phase": p.electrolyte_phase}
    regions, flags = find_regions(counts, ids, p)
    cell.update(flags)
    for flag in flags.values():  # cellsim records it again where it keeps the parameter set's values
        log.warning("cell block: %s", flag)
    for name in ("positive_electrode", "separator"):
        if name not in regions:
            cell[name] = None
            continue
        z0, z1 = regions[name]
        cell[name] = _region_record(name, z0, z1, counts, region_mask, ids, p, vs, world, ck, msd)
    return cell
