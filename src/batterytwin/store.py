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
import logging
import math
import os
import shutil
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import zarr

from . import __version__
from .distributed import World, get_world
from .errors import InputError
from .integrity import (ARRAY_NAME, MANIFEST, MANIFEST_ATTR, MANIFEST_SCHEMA, check_metadata, check_volume,
                        corrupt_chunk, manifest_digest, seal_manifest)

AXES = ("z", "y", "x")
DEFAULT_CHUNK = 64
DEFAULT_SHARD = 256
TMP_MARKER = ".tmp-"
log = logging.getLogger(__name__)
_warned: set[str] = set()
_opened: dict[str, None] = {}  # stores opened for reading by this process (to name a corrupt one)


def block_shapes(shape: Sequence[int], chunk: int | Sequence[int] = DEFAULT_CHUNK,
                 shard: int | Sequence[int] = DEFAULT_SHARD,
                 where: str = "store") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunk and shard shapes for ``shape``: no larger than needed, shards a multiple of chunks.

    Raises:
        InputError: an edge below 1, or a shard smaller than its chunk (``where`` names the command).
    """
    nd = len(shape)
    chunk = (chunk,) * nd if np.isscalar(chunk) else tuple(chunk)
    shard = (shard,) * nd if np.isscalar(shard) else tuple(shard)
    check_blocks(chunk, shard, where)
    chunks = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunk, shape))
    shards = tuple(
        c * max(1, min(math.ceil(int(h) / c), math.ceil(int(s) / c)))
        for c, h, s in zip(chunks, shard, shape)
    )
    return chunks, shards


def check_blocks(chunk: int | Sequence[int], shard: int | Sequence[int], where: str = "store") -> None:
    """Refuse chunk/shard edges below 1 and a shard smaller than its chunk (one line naming the option).

    Example: ``check_blocks(64, 16)`` -> InputError ``store: --shard 16 is smaller than --chunk 64 ...``
    """
    chunk = list(chunk) if isinstance(chunk, (list, tuple)) else [chunk]
    shard = list(shard) if isinstance(shard, (list, tuple)) else [shard]
    for name, values in (("chunk", chunk), ("shard", shard)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{where}: --{name} must be an integer >= 1 (voxels), got {v!r}")
    for c, h in zip(chunk, shard):
        if h < c:
            raise InputError(f"{where}: --shard {h} is smaller than --chunk {c}; a shard holds whole chunks "
                             "(give shard >= chunk)")


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
    index carries its own), so a changed bit fails the read (:func:`chunk_checksums`).
    ``fill_value`` (what an unwritten chunk reads as): 0, or the ignore label 255 for a label store
    (``classes`` in ``attrs``), so a missing label chunk is never pore.
    """
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from .contracts import IGNORE_LABEL

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
        raise InputError(f"{p}: not a zarr v3 {what} ({_one_line(exc)})") from None
    if missing:
        raise InputError(f"{p}: {what} lacks array(s) {', '.join(repr(a) for a in missing)}")
    if schema is not None and group.attrs.get("schema") != schema:
        raise InputError(f"{p}: schema is {group.attrs.get('schema')!r}, expected {schema!r}")
    if mode == "r":
        _opened[str(p)] = None
    return group


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


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
        raise InputError(f"{p / ARRAY_NAME / 'zarr.json'}: unreadable array metadata ({_one_line(exc)})") from None
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


# ------------------------------------------------------------------------------ manifest, checks

def _crc32(path: Path, block: int = 1 << 22) -> int:
    crc = 0
    with open(path, "rb") as f:
        while buf := f.read(block):
            crc = zlib.crc32(buf, crc)
    return crc


TAIL = 4096  # bytes: a shard's index (and its CRC-32C) is at its end


def _tail_crc32(path: Path) -> int:
    """CRC-32 of a file's last :data:`TAIL` bytes: a shard's index, read on every open (cheap), so a shard
    file swapped for another valid one, or a copy of another store's, is refused."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL))
        return zlib.crc32(f.read(TAIL))


def _store_files(root: Path) -> list[Path]:
    return sorted(q for q in root.rglob("*") if q.is_file() and q.name != MANIFEST)


def write_manifest(root: os.PathLike | str, world: World | None = None) -> dict[str, Any] | None:
    """Write ``MANIFEST`` into store ``root``: every file with its size and CRC-32 (streamed), each
    array's metadata record and a digest of the manifest (:mod:`batterytwin.integrity`).

    :func:`atomic_output` calls it when a store is committed, so every stage's store carries it.
    With ``world`` (collective), the ranks share the checksumming (one read of the store in all);
    rank 0 writes the file and returns the manifest, other ranks return None.
    """
    root = Path(root)
    world = world or World()
    names = world.bcast([q.relative_to(root).as_posix() for q in _store_files(root)] if world.is_root else None)
    mine = {names[i]: {"size": (root / names[i]).stat().st_size, "crc32": _crc32(root / names[i]),
                       "tail_crc32": _tail_crc32(root / names[i])}
            for i in world.my_items(len(names))}
    parts = world.allgather(mine) if world.size > 1 else [mine]
    if not world.is_root:
        return None
    entries = {k: v for part in parts for k, v in part.items()}
    manifest = {"schema": MANIFEST_SCHEMA, "files": {name: entries[name] for name in names}}

    manifest = seal_manifest(root, manifest)  # + array metadata records and the manifest's digest
    with open(root / MANIFEST, "w") as f:
        json.dump(manifest, f, separators=(",", ":"))
    return manifest


def verify_store(root: os.PathLike | str, checksums: bool = False, what: str = "store") -> int:
    """Check store ``root`` against its manifest; return the number of files checked.

    Every listed file must exist with its size (cheap: one ``stat`` each); with ``checksums`` its
    CRC-32 must match too (reads every byte). A store without a manifest is refused when its group
    attribute ``manifest`` says it was committed with one, else (written before manifests existed, or
    not by a stage) accepted with a warning.

    Raises:
        InputError: one line naming the first missing, resized or changed file (and how many more).
    """
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        if _marked(root):  # committed with a manifest: its loss may hide lost files
            raise InputError(f"{mpath}: missing (the {what} was committed with one: files may be gone); "
                             "re-run the stage that wrote it")
        if (root / "zarr.json").is_file() and str(root) not in _warned:
            _warned.add(str(root))
            log.warning("%s: no %s (written before manifests, or by another tool): completeness not checked",
                        root, MANIFEST)
        return 0

    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        entries = [(name, int(e["size"]), int(e["crc32"]), e.get("tail_crc32")) for name, e in files.items()]
    except Exception as exc:
        raise InputError(f"{mpath}: corrupt manifest ({_one_line(exc)})") from None
    sealed = manifest.get("schema") != "batterytwin.manifest/1"  # /2 on: digest, records, shard tails
    if sealed and manifest.get("digest") != manifest_digest(manifest):
        raise InputError(f"{mpath}: the manifest was edited or is corrupt (its digest does not match); "
                         "re-run the stage that wrote the store")
    problems = []
    for name, size, crc, tail in entries:
        q = root / name
        try:
            actual = q.stat().st_size
        except OSError:
            problems.append(f"{q}: missing (the {what} is incomplete: a file listed in its manifest is gone)")
            continue
        if actual != size:
            problems.append(f"{q}: size {actual} bytes, manifest says {size} (truncated or replaced file)")
        elif checksums and _crc32(q) != crc:
            problems.append(f"{q}: CRC-32 differs from the manifest (corrupt file)")
        elif not checksums and tail is not None and not name.endswith("zarr.json") and _tail_crc32(q) != int(tail):
            problems.append(f"{q}: its shard index differs from the manifest's (a replaced or swapped shard file)")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)
    if sealed:
        check_metadata(root, manifest)
        # hidden files (snakemake's .snakemake_timestamp in a directory() output) are never read as data
        extra = sorted(set(q.relative_to(root).as_posix() for q in _store_files(root)
                           if not any(part.startswith(".") for part in q.relative_to(root).parts)) - set(files))
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise InputError(f"{root / extra[0]}: not part of the committed {what} (added after commit, its data "
                             f"would be read){more}; remove it or re-run the stage that wrote the store")
    return len(entries)


def _marked(root: Path) -> bool:
    """Whether the group attributes say that a manifest was written at commit."""
    try:
        return bool(json.loads((root / "zarr.json").read_text()).get("attributes", {}).get(MANIFEST_ATTR))
    except (OSError, ValueError, AttributeError):
        return False


def check_finite(vol: "Volume", world: World | None = None) -> None:
    """Refuse non-finite voxels in a float volume: count and first position, one line.

    Streams shard by shard (memory: one shard); with ``world`` (collective), ranks split the shards.
    Integer volumes pass without reading.
    """
    arr = vol.array
    if np.dtype(arr.dtype).kind not in "fc":
        return
    regions = shard_regions(arr.shape, vol.shards)
    items = world.my_items(len(regions)) if world is not None else range(len(regions))
    count, first = 0, None
    for i in items:
        block = read_region(vol, regions[i])
        bad = ~np.isfinite(block)
        n = int(bad.sum())
        if n:
            count += n
            if first is None:
                first = tuple(int(a) + s.start for a, s in zip(np.argwhere(bad)[0], regions[i]))
    if world is not None and world.size > 1:
        parts = world.allgather((count, first))
        count = sum(c for c, _ in parts)
        first = min((f for _, f in parts if f is not None), default=None)
    if count:
        raise InputError(f"{vol.path}: {count} NaN/infinite voxel(s), first at (z, y, x) = {first}; "
                         "fix or mask them (ingest --nan-fill) before this stage")


def check_labels(vol: "Volume", allowed: Iterable[int] | None = None, ignore: int | None = None) -> None:
    """Refuse label ids outside ``allowed`` (default: the store's ``classes``) and ``ignore``.

    Streams shard by shard; one line with the unknown ids, their voxel count and the first position.
    """
    from .contracts import CLASSES, IGNORE_LABEL

    arr = vol.array
    if np.dtype(arr.dtype).kind not in "iub":
        raise InputError(f"{vol.path}: labels must be an integer type, got {arr.dtype}")
    ok = set(int(k) for k in (allowed if allowed is not None else (vol.classes or CLASSES)))
    ok.add(IGNORE_LABEL if ignore is None else int(ignore))
    lut_ok = np.array(sorted(ok))
    unknown: set[int] = set()
    count, first = 0, None
    for region in shard_regions(arr.shape, vol.shards):
        block = read_region(vol, region)
        # plane by plane: np.isin's temporaries (int64 copies) stay the size of one plane, not of the shard
        for k, plane in enumerate(block if block.ndim >= 3 else [block]):
            bad = ~np.isin(plane, lut_ok)
            n = int(bad.sum())
            if n:
                count += n
                unknown.update(int(v) for v in np.unique(plane[bad])[:20])
                if first is None:
                    at = (k, *np.argwhere(bad)[0]) if block.ndim >= 3 else np.argwhere(bad)[0]
                    first = tuple(int(a) + s.start for a, s in zip(at, region))
    if count:
        raise InputError(f"{vol.path}: unknown label id(s) {sorted(unknown)[:10]} in {count} voxel(s), first at "
                         f"(z, y, x) = {first}; allowed: {sorted(ok)}")


def read_region(vol: "Volume", region: tuple[slice, ...]) -> np.ndarray:
    """``vol.array[region]`` as numpy; a corrupt shard is one :class:`InputError` naming the store."""
    try:
        return np.asarray(vol.array[region])
    except Exception as exc:
        raise corrupt_read_error(exc, vol.path) from None


def corrupt_read_error(exc: BaseException, path: os.PathLike | str | None = None) -> InputError:
    """The one-line error for a failed read of stored data: the corrupt file if a manifest names it."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # zarr's cancelled reads: no noise
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
    stores = [Path(path)] if path is not None else [Path(p) for p in _opened]
    for root in stores:
        try:
            verify_store(root, checksums=True)
        except InputError as found:
            return InputError(f"{found}{_chunk_of(root, str(found))} ({_one_line(exc)})")
    where = ", ".join(str(s) for s in stores) or "a store"
    return InputError(f"{where}: corrupt or unreadable data ({_one_line(exc)}); "
                      "check it with 'batterytwin inspect --verify'")


def _chunk_of(root: Path, message: str) -> str:
    """'': ', first bad chunk at ...' for the shard file named at the start of ``message``."""

    name = message.split(":", 1)[0]
    try:
        rel = Path(name).relative_to(root).as_posix()
    except ValueError:
        return ""
    where = corrupt_chunk(root, rel)
    return f"; first bad {where}" if where else ""


def is_store_read_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while decoding stored zarr data (a corrupt shard or chunk)."""
    tb = exc.__traceback__
    while tb is not None:
        mod = tb.tb_frame.f_globals.get("__name__", "")
        if mod.startswith(("zarr.codecs", "numcodecs", "zarr.core.codec_pipeline")):
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def exclusive_lock(folder: os.PathLike | str, world: World | None = None, what: str = "work folder") -> Iterator[Path]:
    """Hold ``folder/.lock`` (owner host + pid) for the block: a second run sharing the folder fails.

    A lock whose owner is on this host and no longer alive is stale (a killed job) and is taken over;
    a live owner, or one on another host, is one :class:`InputError` naming it. Collective.
    """
    world = world or get_world()
    lock = Path(folder) / ".lock"
    error = None
    if world.is_root:
        error = _take_lock(lock, what)
    error = world.bcast(error)
    if error:
        raise InputError(error)
    try:
        yield lock
        world.barrier()
    finally:
        if world.is_root:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(lock.read_text()).get("pid") == os.getpid():
                    lock.unlink()


def _take_lock(lock: Path, what: str) -> str | None:
    import socket

    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
                host, pid = owner["host"], int(owner["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                owner, host, pid = {}, None, None
            if host == me["host"] and pid is not None and not _alive(pid) or (host is None and _old(lock)):
                log.warning("%s: removing stale lock of %s (no longer running)", lock, owner or "an unknown owner")
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            if host is None:
                continue  # being written by its owner right now: look again
            return (f"{lock}: {what} is in use by another run (host {host}, pid {pid}, since "
                    f"{owner.get('started')}); give each run its own --work-dir, or delete the lock if that run "
                    "is gone")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return f"{lock}: could not take the lock of the {what}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _old(path: Path, seconds: float = 60.0) -> bool:
    import time

    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return True


def check_output(path: os.PathLike | str, overwrite: bool = False, what: str = "volume store") -> None:
    """Refuse to replace ``path`` unless it is absent or already a store (a rerun), or ``overwrite``.

    A regular file, or a folder that is not a zarr store, at an output path is most likely a typo
    (``ingest scan.tif scan.tif``): one :class:`InputError` line naming it and ``--overwrite``.
    """
    p = Path(path)
    if overwrite or not (p.exists() or p.is_symlink()):
        return
    if p.is_dir() and (p / "zarr.json").is_file():
        return
    kind = "a file" if p.is_file() else ("a folder that is not a zarr store" if p.is_dir() else "not a store")
    raise InputError(f"{p}: output exists and is {kind}, not a {what}; remove it or pass --overwrite")


def _host_tag() -> str:
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temporary_name(final: Path) -> Path:
    """``<name>.tmp-<host>-<pid>-<random>``: who wrote it, so a later run can tell a killed run's leftover."""
    return final.with_name(f"{final.name}{TMP_MARKER}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def remove_stale_temporaries(final: os.PathLike | str) -> list[Path]:
    """Remove the temporaries of ``final`` left by killed runs; return them.

    Only names of ``final``'s own pattern (:func:`_temporary_name`) whose writer ran on this host and
    is gone; a live writer's, another host's or anything else beside it is left alone.
    """
    import re

    final = Path(final)
    pattern = re.compile(re.escape(final.name + TMP_MARKER) + r"([0-9a-f]{8})-(\d+)-[0-9a-f]{12}")
    removed = []
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return removed
    me = _host_tag()
    for q in siblings:
        m = pattern.fullmatch(q.name)
        if m and m.group(1) == me and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            log.warning("%s: removing the temporary output of a killed run (pid %s)", q, m.group(2))
            _remove(q)
            removed.append(q)
    return removed


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
        remove_stale_temporaries(final)
    world.barrier()
    try:
        yield tmp
        world.barrier()
    except BaseException:
        if world.is_root or world.size == 1:
            _remove(tmp)
        raise
    if world.bcast(tmp.is_dir() and (tmp / "zarr.json").is_file() if world.is_root else None):
        if world.is_root:  # mark it: the loss of the manifest is then detected (integrity.check_volume)
            zarr.open_group(str(tmp), mode="r+").attrs.update({MANIFEST_ATTR: MANIFEST_SCHEMA})
        world.barrier()
        write_manifest(tmp, world)  # the ranks share the checksums
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
    remove_stale_temporaries(final)
    tmp = _temporary_name(final)
    try:
        with open(tmp, "w") as f:
            json.dump(json_safe(obj), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, final)
    except BaseException:  # a full disk: no half-written temporary left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: os.PathLike | str, what: str = "JSON file", schema: str | None = None) -> Any:
    """Read a JSON output of an earlier stage, with a clear error when missing, corrupt or (with
    ``schema``, a ``batterytwin.contracts`` id) not an object of that schema."""
    from .inputfile import read_text

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such {what}")
    try:
        obj = json.loads(read_text(p, what))  # a folder, a FIFO or a binary file: one line
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    if schema is not None and (not isinstance(obj, dict) or obj.get("schema") != schema):
        raise InputError(f"{p}: schema is {obj.get('schema') if isinstance(obj, dict) else None!r}, "
                         f"expected {schema!r}")
    return obj
