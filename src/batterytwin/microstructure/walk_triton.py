"""Triton kernel of the lattice walk (GPU): one program per block of walkers, a chunk of steps per launch.

Each walker's state (unwrapped voxel coordinates) stays in registers for the whole chunk; a step
is the integer hash of :func:`.walk.step_random`, a fold of the target voxel into the image
(mirror or periodic) and one gather from the uint8 mask. Integer-only, so it agrees with
:func:`.walk.lattice_advance` (torch) and :func:`.ckernel.lattice_advance` (C) bit for bit; it is
tested on CPU under ``TRITON_INTERPRET=1``.

Example::

    walk_triton.lattice_advance(mask_u8, state, t0=0, n_steps=100, boundary="mirror")
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: the torch walk is the fallback
    triton = None


def available() -> bool:
    """Triton can run here: a CUDA device, or the interpreter (``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "") == "1"


if triton is not None:

    @triton.jit
    def _mix32(x):
        x = x ^ (x >> 16)
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x = x ^ (x >> 15)
        x = (x * 0x5BD1E995) & 0xFFFFFFFF
        x = x ^ (x >> 16)
        return x

    @triton.jit
    def _fold(c, n, PERIODIC: tl.constexpr):
        if PERIODIC:
            m = ((c % n) + n) % n
        else:
            m = ((c % (2 * n)) + 2 * n) % (2 * n)
            m = tl.where(m >= n, 2 * n - 1 - m, m)
        return m

    @triton.jit
    def _lattice_kernel(mask_ptr, vox_ptr, key_ptr, n, t0, n_steps, Z, Y, X,
                        PERIODIC: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        cz = tl.load(vox_ptr + 3 * offs, mask=live, other=0)
        cy = tl.load(vox_ptr + 3 * offs + 1, mask=live, other=0)
        cx = tl.load(vox_ptr + 3 * offs + 2, mask=live, other=0)
        k = tl.load(key_ptr + offs, mask=live, other=0)
        Zl = Z.to(tl.int64)
        Yl = Y.to(tl.int64)
        Xl = X.to(tl.int64)
        for i in range(n_steps):
            t = (t0 + i).to(tl.int64) & 0xFFFFFFFF
            r = _mix32(_mix32(k ^ t) ^ k) % 6
            d = 1 - 2 * (r & 1)
            a = r >> 1
            nz = cz + tl.where(a == 0, d, 0)
            ny = cy + tl.where(a == 1, d, 0)
            nx = cx + tl.where(a == 2, d, 0)
            idx = (_fold(nz, Zl, PERIODIC) * Yl + _fold(ny, Yl, PERIODIC)) * Xl + _fold(nx, Xl, PERIODIC)
            ok = tl.load(mask_ptr + idx, mask=live, other=0) != 0
            cz = tl.where(ok, nz, cz)
            cy = tl.where(ok, ny, cy)
            cx = tl.where(ok, nx, cx)
        tl.store(vox_ptr + 3 * offs, cz, mask=live)
        tl.store(vox_ptr + 3 * offs + 1, cy, mask=live)
        tl.store(vox_ptr + 3 * offs + 2, cx, mask=live)


def lattice_advance(mask_u8: torch.Tensor, state, t0: int, n_steps: int, boundary: str, block: int = 256) -> None:
    """Advance lattice walkers (``state.voxel`` int64 [N, 3], contiguous) by ``n_steps``, in place.

    Args:
        mask_u8: uint8 [Z, Y, X] (1 in the phase), contiguous, on the walkers' device.
    """
    if triton is None:
        raise RuntimeError("triton is not installed")
    vox = state.voxel.contiguous()
    key = state.key.contiguous()
    n = vox.shape[0]
    Z, Y, X = mask_u8.shape
    grid = (triton.cdiv(n, block),)
    _lattice_kernel[grid](mask_u8, vox, key, n, int(t0), int(n_steps), Z, Y, X,
                          PERIODIC=boundary == "periodic", BLOCK=block)
    state.voxel = vox
