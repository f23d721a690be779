"""A failed read of stored data as one line naming the store, its corrupt file and chunk.

Zarr checksums every chunk on read (:mod:`batterytwin.integrity`); when a read fails, the store
read (or every store this process opened for reading) is checked against its manifest to name the
file at fault.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from ..errors import InputError
from ..integrity import corrupt_chunk
from .manifest import verify_store
from .messages import one_line

_opened: dict[str, None] = {}  # stores opened for reading by this process (to name a corrupt one)


def corrupt_read_error(exc: BaseException, path: os.PathLike | str | None = None) -> InputError:
    """The one-line error for a failed read of stored data: the corrupt file if a manifest names it."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # zarr's cancelled reads: no noise
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
    stores = [Path(path)] if path is not None else [Path(p) for p in _opened]
    for root in stores:
        try:
            verify_store(root, checksums=True)
        except InputError as found:
            return InputError(f"{found}{_chunk_of(root, str(found))} ({one_line(exc)})")
    where = ", ".join(str(s) for s in stores) or "a store"
    return InputError(f"{where}: corrupt or unreadable data ({one_line(exc)}); "
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
