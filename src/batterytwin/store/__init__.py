"""Zarr v3 stores between stages: sharded arrays, provenance metadata, atomic commit, validation.

Layout of a volume store (``volume.zarr``, ``denoised.zarr``, ``labels.zarr``, ...)::

    volume.zarr/            zarr v3 group; attributes below
        0/                  array (z, y, x): ``chunks`` for reading, ``shards`` for writing

Group attributes (every store): ``voxel_size_um`` [z, y, x], ``axes`` ["z", "y", "x"],
``source`` {path, sha256}, ``producer`` {name, version, stage, config_sha256, params},
``created`` (UTC ISO 8601), plus stage keys (``classes`` for labels, NLM parameters, ...).

Atomic commit: a stage writes to ``<name>.tmp-<host>-<pid>-<random>`` beside the final path and
renames it into place only when complete (:func:`atomic_output`), so an interrupted job never leaves
a store that looks finished. Parallel writers (MPI ranks) own disjoint sets of whole shards
(:func:`shard_regions` + :meth:`World.my_items <batterytwin.distributed.World.my_items>`).

The modules, one job each (import everything from ``batterytwin.store``):

- :mod:`~batterytwin.store.blocks`: chunk and shard shapes, shard regions;
- :mod:`~batterytwin.store.provenance`: content hashes, the ``producer``/``created`` attributes;
- :mod:`~batterytwin.store.manifest`: the manifest written at commit and checked on open;
- :mod:`~batterytwin.store.commit`: the work-folder lock and the atomic commit of an output;
- :mod:`~batterytwin.store.volumes`: creating and opening stores, reading a region;
- :mod:`~batterytwin.store.checks`: checks of stored voxels (finite values, known label ids);
- :mod:`~batterytwin.store.read_errors`: a failed read as one line naming the corrupt file;
- :mod:`~batterytwin.store.json_files`: strict JSON files, written atomically.

Example::

    with atomic_output("results/s1/denoised.zarr", world) as tmp:
        if world.is_root:
            create_volume(tmp, shape, "float32", attrs=attrs)
        world.barrier()
        out = open_volume(tmp, mode="r+", validate=False).array
        for i in world.my_items(len(regions)):
            out[regions[i]] = f(src[regions[i]])
"""

from ..integrity import ARRAY_NAME, MANIFEST, MANIFEST_ATTR, MANIFEST_SCHEMA
from .blocks import AXES, DEFAULT_CHUNK, DEFAULT_SHARD, block_shapes, check_blocks, shard_regions
from .checks import check_finite, check_labels
from .commit import TMP_MARKER, atomic_output, check_output, exclusive_lock, remove_stale_temporaries
from .json_files import json_safe, read_json, write_json
from .manifest import TAIL, verify_store, write_manifest
from .provenance import params_sha256, provenance, sha256_files
from .read_errors import _opened, corrupt_read_error, is_store_read_error
from .volumes import (VOXEL_SIZE_RANGE_UM, Volume, check_voxel_size, create_volume, open_group, open_volume,
                      read_region, volume_attrs)

__all__ = [
    "ARRAY_NAME", "MANIFEST", "MANIFEST_ATTR", "MANIFEST_SCHEMA",
    "AXES", "DEFAULT_CHUNK", "DEFAULT_SHARD", "block_shapes", "check_blocks", "shard_regions",
    "check_finite", "check_labels",
    "TMP_MARKER", "atomic_output", "check_output", "exclusive_lock", "remove_stale_temporaries",
    "json_safe", "read_json", "write_json",
    "TAIL", "verify_store", "write_manifest",
    "params_sha256", "provenance", "sha256_files",
    "corrupt_read_error", "is_store_read_error",
    "VOXEL_SIZE_RANGE_UM", "Volume", "check_voxel_size", "create_volume", "open_group", "open_volume",
    "read_region", "volume_attrs",
]
