"""PSNR and SSIM of a denoised volume against a clean reference, accumulated block by block.

The sums are exact decompositions of scikit-image's whole-volume ``peak_signal_noise_ratio`` and
``structural_similarity`` (7^3 uniform window, K1 = 0.01, K2 = 0.03, sample covariance, mean over
voxels at least 3 from the volume border): each block contributes its own voxels, read with a
3-voxel halo, so the total does not depend on the blocking or on which rank did which block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import uniform_filter

SSIM_WIN = 7
SSIM_HALO = SSIM_WIN // 2


@dataclass
class MetricSums:
    """Additive partial sums (one per block or rank; add them up, then :meth:`result`)."""

    sse: float = 0.0
    n: int = 0
    ssim_sum: float = 0.0
    ssim_n: int = 0
    extra: dict = field(default_factory=dict)

    def __add__(self, other: "MetricSums") -> "MetricSums":
        return MetricSums(self.sse + other.sse, self.n + other.n, self.ssim_sum + other.ssim_sum,
                          self.ssim_n + other.ssim_n)

    def as_dict(self) -> dict:
        return {"sse": self.sse, "n": self.n, "ssim_sum": self.ssim_sum, "ssim_n": self.ssim_n}

    def result(self, data_range: float) -> dict:
        """``{"psnr_db", "ssim", "rmse", "data_range"}``; PSNR is inf for a perfect match."""
        mse = self.sse / self.n if self.n else float("nan")
        psnr = 10.0 * math.log10(data_range ** 2 / mse) if mse > 0 else float("inf")
        ssim = self.ssim_sum / self.ssim_n if self.ssim_n else None
        return {"psnr_db": psnr, "ssim": ssim, "rmse": math.sqrt(mse), "data_range": data_range}


def ssim_map(test: np.ndarray, ref: np.ndarray, data_range: float) -> np.ndarray:
    """Local SSIM (scikit-image's formula, uniform 7^3 window), same shape as the inputs (float64)."""
    x = np.asarray(test, dtype=np.float64)
    y = np.asarray(ref, dtype=np.float64)
    np_ = SSIM_WIN ** x.ndim
    cov_norm = np_ / (np_ - 1)
    ux, uy = uniform_filter(x, SSIM_WIN), uniform_filter(y, SSIM_WIN)
    uxx, uyy, uxy = uniform_filter(x * x, SSIM_WIN), uniform_filter(y * y, SSIM_WIN), uniform_filter(x * y, SSIM_WIN)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def block_sums(test_h: np.ndarray, ref_h: np.ndarray, inner: tuple[slice, ...], global_origin: tuple[int, ...],
               volume_shape: tuple[int, ...], data_range: float) -> MetricSums:
    """Partial sums for one block.

    Args:
        test_h, ref_h: the denoised and reference data of the block with up to ``SSIM_HALO`` voxels
            of neighbours on each side (clipped at the volume border), same shape.
        inner: slices of ``test_h`` that are the block itself.
        global_origin: volume coordinates of ``test_h[0, 0, 0]``.
        volume_shape: shape of the whole volume.
    """
    d = np.asarray(test_h[inner], dtype=np.float64) - np.asarray(ref_h[inner], dtype=np.float64)
    sums = MetricSums(sse=float(np.sum(d * d)), n=int(d.size))
    if min(volume_shape) <= 2 * SSIM_HALO:
        return sums
    smap = ssim_map(test_h, ref_h, data_range)[inner]
    # keep voxels >= SSIM_HALO from every volume border (skimage crops these; their windows need padding)
    keep = []
    for s, o, n in zip(inner, global_origin, volume_shape):
        g0 = o + s.start
        lo = max(0, SSIM_HALO - g0)
        hi = min(s.stop - s.start, n - SSIM_HALO - g0)
        keep.append(slice(lo, max(lo, hi)))
    part = smap[tuple(keep)]
    sums.ssim_sum, sums.ssim_n = float(part.sum()), int(part.size)
    return sums
