"""Microstructure driver: ``labels.zarr`` -> ``microstructure.json`` + ``msd.npz``.

Reads the label store slab by slab (:mod:`.slabs`, :mod:`.sharded`: ranks split the slabs, components
merged exactly across slab faces; no rank holds the uint8 volume), measures the random-walk tortuosity of each
transport phase over the whole volume and, for the ``cell`` block cellsim reads, of the electrolyte
phase inside the positive electrode and the separator; adds volume fractions, interface areas,
percolation, layers, particle and lithium statistics. Walker batches are spread over MPI ranks
(identical results for any rank count) and checkpointed under ``checkpoint_dir``; rank 0 writes the
outputs atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..contracts import MICROSTRUCTURE_SCHEMA
from ..denoise.driver import freed_memory_kept
from ..distributed import World, get_world
from ..errors import InputError
from ..store import atomic_output, check_labels, json_safe, open_volume, provenance, read_json, write_json
from . import stats
from .config import MicrostructureConfig
from .crosscheck import crosscheck, taufactor_tau  # noqa: F401 (taufactor_tau: the stage's public reference)
from .regions import _public, cell_block, slice_counts
from .regions import undetermined_bruggeman as _undetermined_bruggeman  # noqa: F401 (tests use the old name)
from .sharded import store_stats
from .slabs import LabelSlabs
from .tortuosity import walk_tortuosity

log = logging.getLogger(__name__)


def _tortuosity(phase_mask: Callable[[int], np.ndarray], counts: np.ndarray, ids, p: MicrostructureConfig, vs,
                world: World, checkpoint_dir, msd: dict) -> dict[str, Any]:
    """Whole-volume walk of every transport phase; ``phase_mask(class_id)`` gives its bool mask
    (one at a time); ``counts``: voxels per class id."""
    tortuosity = {}
    for name in p.phases:
        if p.absent_phase == "skip" and counts[ids[name]] == 0:
            # a segmentation may legitimately find none of a phase: a result, not a broken input
            log.warning("phase %r has no voxel: tortuosity not measured (absent_phase: skip)", name)
            tortuosity[name] = {"axes": None, "tensor_D_eff_over_D_bulk": None,
                                "flag": "phase absent (0 voxels): not measured"}
            continue
        log.info("random walk: %s (whole volume)", name)
        mask = phase_mask(ids[name])
        tort = walk_tortuosity(mask, p.walk, vs, world,
                               Path(checkpoint_dir) / "walks" if checkpoint_dir else None, where=f"phase {name!r}")
        if p.crosscheck_taufactor:
            tort["taufactor"] = crosscheck(mask, tort, p.crosscheck_max_voxels, world, f"phase {name!r}")
        del mask
        tortuosity[name] = _public(tort)
        msd[f"volume.{name}"] = tort
    return tortuosity


def _phase_ids(classes: dict[int, str], p: MicrostructureConfig) -> dict[str, int]:
    """{class name: id}; every configured phase must be one of them."""
    ids = {name: c for c, name in classes.items()}
    for name in [*p.phases, p.electrolyte_phase]:
        if name not in ids:
            raise InputError(f"microstructure: phase {name!r} is not a class of the labels (classes: {sorted(ids)})")
    return ids


def _record(shape, classes: dict[int, str], vs, fractions: dict, tortuosity: dict, cell: dict) -> dict[str, Any]:
    """The head of ``microstructure.json`` that :func:`measure` and :func:`measure_store` share."""
    return {"schema": MICROSTRUCTURE_SCHEMA, "voxel_size_um": vs, "shape": list(shape),
            "classes": {str(c): n for c, n in sorted(classes.items())},
            "volume_fractions": fractions, "tortuosity": tortuosity, "cell": cell}


def measure(labels: np.ndarray, classes: dict[int, str], voxel_size_um, p: MicrostructureConfig,
            world: World | None = None, checkpoint_dir: str | Path | None = None) -> tuple[dict, dict]:
    """Everything in ``microstructure.json`` from a label volume (uint8 [Z, Y, X]).

    Returns:
        (record, msd) -- the JSON record and {"<region>.<phase>": tortuosity dict with MSD arrays}.
    Raises:
        InputError: a configured phase is not a class of the labels or has no voxel.
    """
    world = world or get_world()
    ids, vs = _phase_ids(classes, p), [float(v) for v in voxel_size_um]
    t0 = time.perf_counter()
    msd: dict[str, dict] = {}
    counts = slice_counts(labels)
    tortuosity = _tortuosity(lambda c: labels == c, counts.sum(axis=0), ids, p, vs, world, checkpoint_dir, msd)
    ck = Path(checkpoint_dir) / "walks" if checkpoint_dir else None
    cell = cell_block(counts, lambda z0, z1, c: labels[z0:z1] == c, ids, p, vs, world, ck, msd)
    record = _record(labels.shape, classes, vs, stats.volume_fractions(labels, classes), tortuosity, cell)
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


def measure_store(reader: LabelSlabs, classes: dict[int, str], voxel_size_um, p: MicrostructureConfig,
                  world: World | None = None, checkpoint_dir: str | Path | None = None) -> tuple[dict, dict]:
    """:func:`measure` of a label store read slab by slab (:mod:`.sharded`): the same record, with
    ranks splitting the slabs and one bool phase mask per rank for the walks (1 B/voxel)."""
    world = world or get_world()
    ids, vs = _phase_ids(classes, p), [float(v) for v in voxel_size_um]
    t0 = time.perf_counter()
    msd: dict[str, dict] = {}
    with freed_memory_kept():  # the passes reuse their freed slab buffers; trimmed before the walks' masks
        st = store_stats(reader, classes, vs, p, world)
    counts = st["slice_counts"]
    tortuosity = _tortuosity(reader.phase_mask, counts.sum(axis=0), ids, p, vs, world, checkpoint_dir, msd)
    ck = Path(checkpoint_dir) / "walks" if checkpoint_dir else None
    cell = cell_block(counts, reader.region_mask, ids, p, vs, world, ck, msd)
    record = _record(reader.shape, classes, vs, st["volume_fractions"], tortuosity, cell)
    if world.is_root:
        record["percolation"] = st["percolation"]
        record["layers"] = st["layers"]
        for key in ("interfaces", "particles", "lithium"):
            if key in st:
                record[key] = st[key]
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


def run(labels_path: str | Path, out_json: str | Path, out_msd: str | Path, params: MicrostructureConfig,
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
    check_labels(vol)  # the shared check: ids outside 'classes' (and the ignore label) are refused
    record, msd = measure_store(LabelSlabs(vol), vol.classes, vol.voxel_size_um, params, world, checkpoint_dir)
    record["source"] = {"labels": str(labels_path), "producer": vol.attrs.get("producer", {})}
    record.update(provenance("microstructure", params.model_dump()))
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
