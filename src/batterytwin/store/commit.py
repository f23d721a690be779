"""Writing outputs safely: one run per work folder (a lock), and outputs that appear whole or not at all.

Atomic commit: a stage writes to ``<name>.tmp-<host>-<pid>-<random>`` beside the final path and
renames it into place only when complete (:func:`atomic_output`), so an interrupted job never leaves
a store that looks finished; a committed store carries a manifest
(:func:`~batterytwin.store.manifest.write_manifest`). Temporaries of killed runs are removed by the
next run (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

import zarr

from ..distributed import World, get_world
from ..errors import InputError
from ..integrity import MANIFEST_ATTR, MANIFEST_SCHEMA
from .manifest import write_manifest

TMP_MARKER = ".tmp-"
log = logging.getLogger(__package__)


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
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_name(final: Path) -> Path:
    """``<name>.tmp-<host>-<pid>-<random>``: who wrote it, so a later run can tell a killed run's leftover."""
    return final.with_name(f"{final.name}{TMP_MARKER}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def remove_stale_temporaries(final: os.PathLike | str) -> list[Path]:
    """Remove the temporaries of ``final`` left by killed runs; return them.

    Only names of ``final``'s own pattern (:func:`temporary_name`) whose writer ran on this host and
    is gone; a live writer's, another host's or anything else beside it is left alone.
    """
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
    tmp = world.bcast(temporary_name(final) if world.is_root else None)
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
            old = temporary_name(final)
            os.rename(final, old)  # replace in two renames, never a half-deleted final
            os.rename(tmp, final)
            _remove(old)
        else:
            os.rename(tmp, final)
    world.barrier()
