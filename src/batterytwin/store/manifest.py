"""The manifest of a committed store: written at commit, checked on every open.

:func:`write_manifest` lists every file of the store with its size, CRC-32 and the CRC-32 of its
last :data:`TAIL` bytes (a shard's index), plus each array's metadata record and a digest of the
manifest (:mod:`batterytwin.integrity`); :func:`verify_store` checks a store against it.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

from ..distributed import World
from ..errors import InputError
from ..integrity import MANIFEST, MANIFEST_ATTR, MANIFEST_SCHEMA, check_metadata, manifest_digest, seal_manifest
from .messages import one_line

log = logging.getLogger(__package__)
_warned: set[str] = set()  # stores already warned about (no manifest), once per process


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

    :func:`~batterytwin.store.commit.atomic_output` calls it when a store is committed, so every
    stage's store carries it. With ``world`` (collective), the ranks share the checksumming (one read
    of the store in all); rank 0 writes the file and returns the manifest, other ranks return None.
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
        raise InputError(f"{mpath}: corrupt manifest ({one_line(exc)})") from None
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
