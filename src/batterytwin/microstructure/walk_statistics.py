"""Tortuosity from walker moments: the Einstein fit, the bootstrap over batches, the convergence
measures of each axis.

The batch moment sums ``<d_i d_j>(t)`` are fitted with ``<d_i d_j> = 2 D_ij t + c`` over the
long-time window ``[fit_start * T, T]``; with ``D_bulk`` the free-space value of the same walk
(:func:`~.walk_records.bulk_diffusivity`):

* ``tau_pore = D_bulk / D_pore`` (the walkers' own diffusivity; what pytrax reports),
* ``D_eff / D_bulk = eps_walk * D_pore / D_bulk`` (``eps_walk``: volume fraction of the clusters
  the walkers explore), and ``tau = eps * D_bulk / D_eff`` with ``eps`` the phase's whole volume
  fraction -- the TauFactor convention (Cooper et al., SoftwareX 2016), directly comparable to a
  steady-state solve (isolated clusters count in ``eps`` but carry no flux).

The statistical uncertainty is a bootstrap over batches (walkers are independent). A direction
without a percolating cluster has ``tau = None`` and ``percolating = False``.

Example::

    res = analyse_moments(sums, params, (1.0, 1.0, 1.0), eps=0.4, eps_walk=0.38,
                          percolating=(True, True, False), period=6.0)
    res["axes"]["z"]["tau"], res["axes"]["z"]["tau_std"], res["axes"]["z"]["_check"]["drift_ok"]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .clusters import AXES
from .config import WalkSettings
from .walk_records import PAIRS, bulk_diffusivity, record_times

CONVENTION = "tau = eps * D_bulk / D_eff (TauFactor)"


def _fit_slopes(t: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Least-squares slopes of ``m`` [..., T, C] against ``t`` [T] (with intercept)."""
    tc = t - t.mean()
    return np.einsum("t,...tc->...c", tc, m) / (tc @ tc)


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
