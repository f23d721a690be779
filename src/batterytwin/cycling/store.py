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
               what: str = "degradation prediction store", cells: Any = None) -> dict[str, np.ndarray]:
    """``life_pred``, ``life_lo``, ``life_hi`` [n] of a prediction store, after checking that it scored the
    same cells by the same end-of-life rule: the number of cells, ``eol_rule`` and (under the threshold
    rule) ``threshold_percent`` must match, else one-line :class:`InputError` naming the store.

    With ``cells`` (the :class:`~batterytwin.cycling.curves.CurveSet` scored here), the store must also
    be of this very dataset: its ``cells_sha256`` (:meth:`CurveSet.digest`) must match, or, in a store
    without it, its ``cell_names``."""
    from ..store import open_group

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
    if cells is not None:
        check_same_cells(path, attrs, cells)
    return out


def _bare(name: str) -> str:
    return str(name).rsplit(":", 1)[-1]  # concatenated sets prefix the file name


def check_same_cells(path: str | Path, attrs: dict[str, Any], cells: Any) -> None:
    """Refuse a prediction store of another dataset than ``cells`` (same count is not enough)."""
    digest = attrs.get("cells_sha256")
    if digest is not None:
        if digest != cells.digest():
            raise InputError(f"{path}: predictions of another dataset (cells_sha256 {str(digest)[:12]}..., the test "
                             f"cells here {cells.digest()[:12]}...; {cells.source}): score the store made from these "
                             "cells")
        return
    names = attrs.get("cell_names")
    if names is None:
        raise InputError(f"{path}: records neither cells_sha256 nor cell_names: cannot tell which cells it predicts "
                         "(rerun predict-degradation)")
    ours = [_bare(n) for n in cells.names]
    theirs = [_bare(n) for n in names]
    if theirs != ours:
        first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), 0)
        raise InputError(f"{path}: predictions of other cells (cell {first}: {theirs[first]!r} in the store, "
                         f"{ours[first]!r} in {cells.source}): score the store made from these cells")
