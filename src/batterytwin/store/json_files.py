"""Strict JSON files between stages: NaN/inf written as null, written atomically, read with one-line errors."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..inputfile import read_text
from .commit import remove_stale_temporaries, temporary_name


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
    tmp = temporary_name(final)
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
