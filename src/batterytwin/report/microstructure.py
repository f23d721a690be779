"""Microstructure figures: random-walk MSD curves with their linear fit and the tortuosity tensor,
a table of the measured quantities, and lithium growth over the frames of a time series.

Inputs: ``microstructure.json`` (schema ``batterytwin.microstructure/1``, docs/interfaces.md) and
``msd.npz`` (mean squared displacement per phase and axis, read by :func:`read_msd`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from . import style

AXES = ("z", "y", "x")


DIAGONAL = ("zz", "yy", "xx")


def read_msd(path: os.PathLike | str) -> dict[str, dict[str, np.ndarray]]:
    """MSD curves of ``msd.npz`` (microstructure stage) -> ``{key: {"t", "msd", "free_slope"}}``.

    File layout (``allow_pickle=False``): ``components`` (names of the moment columns, e.g.
    zz yy xx zy zx yx) and per ``<region>.<phase>`` key (``volume.<phase>`` for whole-volume
    walks, ``positive_electrode.<electrolyte>``/``separator.<electrolyte>`` for the cell regions):
    ``.t_steps`` [T], ``.msd_um2`` [T, C] and ``.free_slope_um2_per_step`` [3].

    Returns:
        per key: ``t`` [T] (steps), ``msd`` [T, 3] (z, y, x diagonal, µm²), ``free_slope`` [3]
        (µm²/step of an unobstructed walk).
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    with data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    comps = [str(c) for c in arrays.get("components", np.array(["zz", "yy", "xx", "zy", "zx", "yx"]))]
    if not all(c in comps for c in DIAGONAL):
        raise InputError(f"{path}: 'components' {comps} lacks the diagonal moments zz, yy, xx")
    cols = [comps.index(c) for c in DIAGONAL]
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        if not name.endswith(".msd_um2"):
            continue
        key = name[: -len(".msd_um2")]
        t = arrays.get(f"{key}.t_steps")
        if t is None:
            raise InputError(f"{path}: '{name}' has no time axis '{key}.t_steps'")
        msd = value.astype(np.float64)
        t = t.astype(np.float64).ravel()
        if msd.ndim != 2 or msd.shape != (t.size, len(comps)):
            raise InputError(f"{path}: '{name}' must be [{t.size}, {len(comps)}], got {list(msd.shape)}")
        free = arrays.get(f"{key}.free_slope_um2_per_step")
        out[key] = {"t": t, "msd": msd[:, cols],
                    "free_slope": free.astype(np.float64).ravel()[:3] if free is not None else np.full(3, np.nan)}
    if not out:
        raise InputError(f"{path}: no MSD curves ('<region>.<phase>.msd_um2' arrays) in {sorted(arrays)}")
    return out


def linear_fit(t: np.ndarray, msd: np.ndarray, start: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares line per axis over ``t >= start`` (default: the second half, the long-time regime).

    Returns:
        (slope [3], intercept [3], start).
    """
    start = float(t[len(t) // 2]) if start is None else float(start)
    sel = t >= start
    if sel.sum() < 2:
        sel = np.ones_like(t, bool)
    slope, intercept = np.empty(3), np.empty(3)
    for i in range(3):
        slope[i], intercept[i] = np.polyfit(t[sel], msd[sel, i], 1)
    return slope, intercept, start


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def tortuosity_record(micro: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The JSON tortuosity record of an MSD key: ``volume.<phase>`` -> ``tortuosity[<phase>]``,
    ``<region>.<phase>`` -> ``cell[<region>].tortuosity_detail``."""
    region, _, phase = key.partition(".")
    if region == "volume":
        return (micro.get("tortuosity") or {}).get(phase)
    return ((micro.get("cell") or {}).get(region) or {}).get("tortuosity_detail")


def panel_order(micro: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """Cell regions first (electrode, separator: what PyBaMM gets), then whole-volume phases with
    the electrolyte first."""
    elec = (micro.get("cell") or {}).get("electrolyte_phase")
    rank = {"positive_electrode": 0, "separator": 1}

    def order(k: str):
        region, _, phase = k.partition(".")
        return (rank.get(region, 2 if region != "volume" else 3), phase != elec, k)

    return sorted(keys, key=order)


# The walk's stop reasons (``stop_reason`` of an axis record) in plain words
STOP_REASONS = {"step_budget": "no: steps ran out", "walker_budget": "no: walkers ran out",
                "no_diffusion": "no: walkers stood still"}


def convergence_text(axis: Mapping[str, Any]) -> str:
    """The "converged" cell of an axis: yes, n/a (not percolating), or no with the reason in words."""
    conv = axis.get("converged", axis.get("linear_regime"))  # older records: only the linear-regime check
    if conv is False and axis.get("stop_reason") in STOP_REASONS:
        return STOP_REASONS[axis["stop_reason"]]
    return _fmt(conv)


def percolates(rec: Mapping[str, Any], curves: Mapping[str, np.ndarray]) -> bool:
    """Whether a walk has any diffusion to draw: an axis marked percolating, or (no record) a
    mean squared displacement above zero."""
    axes = rec.get("axes") or {}
    if axes:
        return any(a.get("percolating") for a in axes.values())
    return bool(np.nanmax(curves["msd"], initial=0.0) > 0)


def tortuosity_rows(rec: Mapping[str, Any], with_taufactor: bool) -> list[list[str]]:
    """Per axis: ε, D_eff/D_bulk, τ, σ(τ), [TauFactor τ], percolating, converged, tensor row."""
    axes_res = rec.get("axes") or {}
    tensor = rec.get("tensor_D_eff_over_D_bulk")
    rows = []
    for i, a in enumerate(AXES):
        e = axes_res.get(a, {})
        t_row = [_fmt(tensor[i][j]) for j in range(3)] if tensor else ["n/a"] * 3
        tf = [_fmt(e.get("tau_taufactor"))] if with_taufactor else []
        rows.append([a, _fmt(e.get("eps")), _fmt(e.get("D_eff_over_D_bulk")), _fmt(e.get("tau")),
                     _fmt(e.get("tau_std"), 2), *tf, _fmt(e.get("percolating")), convergence_text(e), *t_row])
    return rows


def plot_tortuosity(micro: Mapping[str, Any], msd: Mapping[str, Mapping[str, np.ndarray]],
                    keys: Sequence[str] | None = None, max_panels: int = 3):
    """Per walk (cell region or whole-volume phase): MSD vs time per axis with the Einstein fit over
    the stage's fit window, the free-space MSD, and the table of eps, D_eff/D_bulk, tau per axis
    and the D_eff/D_bulk tensor from ``microstructure.json``.

    A phase that percolates along no axis gets no curves, only the statement that it does not
    percolate; the TauFactor column appears only when the stage solved TauFactor for the walk.

    Args:
        micro: parsed ``microstructure.json``; msd: :func:`read_msd` output.
        keys: MSD keys to draw (default: :func:`panel_order`, first ``max_panels``).
    Returns:
        the figure; ``fig.fits`` = {key: (slope [3], intercept [3], start)} as drawn (percolating
        walks only), ``fig.ratios`` = {key: slope / free-space slope} (= D_pore/D_bulk per axis),
        ``fig.tables`` = {key: table rows}.
    """
    if not msd:
        raise InputError("msd.npz: no MSD curves")
    keys = [k for k in (keys or panel_order(micro, list(msd))) if k in msd][:max_panels]
    if not keys:
        raise InputError(f"msd.npz: none of the requested curves is present (have {sorted(msd)})")
    fits, ratios, tables = {}, {}, {}
    notes = ["row i, column T_j: component ij of the D_eff/D_bulk tensor", "n/a: the axis does not percolate"]
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 2.0 * len(keys) + 0.5)
        grid = fig.add_gridspec(len(keys) + 1, 2, width_ratios=[1, 2.4], height_ratios=[2.0] * len(keys) + [0.3])
        for r, key in enumerate(keys):
            rec = tortuosity_record(micro, key) or {}
            curves = msd[key]
            region, _, phase = key.partition(".")
            where = "whole volume" if region == "volume" else region.replace("_", " ")
            ax = fig.add_subplot(grid[r, 0])
            ax.set_title(f"{phase.replace('_', ' ')}, {where}")
            if not percolates(rec, curves):
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{phase.replace('_', ' ')}\ndoes not percolate along any axis:\n"
                        "no long-range diffusion, τ undefined", transform=ax.transAxes, ha="center", va="center")
            else:
                fits[key], ratios[key] = _draw_msd(ax, curves, rec)
            axes_res = rec.get("axes") or {}
            with_tf = any("tau_taufactor" in e for e in axes_res.values())
            rows = tables[key] = tortuosity_rows(rec, with_tf)
            walk = rec.get("walk") or {}
            used = (f"; walk: {walk['n_walkers']} walkers × {walk['n_steps']} steps"
                    if walk.get("n_walkers") and walk.get("n_steps") else "")
            header = ["axis", "ε", "D_eff/D_bulk", "τ", "σ(τ)", *(["τ TauFactor"] if with_tf else []), "percolates",
                      "converged", "T_z", "T_y", "T_x"]
            style.table(fig.add_subplot(grid[r, 1]), rows, header, row_height=0.16, fontsize=6,
                        title=rec.get("convention", "τ = ε D_bulk / D_eff").replace("tau", "τ").replace("eps", "ε")
                        .replace(" * ", " ") + used)
            if with_tf and len(notes) == 2:
                notes.append("τ TauFactor: steady-state τ of the TauFactor cross-check (n/a: not solved on that axis)")
        if len(notes) == 2:
            notes.append("no TauFactor cross-check (microstructure.crosscheck_taufactor) for these walks")
        note_ax = fig.add_subplot(grid[-1, :])
        note_ax.set_axis_off()
        note_ax.text(0.0, 1.0, "; ".join(notes), transform=note_ax.transAxes, ha="left", va="top", fontsize=6,
                     color="0.25", wrap=True)
    fig.fits = fits
    fig.ratios = ratios
    fig.tables = tables
    return fig


def _draw_msd(ax, curves: Mapping[str, np.ndarray], rec: Mapping[str, Any]):
    """MSD per axis, the Einstein fit over the fit window (shaded) and the free-space MSD on ``ax``;
    returns ((slope, intercept, start), slope / free-space slope)."""
    t, m, free = curves["t"], curves["msd"], curves["free_slope"]
    window = (rec.get("walk") or {}).get("fit_window_steps")
    slope, intercept, start = linear_fit(t, m, window[0] if window else None)
    for i, a in enumerate(AXES):
        ax.plot(t, m[:, i], color=style.AXIS_COLOURS[a], marker="o", ms=2, lw=1.0, label=a)
    tt = t[t >= start]
    for i in range(3):
        ax.plot(tt, slope[i] * tt + intercept[i], color="black", lw=0.7, ls="--",
                label="Einstein fit" if i == 0 else None)
    if np.all(np.isfinite(free)):
        ax.plot(t, free.mean() * t, color="0.6", lw=0.8, ls=":", label="free space")
        ax.set_ylim(0, max(float(np.nanmax(m)), 1e-12) * 1.15)
    ax.axvspan(start, t[-1], color="0.92", lw=0, zorder=0)
    ax.set_xlabel("walk time (steps)")
    ax.set_ylabel("MSD (µm²)")
    ax.legend(loc="upper left", ncol=2)
    return (slope, intercept, start), slope / free


def _numeric_leaves(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """(dotted key, value) of every number/bool/null under ``obj`` (lists of numbers kept whole)."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping) and depth < 4:
        for k, v in obj.items():
            out.extend(_numeric_leaves(v, f"{prefix}{k}.", depth + 1))
    elif isinstance(obj, (int, float, bool)) or obj is None:
        out.append((prefix[:-1], obj))
    elif isinstance(obj, list) and obj and all(isinstance(v, (int, float)) for v in obj) and len(obj) <= 3:
        out.append((prefix[:-1], ", ".join(_fmt(v) for v in obj)))
    elif isinstance(obj, str) and prefix.endswith("flag."):
        out.append((prefix[:-1], obj[:40]))
    return out


SKIP = {"schema", "voxel_size_um", "classes", "tortuosity", "producer", "created", "source", "volume_fractions",
        "cell", "params", "wall_s", "wall_time_s", "shape", "percolation"}


def _percolation_rows(micro: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One row per class: the axes its phase percolates along, and its cluster count."""
    rows = []
    for name, rec in (micro.get("percolation") or {}).items():
        perc = rec.get("percolating") or {}
        axes = " ".join(a for a in AXES if perc.get(a)) or "none"
        rows.append((f"percolation.{name}", f"{axes} ({rec.get('n_clusters', '?')} clusters)"))
    return rows


# Section order of the "other measurements" table (lithium first: what the time series is about),
# and rows left out as redundant (layer z ranges: the thickness is shown; absolute interface areas:
# the specific area, independent of the volume size, is shown).
SECTION_ORDER = ("lithium", "particles", "percolation", "layers", "interfaces")
DROP = ("layers.*.z_start", "layers.*.z_stop", "interfaces.*.area_um2")


def _zero(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0)


def _absent_prefixes(micro: Mapping[str, Any]) -> list[str]:
    """Key prefixes of sections that describe something the sample does not have: lithium without a
    redeposited-lithium agglomerate, layers of classes with no voxel or zero thickness."""
    out = []
    lithium = micro.get("lithium")
    if isinstance(lithium, Mapping) and not lithium.get("count"):
        out.append("lithium.")
    fractions = micro.get("volume_fractions") or {}
    for name, layer in (micro.get("layers") or {}).items():
        if fractions.get(name) == 0 or (isinstance(layer, Mapping) and _zero(layer.get("thickness_um"))):
            out.append(f"layers.{name}.")
    return out


def measured_rows(micro: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(dotted key, value) of the measured quantities besides fractions, tortuosity and cell, for
    what the sample has (no lithium rows without lithium, no layer rows of an absent class)."""
    import fnmatch

    absent = tuple(_absent_prefixes(micro))
    rows = _percolation_rows(micro) + [(k, v) for key, val in micro.items() if key not in SKIP
                                       for k, v in _numeric_leaves(val, f"{key}.")]
    rows = [(k, v) for k, v in rows if not any(fnmatch.fnmatchcase(k, pat) for pat in DROP)
            and not k.startswith(absent)]
    rank = {s: i for i, s in enumerate(SECTION_ORDER)}
    rows = sorted(rows, key=lambda kv: rank.get(kv[0].split(".")[0], len(rank)))  # stable within a section
    # "interfaces.a|b.specific_area_per_um" -> "interface a|b (1/µm)": keeps the phase names readable
    return [(f"interface {k.split('.')[1]} (1/µm)" if k.startswith("interfaces.") and
             k.endswith(".specific_area_per_um") else k, v) for k, v in rows]


def _pretty(key: str, width: int = 50) -> str:
    """Readable key: units in brackets with the micro sign, dots as ": ", long keys shortened in the middle."""
    key = style.readable(key).replace(".", ": ") + (" (slices)" if key.endswith("z_range") else "")
    return key if len(key) <= width else key[: width // 2 - 1] + "…" + key[-(width // 2) + 1:]


def plot_microstructure_table(micro: Mapping[str, Any], max_rows: int = 48):
    """Volume fractions of the classes present (bars), the cell parameters handed to PyBaMM, and every
    other measured quantity of ``microstructure.json`` the sample has (surface areas, thicknesses,
    lithium statistics...).

    Returns:
        the figure; ``fig.fractions`` = the plotted fractions, ``fig.absent`` = classes with no voxel
        (not drawn), ``fig.rows`` = the table rows.
    """
    fractions = micro.get("volume_fractions") or {}
    if not fractions:
        raise InputError("microstructure.json: no 'volume_fractions'")
    cell = micro.get("cell") or {}
    classes = {v: int(k) for k, v in (micro.get("classes") or {}).items()}
    cell_rows = [[{"positive_electrode": "electrode"}.get(region, region),
                  _pretty(k) if k != "flag" else _pretty(f"{v}", 46), _fmt(v) if k != "flag" else "flag"]
                 for region in ("positive_electrode", "separator") for k, v in (cell.get(region) or {}).items()
                 if not isinstance(v, Mapping) and not (isinstance(v, list) and len(v) > 3)
                 and not (isinstance(v, str) and k != "flag")]  # a flag says why a value is n/a
    other = measured_rows(micro)
    shown = other[:max_rows]
    half = (len(shown) + 1) // 2
    pairs = [[_pretty(a[0]), _fmt(a[1]), *((_pretty(b[0]), _fmt(b[1])) if b else ("", ""))]
             for a, b in zip(shown[:half], shown[half:] + [None])]
    names = [n for n in fractions if float(fractions[n] or 0) > 0]
    absent = [n for n in fractions if n not in names]
    vals = [float(fractions[n]) for n in names]
    row_in = 0.16  # inches per table row
    top_h = max(0.35 + 0.25 * len(names), row_in * (len(cell_rows) + 2))
    bottom_h = row_in * (len(pairs) + 2) + 0.2 if pairs else 0.0
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, top_h + bottom_h + 0.3)
        grid = fig.add_gridspec(2 if pairs else 1, 2, height_ratios=[top_h, bottom_h] if pairs else None,
                                width_ratios=[1, 1.2])
        ax = fig.add_subplot(grid[0, 0])
        ax.barh(range(len(names)), vals, color=[style.class_colour(classes.get(n, i), n) for i, n in enumerate(names)],
                edgecolor="0.3", lw=0.4)
        for y, v in enumerate(vals):
            ax.text(v + 0.01, y, f"{v:.3f}" if v >= 0.01 else f"{v:.2g}", va="center", fontsize=6)
        ax.set_yticks(range(len(names)), [_pretty(n) for n in names])
        ax.invert_yaxis()
        ax.set_xlim(0, min(1.0, max(vals, default=0.0) * 1.3 + 0.05))
        ax.set_xlabel("volume fraction" + (f"\n(no voxel: {', '.join(_pretty(n) for n in absent)})" if absent else ""))
        ax.set_title("phases (whole volume)")
        tab_ax = fig.add_subplot(grid[0, 1])
        if cell_rows:
            style.table(tab_ax, cell_rows, ["region", "quantity", "value"],
                        title=f"cell parameters for PyBaMM (stacking axis {cell.get('stacking_axis', 'z')})",
                        align=["left", "left", "right"])
        else:
            tab_ax.set_axis_off()
            tab_ax.text(0.5, 0.5, "no cell regions measured", ha="center", va="center", transform=tab_ax.transAxes)
        if pairs:
            style.table(fig.add_subplot(grid[1, :]), pairs, ["quantity", "value", "quantity", "value"],
                        title="other measurements" + (f" (first {max_rows} of {len(other)})" if len(other) > max_rows
                                                      else ""),
                        align=["left", "right", "left", "right"])
    fig.fractions = dict(zip(names, vals))
    fig.absent = absent
    fig.rows = {"cell": cell_rows, "other": shown}
    return fig


def lithium_growth(micros: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, np.ndarray]:
    """Per frame: volume fraction of every lithium class, and numeric lithium statistics
    (``lithium`` section: counts, volumes, lengths), aligned on the frames given."""
    keys: dict[str, list[float]] = {}
    for i, (_, m) in enumerate(micros):
        entries = [(f"fraction {n.replace('_', ' ')}", v) for n, v in (m.get("volume_fractions") or {}).items()
                   if "lithium" in n]
        for key, val in m.items():
            if "lithium" in key.lower() and isinstance(val, Mapping):
                entries += [(k, v) for k, v in _numeric_leaves(val) if isinstance(v, (int, float))
                            and not isinstance(v, bool)]
        for k, v in entries:
            keys.setdefault(k, [np.nan] * len(micros))[i] = float(v) if v is not None else np.nan
    return {k: np.asarray(v) for k, v in keys.items()}


def plot_series(micros: Sequence[tuple[str, Mapping[str, Any]]], max_panels: int = 6):
    """Lithium agglomerates and dendrites over the frames of a time series: one small panel per
    quantity (volume fractions of the lithium classes first)."""
    if not micros:
        raise InputError("series: no frames")
    growth = lithium_growth(micros)
    first = ["fraction redeposited lithium", "count", "total_volume_um3", "dendrite_length_um", "max_protrusion_um",
             "fraction lithium metal"]
    keys = sorted(growth, key=lambda k: (first.index(k) if k in first else len(first), k))[:max_panels]
    frames = np.arange(len(micros))
    ncol = min(3, max(1, len(keys)))
    nrow = max(1, math.ceil(len(keys) / ncol))
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 1.8 * nrow + 0.4)
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        for ax, k in zip(axes, keys):
            colour = style.CLASS_COLOURS["redeposited_lithium"] if "redeposited" in k else "#0072B2"
            ax.plot(frames, growth[k], marker="o", color=colour)
            ax.set_title(style.readable(k), fontsize=7)
            ax.set_xticks(frames, [name for name, _ in micros], rotation=45, ha="right", fontsize=6)
            ax.set_xlabel("frame")
        for ax in axes[len(keys):]:
            ax.set_axis_off()
        if not keys:
            axes[0].text(0.5, 0.5, "no lithium quantities", ha="center", transform=axes[0].transAxes)
        fig.suptitle("lithium growth over the time series")
    fig.growth = growth
    return fig
