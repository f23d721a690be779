"""Noise level of a volume: the wavelet median estimator (Donoho & Johnstone 1994).

``sigma = median(|HHH|) / Phi^-1(0.75)`` over the finest diagonal (``ddd``) detail coefficients of
a one-level Daubechies-2 transform, the estimator of ``skimage.restoration.estimate_sigma``
(which needs PyWavelets; this is a self-contained numpy version of that one coefficient band,
without its boundary-extension coefficients: see :func:`detail_coefficients`).
Exactly zero coefficients are ignored, as there (flat regions, e.g. padding outside the sample).

For a large volume the coefficients come from a regular grid of blocks bounded in total voxels,
so the estimate is one number for the whole volume, never a per-chunk value.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.stats import norm

# Daubechies-2 decomposition high-pass filter (PyWavelets' db2 dec_hi).
DB2_DEC_HI = np.array([-0.48296291314469025, 0.836516303737469, -0.22414386804185735, -0.12940952255092145])


def detail_coefficients(block: np.ndarray) -> np.ndarray:
    """Finest diagonal detail band ``ddd`` of a one-level db2 transform, interior coefficients only.

    Coefficients whose support would reach past the block (those scikit-image gets from symmetric
    extension, which shrinks them and biases the estimate low) are left out, so the estimate does
    not depend on how the volume is cut into blocks.

    Args:
        block: (Z, Y, X) array, each side >= 4.

    Returns:
        (about Z/2 - 1, Y/2 - 1, X/2 - 1) float64 array.
    """
    out = np.asarray(block, dtype=np.float64)
    L = len(DB2_DEC_HI)
    for axis in range(out.ndim):
        n = out.shape[axis]
        m = (n - L) // 2 + 1  # windows x[2k : 2k + L] inside the block
        acc = 0.0
        for j, hj in enumerate(DB2_DEC_HI):  # convolution: coefficient k = sum_j h[j] x[2k + L - 1 - j]
            sl = [slice(None)] * out.ndim
            sl[axis] = slice(L - 1 - j, L - 1 - j + 2 * m - 1, 2)
            acc = acc + hj * out[tuple(sl)]
        out = acc
    return out


def sigma_from_coefficients(coeffs: Sequence[np.ndarray]) -> float:
    """Robust noise sigma from detail coefficients pooled over blocks (zeros ignored)."""
    pooled = np.concatenate([np.abs(c[c != 0]).ravel() for c in coeffs]) if coeffs else np.zeros(0)
    if pooled.size == 0:
        return 0.0
    return float(np.median(pooled) / norm.ppf(0.75))


def sample_blocks(shape: Sequence[int], max_voxels: int, block: int = 64) -> list[tuple[slice, ...]]:
    """Regions to read: the whole volume if it has at most ``max_voxels``, else an even grid of blocks.

    The grid is deterministic (no random choice) and spread over the whole volume.
    """
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) <= max_voxels:
        return [tuple(slice(0, s) for s in shape)]
    edge = [min(block, s) for s in shape]
    n_blocks = max(1, max_voxels // math.prod(edge))
    per_axis = max(1, int(round(n_blocks ** (1 / 3))))
    starts = [np.unique(np.linspace(0, s - e, min(per_axis, max(1, s // e))).round().astype(int))
              for s, e in zip(shape, edge)]
    return [tuple(slice(int(a), int(a) + e) for a, e in zip((z, y, x), edge))
            for z in starts[0] for y in starts[1] for x in starts[2]]


def estimate_sigma(volume: Any, max_voxels: int = 1 << 24, block: int = 64) -> float:
    """Noise standard deviation of a (Z, Y, X) array-like (numpy or zarr), in data units.

    Args:
        volume: anything sliceable to numpy with ``.shape`` (a zarr array is read block by block).
        max_voxels: read the whole volume up to this size, else a grid of ``block``^3 blocks
            totalling at most this many voxels.

    Returns:
        sigma (float, >= 0).
    """
    coeffs = [detail_coefficients(np.asarray(volume[r])) for r in sample_blocks(volume.shape, max_voxels, block)]
    return sigma_from_coefficients(coeffs)
