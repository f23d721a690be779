"""TauFactor's steady-state tortuosity beside the random walk's (the cross-check of the
microstructure stage, for the whole-volume phases and for the cell regions)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..distributed import World
from ..errors import InputError
from .clusters import AXES

log = logging.getLogger(__name__)


def crosscheck(mask: np.ndarray, tort: dict, max_voxels: int, world: World, where: str,
               axes=AXES) -> dict[str, Any]:
    """TauFactor's steady-state tau (Cooper et al., SoftwareX 2016) next to the walk's, per axis.

    Solved on rank 0 for every percolating axis of ``axes`` (the same phase, the same convention) and
    broadcast; each walk axis gains ``tau_taufactor`` and ``walk_minus_taufactor_rel``. Volumes
    above ``max_voxels`` are skipped with a flag (the solve's cost grows with the volume).
    """
    if mask.size > max_voxels:
        log.warning("%s: TauFactor cross-check skipped: %d voxels > crosscheck_max_voxels=%d",
                    where, mask.size, max_voxels)
        return {"skipped": f"{mask.size} voxels > crosscheck_max_voxels={max_voxels}"}
    out = None
    if world.is_root:
        t0 = time.perf_counter()
        out = {"taus": {a: (taufactor_tau(mask, i) if tort["axes"][a]["percolating"] else None)
                        for i, a in enumerate(AXES) if a in axes}}
        out["wall_time_s"] = time.perf_counter() - t0
    out = world.bcast(out)
    for a, ref in out["taus"].items():
        rec = tort["axes"][a]
        rec["tau_taufactor"] = ref
        rec["walk_minus_taufactor_rel"] = (rec["tau"] / ref - 1) if ref and rec.get("tau") else None
    return {"solver": "taufactor", "wall_time_s": out["wall_time_s"]}


def taufactor_tau(mask: np.ndarray, axis: int) -> float:
    """TauFactor's tau of the phase ``mask`` along ``axis`` (CPU solve; InputError if not installed)."""
    try:
        import taufactor
    except ImportError:
        raise InputError("microstructure.crosscheck_taufactor: the taufactor package is not installed") from None
    solver = taufactor.Solver(np.ascontiguousarray(np.moveaxis(mask, axis, 0)).astype(np.uint8), device="cpu")
    return float(np.ravel(solver.solve(verbose=False))[0])
