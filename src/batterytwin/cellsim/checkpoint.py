"""Per-condition result files: what makes a sweep resumable.

Layout::

    work/{sample}/cellsim/run-<run hash>/c-<condition hash>.npz

The run hash covers everything that changes a result except the condition's own inputs
(parameter values after substitution, model, options, protocol, cycles, voltage grid, solver);
the condition hash covers the input values. A rerun with the same settings finds the files of
the conditions already computed and runs only the others; a changed design reuses the
conditions it shares with the old one. Files are written atomically (temporary name + rename),
so an interrupted write never looks complete. Read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import STATUS_TIME_LIMIT
from .runner import ConditionResult


def condition_key(names: list[str], values: np.ndarray) -> str:
    """Hash of one condition's inputs (names and float64 values, exact)."""
    blob = json.dumps([list(names), [float(v).hex() for v in values]])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def condition_path(run_dir: Path, names: list[str], values: np.ndarray) -> Path:
    return Path(run_dir) / f"c-{condition_key(names, values)}.npz"


def save_result(path: Path, result: ConditionResult, names: list[str], values: np.ndarray,
                time_limit_s: float | None) -> None:
    """Write one condition's result atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"status": int(result.status), "message": result.message,
            "cycles_completed": int(result.cycles_completed), "wall_time_s": float(result.wall_time_s),
            "time_limit_s": time_limit_s, "input_names": list(names)}
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, capacity_Ah=result.capacity_Ah, qv_capacity_Ah=result.qv_capacity_Ah,
             inputs=np.asarray(values, dtype=np.float64), meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)


def load_result(path: Path) -> tuple[ConditionResult, dict[str, Any]]:
    """Read a file written by :func:`save_result` (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        result = ConditionResult(z["capacity_Ah"].copy(), z["qv_capacity_Ah"].copy(), meta["status"],
                                 meta["message"], meta["cycles_completed"], meta["wall_time_s"])
    return result, meta


def is_done(path: Path, time_limit_s: float | None) -> bool:
    """True when ``path`` holds a usable result: a time-limited one counts only if the limit
    has not been raised since (then it is computed again)."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        _, meta = load_result(path)
    except Exception:  # a corrupt file (e.g. disk full): compute the condition again
        return False
    if meta["status"] == STATUS_TIME_LIMIT:
        old = meta.get("time_limit_s")
        return bool(old) and bool(time_limit_s) and float(time_limit_s) <= float(old)
    return True
