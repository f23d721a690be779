"""Prediction stores of cells (``degradation.zarr``, ``twin.zarr``): how both stages write them and how
one stage checks another's store before comparing with it.

A prediction store is a zarr v3 group of arrays whose first axis is the cell, and attributes that
include ``eol_rule``, ``threshold_percent`` and ``cell_names`` (the end-of-life rule its lives were
read by). The stages meet only through these stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


def write_store(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any], world=None) -> None:
    """Write a prediction store atomically (rank 0 writes; every rank waits for the rename)."""
    import zarr

    from ..distributed import get_world
    from ..store import atomic_output

    world = world or get_world()
    with atomic_output(path, world) as tmp:
        if world.is_root:
            g = zarr.open_group(str(tmp), mode="w", zarr_format=3, attributes=attrs)
            for name, a in arrays.items():
                arr = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=_chunks(a.shape),
                                     fill_value=np.nan if a.dtype.kind == "f" else 0)
                arr[...] = a
        world.barrier()


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    # one chunk of up to 64 cells x whole trailing axes: cells are the unit of reading
    return (max(1, min(shape[0], 64)), *shape[1:]) if shape else ()


def read_lives(path: str | Path, n_cells: int, eol_rule: str, threshold: float,
               what: str = "degradation prediction store") -> dict[str, np.ndarray]:
    """``life_pred``, ``life_lo``, ``life_hi`` [n] of a prediction store, after checking that it scored the
    same cells by the same end-of-life rule: the number of cells, ``eol_rule`` and (under the threshold
    rule) ``threshold_percent`` must match, else one-line :class:`InputError` naming the store."""
    from ..contracts import open_group

    g = open_group(path, what, arrays=("life_pred", "life_lo", "life_hi"))
    attrs = dict(g.attrs)
    rule = attrs.get("eol_rule")
    if rule != eol_rule:
        raise InputError(f"{path}: end-of-life rule {rule!r}, the test cells here are read by {eol_rule!r} "
                         f"(one rule for both stages: set degradation.eol_rule and twin.eol_rule alike)")
    stored = attrs.get("threshold_percent")
    if eol_rule == "threshold" and (stored is None or float(stored) != float(threshold)):
        raise InputError(f"{path}: end-of-life threshold {stored} %, the test cells here are read at {threshold:g} % "
                         f"(one threshold for both stages: degradation.sample.threshold = twin.threshold)")
    out = {f"life_{k}": np.asarray(g[f"life_{k}"][:], np.float64) for k in ("pred", "lo", "hi")}
    if len(out["life_pred"]) != n_cells:
        raise InputError(f"{path}: {len(out['life_pred'])} cells, the test split has {n_cells} (another evaluation?)")
    return out
