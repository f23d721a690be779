"""Random-walk tortuosity of one phase, walked until converged: the convergence loop and the entry
:func:`walk_tortuosity`.

Walkers start uniformly in the phase's percolating clusters (6-connectivity), walk in batches
(:mod:`.walk_batches`: lattice or off-lattice, :mod:`.walk` / :mod:`.ckernel`; spread over MPI
ranks, checkpointed) and record the second moments of their unwrapped displacement; the Einstein
fit and the bootstrap over batches turn them into tau per axis and the diffusion tensor
(:mod:`.walk_statistics`, which states the convention).

The walk is converged by default (:func:`converge`): it runs in blocks and, per percolating axis,
checks the bootstrap error of tau against ``target_rel_std``, the drift of tau between the fit
window and the window before it (on the same bootstrap resamples), and the displacement reached
in units of the structure period (:func:`structure_period`); it doubles or extends the steps and
adds walker batches until every axis passes or the budgets (``max_steps``, ``max_walkers``) are
spent. Unconverged axes say ``converged: false`` with a ``stop_reason`` and are logged as a
WARNING. Why and how it was validated (against TauFactor on PoreSpy media, and the comb's exact
values): docs/microstructure.md, "Convergence".

Example::

    res = walk_tortuosity(mask, WalkSettings())                 # converged within the default budgets
    res["axes"]["z"]["tau"], res["axes"]["z"]["tau_std"], res["axes"]["z"]["converged"]
    walk_tortuosity(mask, WalkSettings(n_walkers=4096, n_steps=2000, max_walkers=4096, max_steps=2000))  # fixed
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed import World, get_world
from ..errors import InputError
from .clusters import AXES, ClusterInfo
from .components import mask_clusters
from .config import WalkSettings
from .walk_batches import BatchWalker
from .walk_records import bulk_diffusivity, record_times
from .walk_statistics import analyse_moments

log = logging.getLogger(__name__)


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

    After each block the gathered moments are analysed (:func:`.walk_statistics.analyse_moments`). Axes whose tau
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
