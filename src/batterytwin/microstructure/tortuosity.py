"""Random-walk tortuosity of one phase: walkers -> MSD -> diffusion tensor -> tau per axis.

Walkers start uniformly in the phase's percolating clusters (6-connectivity), walk (lattice or
off-lattice, :mod:`.walk` / :mod:`.ckernel`) and record the second moments of their unwrapped
displacement ``<d_i d_j>(t)`` at ``n_records + 1`` times. The Einstein relation
``<d_i d_j> = 2 D_ij t + c`` is fitted over the long-time window ``[fit_start * T, T]``; with
``D_bulk`` the free-space value of the same walk:

* ``tau_pore = D_bulk / D_pore`` (the walkers' own diffusivity; what pytrax reports),
* ``D_eff / D_bulk = eps_walk * D_pore / D_bulk`` (``eps_walk``: volume fraction of the clusters
  the walkers explore), and ``tau = eps * D_bulk / D_eff`` with ``eps`` the phase's whole volume
  fraction -- the TauFactor convention (Cooper et al., SoftwareX 2016), directly comparable to a
  steady-state solve (isolated clusters count in ``eps`` but carry no flux).

Walkers are split into ``n_batches`` fixed batches; batches are spread over MPI ranks and the
per-batch moment sums gathered in batch order, so 1 or N ranks give identical numbers. The
statistical uncertainty is a bootstrap over batches (walkers are independent). The linear-regime
check compares the slopes of the two halves of the fit window. A direction without a percolating
cluster has ``tau = None`` and ``percolating = False``.

Example::

    res = walk_tortuosity(mask, WalkParams(n_walkers=4096, n_steps=2000))
    res["axes"]["z"]["tau"], res["axes"]["z"]["tau_std"]
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..distributed import World, get_world
from ..errors import InputError
from . import ckernel
from . import walk as W
from .clusters import AXES, ClusterInfo, phase_clusters

log = logging.getLogger(__name__)
CONVENTION = "tau = eps * D_bulk / D_eff (TauFactor)"
PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # stored moment components


@dataclass
class WalkParams:
    """Parameters of one random-walk tortuosity run (the ``microstructure.walk`` config section).

    Attributes:
        model: ``"lattice"`` (pytrax-like, rejection of moves into other phases) or
            ``"offlattice"`` (continuous steps, specular reflection at voxel faces).
        boundary: outer faces, ``"mirror"`` (mirrored tiling) or ``"periodic"``.
        n_walkers: walkers in total (rounded up to a multiple of ``n_batches``).
        n_steps: steps per walker.
        n_records: MSD records (evenly spaced in time) after t = 0.
        n_batches: fixed walker batches: unit of MPI work, checkpointing and bootstrap.
        step_length: off-lattice step length in units of the smallest voxel edge.
        fit_start: the Einstein fit uses t in [fit_start * n_steps, n_steps].
        n_bootstrap: bootstrap resamples for the uncertainties.
        linear_tolerance: relative slope change between the fit window's halves that still
            counts as linear (when larger than 3 bootstrap standard deviations).
        max_box_traversals: refuse walks whose free-space RMS displacement exceeds this many box
            lengths (the walk would mostly measure the tiling of a too-small volume).
        seed: seed of every random choice (walker starts and steps).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        backend: ``"auto"`` (C kernel on CPU, Triton lattice kernel on GPU when available, else
            torch), ``"c"``, ``"torch"`` or ``"triton"``.
    """

    model: str = "lattice"
    boundary: str = "mirror"
    n_walkers: int = 16384
    n_steps: int = 4000
    n_records: int = 40
    n_batches: int = 16
    step_length: float = 0.5
    fit_start: float = 0.5
    n_bootstrap: int = 400
    linear_tolerance: float = 0.05
    max_box_traversals: float = 20.0
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"

    def check(self) -> None:
        if self.model not in ("lattice", "offlattice"):
            raise InputError(f"microstructure.walk.model: 'lattice' or 'offlattice', got {self.model!r}")
        if self.boundary not in ("mirror", "periodic"):
            raise InputError(f"microstructure.walk.boundary: 'mirror' or 'periodic', got {self.boundary!r}")
        if self.backend not in ("auto", "c", "torch", "triton"):
            raise InputError(f"microstructure.walk.backend: auto, c, torch or triton, got {self.backend!r}")
        for name in ("n_walkers", "n_steps", "n_records", "n_batches", "n_bootstrap"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"microstructure.walk.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.n_records < 4 or self.n_steps < self.n_records:
            raise InputError("microstructure.walk: need n_records >= 4 and n_steps >= n_records")
        if not 0.0 <= self.fit_start < 0.9:
            raise InputError(f"microstructure.walk.fit_start must be in [0, 0.9), got {self.fit_start!r}")
        if not 0.0 < self.step_length <= 1.0:
            raise InputError(f"microstructure.walk.step_length must be in (0, 1], got {self.step_length!r}")

    @property
    def per_batch(self) -> int:
        return -(-int(self.n_walkers) // int(self.n_batches))


def step_voxels(params: WalkParams, voxel_size_um) -> np.ndarray:
    """Free-space step per axis in voxels: 1 (lattice) or ``s * min(h) / h_i`` (off-lattice)."""
    h = np.asarray(voxel_size_um, dtype=np.float64)
    if params.model == "lattice":
        return np.ones(3)
    return params.step_length * h.min() / h


def bulk_diffusivity(params: WalkParams, voxel_size_um) -> np.ndarray:
    """Free-space D per axis in voxel^2 per step: ``<d_i^2> = 2 D t`` (1/6 for the lattice walk)."""
    return step_voxels(params, voxel_size_um) ** 2 / 6.0


def check_walk_fits(shape, params: WalkParams, voxel_size_um, where: str) -> None:
    """InputError when the volume is too small for the requested walk length."""
    if min(shape) < 3:
        raise InputError(f"{where}: volume {tuple(shape)} is too small for a random walk (need >= 3 voxels per axis)")
    rms = np.sqrt(2 * bulk_diffusivity(params, voxel_size_um) * params.n_steps)
    ratio = rms / np.asarray(shape, dtype=np.float64)
    if ratio.max() > params.max_box_traversals:
        a = int(ratio.argmax())
        raise InputError(
            f"{where}: volume too small for the requested walk: n_steps={params.n_steps} travels "
            f"{ratio[a]:.0f} box lengths along {AXES[a]} (limit max_box_traversals={params.max_box_traversals:g}); "
            f"use fewer steps or a larger volume")


def start_indices(start_flat: torch.Tensor, walker_id: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform choice of start voxels (flat indices, sorted int64 [M]) for walkers (int64 [N])."""
    k1 = W.walker_key(seed ^ 0x5EED, walker_id) >> 1  # 31 bits
    k2 = W.walker_key(seed ^ 0xA11CE, walker_id)      # 32 bits
    return start_flat[((k1 << 32) | k2) % len(start_flat)]


def _device(params: WalkParams, world: World) -> torch.device:
    """The walk's device: one GPU per node-local rank when CUDA is used."""
    from ..distributed import select_device

    return select_device(world, params.device)


def _backend(params: WalkParams, device: torch.device) -> str:
    if params.backend != "auto":
        return params.backend
    if device.type == "cpu":
        return "c" if ckernel.load() is not None else "torch"
    if params.model == "lattice":
        try:
            from . import triton_walk
        except ImportError:
            return "torch"
        return "triton" if triton_walk.available() else "torch"
    return "torch"


def run_batch(mask: torch.Tensor, start_flat: torch.Tensor, batch: int, params: WalkParams,
              voxel_size_um, backend: str) -> np.ndarray:
    """Walk one batch of walkers; sums over walkers of the moments at every record.

    Args:
        mask: bool [Z, Y, X] on the walk's device.
        start_flat: int64 [M] flat indices of allowed start voxels (same device).

    Returns:
        float64 [n_records + 1, 6]: sums of d_z^2, d_y^2, d_x^2, d_z d_y, d_z d_x, d_y d_x (voxel^2).
    """
    n = params.per_batch
    ids = torch.arange(batch * n, (batch + 1) * n, dtype=torch.int64, device=mask.device)
    offl = params.model == "offlattice"
    state = W.walk_start(mask.shape, start_indices(start_flat, ids, params.seed), ids, params.seed, offl)
    sv = tuple(float(v) for v in step_voxels(params, voxel_size_um))
    times = record_times(params)
    out = np.zeros((len(times), 6))
    mask_u8 = mask.to(torch.uint8).contiguous() if backend in ("c", "triton") else None
    if backend == "c":
        state.voxel, state.frac, state.key = (state.voxel.contiguous(), state.frac.contiguous(),
                                              state.key.contiguous())
    truncated = 0
    for r in range(1, len(times)):
        t0, k = int(times[r - 1]), int(times[r] - times[r - 1])
        if backend == "c":
            if offl:
                truncated += ckernel.offlattice_advance(mask_u8, state.voxel, state.frac, state.key, t0, k,
                                                        params.boundary, sv)
            else:
                ckernel.lattice_advance(mask_u8, state.voxel, state.key, t0, k, params.boundary)
        elif backend == "triton" and not offl:
            from . import triton_walk

            triton_walk.lattice_advance(mask_u8, state, t0, k, params.boundary)
        elif offl:
            truncated += W.offlattice_advance(mask, state, t0, k, params.boundary, sv)
        else:
            W.lattice_advance(mask, state, t0, k, params.boundary)
        d = state.displacement()
        out[r] = torch.stack([(d[:, i] * d[:, j]).sum() for i, j in PAIRS]).cpu().numpy()
    if truncated:
        log.warning("off-lattice walk: %d walker-steps cut short after 8 face events", truncated)
    return out


def record_times(params: WalkParams) -> np.ndarray:
    """Steps at which moments are recorded: int64 [n_records + 1], from 0 to n_steps."""
    return np.round(np.linspace(0, params.n_steps, params.n_records + 1)).astype(np.int64)


def _fit_slopes(t: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Least-squares slopes of ``m`` [..., T, C] against ``t`` [T] (with intercept)."""
    tc = t - t.mean()
    return np.einsum("t,...tc->...c", tc, m) / (tc @ tc)


def _params_key(mask: np.ndarray, params: WalkParams, voxel_size_um) -> str:
    h = hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    p = asdict(params)
    for k in ("device", "backend", "n_bootstrap", "linear_tolerance", "fit_start", "max_box_traversals"):
        p.pop(k)  # do not change the walk itself
    h.update(repr((sorted(p.items()), [float(v) for v in voxel_size_um])).encode())
    return h.hexdigest()[:20]


def walk_moments(mask: np.ndarray, start_mask: np.ndarray, params: WalkParams, voxel_size_um,
                 world: World | None = None, checkpoint_dir: str | Path | None = None) -> np.ndarray:
    """Moment sums of every batch: float64 [n_batches, n_records + 1, 6], same on every rank.

    Batches are spread round-robin over ranks; with ``checkpoint_dir`` each finished batch is
    saved there (``batch_<b>.npy`` under a key of the mask and walk parameters) and reused on rerun.
    """
    world = world or get_world()
    dev = _device(params, world)
    backend = _backend(params, dev)
    mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).to(dev)
    start_flat = torch.from_numpy(np.flatnonzero(start_mask).astype(np.int64)).to(dev)
    ck = None
    if checkpoint_dir is not None:
        ck = Path(checkpoint_dir) / _params_key(mask, params, voxel_size_um)
        ck.mkdir(parents=True, exist_ok=True)
    mine = {}
    for b in world.my_items(params.n_batches):
        f = ck / f"batch_{b:05d}.npy" if ck else None
        if f is not None and f.exists():
            mine[b] = np.load(f, allow_pickle=False)
            continue
        mine[b] = run_batch(mask_t, start_flat, b, params, voxel_size_um, backend)
        if f is not None:
            tmp = f.with_name(f.name + ".tmp.npy")
            np.save(tmp, mine[b], allow_pickle=False)
            tmp.replace(f)
    merged = {}
    for part in world.allgather(mine):
        merged.update(part)
    return np.stack([merged[b] for b in range(params.n_batches)])


def analyse_moments(sums: np.ndarray, params: WalkParams, voxel_size_um, eps: float, eps_walk: float,
                    percolating) -> dict[str, Any]:
    """Einstein fit + bootstrap of batch moment sums (float64 [B, R+1, 6]) -> the tortuosity record."""
    t = record_times(params).astype(np.float64)
    n_per = params.per_batch
    d0 = bulk_diffusivity(params, voxel_size_um)
    norm = np.array([2 * math.sqrt(d0[i] * d0[j]) for i, j in PAIRS])  # slope of free walk (diag)
    sel = t >= params.fit_start * params.n_steps
    half = np.flatnonzero(sel)
    h1, h2 = half[: len(half) // 2 + 1], half[len(half) // 2:]
    rng = np.random.default_rng(params.seed)
    B = sums.shape[0]
    weights = np.vstack([np.ones(B), rng.multinomial(B, np.full(B, 1.0 / B), size=params.n_bootstrap)])
    m = np.einsum("kb,btc->ktc", weights, sums) / (weights.sum(1) * n_per)[:, None, None]  # [K, T, 6]
    ratio = _fit_slopes(t[sel], m[:, sel]) / norm           # D_pore / D_bulk, [K, 6]
    s1 = _fit_slopes(t[h1], m[:, h1]) / norm
    s2 = _fit_slopes(t[h2], m[:, h2]) / norm
    axes = {}
    for a, name in enumerate(AXES):
        r = ratio[:, a]
        lin_diff = abs(s2[0, a] - s1[0, a])
        lin_tol = max(params.linear_tolerance * abs(r[0]), 3 * float(np.std(s2[1:, a] - s1[1:, a])))
        rec = {"eps": eps, "eps_walk": eps_walk, "percolating": bool(percolating[a]),
               "linear_regime": bool(lin_diff <= lin_tol) if percolating[a] else None,
               "D_pore_over_D_bulk": float(r[0]), "D_pore_over_D_bulk_std": float(np.std(r[1:]))}
        if percolating[a] and r[0] > 0 and np.all(r > 0):
            rec.update({"D_eff_over_D_bulk": float(eps_walk * r[0]),
                        "D_eff_over_D_bulk_std": float(eps_walk * np.std(r[1:])),
                        "tau": float(eps / (eps_walk * r[0])), "tau_std": float(np.std(eps / (eps_walk * r[1:]))),
                        "tau_pore": float(1 / r[0]), "tau_pore_std": float(np.std(1 / r[1:]))})
        else:  # no spanning path: zero flux, infinite tau (reported as None + flag)
            rec.update({"D_eff_over_D_bulk": 0.0 if not percolating[a] else None, "D_eff_over_D_bulk_std": None,
                        "tau": None, "tau_std": None, "tau_pore": None, "tau_pore_std": None})
            if percolating[a]:
                rec["flag"] = "walk found no long-time diffusion along a percolating axis"
            else:
                rec["flag"] = "not percolating: no 6-connected cluster spans this axis (tau infinite)"
        axes[name] = rec
    tensor = np.zeros((3, 3))
    tensor_std = np.zeros((3, 3))
    for c, (i, j) in enumerate(PAIRS):
        if percolating[i] and percolating[j]:
            tensor[i, j] = tensor[j, i] = eps_walk * ratio[0, c]
            tensor_std[i, j] = tensor_std[j, i] = eps_walk * np.std(ratio[1:, c])
    msd = m[0] * 1.0  # [T, 6] voxel^2
    return {"convention": CONVENTION, "axes": axes, "tensor_D_eff_over_D_bulk": tensor.tolist(),
            "tensor_D_eff_over_D_bulk_std": tensor_std.tolist(),
            "tensor_note": "rows/columns of non-percolating axes are 0 (no flux)",
            "_msd_voxel2": msd, "_t_steps": t, "_free_slope_voxel2": 2 * d0}


def walk_tortuosity(mask: np.ndarray, params: WalkParams, voxel_size_um=(1.0, 1.0, 1.0),
                    world: World | None = None, checkpoint_dir: str | Path | None = None,
                    clusters: ClusterInfo | None = None, where: str = "phase") -> dict[str, Any]:
    """Random-walk tortuosity of the phase ``mask`` (bool [Z, Y, X]).

    Returns:
        dict with ``convention``, ``axes`` {z, y, x: {eps, D_eff_over_D_bulk, tau, tau_pore,
        tau_std, percolating, linear_regime, ...}}, ``tensor_D_eff_over_D_bulk`` (3x3), walk
        settings, and private ``_msd_voxel2`` [R+1, 6] / ``_t_steps`` [R+1] for the MSD file.

    Raises:
        InputError: the phase is empty, or the volume is too small for the walk.
    """
    params.check()
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise InputError(f"{where}: expected a 3-D volume, got shape {mask.shape}")
    if not mask.any():
        raise InputError(f"{where}: phase is absent (no voxel) so no tortuosity can be measured")
    check_walk_fits(mask.shape, params, voxel_size_um, where)
    h = np.asarray(voxel_size_um, dtype=np.float64)
    if params.model == "lattice" and h.max() / h.min() > 1.001:
        # equal jump rates per axis would model an anisotropic medium, not anisotropic voxels
        raise InputError(f"{where}: the lattice walk needs cubic voxels, got voxel_size_um {list(h)}; "
                         "use microstructure.walk.model: offlattice")
    info = clusters or phase_clusters(mask)
    eps = float(mask.mean())
    walk = {"model": params.model, "boundary": params.boundary, "n_walkers": params.per_batch * params.n_batches,
            "n_steps": params.n_steps, "step_length": params.step_length if params.model == "offlattice" else 1.0,
            "seed": params.seed, "fit_window_steps": [params.fit_start * params.n_steps, params.n_steps]}
    if not any(info.percolating):
        res = analyse_moments(np.zeros((params.n_batches, params.n_records + 1, 6)), params, voxel_size_um,
                              eps, 0.0, (False,) * 3)
        res.update(walk=walk, percolation=info.fractions)
        res["walk"]["skipped"] = "no percolating cluster along any axis"
        return res
    eps_walk = float(info.start_mask.mean())
    sums = walk_moments(mask, info.start_mask, params, voxel_size_um, world, checkpoint_dir)
    res = analyse_moments(sums, params, voxel_size_um, eps, eps_walk, info.percolating)
    res.update(walk=walk, percolation=info.fractions)
    return res
