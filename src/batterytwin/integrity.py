"""Integrity of a volume store on open and on read: what a committed store must still be.

Three layers, each checked where it is cheap:

- **every chunk on read**: :func:`~batterytwin.store.create_volume` stores each chunk with a
  CRC-32C (zarr's ``crc32c`` codec, after the compressor) and zarr checksums the shard index too;
  a changed bit makes zarr's read fail, and the CLI turns that failure into one line naming the store,
  the shard file and the chunk (:func:`corrupt_chunk`, called by :func:`batterytwin.store.corrupt_read_error`);
- **the metadata on open** (:func:`check_metadata`, from :func:`batterytwin.store.verify_store`):
  each ``zarr.json`` against the CRC-32 and the array record (dtype, shape, chunk and shard shape, fill
  value, codecs) that the manifest took at commit, so an edit that keeps the file's length
  (``float32`` -> ``int32``) is refused, naming the field;
- **the file list on open** (:func:`batterytwin.store.verify_store`): every file of the manifest,
  with its size and the CRC-32 of its last 4 KiB (a shard's index), so a deleted, truncated, swapped
  or replaced shard is refused instead of reading as the fill value or as other data; a file that is
  not in the manifest (a shard added after commit) is refused. The manifest carries a SHA-256 of
  itself, and the group attribute ``manifest`` says that one was written: an emptied, edited or
  deleted manifest is refused too. Volume stores (:func:`check_volume`) must carry chunk checksums.

Stores written before chunk checksums (no ``crc32c`` codec) are refused with a line saying to
re-run the stage that wrote them (``ingest`` for a volume); a store built without a commit (no
manifest, no ``manifest`` attribute: tests, other tools) opens with a warning.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

ARRAY_NAME = "0"
MANIFEST = "batterytwin.manifest.json"  # in every committed store: its files, sizes and CRC-32s
MANIFEST_SCHEMA = "batterytwin.manifest/2"  # /2: + array metadata and a digest of the manifest
MANIFEST_ATTR = "manifest"  # group attribute set at commit: this store has a manifest (its loss is detected)

RECORD_KEYS = ("data_type", "shape", "shards", "chunks", "fill_value", "codecs")


def array_record(meta: dict[str, Any]) -> dict[str, Any]:
    """What a reader relies on in an array's ``zarr.json``: dtype, shape, layout, fill value, codecs."""
    codecs = meta.get("codecs") or []
    outer = (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
    inner = next((c.get("configuration", {}).get("chunk_shape") for c in codecs
                  if isinstance(c, dict) and c.get("name") == "sharding_indexed"), None)
    return {"data_type": meta.get("data_type"), "shape": meta.get("shape"), "shards": outer,
            "chunks": inner if inner is not None else outer, "fill_value": meta.get("fill_value"),
            "codecs": codecs}


def has_chunk_checksums(meta: dict[str, Any]) -> bool:
    """Whether every chunk and the shard index of an array carry a ``crc32c`` codec."""
    for c in meta.get("codecs") or []:
        if isinstance(c, dict) and c.get("name") == "sharding_indexed":
            conf = c.get("configuration", {})
            names = [x.get("name") for x in conf.get("codecs", [])]
            index = [x.get("name") for x in conf.get("index_codecs", [])]
            return "crc32c" in names and "crc32c" in index
    return False


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's content (canonical JSON, without the digest itself)."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the array records of store ``root`` and the digest to a manifest being written."""
    arrays = {}
    for name in manifest["files"]:
        if name.endswith("zarr.json"):
            meta = json.loads((root / name).read_text())
            if meta.get("node_type") == "array":
                arrays[name] = array_record(meta)
    manifest["arrays"] = arrays
    manifest["digest"] = manifest_digest(manifest)
    return manifest


def _describe(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def check_volume(root: Path, array: Any, attrs: dict[str, Any]) -> None:
    """Refuse a volume store whose chunks carry no checksums or whose manifest is of an older version
    (:func:`batterytwin.store.verify_store`, called by ``open_group``, checked the rest).

    Raises:
        InputError: one line naming the store (or its file) and the problem.
    """

    meta_path = root / ARRAY_NAME / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{meta_path}: unreadable array metadata ({exc})") from None
    mpath = root / MANIFEST
    if not mpath.is_file():
        if attrs.get(MANIFEST_ATTR):
            raise InputError(f"{mpath}: missing (the store was committed with one: files may be gone); "
                             "re-run the stage that wrote it")
    else:
        try:
            manifest = json.loads(mpath.read_text())
            schema = manifest.get("schema")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{mpath}: corrupt manifest ({exc})") from None
        if schema != MANIFEST_SCHEMA:
            raise InputError(f"{mpath}: manifest schema {schema!r}, expected {MANIFEST_SCHEMA!r} (a store of an "
                             "older batterytwin); re-run ingest (and the stages after it) to rewrite it")
    if not has_chunk_checksums(meta):
        raise InputError(f"{root}: chunks carry no crc32c checksums (a store written before batterytwin "
                         "verified chunks, or by another tool); re-run ingest (and the stages after it) to "
                         "rewrite it")


def check_metadata(root: Path, manifest: dict[str, Any]) -> None:
    """Each ``zarr.json`` of the manifest: same bytes (CRC-32), and for arrays the same record."""
    for name, entry in manifest["files"].items():
        if not name.endswith("zarr.json"):
            continue
        q = root / name
        try:
            data = q.read_bytes()
        except OSError:
            raise InputError(f"{q}: missing (the store is incomplete: a file listed in its manifest is gone)") from None
        if zlib.crc32(data) == int(entry.get("crc32", -1)):
            continue
        expected = manifest.get("arrays", {}).get(name)
        if expected is not None:
            try:
                found = array_record(json.loads(data))
            except ValueError:
                found = None
            if found is not None:
                for key in RECORD_KEYS:
                    if found.get(key) != expected.get(key):
                        raise InputError(f"{q}: {key} is {_describe(found.get(key))}, the manifest of the store "
                                         f"says {_describe(expected.get(key))} (metadata edited after commit)")
        raise InputError(f"{q}: changed since the store was committed (CRC-32 differs from the manifest: "
                         "attributes or metadata edited); re-run the stage that wrote it")


def corrupt_chunk(root: Path, relfile: str) -> str | None:
    """Name the first chunk of shard file ``relfile`` (``0/c/1/0/0``) that fails to decode, or None."""
    import zarr


    parts = relfile.split("/")
    if len(parts) < 3 or parts[0] != ARRAY_NAME or parts[1] != "c":
        return None
    try:
        arr = zarr.open_array(str(root / ARRAY_NAME), mode="r")
        shard_index = [int(v) for v in parts[2:]]
        shards, chunks = arr.shards or arr.chunks, arr.chunks
    except Exception:
        return None
    lo = [i * s for i, s in zip(shard_index, shards)]
    hi = [min(a + s, n) for a, s, n in zip(lo, shards, arr.shape)]
    for origin in np.ndindex(*[max(1, -(-(h - a) // c)) for a, h, c in zip(lo, hi, chunks)]):
        start = [a + o * c for a, o, c in zip(lo, origin, chunks)]
        region = tuple(slice(s, min(s + c, h)) for s, c, h in zip(start, chunks, hi))
        try:
            arr[region]
        except Exception:
            return f"chunk at (z, y, x) = {tuple(start)} of shape {tuple(chunks)}"
    return None
