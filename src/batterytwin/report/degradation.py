"""Degradation-model figures: sampled SOH curves with their interval against the truth (the diffusion
model), and predicted vs true cycle life (RUL) of the default RUL predictor with every point
predictor's score and the best one named.

Input: ``degradation.zarr`` written by ``batterytwin.degradation.predict`` -- arrays
``soh_samples`` [n, S, L], ``soh_pred``/``soh_true`` [n, L], ``life_pred``/``life_lo``/``life_hi``/
``life_true`` [n] (the diffusion model), ``life_stack``/``_lo``/``_hi`` [n] (the stack, when it is the
default predictor), ``censored``/``evaluated`` int8 [n]; attributes ``cycles_per_point``,
``interval_level``, ``threshold_percent``, ``cell_names``, ``metrics`` (``model``: the default
predictor, ``diffusion``, the baselines, ``best_point_predictor``; stores written by an older batterytwin hold
only ``model``, the diffusion model). Only the cells drawn are read.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any

import numpy as np

from ..store import open_group
from . import style

NEEDED = ("soh_samples", "soh_true", "life_pred", "life_lo", "life_hi", "life_true")


def open_predictions(path: os.PathLike | str):
    """The degradation store as a zarr group, checked for the arrays the figures read."""
    return open_group(path, "degradation store", arrays=NEEDED)


def _flags(g, name: str, n: int, default: int) -> np.ndarray:
    return np.asarray(g[name][:], dtype=bool) if name in g else np.full(n, bool(default))


def pick_cells(g, max_cells: int) -> np.ndarray:
    """Up to ``max_cells`` cells, evaluated ones first, spread over the index range."""
    n = int(g["life_true"].shape[0])
    ev = np.flatnonzero(_flags(g, "evaluated", n, 1))
    pool = ev if ev.size else np.arange(n)
    take = np.unique(np.linspace(0, pool.size - 1, min(pool.size, max_cells)).round().astype(int))
    return pool[take]


def plot_predictions(path: os.PathLike | str, max_cells: int = 6):
    """One panel per cell: true SOH, mean predicted SOH, and the central ``interval_level`` band
    of the sampled curves (pointwise quantiles over the samples still running at each point),
    drawn up to the last cycle of the truth; a censored cell (truth ends before end of life) is
    marked where its truth ends, and its true life reads "≥".

    Returns:
        the figure; ``fig.drawn`` = {cell: {"lo", "hi", "mean", "true" (full arrays), "end" (points
        drawn), "censored"}}.
    """
    g = open_predictions(path)
    attrs = dict(g.attrs)
    level = float(attrs.get("interval_level", 0.9))
    cpp = float(attrs.get("cycles_per_point", 1))
    thr = attrs.get("threshold_percent")
    names = list(attrs.get("cell_names") or [])
    cells = pick_cells(g, max_cells)
    censored = _flags(g, "censored", int(g["life_true"].shape[0]), 0)
    ncol = 2 if len(cells) == 4 else min(3, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    q_lo, q_hi = (1 - level) / 2, 1 - (1 - level) / 2
    drawn: dict[int, dict[str, np.ndarray]] = {}
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 1.7 * nrow + 0.5)
        axes = np.atleast_1d(fig.subplots(nrow, ncol, sharey=True, squeeze=False)).ravel()
        for ax, i in zip(axes, cells):
            samples = np.asarray(g["soh_samples"][int(i)], dtype=np.float64)      # [S, L]: one cell
            true = np.asarray(g["soh_true"][int(i)], dtype=np.float64)
            cyc = np.arange(samples.shape[-1]) * cpp
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after every sample ended
                lo = np.nanquantile(samples, q_lo, axis=0)
                hi = np.nanquantile(samples, q_hi, axis=0)
                mean = np.asarray(g["soh_pred"][int(i)], dtype=np.float64) if "soh_pred" in g \
                    else np.nanmean(samples, axis=0)
            # the prediction is drawn where the truth is known, so that the two compare point by point
            known = np.flatnonzero(np.isfinite(true))
            end = int(known[-1]) + 1 if known.size else len(cyc)
            ax.fill_between(cyc[:end], lo[:end], hi[:end], color="#0072B2", alpha=0.25, lw=0,
                            label=f"{level:.0%} interval")
            ax.plot(cyc[:end], mean[:end], color="#0072B2", label="predicted (mean)")
            ax.plot(cyc, true, color="black", lw=1.0, ls="--", label="true")
            if thr is not None:
                ax.axhline(float(thr), color="0.6", lw=0.6, ls=":")
            t, lp, l0, l1 = (float(g[k][int(i)]) for k in ("life_true", "life_pred", "life_lo", "life_hi"))
            cens = bool(censored[int(i)])
            if cens and known.size:  # the truth stops before end of life: its life is only a lower bound
                ax.axvline(cyc[end - 1], color="#D55E00", lw=0.8, ls="-.", label="censored: truth ends")
            ax.set_title(f"{names[i] if i < len(names) else f'cell {i}'}: life {lp:.0f} "
                         f"[{l0:.0f}, {l1:.0f}] vs {'≥ ' if cens else ''}{t:.0f}", fontsize=7)
            ax.set_xlabel("cycle")
            drawn[int(i)] = {"lo": lo, "hi": hi, "mean": mean, "true": true, "end": end, "censored": cens}
        for ax in axes[len(cells):]:
            ax.set_axis_off()
        for r in range(nrow):
            axes[r * ncol].set_ylabel("SOH (%)")
        handles = {lab: h for ax in axes for h, lab in zip(*ax.get_legend_handles_labels())}
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles))
        metrics = attrs.get("metrics", {})
        m = metrics.get("diffusion", metrics.get("model", {}))  # older stores: "model" was the diffusion model
        extra = (f"; SOH-curve RMSE {m['soh_curve_rmse_percent']:.2f} %"
                 if isinstance(m.get("soh_curve_rmse_percent"), (int, float)) else "")
        fig.suptitle(f"diffusion model: sampled SOH curves vs truth ({len(cells)} cells){extra}")
    fig.drawn = drawn
    return fig


LABELS = {"diffusion": "diffusion model", "variance_model": "variance model", "random_forest": "random forest",
          "mean_curve": "mean curve", "stack": "stack"}
RANKED = ("model", "diffusion", "variance_model", "random_forest", "mean_curve")  # predict.POINT_PREDICTORS


def _number(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def default_predictor(g, metrics: dict) -> tuple[str, str, str, str]:
    """(name of the default RUL predictor, its point / lo / hi array names) of a store: the stack's
    ``life_stack*`` when the metrics' ``model`` is the stack, else the diffusion model's ``life_*``."""
    name = metrics.get("model", {}).get("name", "diffusion")
    if name == "stack" and "life_stack" in g:
        return "stack", "life_stack", "life_stack_lo", "life_stack_hi"
    return "diffusion", "life_pred", "life_lo", "life_hi"


def score_lines(metrics: dict) -> list[str]:
    """The text beside the RUL figure: every point predictor's RUL RMSE, the best one marked, and the
    stacked members with their weight and their own RMSE (the stack contains the baselines it names)."""
    m = metrics.get("model", {})
    name = m.get("name", "diffusion")
    best = metrics.get("best_point_predictor")
    lines = ["RUL RMSE (cycles), held-out", "uncensored cells:"]
    for key in RANKED:
        if key not in metrics or (key == "diffusion" and name == "diffusion"):
            continue  # the fallback: "model" is the diffusion model
        v = metrics[key].get("rul_rmse_cycles")
        label = f"{LABELS.get(name, name)} (default)" if key == "model" else LABELS[key]
        lines.append(f"{'*' if key == best else ' '} {label:<26} {v:6.0f}" if _number(v) else f"  {label:<26}    n/a")
    if best is not None:
        who = f"{LABELS.get(name, name)} (default)" if best == "model" else LABELS.get(best, best)
        lines += ["", f"best point predictor: {who}"]
    members = m.get("members") or {}
    if members:
        lines += ["", "stack members: weight, RMSE"]
        w = max(len(k) for k in members)
        for k, v in sorted(members.items(), key=lambda kv: -kv[1].get("weight", 0)):
            r = v.get("rul_rmse_cycles")
            lines.append(f"  {k:<{w}} {v.get('weight', float('nan')):4.2f} {r:6.0f}" if _number(r)
                         else f"  {k:<{w}} {v.get('weight', float('nan')):4.2f}    n/a")
        if m.get("contains_baselines"):
            lines.append(f"  (contains the baselines: {', '.join(m['contains_baselines'])})")
    if m.get("reason"):
        lines += ["", "default predictor is the diffusion model:"] + textwrap.wrap(str(m["reason"]), 44,
                                                                                break_long_words=False)
    return lines


def not_informative(true: np.ndarray, pred: np.ndarray) -> str | None:
    """Why a predicted-vs-true plot of these lives would carry no information, or None when it does:
    no finite true life, or every cell with the same true and predicted life (the sweep stopped
    every cell at the same cycle, e.g. its simulated horizon, before any reached end of life)."""
    ok = np.isfinite(true) & np.isfinite(pred)
    if not ok.any():
        return "no cell has a finite true and predicted life: nothing to compare"
    values = np.unique(np.concatenate([true[ok], pred[ok]]))
    if values.size == 1:
        return (f"every cell has true and predicted life {values[0]:g} cycles: the simulated cycles end before "
                "the cells reach end of life, so this horizon carries no life information (simulate more "
                "cycles, cellsim.n_cycles, or lower degradation.threshold)")
    return None


def plot_rul(path: os.PathLike | str):
    """Predicted (with the ``interval_level`` interval) vs true cycle life of the default RUL predictor
    (metrics ``model``: the stack, or the diffusion model's median), every cell; beside it every point
    predictor's RUL RMSE with the best one named, and the stack's members with weight and RMSE.

    Censored cells (truth only a lower bound) are drawn hollow; the RMSE and interval coverage in
    the title are those of the store's ``metrics`` (computed by the degradation stage on the
    evaluated, uncensored cells), so the figure shows the same numbers as the metrics JSON.
    """
    g = open_predictions(path)
    attrs = dict(g.attrs)
    metrics = attrs.get("metrics", {})
    level = float(attrs.get("interval_level", 0.9))
    name, k_pred, k_lo, k_hi = default_predictor(g, metrics)
    true = np.asarray(g["life_true"][:], dtype=np.float64)
    pred = np.asarray(g[k_pred][:], dtype=np.float64)
    lo = np.asarray(g[k_lo][:], dtype=np.float64)
    hi = np.asarray(g[k_hi][:], dtype=np.float64)
    n = true.size
    censored = _flags(g, "censored", n, 0)
    evaluated = _flags(g, "evaluated", n, 1)
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 3.4)
        ax, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
        groups = [("held out", evaluated & ~censored, "#0072B2", "o", "full"),
                  ("held out, censored", evaluated & censored, "#0072B2", "o", "none"),
                  ("training", ~evaluated, "0.55", "s", "full")]
        informative = not_informative(true, pred) is None
        if informative:
            for label, sel, colour, marker, fill in groups:
                if not sel.any():
                    continue
                yerr = np.vstack([np.clip(pred[sel] - lo[sel], 0, None), np.clip(hi[sel] - pred[sel], 0, None)])
                ax.errorbar(true[sel], pred[sel], yerr=yerr, fmt=marker, color=colour, ms=3.5, elinewidth=0.6,
                            capsize=1.5, fillstyle=fill, label=label)
            finite = np.concatenate([true, lo, hi])
            finite = finite[np.isfinite(finite)]
            lo_, hi_ = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            pad = 0.08 * (hi_ - lo_ or 1.0)
            lims = (max(0.0, lo_ - pad), hi_ + pad)
            ax.plot(lims, lims, color="0.3", lw=0.7, ls="--", label="ideal")
            ax.set_xlim(*lims)
            ax.set_ylim(*lims)
            ax.set_aspect("equal")
            ax.set_xlabel("true cycle life (cycles)")
            what = "stack" if name == "stack" else "median"
            ax.set_ylabel(f"predicted cycle life ({what}, {level:.0%} interval)")
            ax.legend(loc="upper left")
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "\n".join(textwrap.wrap(not_informative(true, pred), 48)), transform=ax.transAxes,
                    ha="center", va="center", fontsize=7)
        m: dict[str, Any] = metrics.get("model", {})
        parts = [f"{LABELS[name]}" + (" (default predictor)" if "name" in m else "")]
        if _number(m.get("rul_rmse_cycles")):
            parts.append(f"RUL RMSE {m['rul_rmse_cycles']:.1f} cycles")
        if _number(m.get("interval_coverage")):
            parts.append(f"coverage {m['interval_coverage']:.0%}")
        if len(parts) == 1 and metrics.get("n_evaluated") == 0:
            parts.append(f"no uncensored held-out cell ({metrics.get('n_censored', '?')} censored): no RUL RMSE")
        ax.set_title("\n".join(textwrap.wrap("; ".join(parts), 60)), fontsize=7)
        side.set_axis_off()
        side.text(0.0, 1.0, "\n".join(score_lines(metrics)), transform=side.transAxes, va="top", ha="left",
                  family="monospace", fontsize=6.5)
    fig.points = (true, pred)
    fig.predictor = name
    fig.informative = informative
    return fig
