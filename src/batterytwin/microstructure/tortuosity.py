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
statistical uncertainty is a bootstrap over batches (walkers are independent). A direction
without a percolating cluster has ``tau = None`` and ``percolating = False``.

The walk is converged by default (:func:`converge`): it runs in blocks and, per percolating axis,
checks the bootstrap error of tau against ``target_rel_std``, the drift of tau between the fit
window and the window before it (on the same bootstrap resamples), and the displacement reached
in units of the structure period (:func:`structure_period`); it doubles or extends the steps and
adds walker batches until every axis passes or the budgets (``max_steps``, ``max_walkers``) are
spent. Unconverged axes say ``converged: false`` with a ``stop_reason`` and are logged as a
WARNING. Why and how it was validated (against TauFactor on PoreSpy media, and the comb's exact
values): docs/microstructure.md, "Convergence".

Example::

    res = walk_tortuosity(mask, WalkParams())                 # converged within the default budgets
    res["axes"]["z"]["tau"], res["axes"]["z"]["tau_std"], res["axes"]["z"]["converged"]
    walk_tortuosity(mask, WalkParams(n_walkers=4096, n_steps=2000, max_walkers=4096, max_steps=2000))  # fixed
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..distributed import World, get_world
from ..errors import InputError
from . import ckernel
from . import walk as W
from .clusters import AXES, ClusterInfo, phase_clusters  # noqa: F401 (phase_clusters: re-exported)
from .components import mask_clusters
from .config import WalkParams, WalkSettings  # noqa: F401 (WalkParams: re-exported constructor)
from .starts import StartVoxels

log = logging.getLogger(__name__)
CONVENTION = "tau = eps * D_bulk / D_eff (TauFactor)"
PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # stored moment components


def step_voxels(params: WalkSettings, voxel_size_um) -> np.ndarray:
    """Free-space step per axis in voxels: 1 (lattice) or ``s * min(h) / h_i`` (off-lattice)."""
    h = np.asarray(voxel_size_um, dtype=np.float64)
    if params.model == "lattice":
        return np.ones(3)
    return params.step_length * h.min() / h


def bulk_diffusivity(params: WalkSettings, voxel_size_um) -> np.ndarray:
    """Free-space D per axis in voxel^2 per step: ``<d_i^2> = 2 D t`` (1/6 for the lattice walk)."""
    return step_voxels(params, voxel_size_um) ** 2 / 6.0


def check_walk_fits(shape, params: WalkSettings, voxel_size_um, where: str) -> int:
    """The step budget that fits the volume: ``max_steps`` capped where the free-space RMS displacement
    reaches ``max_box_traversals`` box lengths. InputError when even ``n_steps`` does not fit."""
    if min(shape) < 3:
        raise InputError(f"{where}: volume {tuple(shape)} is too small for a random walk (need >= 3 voxels per axis)")
    d0 = bulk_diffusivity(params, voxel_size_um)
    ratio = np.sqrt(2 * d0 * params.n_steps) / np.asarray(shape, dtype=np.float64)
    if ratio.max() > params.max_box_traversals:
        a = int(ratio.argmax())
        raise InputError(
            f"{where}: volume too small for the requested walk: n_steps={params.n_steps} travels "
            f"{ratio[a]:.0f} box lengths along {AXES[a]} (limit max_box_traversals={params.max_box_traversals:g}); "
            f"use fewer steps or a larger volume")
    fits = np.min((params.max_box_traversals * np.asarray(shape, dtype=np.float64)) ** 2 / (2 * d0))
    return int(max(params.n_steps, min(params.max_steps, math.floor(fits))))


def structure_period(mask: np.ndarray) -> float:
    """Mean structure period of a two-phase voxel image in voxels: ``6 N / F``, at most half the
    smallest box edge (0 without interface).

    ``F`` counts the voxel faces between the phase and the rest, ``N`` the voxels. Along one axis
    ``2 N / F_a`` is the mean chord of the phase plus the mean chord of the rest (line-intercept
    stereology); ``6 N / F`` is the harmonic mean of the three, the scale a walker must cover in
    every direction before its diffusivity settles (a per-axis period misleads in layered media:
    in-plane chords are long while the slow part of the walk is finding the way between layers).
    """
    m = np.asarray(mask, dtype=bool)
    faces = 0
    for z0 in range(0, m.shape[0], 64):  # in slabs of 64 planes: no volume-sized temporary
        s = m[z0:z0 + 65]  # + the next slab's first plane for the z faces between them
        faces += np.count_nonzero(np.diff(s, axis=0)) + sum(np.count_nonzero(np.diff(s[:64], axis=a)) for a in (1, 2))
    # a period above half the smallest edge means fewer than two periods in the box (a layered cell,
    # a nearly uniform separator): the volume is not representative there and walking further only
    # samples its mirror/periodic tiling, so the period is capped at half that edge
    return min(6.0 * m.size / faces, 0.5 * min(m.shape)) if faces else 0.0


def start_indices(start_flat: "StartVoxels | torch.Tensor", walker_id: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform choice of start voxels (flat indices, sorted int64 [M]) for walkers (int64 [N])."""
    k1 = W.walker_key(seed ^ 0x5EED, walker_id) >> 1  # 31 bits
    k2 = W.walker_key(seed ^ 0xA11CE, walker_id)      # 32 bits
    return start_flat[((k1 << 32) | k2) % len(start_flat)]


def _device(params: WalkSettings, world: World) -> torch.device:
    """The walk's device: one GPU per node-local rank when CUDA is used."""
    from ..distributed import select_device

    return select_device(world, params.device)


def _backend(params: WalkSettings, device: torch.device) -> str:
    if params.backend != "auto":
        return params.backend
    if device.type == "cpu":
        return "c" if ckernel.load() is not None else "torch"
    if params.model == "lattice":
        try:
            from . import walk_triton
        except ImportError:
            return "torch"
        return "triton" if walk_triton.available() else "torch"
    return "torch"


@dataclass
class _Batch:
    """One walker batch in progress: its walkers and the moment sums recorded so far ([r + 1, 6])."""

    state: W.WalkState
    sums: np.ndarray


def _new_batch(shape, start_flat: "StartVoxels | torch.Tensor", batch: int, params: WalkSettings) -> _Batch:
    n = params.per_batch
    ids = torch.arange(batch * n, (batch + 1) * n, dtype=torch.int64, device=start_flat.device)
    state = W.walk_start(shape, start_indices(start_flat, ids, params.seed), ids, params.seed,
                         params.model == "offlattice")
    state.voxel, state.frac, state.key = state.voxel.contiguous(), state.frac.contiguous(), state.key.contiguous()
    return _Batch(state, np.zeros((1, 6)))


def advance_batch(mask: torch.Tensor, bt: _Batch, n_records: int, params: WalkSettings, voxel_size_um,
                  backend: str) -> None:
    """Walk a batch on from its last record to record ``n_records`` (in place).

    A walker's path depends only on (seed, walker id, step), so walking to record 2R in one go or
    to R and later on to 2R (also after a checkpoint round trip) gives the same numbers.

    Args:
        mask: bool [Z, Y, X] on the walk's device.
        bt: the batch; ``bt.sums`` gains rows: sums over walkers of d_z^2, d_y^2, d_x^2, d_z d_y,
            d_z d_x, d_y d_x (voxel^2) at every new record.
    """
    offl = params.model == "offlattice"
    state = bt.state
    sv = tuple(float(v) for v in step_voxels(params, voxel_size_um))
    times = record_times(params, n_records)
    mask_u8 = mask.contiguous().view(torch.uint8) if backend in ("c", "triton") else None  # no copy
    rows = [bt.sums]
    truncated = 0
    for r in range(len(bt.sums), n_records + 1):
        t0, k = int(times[r - 1]), int(times[r] - times[r - 1])
        if backend == "c":
            if offl:
                truncated += ckernel.offlattice_advance(mask_u8, state.voxel, state.frac, state.key, t0, k,
                                                        params.boundary, sv)
            else:
                ckernel.lattice_advance(mask_u8, state.voxel, state.key, t0, k, params.boundary)
        elif backend == "triton" and not offl:
            from . import walk_triton

            walk_triton.lattice_advance(mask_u8, state, t0, k, params.boundary)
        elif offl:
            truncated += W.offlattice_advance(mask, state, t0, k, params.boundary, sv)
        else:
            W.lattice_advance(mask, state, t0, k, params.boundary)
        d = state.displacement()
        rows.append(torch.stack([(d[:, i] * d[:, j]).sum() for i, j in PAIRS]).cpu().numpy()[None])
    bt.sums = np.vstack(rows)
    if truncated:
        log.warning("off-lattice walk: %d walker-steps cut short after 8 face events", truncated)


def record_times(params: WalkSettings, n_records: int | None = None) -> np.ndarray:
    """Steps at which moments are recorded: int64 [R + 1], record i at ``i * n_steps / n_records``
    (R = ``n_records`` by default; an extended walk keeps the spacing and has more records)."""
    r = params.n_records if n_records is None else int(n_records)
    return np.round(np.arange(r + 1) * (params.n_steps / params.n_records)).astype(np.int64)


def _fit_slopes(t: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Least-squares slopes of ``m`` [..., T, C] against ``t`` [T] (with intercept)."""
    tc = t - t.mean()
    return np.einsum("t,...tc->...c", tc, m) / (tc @ tc)


# settings that change neither the walkers' paths nor the records: not part of the checkpoint key
_NOT_IN_KEY = ("device", "backend", "n_bootstrap", "linear_tolerance", "fit_start", "max_box_traversals",
               "n_walkers", "n_batches", "n_steps", "n_records", "max_steps", "max_walkers", "target_rel_std",
               "drift_sigma", "drift_floor", "min_travel")


def _params_key(mask: np.ndarray, params: WalkSettings, voxel_size_um) -> str:
    h = hashlib.sha256(memoryview(np.ascontiguousarray(mask, dtype=bool).view(np.uint8)).cast("B"))  # no copy
    p = {k: v for k, v in params.model_dump().items() if k not in _NOT_IN_KEY}
    p["per_batch"] = params.per_batch  # walker ids of a batch
    p["record_spacing"] = params.n_steps / params.n_records
    h.update(repr((sorted(p.items()), [float(v) for v in voxel_size_um])).encode())
    return h.hexdigest()[:20]


class BatchWalker:
    """The walker batches of one phase, walked on demand (:meth:`moments`) and kept between calls.

    Batches are spread round-robin over MPI ranks (batch b on rank ``b % size`` whatever the
    number of batches, so an extension continues each batch where it lives); the moment sums are
    gathered in batch order, so every rank holds the same array and takes the same decisions.
    With ``checkpoint_dir`` each batch's records and walker state are saved
    (``<key>/batch_<b>.npz``, key of the mask and the path-defining settings) after every advance
    and reused on rerun: finished work is never walked twice, and an extension resumes from the
    saved state.
    """

    def __init__(self, mask: np.ndarray, start_mask: np.ndarray, params: WalkSettings, voxel_size_um,
                 world: World | None = None, checkpoint_dir: str | Path | None = None):
        self.params, self.voxel_size_um = params, voxel_size_um
        self.world = world or get_world()
        dev = _device(params, self.world)
        self.backend = _backend(params, dev)
        self.mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).to(dev)
        self.start_flat = (start_mask.to(dev) if isinstance(start_mask, StartVoxels)
                           else StartVoxels(start_mask, dev))
        self.ck = None
        if checkpoint_dir is not None:
            self.ck = Path(checkpoint_dir) / _params_key(mask, params, voxel_size_um)
            self.ck.mkdir(parents=True, exist_ok=True)
        self.batches: dict[int, _Batch] = {}

    def _load(self, b: int) -> _Batch:
        bt = _new_batch(tuple(self.mask.shape), self.start_flat, b, self.params)
        f = self.ck / f"batch_{b:05d}.npz" if self.ck else None
        if f is not None and f.exists():
            with np.load(f, allow_pickle=False) as z:
                bt.sums = z["sums"]
                bt.state.voxel = torch.from_numpy(z["voxel"]).to(bt.state.voxel.device).contiguous()
                bt.state.frac = torch.from_numpy(z["frac"]).to(bt.state.frac.device).contiguous()
        return bt

    def _save(self, b: int, bt: _Batch) -> None:
        f = self.ck / f"batch_{b:05d}.npz"
        tmp = f.with_name(f.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, sums=bt.sums, voxel=bt.state.voxel.cpu().numpy(), frac=bt.state.frac.cpu().numpy())
        tmp.replace(f)

    def moments(self, n_batches: int, n_records: int) -> np.ndarray:
        """Moment sums of batches ``0..n_batches-1`` up to record ``n_records``: float64
        [n_batches, n_records + 1, 6], the same on every rank."""
        mine = {}
        for b in self.world.my_items(n_batches):
            bt = self.batches.get(b)
            if bt is None:
                bt = self.batches[b] = self._load(b)
            if len(bt.sums) < n_records + 1:
                advance_batch(self.mask, bt, n_records, self.params, self.voxel_size_um, self.backend)
                if self.ck is not None:
                    self._save(b, bt)
            mine[b] = bt.sums[: n_records + 1]
        merged = {}
        for part in self.world.allgather(mine):
            merged.update(part)
        return np.stack([merged[b] for b in range(n_batches)])


def walk_moments(mask: np.ndarray, start_mask: np.ndarray, params: WalkSettings, voxel_size_um,
                 world: World | None = None, checkpoint_dir: str | Path | None = None) -> np.ndarray:
    """Moment sums of a fixed walk (``n_batches`` batches, ``n_steps`` steps): float64
    [n_batches, n_records + 1, 6], same on every rank (see :class:`BatchWalker`)."""
    walker = BatchWalker(mask, start_mask, params, voxel_size_um, world, checkpoint_dir)
    return walker.moments(params.n_batches, params.n_records)


def _tau_of(ratio: np.ndarray, eps: float, eps_walk: float) -> np.ndarray:
    """tau from D_pore / D_bulk (any shape); NaN where the ratio is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ratio > 0, eps / (eps_walk * ratio), np.nan)


def _assess_axis(tau_cur: np.ndarray, tau_prev: np.ndarray, msd_start: float, period: float,
                 params: WalkSettings) -> dict[str, Any]:
    """Convergence of one axis from bootstrap replicates (index 0 = the full sample) of tau in the
    fit window and in the window before it, and the mean square displacement at the window's start.

    The drift test compares the two windows on the *same* resamples, so the tolerance is the
    bootstrap spread of the difference (walkers are shared, windows correlated), not of tau.
    """
    tau = float(tau_cur[0])
    rel_std = float(np.std(tau_cur[1:]) / tau) if np.isfinite(tau) else math.inf
    diff = tau_cur - tau_prev
    drift = float(diff[0] / tau) if np.all(np.isfinite(diff)) else math.inf
    tol = max(params.drift_sigma * float(np.std(diff[1:]) / tau), params.drift_floor) if math.isfinite(drift) \
        else 0.0
    travel = math.sqrt(max(msd_start, 0.0)) / period if period > 0 else None
    return {"tau_rel_std": rel_std, "drift": drift, "drift_tolerance": tol,
            "travel_periods": travel, "structure_period_voxels": float(period),
            "error_ok": rel_std <= params.target_rel_std, "drift_ok": abs(drift) <= tol,
            "travel_ok": travel is None or travel >= params.min_travel}


def analyse_moments(sums: np.ndarray, params: WalkSettings, voxel_size_um, eps: float, eps_walk: float,
                    percolating, period: float = 0.0) -> dict[str, Any]:
    """Einstein fit + bootstrap of batch moment sums (float64 [B, R+1, 6]) -> the tortuosity record.

    The fit window is ``[fit_start T, T]`` (T: last record); each percolating axis also gets its
    convergence measures (:func:`_assess_axis`: bootstrap error, drift against the window
    ``[fit_start^2 T, fit_start T]``, displacement in units of the structure ``period``, voxels).
    """
    n_rec = sums.shape[1] - 1
    t = record_times(params, n_rec).astype(np.float64)
    T = t[-1]
    n_per = params.per_batch
    d0 = bulk_diffusivity(params, voxel_size_um)
    norm = np.array([2 * math.sqrt(d0[i] * d0[j]) for i, j in PAIRS])  # slope of free walk (diag)
    f = params.fit_start
    sel = t >= f * T - 1e-9
    prev = (t >= f * f * T - 1e-9) & (t <= f * T + 1e-9)
    i0 = int(np.flatnonzero(sel)[0])
    rng = np.random.default_rng(params.seed)
    B = sums.shape[0]
    weights = np.vstack([np.ones(B), rng.multinomial(B, np.full(B, 1.0 / B), size=params.n_bootstrap)])
    m = np.einsum("kb,btc->ktc", weights, sums) / (weights.sum(1) * n_per)[:, None, None]  # [K, T, 6]
    ratio = _fit_slopes(t[sel], m[:, sel]) / norm           # D_pore / D_bulk, [K, 6]
    ratio_prev = _fit_slopes(t[prev], m[:, prev]) / norm
    axes = {}
    for a, name in enumerate(AXES):
        r = ratio[:, a]
        rec = {"eps": eps, "eps_walk": eps_walk, "percolating": bool(percolating[a]),
               "D_pore_over_D_bulk": float(r[0]), "D_pore_over_D_bulk_std": float(np.std(r[1:]))}
        if percolating[a] and r[0] > 0 and np.all(r > 0):
            rec.update({"D_eff_over_D_bulk": float(eps_walk * r[0]),
                        "D_eff_over_D_bulk_std": float(eps_walk * np.std(r[1:])),
                        "tau": float(eps / (eps_walk * r[0])), "tau_std": float(np.std(eps / (eps_walk * r[1:]))),
                        "tau_pore": float(1 / r[0]), "tau_pore_std": float(np.std(1 / r[1:]))})
            check = _assess_axis(_tau_of(r, eps, eps_walk), _tau_of(ratio_prev[:, a], eps, eps_walk),
                                 float(m[0, i0, a]), float(period), params)
            rec["linear_regime"] = check["drift_ok"]  # the old name of the window-agreement test
            rec["_check"] = check
        else:  # no spanning path: zero flux, infinite tau (reported as None + flag)
            rec.update({"D_eff_over_D_bulk": 0.0 if not percolating[a] else None, "D_eff_over_D_bulk_std": None,
                        "tau": None, "tau_std": None, "tau_pore": None, "tau_pore_std": None,
                        "linear_regime": None})
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


def _needs(res: dict) -> tuple[list[str], list[str]]:
    """Axes that need more walkers (bootstrap error) and more steps (drift or travel)."""
    more_w, more_t = [], []
    for name, rec in res["axes"].items():
        c = rec.get("_check")
        if c is None:
            continue
        if not c["error_ok"]:
            more_w.append(name)
        if not (c["drift_ok"] and c["travel_ok"]):
            more_t.append(name)
    return more_w, more_t


def _step_factor(res: dict, more_t: list[str], params: WalkSettings) -> float:
    """How much longer to walk: x2 for a drifting axis; for an axis short only of travel, the
    factor that brings it to ``min_travel`` (MSD grows ~linearly in t), +10 %, within [1.25, 2]."""
    factor = 1.25
    for a in more_t:
        c = res["axes"][a]["_check"]
        if not c["drift_ok"] or not c["travel_periods"]:
            return 2.0
        factor = max(factor, min(2.0, 1.1 * (params.min_travel / c["travel_periods"]) ** 2))
    return factor


def converge(walker: BatchWalker, params: WalkSettings, step_budget: int, voxel_size_um, eps: float,
             eps_walk: float, percolating, period: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Walk in blocks until every percolating axis is converged or the budgets are spent.

    After each block the gathered moments are analysed (:func:`analyse_moments`). Axes whose tau
    drifts between the last two fit windows double the steps; axes whose walkers have not
    travelled ``min_travel`` structure periods extend them as far as that needs
    (:func:`_step_factor`; records keep their spacing); axes whose bootstrap error is above
    ``target_rel_std`` add walker batches (to 1.1 times the walkers the error predicts,
    ``N (err / target)^2``). Decisions are made on gathered results, identically on every rank;
    walks are continued, never restarted.

    Returns:
        (analysis of the last block, {"n_steps", "n_walkers", "history"}) -- history lists each
        block's steps, walkers and the axes that asked for more.
    """
    n_rec, n_bat = params.n_records, params.n_batches
    rec_max = max(n_rec, int(step_budget * params.n_records // params.n_steps))
    bat_max = max(n_bat, int(params.max_walkers) // params.per_batch)
    history = []
    while True:
        res = analyse_moments(walker.moments(n_bat, n_rec), params, voxel_size_um, eps, eps_walk, percolating,
                              period)
        more_w, more_t = _needs(res)
        steps = int(record_times(params, n_rec)[-1])
        history.append({"n_steps": steps, "n_walkers": n_bat * params.per_batch,
                        "more_walkers": more_w, "more_steps": more_t})
        grow_t = bool(more_t) and n_rec < rec_max
        grow_w = bool(more_w) and n_bat < bat_max
        if not (grow_t or grow_w):
            return res, {"n_steps": steps, "n_walkers": n_bat * params.per_batch, "history": history}
        if grow_w:
            worst = max(res["axes"][a]["_check"]["tau_rel_std"] for a in more_w)
            n_bat = min(bat_max, max(n_bat + 1, math.ceil(1.1 * n_bat * (worst / params.target_rel_std) ** 2)))
        if grow_t:
            n_rec = min(math.ceil(n_rec * _step_factor(res, more_t, params)), rec_max)


def _finish_axes(res: dict, more_w: list[str], more_t: list[str]) -> None:
    """Per-axis ``converged`` and ``stop_reason`` from the last block's needs; private checks dropped."""
    for name, rec in res["axes"].items():
        c = rec.pop("_check", None)
        if c is None:
            rec["converged"] = None if not rec["percolating"] else False
            rec["stop_reason"] = None if not rec["percolating"] else "no_diffusion"
            continue
        rec.update({k: v for k, v in c.items() if not k.endswith("_ok")})
        rec["converged"] = name not in more_w and name not in more_t
        rec["stop_reason"] = ("converged" if rec["converged"] else
                              "step_budget" if name in more_t else "walker_budget")


def walk_tortuosity(mask: np.ndarray, params: WalkSettings, voxel_size_um=(1.0, 1.0, 1.0),
                    world: World | None = None, checkpoint_dir: str | Path | None = None,
                    clusters: ClusterInfo | None = None, where: str = "phase") -> dict[str, Any]:
    """Random-walk tortuosity of the phase ``mask`` (bool [Z, Y, X]), walked until converged
    (:func:`converge`) or the budgets are spent.

    Returns:
        dict with ``convention``, ``axes`` {z, y, x: {eps, D_eff_over_D_bulk, tau, tau_pore,
        tau_std, percolating, converged, stop_reason, drift, travel_periods, ...}},
        ``tensor_D_eff_over_D_bulk`` (3x3), ``walk`` (settings, steps and walkers used, the
        extension history, ``converged``), and private ``_msd_voxel2`` [R+1, 6] / ``_t_steps``
        [R+1] for the MSD file. An unconverged percolating axis is logged as a WARNING.

    Raises:
        InputError: the phase is empty, or the volume is too small for the walk.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise InputError(f"{where}: expected a 3-D volume, got shape {mask.shape}")
    if not mask.any():
        raise InputError(f"{where}: phase is absent (no voxel) so no tortuosity can be measured")
    step_budget = check_walk_fits(mask.shape, params, voxel_size_um, where)
    h = np.asarray(voxel_size_um, dtype=np.float64)
    if params.model == "lattice" and h.max() / h.min() > 1.001:
        # equal jump rates per axis would model an anisotropic medium, not anisotropic voxels
        raise InputError(f"{where}: the lattice walk needs cubic voxels, got voxel_size_um {list(h)}; "
                         "use microstructure.walk.model: offlattice")
    info = clusters or mask_clusters(mask, 6, world=world or get_world())  # slabs split over ranks
    eps = float(mask.mean())
    walk = {"model": params.model, "boundary": params.boundary,
            "step_length": params.step_length if params.model == "offlattice" else 1.0, "seed": params.seed,
            "budget": {"max_steps": step_budget, "max_walkers": max(params.per_batch * params.n_batches,
                                                                     params.max_walkers // params.per_batch
                                                                     * params.per_batch),
                       "target_rel_std": params.target_rel_std}}
    if not any(info.percolating):
        res = analyse_moments(np.zeros((params.n_batches, params.n_records + 1, 6)), params, voxel_size_um,
                              eps, 0.0, (False,) * 3)
        _finish_axes(res, [], [])
        walk.update(n_walkers=0, n_steps=0, converged=None, stop_reason=None,
                    skipped="no percolating cluster along any axis")
        res.update(walk=walk, percolation=info.fractions)
        return res
    eps_walk = float(info.start_mask.mean())  # a bool array or a StartVoxels
    walker = BatchWalker(mask, info.start_mask, params, voxel_size_um, world, checkpoint_dir)
    res, used = converge(walker, params, step_budget, voxel_size_um, eps, eps_walk, info.percolating,
                         structure_period(mask))
    more_w, more_t = used["history"][-1]["more_walkers"], used["history"][-1]["more_steps"]
    _finish_axes(res, more_w, more_t)
    for rec in res["axes"].values():  # one walk serves all axes; repeated per axis for readers of one axis
        rec.update(n_steps=used["n_steps"], n_walkers=used["n_walkers"])
    conv = [rec["converged"] for rec in res["axes"].values() if rec["percolating"]]
    reasons = sorted({rec["stop_reason"] for rec in res["axes"].values() if rec["converged"] is False})
    walk.update(n_walkers=used["n_walkers"], n_steps=used["n_steps"],
                fit_window_steps=[params.fit_start * used["n_steps"], used["n_steps"]],
                converged=all(conv), stop_reason="converged" if all(conv) else "+".join(reasons),
                history=used["history"])
    if not all(conv):
        bad = [f"{a} ({rec['stop_reason']})" for a, rec in res["axes"].items() if rec["converged"] is False]
        log.warning("%s: random-walk tortuosity NOT converged along %s after %d steps x %d walkers; "
                    "raise microstructure.walk.max_steps / max_walkers", where, ", ".join(bad),
                    used["n_steps"], used["n_walkers"])
    res.update(walk=walk, percolation=info.fractions)
    return res
