"""Microstructure driver: ``labels.zarr`` -> ``microstructure.json`` + ``msd.npz``.

Reads the whole label volume (uint8; 1 GB at 1024^3), measures the random-walk tortuosity of each
transport phase over the whole volume and, for the ``cell`` block cellsim reads, of the electrolyte
phase inside the positive electrode and the separator; adds volume fractions, interface areas,
percolation, layers, particle and lithium statistics. Walker batches are spread over MPI ranks
(identical results for any rank count) and checkpointed under ``checkpoint_dir``; rank 0 writes the
outputs atomically.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import MICROSTRUCTURE_SCHEMA, bruggeman, json_safe
from ..distributed import World, get_world
from ..errors import InputError
from ..store import atomic_output, open_volume, provenance, read_json, write_json
from . import stats
from .tortuosity import WalkParams, walk_tortuosity

log = logging.getLogger(__name__)


@dataclass
class MicrostructureParams:
    """The ``microstructure`` config section (the ``walk`` sub-section is :class:`WalkParams`)."""

    phases: list[str] = field(default_factory=lambda: ["pore", "solid_electrolyte"])
    electrolyte_phase: str = "solid_electrolyte"
    active_phase: str = "cathode_active"
    anode_phase: str = "lithium_metal"
    redeposited_phase: str = "redeposited_lithium"
    layer_min_fraction: float = 0.01
    surface_area: bool = True
    absent_phase: str = "error"  # error | skip: a configured phase with no voxel stops the run, or is flagged
    walk: WalkParams = field(default_factory=WalkParams)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MicrostructureParams":
        d = dict(d)
        walk = d.pop("walk", {}) or {}
        unknown = set(d) - {f for f in cls.__dataclass_fields__ if f != "walk"}
        bad_walk = set(walk) - set(WalkParams.__dataclass_fields__)
        if unknown or bad_walk:
            keys = sorted(unknown | {f"walk.{k}" for k in bad_walk})
            raise InputError(f"microstructure config: unknown key(s) {keys}")
        if d.get("absent_phase", "error") not in ("error", "skip"):
            raise InputError(f"microstructure config: absent_phase must be 'error' or 'skip', got {d['absent_phase']!r}")
        return cls(walk=WalkParams(**walk), **d)


# A Bruggeman exponent less certain than this is reported as null (cellsim then keeps its default).
BRUGGEMAN_MAX_STD = 0.5


def _undetermined_bruggeman(b: float | None, b_std: float | None, eps: float) -> str | None:
    """Why a measured Bruggeman exponent is not usable, or None when it is.

    Near eps = 1, ln(eps) ~ 0 turns the walk's statistical error in tau into any b at all.
    """
    if b is None or (b > 0 and (b_std is None or b_std <= BRUGGEMAN_MAX_STD)):
        return None
    return (f"undetermined: b = {b:.3g} +/- {b_std:.2g} at eps = {eps:.4f} "
            "(eps near 1 fixes no exponent); the parameter set keeps its value")


def _public(tort: dict) -> dict:
    return {k: v for k, v in tort.items() if not k.startswith("_")}


def _region_walk(mask: np.ndarray, params: WalkParams, vs, world, ck, where: str) -> tuple[dict | None, str | None]:
    try:
        return walk_tortuosity(mask, params, vs, world, ck, where=where), None
    except InputError as exc:  # a thin or empty region: the value is missing, not the whole run
        return None, str(exc)


def _cell_block(labels, ids, p: MicrostructureParams, vs, world, ck, msd) -> dict[str, Any]:
    vz = float(vs[0])
    elec = ids[p.electrolyte_phase]
    cell: dict[str, Any] = {"stacking_axis": "z", "electrolyte_phase": p.electrolyte_phase}
    pe = stats.layer_ranges(labels, ids[p.active_phase], p.layer_min_fraction) if p.active_phase in ids else None
    an = stats.layer_ranges(labels, ids[p.anode_phase], p.layer_min_fraction) if p.anode_phase in ids else None
    regions = {}
    if pe is None:
        cell["flag"] = f"no {p.active_phase} in the volume: positive electrode not found"
    else:
        regions["positive_electrode"] = pe
        sep_stop = an[0] if an is not None and an[0] > pe[1] else None
        if sep_stop is None:
            cell["separator_flag"] = f"no {p.anode_phase} above the positive electrode: separator not found"
        else:
            regions["separator"] = (pe[1], sep_stop)
    for name in ("positive_electrode", "separator"):
        if name not in regions:
            cell[name] = None
            continue
        z0, z1 = regions[name]
        sub = labels[z0:z1]
        eps = float((sub == elec).mean())
        rec: dict[str, Any] = {"z_range": [z0, z1], "thickness_um": (z1 - z0) * vz,
                               "electrolyte_volume_fraction": eps}
        if name == "positive_electrode":
            rec["active_material_volume_fraction"] = float((sub == ids[p.active_phase]).mean())
            rec["porosity_void"] = float((sub == ids["pore"]).mean()) if "pore" in ids else 0.0
            part = stats.particle_stats(sub == ids[p.active_phase], vs)
            rec["particle_radius_um"] = part["mean_radius_um"]
        tort, err = _region_walk(sub == elec, p.walk, vs, world, ck, f"cell.{name}.{p.electrolyte_phase}")
        tau = tort["axes"]["z"]["tau"] if tort else None
        rec["tortuosity_electrolyte"] = tau
        rec["tortuosity_electrolyte_std"] = tort["axes"]["z"]["tau_std"] if tort else None
        rec["bruggeman"] = bruggeman(eps, tau)
        # d b = -(d tau / tau) / ln(eps): large when eps is near 1 (a dense separator)
        std = rec["tortuosity_electrolyte_std"]
        rec["bruggeman_std"] = (abs(std / tau / math.log(eps)) if rec["bruggeman"] is not None and std is not None
                                else None)
        flag = _undetermined_bruggeman(rec["bruggeman"], rec["bruggeman_std"], eps)
        if flag:
            rec["bruggeman"], rec["bruggeman_flag"] = None, flag
        if tort is None:
            rec["flag"] = err
        elif tau is None:
            rec["flag"] = tort["axes"]["z"].get("flag")
        if tort is not None:
            rec["tortuosity_detail"] = _public(tort)
            msd[f"{name}.{p.electrolyte_phase}"] = tort
        cell[name] = rec
    return cell


def measure(labels: np.ndarray, classes: dict[int, str], voxel_size_um, p: MicrostructureParams,
            world: World | None = None, checkpoint_dir: str | Path | None = None) -> tuple[dict, dict]:
    """Everything in ``microstructure.json`` from a label volume (uint8 [Z, Y, X]).

    Returns:
        (record, msd) -- the JSON record and {"<region>.<phase>": tortuosity dict with MSD arrays}.
    Raises:
        InputError: a configured phase is not a class of the labels or has no voxel.
    """
    world = world or get_world()
    ids = {name: c for c, name in classes.items()}
    for name in [*p.phases, p.electrolyte_phase]:
        if name not in ids:
            raise InputError(f"microstructure: phase {name!r} is not a class of the labels (classes: {sorted(ids)})")
    vs = [float(v) for v in voxel_size_um]
    t0 = time.perf_counter()
    msd: dict[str, dict] = {}
    tortuosity = {}
    for name in p.phases:
        if p.absent_phase == "skip" and not (labels == ids[name]).any():
            # a segmentation may legitimately find none of a phase: a result, not a broken input
            log.warning("phase %r has no voxel: tortuosity not measured (absent_phase: skip)", name)
            tortuosity[name] = {"axes": None, "tensor_D_eff_over_D_bulk": None,
                                "flag": "phase absent (0 voxels): not measured"}
            continue
        log.info("random walk: %s (whole volume)", name)
        tort = walk_tortuosity(labels == ids[name], p.walk, vs, world,
                               Path(checkpoint_dir) / "walks" if checkpoint_dir else None, where=f"phase {name!r}")
        tortuosity[name] = _public(tort)
        msd[f"volume.{name}"] = tort
    ck = Path(checkpoint_dir) / "walks" if checkpoint_dir else None
    cell = _cell_block(labels, ids, p, vs, world, ck, msd)
    record: dict[str, Any] = {"schema": MICROSTRUCTURE_SCHEMA, "voxel_size_um": vs, "shape": list(labels.shape),
                              "classes": {str(c): n for c, n in sorted(classes.items())},
                              "volume_fractions": stats.volume_fractions(labels, classes),
                              "tortuosity": tortuosity, "cell": cell}
    if world.is_root:
        record["percolation"] = stats.percolation(labels, classes)  # 26-connected pore, 6-connected solids
        record["layers"] = stats.layers(labels, classes, vs, p.layer_min_fraction)
        if p.surface_area:
            record["interfaces"] = stats.interface_areas(labels, classes, vs)
        if p.active_phase in ids:
            record["particles"] = stats.particle_stats(labels == ids[p.active_phase], vs)
        if p.redeposited_phase in ids:
            record["lithium"] = stats.lithium_stats(labels, ids[p.redeposited_phase], ids.get(p.anode_phase), vs)
    record["wall_time_s"] = time.perf_counter() - t0
    return record, msd


def msd_arrays(msd: dict[str, dict], voxel_size_um) -> dict[str, np.ndarray]:
    """Flat arrays for ``msd.npz``: per "<region>.<phase>" the record times (steps), the mean
    second moments in um^2 [R+1, 6] (zz, yy, xx, zy, zx, yx) and the free-space slope in um^2/step."""
    h = np.asarray(voxel_size_um, dtype=np.float64)
    scale = np.array([h[i] * h[j] for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))])
    out = {"components": np.array(["zz", "yy", "xx", "zy", "zx", "yx"])}
    for key, tort in msd.items():
        out[f"{key}.t_steps"] = tort["_t_steps"]
        out[f"{key}.msd_um2"] = tort["_msd_voxel2"] * scale
        out[f"{key}.free_slope_um2_per_step"] = tort["_free_slope_voxel2"] * h ** 2
    return out


GROWTH_KEYS = ("count", "total_volume_um3", "dendrite_length_um", "max_protrusion_um", "attached_count")


def lithium_growth(previous: dict, current: dict, previous_path: str) -> dict[str, Any]:
    """Change of the redeposited-lithium statistics since the previous frame of a time series.

    Args:
        previous, current: the ``lithium`` blocks of two ``microstructure.json`` files.
    Returns:
        {"previous": path, "<key>": {"previous": a, "current": b, "change": b - a}} for the counts,
        volume, dendrite length and protrusion; ``change`` is None where either value is missing.
    """
    out: dict[str, Any] = {"previous": previous_path}
    for k in GROWTH_KEYS:
        a, b = previous.get(k), current.get(k)
        out[k] = {"previous": a, "current": b, "change": (b - a) if a is not None and b is not None else None}
    return out


def run(labels_path: str | Path, out_json: str | Path, out_msd: str | Path, params: MicrostructureParams,
        checkpoint_dir: str | Path | None = None, world: World | None = None,
        previous_json: str | Path | None = None) -> dict:
    """Read ``labels.zarr``, measure, write ``microstructure.json`` and ``msd.npz`` (rank 0).

    With ``previous_json`` (the previous frame's ``microstructure.json`` of a time series) the
    lithium block gains ``growth_from_previous`` (:func:`lithium_growth`).
    """
    world = world or get_world()
    prev = None
    if previous_json:
        prev = read_json(previous_json, "previous frame's microstructure.json", schema=MICROSTRUCTURE_SCHEMA)
        if "lithium" not in prev:
            raise InputError(f"{previous_json}: not a {MICROSTRUCTURE_SCHEMA} file with a 'lithium' block")
    vol = open_volume(labels_path, require=("voxel_size_um",))
    if not vol.classes:
        raise InputError(f"{labels_path}: label store has no 'classes' attribute")
    if len(vol.shape) != 3:
        raise InputError(f"{labels_path}: expected a 3-D label volume (z, y, x), got shape {vol.shape}")
    if vol.array.dtype != np.uint8:
        raise InputError(f"{labels_path}: labels must be uint8, got {vol.array.dtype}")
    labels = np.asarray(vol.array[...])
    record, msd = measure(labels, vol.classes, vol.voxel_size_um, params, world, checkpoint_dir)
    record["source"] = {"labels": str(labels_path), "producer": vol.attrs.get("producer", {})}
    record.update(provenance("microstructure", asdict(params)))
    if prev is not None and "lithium" in record:
        record["lithium"]["growth_from_previous"] = lithium_growth(prev["lithium"], record["lithium"],
                                                                   str(previous_json))
    record = json_safe(record)
    if world.is_root:
        write_json(out_json, record)
        with atomic_output(out_msd, world=_single()) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **msd_arrays(msd, vol.voxel_size_um))
    world.barrier()
    return record


def _single() -> World:
    return World()
