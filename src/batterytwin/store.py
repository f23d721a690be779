"""Zarr v3 stores between stages: sharded arrays, provenance metadata, atomic commit, validation.

Layout of a volume store (``volume.zarr``, ``denoised.zarr``, ``labels.zarr``, ...)::

    volume.zarr/            zarr v3 group; attributes below
        0/                  array (z, y, x): ``chunks`` for reading, ``shards`` for writing

Group attributes (every store): ``voxel_size_um`` [z, y, x], ``axes`` ["z", "y", "x"],
``source`` {path, sha256}, ``producer`` {name, version, stage, config_sha256, params},
``created`` (UTC ISO 8601), plus stage keys (``classes`` for labels, NLM parameters, ...).

Atomic commit: a stage writes to ``<name>.tmp-<uuid>`` beside the final path and renames it into
place only when complete (:func:`atomic_output`), so an interrupted job never leaves a store that
looks finished. Parallel writers (MPI ranks) own disjoint sets of whole shards
(:func:`shard_regions` + :meth:`World.my_items <batterytwin.distributed.World.my_items>`).

Example::

    with atomic_output("results/s1/denoised.zarr", world) as tmp:
        if world.is_root:
            create_volume(tmp, shape, "float32", attrs=attrs)
        world.barrier()
        out = open_volume(tmp, mode="r+", validate=False).array
        for i in world.my_items(len(regions)):
            out[regions[i]] = f(src[regions[i]])
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import itertools
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import zarr

from . import __version__
from .distributed import World, get_world
from .errors import InputError

ARRAY_NAME = "0"
AXES = ("z", "y", "x")
DEFAULT_CHUNK = 64
DEFAULT_SHARD = 256
TMP_MARKER = ".tmp-"


def block_shapes(shape: Sequence[int], chunk: int | Sequence[int] = DEFAULT_CHUNK,
                 shard: int | Sequence[int] = DEFAULT_SHARD) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunk and shard shapes for ``shape``: no larger than needed, shards a multiple of chunks."""
    nd = len(shape)
    chunk = (chunk,) * nd if np.isscalar(chunk) else tuple(chunk)
    shard = (shard,) * nd if np.isscalar(shard) else tuple(shard)
    chunks = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunk, shape))
    shards = tuple(
        c * max(1, min(math.ceil(int(h) / c), math.ceil(int(s) / c)))
        for c, h, s in zip(chunks, shard, shape)
    )
    return chunks, shards


def shard_regions(shape: Sequence[int], shards: Sequence[int]) -> list[tuple[slice, ...]]:
    """Whole-shard regions covering ``shape`` in C order (the unit of parallel writing)."""
    ranges = [range(0, s, h) for s, h in zip(shape, shards)]
    return [tuple(slice(o, min(o + h, s)) for o, h, s in zip(origin, shards, shape))
            for origin in itertools.product(*ranges)]


def sha256_files(paths: Iterable[os.PathLike | str], block: int = 1 << 24) -> str:
    """SHA-256 of the concatenated bytes of ``paths``, streamed (bounded memory)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while buf := f.read(block):
                h.update(buf)
    return h.hexdigest()


def params_sha256(params: dict[str, Any]) -> str:
    """Hash of a stage's parameters: same parameters, same hash (canonical JSON)."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def provenance(stage: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``producer`` and ``created`` attributes for a store written by ``stage``."""
    params = params or {}
    return {
        "producer": {
            "name": "batterytwin",
            "version": __version__,
            "stage": stage,
            "config_sha256": params_sha256(params),
            "params": json.loads(json.dumps(params, default=str)),
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def check_voxel_size(voxel_size_um: Any, where: str) -> list[float]:
    """Validate a voxel size: a positive number or three positive numbers (z, y, x)."""
    if voxel_size_um is None:
        raise InputError(f"{where}: voxel_size_um is missing (give it in the config, in micrometres)")
    values = [voxel_size_um] * 3 if np.isscalar(voxel_size_um) else list(voxel_size_um)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{where}: voxel_size_um must be numbers, got {voxel_size_um!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{where}: voxel_size_um must be > 0 (one value or three: z, y, x), got {voxel_size_um!r}")
    return values


def volume_attrs(stage: str, voxel_size_um: Any, params: dict[str, Any] | None = None,
                 source: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The full attribute set of a volume store."""
    attrs = {
        "voxel_size_um": check_voxel_size(voxel_size_um, stage),
        "axes": list(AXES),
        "source": source or {},
        **provenance(stage, params),
    }
    attrs.update(extra)
    return attrs


def create_volume(path: os.PathLike | str, shape: Sequence[int], dtype: Any, attrs: dict[str, Any], *,
                  chunk: int | Sequence[int] = DEFAULT_CHUNK, shard: int | Sequence[int] = DEFAULT_SHARD,
                  fill_value: Any = 0) -> zarr.Array:
    """Create a volume store (group + sharded array ``"0"``). Call on one rank only."""
    chunks, shards = block_shapes(shape, chunk, shard)
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=attrs)
    return group.create_array(
        ARRAY_NAME, shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype), chunks=chunks,
        shards=shards, fill_value=fill_value, dimension_names=AXES[-len(shape):] if len(shape) <= 3 else None,
    )


@dataclass
class Volume:
    """An opened volume store: the array, the group attributes and the path."""

    path: Path
    array: zarr.Array
    attrs: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def voxel_size_um(self) -> list[float]:
        return list(self.attrs["voxel_size_um"])

    @property
    def shards(self) -> tuple[int, ...]:
        return tuple(self.array.shards or self.array.chunks)

    @property
    def classes(self) -> dict[int, str]:
        """Class id -> name, for label stores."""
        return {int(k): v for k, v in self.attrs.get("classes", {}).items()}


def open_group(path: os.PathLike | str, what: str = "store", *, mode: str = "r", validate: bool = True,
               arrays: Sequence[str] = (), schema: str | None = None) -> zarr.Group:
    """Open an earlier stage's zarr v3 store, or raise :class:`InputError` naming the problem.

    Args:
        what: the kind of store, in messages (``"sweep store"``).
        arrays: arrays the reader needs. schema: the ``schema`` attribute required
            (a ``batterytwin.contracts`` id); None: not checked.

    Raises:
        InputError: the path is missing, is an unfinished temporary store (when ``validate``), is not
            a zarr v3 group, lacks one of ``arrays`` or carries another ``schema``.
    """
    p = Path(path)
    if TMP_MARKER in p.name and validate:
        raise InputError(f"{p}: this is an unfinished temporary store (its job did not complete)")
    if not p.exists():
        raise InputError(f"{p}: no such {what}")
    try:
        group = zarr.open_group(str(p), mode=mode, zarr_format=3)
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise InputError(f"{p}: not a zarr v3 {what} ({type(exc).__name__}: {exc})") from None
    missing = [a for a in arrays if a not in group]
    if missing:
        raise InputError(f"{p}: {what} lacks array(s) {', '.join(repr(a) for a in missing)}")
    if schema is not None and group.attrs.get("schema") != schema:
        raise InputError(f"{p}: schema is {group.attrs.get('schema')!r}, expected {schema!r}")
    return group


def open_volume(path: os.PathLike | str, *, mode: str = "r", validate: bool = True,
                require: Sequence[str] = ("voxel_size_um", "producer")) -> Volume:
    """Open a volume store and check that it is complete, with clear errors when it is not.

    Raises:
        InputError: the path is missing, is an unfinished temporary store, is not a zarr v3
            group with array ``"0"``, or lacks a required attribute.
    """
    p = Path(path)
    group = open_group(p, mode=mode, validate=validate)
    if ARRAY_NAME not in group:
        raise InputError(f"{p}: store has no array '{ARRAY_NAME}' (not a batterytwin volume)")
    attrs = dict(group.attrs)
    if validate:
        missing = [k for k in require if k not in attrs]
        if missing:
            raise InputError(f"{p}: store lacks attribute(s) {', '.join(missing)} (written by another tool?)")
        if "voxel_size_um" in require:
            check_voxel_size(attrs["voxel_size_um"], str(p))
    return Volume(p, group[ARRAY_NAME], attrs)


def _temporary_name(final: Path) -> Path:
    return final.with_name(f"{final.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str, world: World | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place when the block succeeds.

    Works for stores (directories) and plain files. With several ranks, rank 0 names the
    temporary path, every rank writes its part, and rank 0 renames after a barrier. On error the
    temporary output is removed and the final path is left untouched.
    """
    world = world or get_world()
    final = Path(path)
    tmp = world.bcast(_temporary_name(final) if world.is_root else None)
    if world.is_root:
        final.parent.mkdir(parents=True, exist_ok=True)
    world.barrier()
    try:
        yield tmp
        world.barrier()
    except BaseException:
        if world.is_root or world.size == 1:
            _remove(tmp)
        raise
    if world.is_root:
        if final.exists() or final.is_symlink():
            old = _temporary_name(final)
            os.rename(final, old)  # replace in two renames, never a half-deleted final
            os.rename(tmp, final)
            _remove(old)
        else:
            os.rename(tmp, final)
    world.barrier()


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON values: non-finite floats -> None (JSON has no NaN/inf; a value that
    cannot be measured is null), numpy scalars/arrays -> Python numbers/lists, tuples -> lists,
    paths -> str. Use it for zarr attributes too; :func:`write_json` applies it.

    Example: ``json_safe({"tau": np.float32("nan"), "axes": (1, np.int64(2))})`` -> ``{"tau": None, "axes": [1, 2]}``
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: os.PathLike | str, obj: Any) -> None:
    """Write strict JSON (:func:`json_safe`: NaN/inf -> null) atomically (temporary file + rename).
    Call on one rank."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(final)
    with open(tmp, "w") as f:
        json.dump(json_safe(obj), f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, final)


def read_json(path: os.PathLike | str, what: str = "JSON file", schema: str | None = None) -> Any:
    """Read a JSON output of an earlier stage, with a clear error when missing, corrupt or (with
    ``schema``, a ``batterytwin.contracts`` id) not an object of that schema."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such {what}")
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    if schema is not None and (not isinstance(obj, dict) or obj.get("schema") != schema):
        raise InputError(f"{p}: schema is {obj.get('schema') if isinstance(obj, dict) else None!r}, "
                         f"expected {schema!r}")
    return obj
