"""Data a stage cannot answer, refused before it answers: no contrast, non-finite results.

- :func:`check_contrast`: a volume whose voxels (a bounded, deterministic sample of blocks spread
  over the whole volume) are all one value, or whose spread is negligible next to its magnitude,
  has nothing to denoise or segment: one :class:`~batterytwin.errors.InputError` line instead of a
  NaN volume (NLM with a noise sigma of 1e-49) or six classes made up from rounding noise.
- :func:`check_finite_result`: the one check every computed block passes before it is written, so
  that a NaN never reaches a committed store.

Example::

    lo, hi = check_contrast(vol.array, "results/s1/volume.zarr", "denoise")
    check_finite_result(block, "denoise", "results/s1/denoised.zarr", region)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

RELATIVE_SPREAD = 1e-6  # spread below this fraction of the magnitude: no contrast (float32 rounding level)
MAX_SAMPLE = 1 << 22  # voxels read by check_contrast at most


def sample_values(array: Any, max_voxels: int = MAX_SAMPLE) -> np.ndarray:
    """Finite voxels of the whole volume up to ``max_voxels``, else of a regular grid of 64^3 blocks."""
    from .denoise.sigma import sample_blocks

    parts = [np.asarray(array[r], np.float64).ravel() for r in sample_blocks(array.shape, max_voxels)]
    values = np.concatenate(parts) if parts else np.zeros(0)
    return values[np.isfinite(values)]


def no_contrast(lo: float, hi: float) -> bool:
    """Whether the range ``[lo, hi]`` is empty or negligible next to the values' magnitude."""
    scale = max(abs(lo), abs(hi))
    return not hi - lo > RELATIVE_SPREAD * scale or not hi - lo > 0


def check_contrast(array: Any, where: str, stage: str, max_voxels: int = MAX_SAMPLE) -> tuple[float, float]:
    """Refuse a volume without contrast; returns ``(min, max)`` of the sampled voxels.

    Refused: no finite voxel, every voxel the same value (to ``RELATIVE_SPREAD`` of its magnitude),
    or the 1st and 99th percentiles equal (at least 98 % of the voxels one value: specks on a blank).

    Raises:
        InputError: one line naming the store, the stage and the values.
    """
    values = sample_values(array, max_voxels)
    if values.size == 0:
        raise InputError(f"{where}: {stage}: the volume has no finite voxel")
    lo, hi = float(values.min()), float(values.max())
    if no_contrast(lo, hi):
        raise InputError(f"{where}: {stage}: the volume has no contrast (every sampled voxel is {lo:.6g}"
                         f"{'' if hi == lo else f' to {hi:.6g}'}): nothing to {stage}")
    p1, p99 = (float(v) for v in np.percentile(values, (1.0, 99.0)))
    if no_contrast(p1, p99):
        raise InputError(f"{where}: {stage}: the volume has no contrast: at least 98 % of the sampled voxels are "
                         f"{p1:.6g} (only outliers differ, {lo:.6g}..{hi:.6g}): nothing to {stage}")
    return lo, hi


def contrast_refusal(array: Any, where: str, stage: str) -> InputError | None:
    """:func:`check_contrast`'s refusal as a value (None: contrast enough), for rank 0 to broadcast."""
    try:
        check_contrast(array, where, stage)
    except InputError as exc:
        return exc
    return None


def check_finite_result(block: Any, stage: str, output: Any, region: Any = None, hint: str = "") -> None:
    """Refuse a computed block with NaN/inf before it is written (the stage's output is then not committed).

    Args:
        block: numpy array or torch tensor.
        hint: what to change (e.g. ``"give denoise.h"``).
    """
    try:
        import torch

        if isinstance(block, torch.Tensor):
            bad = int((~torch.isfinite(block)).sum())
            total = block.numel()
        else:
            raise TypeError
    except (ImportError, TypeError):
        arr = np.asarray(block)
        bad = int((~np.isfinite(arr)).sum()) if arr.dtype.kind in "fc" else 0
        total = arr.size
    if bad:
        at = f" in {[(s.start, s.stop) for s in region]}" if region is not None else ""
        raise InputError(f"{output}: {stage} computed {bad} of {total} voxel(s) as NaN/inf{at}; nothing was written"
                         f"{'; ' + hint if hint else ''}")
