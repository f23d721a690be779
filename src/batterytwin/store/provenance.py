"""Who wrote a store and from what: content hashes and the ``producer``/``created`` attributes."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any, Iterable

from .. import __version__


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
