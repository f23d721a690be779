"""Scaling figure: cost and peak memory of each stage vs voxels, from ``bench/chain.py``'s JSON.

Input: ``bench/results/chain-cpu-<date>.json`` with top-level ``stages``: {stage: {"sizes": {edge:
{"voxels", "wall_s", "peak_rss_mb", ...}}, "exponent": float or null}}. The report draws it only
when such a file exists (:func:`latest_bench`; the workflow skips the figure otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from . import style

BENCH_PATTERN = re.compile(r"chain-cpu-(\d{4}-\d{2}-\d{2})\.json")
_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#332288"]


def latest_bench(folder: Path | str) -> Path | None:
    """The newest ``chain-cpu-<date>.json`` in ``folder`` (by the date in its name), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((m.group(1), p) for p in folder.iterdir() if (m := BENCH_PATTERN.fullmatch(p.name)))
    return found[-1][1] if found else None


def series(bench: Mapping[str, Any], where: str = "bench JSON") -> dict[str, dict[str, np.ndarray]]:
    """Per stage with at least two sizes: voxels, wall_s and peak_rss_mb sorted by voxels."""
    stages = bench.get("stages")
    if not isinstance(stages, Mapping) or not stages:
        raise InputError(f"{where}: no 'stages' (not a bench/chain.py result?)")
    out = {}
    for name, rec in stages.items():
        try:
            rows = sorted((float(r["voxels"]), float(r["wall_s"]), float(r["peak_rss_mb"]))
                          for r in rec["sizes"].values())
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(f"{where}: stages.{name}.sizes needs voxels, wall_s and peak_rss_mb per size") from None
        if len(rows) >= 2:
            v, t, m = (np.array(c) for c in zip(*rows))
            out[name] = {"voxels": v, "wall_s": t, "peak_rss_mb": m}
    if not out:
        raise InputError(f"{where}: no stage was measured at two sizes or more")
    return out


def plot_scaling(bench: Mapping[str, Any], where: str = "bench JSON"):
    """Two log-log panels, one line per stage: wall time and peak RSS vs voxels (with a linear guide).

    The legend gives each stage's fitted exponent (``stages.<name>.exponent``) where there is one.
    """
    data = series(bench, where)
    stages = bench["stages"]
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 2.8)
        ax_t, ax_m = fig.subplots(1, 2)
        for i, (name, s) in enumerate(data.items()):
            e = stages[name].get("exponent")
            label = f"{name} (n^{e:.2f})" if isinstance(e, (int, float)) else f"{name} (fixed cost)"
            colour = _COLOURS[i % len(_COLOURS)]
            ax_t.plot(s["voxels"], s["wall_s"], marker="o", color=colour, label=label)
            ax_m.plot(s["voxels"], s["peak_rss_mb"], marker="o", color=colour, label=name)
        v = np.array(sorted({x for s in data.values() for x in s["voxels"]}))
        top = max(float(s["wall_s"].max()) for s in data.values())
        ax_t.plot(v, top * v / v[-1], color="0.5", ls=":", lw=0.8, label="linear")
        ax_t.set_ylabel("wall time (s)")
        ax_m.set_ylabel("peak RSS per process (MB)")
        for ax in (ax_t, ax_m):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("voxels")
        ax_m.legend(*ax_t.get_legend_handles_labels(), fontsize=5.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
        reduced = bench.get("reduced_work") or []
        host = bench.get("host", {})
        ax_t.set_title("cost per stage" + (" (reduced work: see JSON)" if reduced else ""))
        ax_m.set_title(f"memory per stage ({host.get('cpus', '?')} CPUs)")
        fig.lines_by_stage = {name: line for name, line in zip(data, ax_t.get_lines())}
    return fig
