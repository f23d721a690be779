"""Random walks in one phase of a voxel image: the lattice walk and the off-lattice walk (torch).

Walkers are the parallel dimension: every operation acts on all walkers at once, so the same code
runs on CPU (torch's intra-op threads) and on GPU. Random numbers come from a counter-based integer
hash of ``(seed, walker id, step)`` instead of a stateful generator: a walker's path depends only on
its id, never on how walkers are batched, split over MPI ranks, or which device (or the Triton
kernel in :mod:`.walk_triton`) runs it.

Two walk models (both in voxel index units; the phase is a boolean mask on the voxel grid):

* **lattice** (as pytrax, Tranter et al., SoftwareX 2019): each step picks one of the 6 face
  neighbours; the move is rejected (the walker stays) when that voxel is not in the phase. Free
  space: ``<dx_i^2> = t / 3`` per axis (``D_bulk = 1/6`` voxel^2 per step).
* **offlattice** (continuous steps with specular reflection at the voxel faces of the phase
  boundary; the random-walk method of microstructure-resolved modelling): each step has fixed
  length ``s`` (in units of the smallest voxel edge) and a uniformly random direction; the path is
  traced face by face and the normal component is reversed where it would enter a voxel outside the
  phase. Free space: ``<dx_i^2> = s_i^2 t / 3`` (``s_i`` the step in voxels along axis i).

Outer boundaries: ``"mirror"`` (the image is tiled with mirrored copies, as pytrax does; a
walker crossing a face enters the mirror image) or ``"periodic"``. Coordinates are unwrapped, so
the displacement grows without bound in the tiled medium and the Einstein relation
``<dx_i dx_j> = 2 D_ij t`` applies at long times.

Example::

    mask = torch.ones(16, 16, 16, dtype=torch.bool)
    state = walk_start(mask.shape, torch.arange(100), torch.arange(100), seed=1, offlattice=False)
    lattice_advance(mask, state, t0=0, n_steps=400, boundary="mirror")
    (state.displacement() ** 2).mean(0)          # ~ [133, 133, 133] = 400 / 3 per axis
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

M32 = 0xFFFFFFFF
# Odd multipliers below 2**31: every product of a 32-bit value stays below 2**63 (no int64 overflow
# anywhere, so torch, Triton and numpy agree bit for bit).
_C1, _C2, _C3 = 0x7FEB352D, 0x5BD1E995, 0x6A09E667


def mix32(x: torch.Tensor) -> torch.Tensor:
    """32-bit integer hash (lowbias32 structure) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _C1) & M32
    x = x ^ (x >> 15)
    x = (x * _C2) & M32
    x = x ^ (x >> 16)
    return x


def walker_key(seed: int, walker_id: torch.Tensor) -> torch.Tensor:
    """Per-walker 32-bit key from the run's seed and the walker's global id (int64 [N] -> int64 [N])."""
    s = mix32(torch.tensor(int(seed) & M32, dtype=torch.int64)) ^ mix32(torch.tensor((int(seed) >> 32) & M32 ^ _C3,
                                                                                     dtype=torch.int64))
    w = walker_id.to(torch.int64)
    return mix32(mix32((w & M32) ^ s.to(w.device)) ^ (w >> 32))


def step_random(key: torch.Tensor, t: int) -> torch.Tensor:
    """32-bit random value of every walker at step ``t`` (int64 [N] in [0, 2**32))."""
    return mix32(mix32(key ^ (t & M32)) ^ key)


def uniform_from(r: torch.Tensor) -> torch.Tensor:
    """Float64 in [0, 1) from 32-bit random values (24 bits kept, exact in float32 too)."""
    return (r >> 8).to(torch.float64) * (1.0 / (1 << 24))


def fold(c: torch.Tensor, n: int, boundary: str) -> torch.Tensor:
    """Unwrapped voxel coordinate -> index in the image along one axis of length ``n``."""
    if boundary == "periodic":
        return torch.remainder(c, n)
    m = torch.remainder(c, 2 * n)  # mirror: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
    return torch.where(m >= n, 2 * n - 1 - m, m)


def _flat(mask: torch.Tensor, cz, cy, cx, boundary: str) -> torch.Tensor:
    Z, Y, X = mask.shape
    return (fold(cz, Z, boundary) * Y + fold(cy, Y, boundary)) * X + fold(cx, X, boundary)


@dataclass
class WalkState:
    """Walker state: unwrapped voxel coordinates, fractional position inside the voxel, key.

    Attributes:
        voxel: int64 [N, 3] unwrapped voxel coordinates (z, y, x) in the tiled medium.
        frac: float64 [N, 3] position inside the voxel in [0, 1] (off-lattice; 0.5 for lattice).
        origin: float64 [N, 3] starting position (unwrapped, voxel units).
        key: int64 [N] per-walker hash key.
    """

    voxel: torch.Tensor
    frac: torch.Tensor
    origin: torch.Tensor
    key: torch.Tensor

    def position(self) -> torch.Tensor:
        return self.voxel.to(torch.float64) + self.frac

    def displacement(self) -> torch.Tensor:
        """float64 [N, 3]: unwrapped displacement from the start (voxel units)."""
        return self.position() - self.origin


def walk_start(shape, start_index: torch.Tensor, walker_id: torch.Tensor, seed: int,
               offlattice: bool) -> WalkState:
    """Walkers at the given flat voxel indices (int64 [N]); off-lattice walkers uniform in the voxel."""
    Z, Y, X = shape
    idx = start_index.to(torch.int64)
    voxel = torch.stack([idx // (Y * X), (idx // X) % Y, idx % X], dim=1)
    key = walker_key(seed, walker_id.to(idx.device))
    if offlattice:
        r = [step_random(key, -(a + 1) & M32) for a in range(3)]  # "steps" -1..-3: initial offsets
        frac = torch.stack([uniform_from(x) for x in r], dim=1)
    else:
        frac = torch.full((len(idx), 3), 0.5, dtype=torch.float64, device=idx.device)
    state = WalkState(voxel, frac, torch.zeros(0), key)
    state.origin = state.position()
    return state


def lattice_advance(mask: torch.Tensor, state: WalkState, t0: int, n_steps: int, boundary: str) -> None:
    """Advance lattice walkers by ``n_steps`` steps (steps ``t0 .. t0+n_steps-1``), in place.

    Args:
        mask: bool [Z, Y, X], True in the phase (on the walkers' device).
        state: :class:`WalkState`; ``voxel`` is updated.
    """
    flat = mask.reshape(-1)
    cz, cy, cx = state.voxel.unbind(1)
    cz, cy, cx = cz.clone(), cy.clone(), cx.clone()
    for t in range(t0, t0 + n_steps):
        r = step_random(state.key, t) % 6
        d = 1 - 2 * (r & 1)  # +1 or -1
        a = r >> 1  # axis 0 (z), 1 (y), 2 (x)
        nz = cz + d * (a == 0)
        ny = cy + d * (a == 1)
        nx = cx + d * (a == 2)
        ok = flat[_flat(mask, nz, ny, nx, boundary)]
        cz = torch.where(ok, nz, cz)
        cy = torch.where(ok, ny, cy)
        cx = torch.where(ok, nx, cx)
    state.voxel = torch.stack([cz, cy, cx], dim=1)


def offlattice_advance(mask: torch.Tensor, state: WalkState, t0: int, n_steps: int, boundary: str,
                       step_voxels: tuple[float, float, float], max_events: int = 8) -> int:
    """Advance off-lattice walkers by ``n_steps`` steps with specular reflection, in place.

    Each step of physical length ``s`` in a random direction ``u`` (uniform on the sphere) moves a
    walker by ``s * u_i / h_i`` voxels along axis i (``step_voxels = s / h``). The path is traced
    event by event: at the earliest face crossing the walker either enters the neighbour voxel (in
    the phase) or the normal velocity component is reversed (specular reflection); at most
    ``max_events`` face events per step (with ``step_voxels <= 0.5`` three or more are rare).

    Returns:
        number of walker-steps cut short after ``max_events`` events (should be ~0).
    """
    flat = mask.reshape(-1)
    sv = torch.tensor(step_voxels, dtype=torch.float64, device=state.frac.device)
    vox, frac = state.voxel.clone(), state.frac.clone()
    n = vox.shape[0]
    rows = torch.arange(n, device=vox.device)
    truncated = 0
    for t in range(t0, t0 + n_steps):
        r1 = step_random(state.key, t)
        r2 = mix32(r1 ^ _C3)
        cos_t = 2.0 * uniform_from(r1) - 1.0
        phi = (2.0 * math.pi) * uniform_from(r2)
        sin_t = torch.sqrt(torch.clamp(1.0 - cos_t * cos_t, min=0.0))
        vel = torch.stack([cos_t, sin_t * torch.cos(phi), sin_t * torch.sin(phi)], dim=1) * sv  # voxels/step
        rem = torch.ones(n, dtype=torch.float64, device=vox.device)  # remaining fraction of the step
        for _ in range(max_events):
            # time to the next face along each axis (inf when not moving along it)
            tf = torch.where(vel > 0, (1.0 - frac) / vel, torch.where(vel < 0, -frac / vel, math.inf))
            tmin, axis = tf.min(dim=1)
            done = tmin >= rem
            adv = torch.where(done, rem, tmin).unsqueeze(1)
            frac = frac + vel * adv
            rem = torch.where(done, torch.zeros_like(rem), rem - tmin)
            cross = ~done
            if not bool(cross.any()):
                break
            va = vel[rows, axis]
            dvox = torch.where(va > 0, 1, -1)
            nvox = vox.clone()
            nvox[rows, axis] += dvox
            ok = flat[_flat(mask, nvox[:, 0], nvox[:, 1], nvox[:, 2], boundary)] & cross
            refl = cross & ~ok
            vox = torch.where(ok.unsqueeze(1), nvox, vox)
            fa = torch.where(ok, torch.where(va > 0, 0.0, 1.0), torch.where(va > 0, 1.0, 0.0))
            fa = torch.where(cross, fa, frac[rows, axis])
            frac[rows, axis] = fa  # exactly on the face: no drift from rounding
            vel[rows, axis] = torch.where(refl, -va, va)
        else:
            truncated += int((rem > 0).sum())
    state.voxel, state.frac = vox, frac
    return truncated
