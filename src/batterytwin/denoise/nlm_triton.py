"""Fused NLM kernel in Triton: one launch for all search offsets (the GPU path).

Each program owns a (TZ, TY, TX) tile of output voxels and keeps their weighted sum and weight
total in registers while it loops over every offset ``t`` of the search cube, so nothing
volume-sized is written per offset (the unfused PyTorch version streams several temporaries per
offset and is memory-bound). The patch distance of the whole tile comes from separable running
sums, ``box[m] = box[0] + sum_{i<m} (E[i + NB] - E[i])`` along x, then y, then z, evaluated with
``tl.cumsum`` (no shifted register access needed): 16 cached loads and 7 scans per voxel and
offset, independent of the patch size. The zero offset needs no special case: its distance is 0,
so its weight is ``exp(0) = 1`` (default mode) or ``fast_exp(0)`` (skimage mode), exactly the
centre weights of :func:`batterytwin.denoise.nlm.nlm_padded`.

Not yet exploited: the offset symmetry ``D(p, t) = D(p + t, -t)`` (half the work; needs the two
halves of a pair in one program). Runs on CUDA, and on CPU under ``TRITON_INTERPRET=1`` (how the
tests run it). Same maths as :mod:`batterytwin.denoise.nlm` (see there for modes and references).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..errors import InputError
from .nlm_params import DISTANCE_CUTOFF, EXP_A, EXP_BC, NLMParams, box_bounds


@triton.jit
def _sqdiff(xp_ptr, qz, qy, qx, tz, ty, tx, PZ, PY, PX, PSZ, PSY):
    """(x[q] - x[q + t])^2 on a tile of padded coordinates, clamped inside the array.

    Clamping only ever changes values that feed outputs outside the block (which are not stored).
    """
    az = tl.minimum(tl.maximum(qz, 0), PZ - 1)
    ay = tl.minimum(tl.maximum(qy, 0), PY - 1)
    ax = tl.minimum(tl.maximum(qx, 0), PX - 1)
    bz = tl.minimum(tl.maximum(qz + tz, 0), PZ - 1)
    by = tl.minimum(tl.maximum(qy + ty, 0), PY - 1)
    bx = tl.minimum(tl.maximum(qx + tx, 0), PX - 1)
    a = tl.load(xp_ptr + az * PSZ + ay * PSY + ax)
    b = tl.load(xp_ptr + bz * PSZ + by * PSY + bx)
    return (a - b) * (a - b)


@triton.jit
def _box_x(xp_ptr, qz, qy, qx, ix, tz, ty, tx, PZ, PY, PX, PSZ, PSY, NB: tl.constexpr):
    """Sum of (x[q] - x[q+t])^2 over NB consecutive x from each tile position, as a running sum:
    box[m] = box[0] + sum_{i<m} (E[i + NB] - E[i]); no shifted register access is needed."""
    e0 = _sqdiff(xp_ptr, qz, qy, qx, tz, ty, tx, PZ, PY, PX, PSZ, PSY)
    e1 = _sqdiff(xp_ptr, qz, qy, qx + NB, tz, ty, tx, PZ, PY, PX, PSZ, PSY)
    g = e1 - e0
    first = tl.sum(tl.where(ix < NB, e0, 0.0), axis=2, keep_dims=True)
    return first + tl.cumsum(g, axis=2) - g


@triton.jit
def _box_xy(xp_ptr, qz, qy, qx, ix, iy, tz, ty, tx, PZ, PY, PX, PSZ, PSY, NB: tl.constexpr):
    b0 = _box_x(xp_ptr, qz, qy, qx, ix, tz, ty, tx, PZ, PY, PX, PSZ, PSY, NB)
    b1 = _box_x(xp_ptr, qz, qy + NB, qx, ix, tz, ty, tx, PZ, PY, PX, PSZ, PSY, NB)
    g = b1 - b0
    first = tl.sum(tl.where(iy < NB, b0, 0.0), axis=1, keep_dims=True)
    return first + tl.cumsum(g, axis=1) - g


@triton.jit
def _box_xyz(xp_ptr, qz, qy, qx, ix, iy, iz, tz, ty, tx, PZ, PY, PX, PSZ, PSY, NB: tl.constexpr):
    b0 = _box_xy(xp_ptr, qz, qy, qx, ix, iy, tz, ty, tx, PZ, PY, PX, PSZ, PSY, NB)
    b1 = _box_xy(xp_ptr, qz + NB, qy, qx, ix, iy, tz, ty, tx, PZ, PY, PX, PSZ, PSY, NB)
    g = b1 - b0
    first = tl.sum(tl.where(iz < NB, b0, 0.0), axis=0, keep_dims=True)
    return first + tl.cumsum(g, axis=0) - g


@triton.jit
def _nlm_kernel(xp_ptr, out_ptr, Z, Y, X, PZ, PY, PX, H, D, LO, bias, scale, NTY, NTX,
                NB: tl.constexpr, COMPAT: tl.constexpr, TZ: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr):
    """One program = one (TZ, TY, TX) tile of output voxels; loops over the full search cube.

    out[p] = sum_t w(p, t) x[p + t] / sum_t w(p, t). xp: padded block (PZ, PY, PX), C-contiguous.
    Patch distances come from separable running box sums along x, y, z (16 cached loads and
    7 scans per voxel and offset, whatever the patch size). Distance -> weight:
    ``max(box - bias, 0) * scale`` then fast_exp and the cut-off (skimage mode), or
    ``exp(min(box * scale + bias, 0))`` (default mode; scale = -1/(s^3 h^2)).
    """
    pid = tl.program_id(0)
    oz = (pid // (NTY * NTX)) * TZ
    oy = ((pid // NTX) % NTY) * TY
    ox = (pid % NTX) * TX
    iz = tl.arange(0, TZ)[:, None, None]
    iy = tl.arange(0, TY)[None, :, None]
    ix = tl.arange(0, TX)[None, None, :]
    pz = oz + iz + H  # padded coordinates of the output voxels
    py = oy + iy + H
    px = ox + ix + H
    PSY = PX
    PSZ = PY * PX
    num = tl.zeros([TZ, TY, TX], dtype=tl.float32)
    den = tl.zeros([TZ, TY, TX], dtype=tl.float32)
    for tz in range(-D, D + 1):
        for ty in range(-D, D + 1):
            for tx in range(-D, D + 1):
                if NB > 0:
                    dist = _box_xyz(xp_ptr, pz + LO, py + LO, px + LO, ix, iy, iz, tz, ty, tx,
                                    PZ, PY, PX, PSZ, PSY, NB)
                else:  # skimage mode with patch_size 1: empty box
                    dist = tl.zeros([TZ, TY, TX], dtype=tl.float32)
                if COMPAT:
                    dist = tl.maximum(dist - bias, 0.0) * scale
                    n = (-dist * 1512775.3951951856938).to(tl.int32) + (1072632447 - (896 << 20))
                    w = (n << 3).to(tl.float32, bitcast=True)
                    w = tl.where(dist > 5.0, 0.0, w)
                else:
                    w = tl.exp(tl.minimum(dist * scale + bias, 0.0))
                vz = tl.minimum(pz + tz, PZ - 1)
                vy = tl.minimum(py + ty, PY - 1)
                vx = tl.minimum(px + tx, PX - 1)
                v = tl.load(xp_ptr + vz * PSZ + vy * PSY + vx)
                num += w * v
                den += w
    mask = (oz + iz < Z) & (oy + iy < Y) & (ox + ix < X)
    tl.store(out_ptr + ((oz + iz) * Y + (oy + iy)) * X + (ox + ix), num / den, mask=mask)


def nlm_padded_triton(xp: torch.Tensor, p: NLMParams, tile: tuple[int, int, int] = (4, 8, 32),
                      num_warps: int = 4) -> torch.Tensor:
    """Fused-kernel NLM of the interior of a padded block (float32).

    Args:
        xp: (Z + 2H, Y + 2H, X + 2H) tensor on CUDA (or CPU with ``TRITON_INTERPRET=1``),
            ``H = p.halo``; converted to contiguous float32.
        p: parameters (see :class:`~batterytwin.denoise.nlm_params.NLMParams`).
        tile: output voxels per program (powers of two).

    Returns:
        (Z, Y, X) float32 tensor on the same device.
    """
    assert EXP_A == 1512775.3951951856938 and EXP_BC == 1072632447 and DISTANCE_CUTOFF == 5.0  # inlined above
    if xp.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise InputError("denoise.backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 to test on CPU)")
    if xp.numel() >= 2 ** 31:
        raise InputError(f"denoise: padded shard {tuple(xp.shape)} is too large for the Triton kernel's "
                         "32-bit indexing; use a smaller denoise.shard")
    xp = xp.to(torch.float32).contiguous()
    H = p.halo
    Z, Y, X = (n - 2 * H for n in xp.shape)
    out = torch.empty((Z, Y, X), dtype=torch.float32, device=xp.device)
    lo, nb = box_bounds(p)
    if p.compat == "skimage":
        bias = 2.0 * p.sigma ** 2 * nb ** 3
        scale = 1.0 / (p.patch_size ** 3 * p.h * p.h)
    else:
        # -max(D / s^3 - 2 sigma^2, 0) / h^2 == min(-D / (s^3 h^2) + 2 sigma^2 / h^2, 0)
        scale = -1.0 / (p.patch_size ** 3 * p.h * p.h)
        bias = 2.0 * p.sigma ** 2 / (p.h * p.h)
    tz, ty, tx = tile
    nty, ntx = triton.cdiv(Y, ty), triton.cdiv(X, tx)
    grid = (triton.cdiv(Z, tz) * nty * ntx,)
    _nlm_kernel[grid](xp, out, Z, Y, X, *xp.shape, H, p.search_radius, lo, float(bias), float(scale), nty, ntx,
                      NB=nb, COMPAT=p.compat == "skimage", TZ=tz, TY=ty, TX=tx, num_warps=num_warps)
    return out
