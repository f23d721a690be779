"""The ``denoise`` config section: blockwise fast non-local means (see docs/denoise.md).

The only place the denoise defaults live; ``batterytwin denoise``'s flags, its ``--help`` and the
workflow schema are generated from :class:`DenoiseConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..config import Section

MAX_SEARCH_RADIUS = 24  # (2 d + 1)^3 / 2 = 58 800 offsets per voxel: beyond it a run never ends


class DenoiseConfig(Section):
    """What ``batterytwin denoise`` is asked to do.

    Example::

        DenoiseConfig(patch_size=3, h=0.1).search_radius     # 6
    """

    patch_size: int = Field(5, ge=1, description="patch edge in voxels (odd)")
    search_radius: int = Field(6, ge=0, le=MAX_SEARCH_RADIUS, description="search radius d in voxels: offsets "
                               "[-d, d]^3 (skimage's patch_distance); cost grows as (2d+1)^3; the window 2d+1 must "
                               "fit in the volume")
    h: float | None = Field(None, gt=0, allow_inf_nan=False,
                            description="filtering strength in data units; null: h_factor * estimated noise sigma")
    h_factor: float = Field(1.2, gt=0, allow_inf_nan=False,
                            description="h = h_factor * sigma when h is null (sigma estimated once per volume)")
    subtract_sigma: bool = Field(False, description="subtract 2 sigma^2 from patch distances (skimage's sigma=)")
    compat: Literal["skimage"] | None = Field(
        None, description="skimage: reproduce skimage.restoration.denoise_nl_means(fast_mode=True) exactly; "
        "null: centred patch, exact exp")
    backend: Literal["auto", "torch", "triton"] = Field("auto", description="auto: fused Triton kernel on CUDA, "
                                                        "PyTorch on CPU")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: one GPU per local rank if CUDA is "
                                                   "visible, else CPU")
    threads: int = Field(0, ge=0, description="CPU worker threads per rank (0: this rank's share of the cores)")
    sigma_max_voxels: int = Field(1 << 24, ge=4096, description="the noise estimate reads the whole volume up to "
                                  "this many voxels, else a grid of 64^3 blocks")
    chunk: int = Field(0, ge=0, description="output chunk edge (0: as the input store)")
    shard: int = Field(0, ge=0, description="output shard edge, the unit of work per rank (0: as the input); "
                       "memory per rank ~ 10 x (shard + 2 halo)^3 x 4 bytes")
    reference: bool = Field(True, description="workflow: record PSNR/SSIM of synthetic samples against their "
                            "noise-free image (results/{sample}/clean.zarr)")

    @field_validator("patch_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value
