"""Parameters of non-local means and what its two kernels share (the PyTorch one in
:mod:`batterytwin.denoise.nlm`, the Triton one in :mod:`batterytwin.denoise.nlm_triton`): the
parameter checks, the patch box of each mode (:func:`box_bounds`) and the constants of
scikit-image's ``fast_exp`` and distance cut-off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError

COMPAT_MODES = (None, "skimage")
DISTANCE_CUTOFF = 5.0  # skimage: exp(-5) ~ 0.007, weights past it are dropped
EXP_A = 1512775.3951951856938  # 2^20 / ln 2 (Schraudolph)
EXP_BC = 1072632447  # 1023 * 2^20 - 60801 (minimum RMS error), as in skimage's fast_exp.h


@dataclass(frozen=True)
class NLMParams:
    """Parameters of one NLM run.

    Attributes:
        patch_size: edge of the cubic patch, odd, >= 1.
        search_radius: ``d`` in voxels (skimage's ``patch_distance``): offsets ``[-d, d]^3``; >= 0.
        h: filtering strength in data units (> 0): weights are ``exp(-distance / h^2)``.
        sigma: noise standard deviation (data units) subtracted as ``2 sigma^2`` from the mean
            squared patch difference (skimage's ``sigma`` argument); 0 disables it.
        compat: ``None`` (centred patch, exact exp) or ``"skimage"``.
    """

    patch_size: int = 5
    search_radius: int = 6
    h: float = 0.1
    sigma: float = 0.0
    compat: str | None = None

    def __post_init__(self) -> None:
        validate_params(self.patch_size, self.search_radius, self.h, self.sigma, self.compat)

    @property
    def patch_radius(self) -> int:
        return self.patch_size // 2

    @property
    def halo(self) -> int:
        """Voxels of context needed on each side of an output block: patch radius + search radius."""
        return self.patch_radius + self.search_radius

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_params(patch_size: Any, search_radius: Any, h: Any, sigma: Any = 0.0, compat: Any = None) -> None:
    """Raise :class:`InputError` for parameters NLM cannot run with."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1 \
            or patch_size % 2 == 0:
        raise InputError(f"denoise.patch_size must be a positive odd integer, got {patch_size!r}")
    if isinstance(search_radius, bool) or not isinstance(search_radius, (int, np.integer)) or search_radius < 0:
        raise InputError(f"denoise.search_radius must be an integer >= 0, got {search_radius!r}")
    if not isinstance(h, (int, float, np.floating, np.integer)) or not math.isfinite(h) or h <= 0:
        raise InputError(f"denoise.h must be a finite number > 0, got {h!r}")
    if not isinstance(sigma, (int, float, np.floating, np.integer)) or not math.isfinite(sigma) or sigma < 0:
        raise InputError(f"denoise.sigma must be a finite number >= 0, got {sigma!r}")
    if compat not in COMPAT_MODES:
        raise InputError(f"denoise.compat must be one of {COMPAT_MODES}, got {compat!r}")


def box_bounds(p: NLMParams) -> tuple[int, int]:
    """(first offset, count) of the patch box along each axis."""
    r = p.patch_radius
    if p.compat == "skimage":
        return -r + 1, 2 * r
    return -r, 2 * r + 1
