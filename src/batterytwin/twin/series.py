"""The time series of one cell: refits on growing windows and the forecast after each.

Example::

    series = time_series(run, Cells(test_curves), settings)   # run: forecast_split's result
    series["series_window_cycles"], series["series_life"], series["series_life_lo"]
"""

from __future__ import annotations

import numpy as np

from ..cycling.conformal import conformal_interval
from ..cycling.life import first_crossing
from .correction import cell_features
from .fitting import OK, Cells
from .hybrid import hybrid_of
from .physics import draw_params, fit_cell


def time_series(run: dict, test: Cells, settings) -> dict[str, np.ndarray]:
    """Refits of one evaluated cell on growing windows (warm start from the previous fit) and its forecasts.

    Windows: from the fit window evenly to the last point before the measured curve reaches the
    end-of-life level (or the end of the record).
    """
    model, corr, fits, k_fit = run["model"], run["correction"], run["fits"], run["k_fit"]
    cs, cpp = test.cs, test.cs.cycles_per_point
    ok = np.flatnonzero(fits.status == OK)
    if not settings.series.enabled or len(ok) == 0:
        return {}
    i = int(ok[min(settings.series.cell, len(ok) - 1)])
    n = int(cs.valid_len[i])
    below = np.flatnonzero(cs.soh[i, :n] <= run["level_eol"])
    stop = int(below[0]) if below.size else n  # windows end before the measured end of life
    ends = np.unique(np.linspace(k_fit, max(k_fit, stop - 1), settings.series.windows).round().astype(int))
    H = run["arrays"]["soh_physics"].shape[1]
    grid = np.arange(H) * float(cpp)
    q = [(1 - settings.level) / 2, 1 - (1 - settings.level) / 2]
    rng = np.random.default_rng([settings.seed, 2])
    x0 = fits.results[i].params
    rows = {k: [] for k in ("series_window_cycles", "series_params", "series_physics", "series_hybrid", "series_lo",
                            "series_hi", "series_life", "series_life_lo", "series_life_hi", "series_physics_life",
                            "series_physics_life_lo", "series_physics_life_hi", "series_fit_seconds", "series_nfev")}
    for end in ends:
        r = fit_cell(model, grid[:end], cs.soh[i, :end], float(test.stress[i]), x0=x0, where=cs.names[i])
        if not r.ok:
            continue
        x0 = r.params
        draws = draw_params(model, r, settings.param_draws, rng)
        phys = model.predict(draws, grid, float(test.stress[i]))
        feats = cell_features(cs.qmatrix[i:i + 1], r.params[None])[0]
        hyb = hybrid_of(phys, feats, corr, end, cpp)
        lives, _ = first_crossing(hyb, run["level_eol"], end, cpp)
        rows["series_window_cycles"].append((end - 1) * cpp)
        rows["series_params"].append(r.params)
        rows["series_physics"].append(phys[0])
        rows["series_hybrid"].append(hyb[0])
        lo, hi = np.quantile(hyb, q, axis=0)
        rows["series_lo"].append(lo - run["q_curve"])
        rows["series_hi"].append(hi + run["q_curve"])
        rows["series_life"].append(lives[0])
        l_lo, l_hi = conformal_interval(*np.quantile(lives, q), run["q_life"], float((end - 1) * cpp))
        rows["series_life_lo"].append(l_lo)
        rows["series_life_hi"].append(l_hi)
        p_lives, _ = first_crossing(phys, run["level_eol"], end, cpp)
        rows["series_physics_life"].append(p_lives[0])
        p_lo, p_hi = np.quantile(p_lives, q)
        rows["series_physics_life_lo"].append(p_lo)
        rows["series_physics_life_hi"].append(p_hi)
        rows["series_fit_seconds"].append(r.seconds)
        rows["series_nfev"].append(r.nfev)
    out = {k: np.asarray(v, np.float64) for k, v in rows.items() if v}
    out["series_cell"] = np.array([i])
    return out
