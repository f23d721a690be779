"""Creating and opening stores: a volume store's attributes and array, and a reader's checks on open.

A volume store (``volume.zarr``, ``denoised.zarr``, ``labels.zarr``, ...) is a zarr v3 group with one
sharded array ``"0"`` (z, y, x) and the attributes of :func:`volume_attrs`. Opening one for reading
checks it against its manifest (:func:`~batterytwin.store.manifest.verify_store`) and
:mod:`batterytwin.integrity`; every problem is one :class:`~batterytwin.errors.InputError` line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from ..contracts import IGNORE_LABEL
from ..errors import InputError
from ..integrity import ARRAY_NAME, check_volume
from .blocks import AXES, DEFAULT_CHUNK, DEFAULT_SHARD, block_shapes
from .commit import TMP_MARKER
from .manifest import verify_store
from .messages import one_line
from .provenance import provenance
from .read_errors import _opened, corrupt_read_error


VOXEL_SIZE_RANGE_UM = (1e-4, 1e4)  # 0.1 nm .. 1 cm: anything else is a unit slip (m, nm) or a typo


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
    lo, hi = VOXEL_SIZE_RANGE_UM
    if not all(lo <= v <= hi for v in values):
        raise InputError(f"{where}: voxel_size_um {voxel_size_um!r} is outside the plausible range {lo:g}..{hi:g} "
                         "micrometres (nano- to macro-CT); give it in micrometres")
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
                  fill_value: Any = None) -> zarr.Array:
    """Create a volume store (group + sharded array ``"0"``). Call on one rank only.

    Every chunk is stored with a CRC-32C (zarr's ``crc32c`` codec after the compressor; the shard
    index carries its own), so a changed bit fails the read (:mod:`batterytwin.integrity`).
    ``fill_value`` (what an unwritten chunk reads as): 0, or the ignore label 255 for a label store
    (``classes`` in ``attrs``), so a missing label chunk is never pore.
    """
    from zarr.codecs import Crc32cCodec, ZstdCodec

    if fill_value is None:
        fill_value = IGNORE_LABEL if "classes" in attrs else 0
    chunks, shards = block_shapes(shape, chunk, shard)
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=attrs)
    return group.create_array(
        ARRAY_NAME, shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype), chunks=chunks,
        shards=shards, fill_value=fill_value, compressors=[ZstdCodec(level=0), Crc32cCodec()],
        dimension_names=AXES[-len(shape):] if len(shape) <= 3 else None,
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
        """Class id -> name, for label stores.

        Raises:
            InputError: ``classes`` is not a mapping of ids 0..254 to names.
        """
        classes = self.attrs.get("classes", {})
        try:
            out = {int(k): str(v) for k, v in classes.items()}
        except (AttributeError, TypeError, ValueError):
            out = None
        if out is None or not all(0 <= k < 255 for k in out):
            raise InputError(f"{self.path}: attribute 'classes' must map label ids 0..254 to names, got {classes!r}")
        return out


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
    if not p.is_dir():
        raise InputError(f"{p}: not a zarr v3 {what} (a file, not a store directory)")
    if mode == "r":
        verify_store(p, checksums=False, what=what)
    try:
        group = zarr.open_group(str(p), mode=mode, zarr_format=3)
        missing = [a for a in arrays if a not in group]
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise InputError(f"{p}: not a zarr v3 {what} ({one_line(exc)})") from None
    if missing:
        raise InputError(f"{p}: {what} lacks array(s) {', '.join(repr(a) for a in missing)}")
    if schema is not None and group.attrs.get("schema") != schema:
        raise InputError(f"{p}: schema is {group.attrs.get('schema')!r}, expected {schema!r}")
    if mode == "r":
        _opened[str(p)] = None
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
    try:
        if ARRAY_NAME not in group:
            raise InputError(f"{p}: store has no array '{ARRAY_NAME}' (not a batterytwin volume)")
        array = group[ARRAY_NAME]
    except InputError:
        raise
    except Exception as exc:  # a corrupt or hand-edited array zarr.json
        raise InputError(f"{p / ARRAY_NAME / 'zarr.json'}: unreadable array metadata ({one_line(exc)})") from None
    if not isinstance(array, zarr.Array):
        raise InputError(f"{p}: '{ARRAY_NAME}' is a group, not an array (not a batterytwin volume)")
    attrs = dict(group.attrs)
    if validate:
        missing = [k for k in require if k not in attrs]
        if missing:
            raise InputError(f"{p}: store lacks attribute(s) {', '.join(missing)} (written by another tool?)")
        if "voxel_size_um" in require:
            check_voxel_size(attrs["voxel_size_um"], str(p))
    if validate and mode == "r":
        check_volume(p, array, attrs)
    return Volume(p, array, attrs)


def read_region(vol: Volume, region: tuple[slice, ...]) -> np.ndarray:
    """``vol.array[region]`` as numpy; a corrupt shard is one :class:`InputError` naming the store."""
    try:
        return np.asarray(vol.array[region])
    except Exception as exc:
        raise corrupt_read_error(exc, vol.path) from None
