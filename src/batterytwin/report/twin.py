"""Twin figure: measured vs physics vs hybrid SOH for a few cells, and the error table.

Input: ``results/twin/{evaluation}.zarr`` from ``batterytwin twin`` -- arrays ``soh_true`` [n, L],
``soh_physics``/``soh_hybrid``/``soh_hybrid_lo``/``soh_hybrid_hi`` [n, H], ``life_*`` [n],
``status``/``evaluated`` int8 [n]; attributes ``cycles_per_point``, ``fit_cycles``,
``eol_level_percent``, ``interval_level``, ``cell_names``, ``metrics``. Only the cells drawn are read.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..store import open_group
from . import style

NEEDED = ("soh_true", "soh_physics", "soh_hybrid", "soh_hybrid_lo", "soh_hybrid_hi", "evaluated")
METHODS = (("physics", "physics fit"), ("hybrid", "hybrid twin"), ("diffusion", "diffusion model"),
           ("variance_model", "variance model"), ("random_forest", "random forest"))


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and v == v else "-"


def error_rows(metrics: dict) -> list[list[str]]:
    """Table rows: method, RUL RMSE (cycles), interval coverage, SOH-curve RMSE (%)."""
    rows = []
    for key, label in METHODS:
        m = metrics.get(key) or {}
        rows.append([label, _fmt(m.get("rul_rmse_cycles"), ".0f"), _fmt(m.get("interval_coverage"), ".2f"),
                     _fmt(m.get("soh_curve_rmse_percent"), ".2f")])
    return rows


def plot_twin(path: os.PathLike | str, max_cells: int = 6):
    """Panels of measured, physics and hybrid SOH (with the hybrid band) for up to ``max_cells``
    evaluated cells, and the error table of the store's metrics (same numbers as the JSON)."""
    g = open_group(path, "twin store", arrays=NEEDED)
    attrs = dict(g.attrs)
    cpp = float(attrs.get("cycles_per_point", 1))
    fit_cycles = float(attrs.get("fit_cycles", 0))
    level = float(attrs.get("interval_level", 0.9))
    eol = attrs.get("eol_level_percent")
    names = list(attrs.get("cell_names") or [])
    metrics = attrs.get("metrics", {})
    ev = np.flatnonzero(np.asarray(g["evaluated"][:], bool))
    pool = ev if ev.size else np.arange(int(g["evaluated"].shape[0]))
    cells = pool[np.unique(np.linspace(0, pool.size - 1, min(pool.size, max_cells)).round().astype(int))] \
        if pool.size else pool
    ncol = min(3, max(1, len(cells)))
    nrow = max(1, math.ceil(len(cells) / ncol))
    drawn = {}
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 1.8 * nrow + 1.6)
        grid = fig.add_gridspec(nrow + 1, ncol, height_ratios=[1.0] * nrow + [0.75])
        for k, i in enumerate(cells):
            ax = fig.add_subplot(grid[k // ncol, k % ncol])
            i = int(i)
            true = np.asarray(g["soh_true"][i], np.float64)
            phys, hyb = (np.asarray(g[a][i], np.float64) for a in ("soh_physics", "soh_hybrid"))
            lo, hi = (np.asarray(g[a][i], np.float64) for a in ("soh_hybrid_lo", "soh_hybrid_hi"))
            cyc = np.arange(phys.size) * cpp
            ax.fill_between(cyc, lo, hi, color="#0072B2", alpha=0.2, lw=0, label=f"hybrid {level:.0%} band")
            ax.plot(cyc, phys, color="#D55E00", lw=1.0, label="physics")
            ax.plot(cyc, hyb, color="#0072B2", lw=1.0, label="hybrid")
            ax.plot(np.arange(true.size) * cpp, true, color="black", lw=0.9, ls="--", label="measured")
            ax.axvline(fit_cycles, color="0.5", lw=0.6, ls=":")
            if eol is not None:
                ax.axhline(float(eol), color="0.6", lw=0.6, ls=":")
            finite = true[np.isfinite(true)]
            if finite.size:
                ax.set_ylim(min(finite.min(), float(eol or finite.min())) - 5, max(finite.max(), 100) + 2)
                ax.set_xlim(0, max(cyc[-1] if np.isfinite(hyb).any() else 0, true.size * cpp) * 1.0)
            life = {a: float(g[a][i]) for a in ("life_true", "life_physics", "life_hybrid") if a in g}
            ax.set_title(f"{names[i] if i < len(names) else i}: life {life.get('life_true', float('nan')):.0f}, "
                         f"hybrid {life.get('life_hybrid', float('nan')):.0f}", fontsize=7)
            ax.set_xlabel("cycle")
            if k % ncol == 0:
                ax.set_ylabel("SOH (%)")
            if k == 0:
                ax.legend(loc="lower left", fontsize=6, frameon=True, framealpha=0.9, edgecolor="none")
            drawn[i] = {"true": true, "physics": phys, "hybrid": hyb}
        style.table(fig.add_subplot(grid[nrow, :]), error_rows(metrics),
                    ["method", "RUL RMSE (cycles)", f"{level:.0%} interval coverage", "SOH-curve RMSE (%)"])
        fig.suptitle(f"hybrid digital twin: {metrics.get('n_evaluated', '?')} cells, {metrics.get('eol_rule', '?')} rule, "
                     f"fit on the first {fit_cycles:.0f} cycles")
    fig.drawn = drawn
    return fig
