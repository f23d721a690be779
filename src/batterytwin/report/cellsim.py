"""PyBaMM sweep figures: discharge voltage curves and capacity fade, coloured by condition; rate capability.

Input: ``sweep.zarr`` (cellsim; see docs/interfaces.md): arrays ``inputs`` [n, k], ``status`` [n],
``soh`` [n, cycles], ``qv_capacity_Ah`` [n, n_early, V]; attributes ``input_names``,
``voltage_grid_V`` (and ``varied_inputs`` when the sweep names them). Reads at most
``max_conditions`` rows (spread evenly over the sweep), never a whole large sweep.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import numpy as np

from ..contracts import STATUS_NAMES, STATUS_OK, SWEEP_SCHEMA
from ..errors import InputError
from ..store import open_group
from . import style


@dataclass
class Sweep:
    """The bounded part of a sweep a figure needs (``rows``: the condition indices read)."""

    path: str
    rows: np.ndarray          # int [m]
    inputs: np.ndarray        # float [m, k]
    input_names: list[str]
    varied: list[str]
    status: np.ndarray        # int [m]
    attrs: dict


def open_sweep(path: os.PathLike | str, max_conditions: int = 64) -> tuple[Sweep, Any]:
    """Open ``sweep.zarr`` and read the inputs/status of up to ``max_conditions`` conditions."""
    g = open_group(path, "sweep store", arrays=("inputs", "status", "soh", "qv_capacity_Ah"), schema=SWEEP_SCHEMA)
    attrs = dict(g.attrs)
    names = list(attrs.get("input_names") or [])
    n = int(g["status"].shape[0])
    if n == 0:
        raise InputError(f"{path}: the sweep has no conditions")
    rows = np.unique(np.linspace(0, n - 1, min(n, max_conditions)).round().astype(int))
    inputs = np.asarray(g["inputs"].get_orthogonal_selection((rows, slice(None))), dtype=np.float64)
    if len(names) != inputs.shape[1]:
        names = [f"input {i}" for i in range(inputs.shape[1])]
    varied = [v for v in attrs.get("varied_inputs") or [] if v in names]
    if not varied:  # inputs that take more than one value among the rows read
        varied = [nm for j, nm in enumerate(names) if np.unique(inputs[:, j]).size > 1]
    status = np.asarray(g["status"].get_orthogonal_selection(rows)).astype(int)
    return Sweep(str(path), rows, inputs, names, varied, status, attrs), g


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def input_label(name: str) -> str:
    """A sweep input as an axis label with its unit: ``discharge_c_rate`` -> ``discharge C-rate (C)``,
    ``ambient_temperature_C`` -> ``ambient temperature (°C)``, ``SEI kinetic rate constant [m.s-1]``
    -> ``SEI kinetic rate constant (m s⁻¹)``; a PyBaMM name without a unit is dimensionless."""
    if name.endswith("]") and "[" in name:
        base, _, unit = name[:-1].rpartition("[")
        unit = re.sub(r"(?<=[A-Za-z])(-?\d+)", lambda m: m.group(1).translate(_SUPERSCRIPT), unit.replace(".", " "))
        return f"{base.strip()} ({unit})"
    low = name.lower()
    if low.endswith("c_rate"):
        return f"{name[: -len('c_rate')].replace('_', ' ')}C-rate (C)".strip()
    if low == "depth_of_discharge":
        return "depth of discharge (fraction of nominal)"
    if name.endswith("_C"):
        return f"{name[:-2].replace('_', ' ')} (°C)"
    readable = style.readable(name)
    return readable if readable.endswith(")") else f"{readable} (dimensionless)"


def _colouring(sw: Sweep):
    """Colour per row from the first varied input (continuous map), and its legend label."""
    if not sw.varied:
        return [style.AXIS_COLOURS["z"]] * len(sw.rows), None, None
    j = sw.input_names.index(sw.varied[0])
    vals = sw.inputs[:, j]
    norm = mpl.colors.Normalize(vmin=vals.min(), vmax=vals.max() if vals.max() > vals.min() else vals.min() + 1)
    cmap = mpl.colormaps["viridis"]
    return [cmap(norm(v)) for v in vals], mpl.cm.ScalarMappable(norm=norm, cmap=cmap), sw.varied[0]


_STYLES = ["-", "--", ":", "-."]


def _linestyles(sw: Sweep) -> tuple[list[str], dict[str, str]]:
    """Line style per row from the second varied input (up to 4 values), for legends."""
    if len(sw.varied) < 2:
        return ["-"] * len(sw.rows), {}
    j = sw.input_names.index(sw.varied[1])
    values = list(np.unique(sw.inputs[:, j]))
    if len(values) > len(_STYLES):
        return ["-"] * len(sw.rows), {}
    ls = {v: _STYLES[i] for i, v in enumerate(values)}
    return [ls[v] for v in sw.inputs[:, j]], {f"{input_label(sw.varied[1])}: {v:g}": s for v, s in ls.items()}


def _finish(fig, axes, sm, cname, styles_legend):
    if sm is not None:
        fig.colorbar(sm, ax=axes, label=input_label(cname), shrink=0.9)
    if styles_legend:
        from matplotlib.lines import Line2D

        axes[-1].legend(handles=[Line2D([], [], color="0.3", ls=s, label=lab) for lab, s in styles_legend.items()],
                        loc="lower left")


def plot_voltage_curves(path: os.PathLike | str, max_conditions: int = 24):
    """Discharge voltage vs capacity for the first and last early cycles of each condition.

    ``qv_capacity_Ah[i, c, j]`` is the discharge capacity at ``voltage_grid_V[j]``; the curve is
    drawn as capacity (x) against voltage (y), the way a cycler shows it.
    """
    sw, g = open_sweep(path, max_conditions)
    grid = np.asarray(sw.attrs.get("voltage_grid_V") or [], dtype=np.float64)
    qv = g["qv_capacity_Ah"]
    if grid.size != qv.shape[-1]:
        raise InputError(f"{path}: voltage_grid_V has {grid.size} values, qv_capacity_Ah has {qv.shape[-1]}")
    colours, sm, cname = _colouring(sw)
    lss, ls_legend = _linestyles(sw)
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 2.6)
        axes = fig.subplots(1, 2, sharey=True)
        n_early = qv.shape[1]
        drawn = 0
        for i, row in enumerate(sw.rows):
            if sw.status[i] != STATUS_OK:
                continue
            q = np.asarray(qv[int(row)], dtype=np.float64)  # [n_early, V]: one condition
            for ax, c in zip(axes, (0, n_early - 1)):
                ok = np.isfinite(q[c])
                ax.plot(q[c][ok], grid[ok], color=colours[i], ls=lss[i], lw=1.0)
            drawn += 1
        for ax, c in zip(axes, (0, n_early - 1)):
            ax.set_xlabel("discharge capacity (Ah)")
            ax.set_title(f"early cycle {c + 1}")
        axes[0].set_ylabel("voltage (V)")
        if drawn == 0:
            axes[0].text(0.5, 0.5, "no successful condition", transform=axes[0].transAxes, ha="center")
        _finish(fig, list(axes), sm, cname, ls_legend)
        fig.suptitle(f"PyBaMM discharge curves ({sw.attrs.get('model', '')}, "
                     f"{sw.attrs.get('parameter_set', '')}): {drawn} of {len(sw.rows)} conditions shown")
    return fig


def _num(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def _clip(text: Any, n: int) -> str:
    """``text`` cut to ``n`` characters, the cut marked with an ellipsis."""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def cell_parameter_rows(attrs: dict) -> list[list[str]]:
    """The cell-parameter table of a sweep: warnings, cell form, transport, N/P balance, substitutions.

    Rows ``[quantity, value, source]`` from the ``sweep.zarr`` attributes ``microstructure_warnings``
    (first, in the warning colour: measurements the parameter set's values replaced), ``cell_form``,
    ``transport``, ``balance`` and ``substitutions`` (cellsim; docs/cellsim.md). Empty for
    sweeps written before these attributes existed.
    """
    rows: list[list[str]] = []
    for w in attrs.get("microstructure_warnings") or []:  # first: a measurement PyBaMM did not get
        region = next((r for r in ("positive_electrode", "separator") if f"cell.{r}" in str(w)), "microstructure")
        why = str(w).split(f"cell.{region}")[-1].lstrip(": ").split(": keeping")[0] + ": the set's value kept"
        for i, part in enumerate(textwrap.wrap(why, 54)[:4]):  # the "from" column, over a few rows
            rows.append(["WARNING", region.replace("positive_", "") if i == 0 else "", part])
    if attrs.get("cell_form"):
        rows.append(["cell form", str(attrs["cell_form"]), _clip(attrs.get("cell_form_reason", ""), 60)])
    if attrs.get("transport"):
        rows.append(["electrolyte transport", str(attrs["transport"]), "cellsim.transport"])
    bal = attrs.get("balance") or {}
    if bal.get("n_to_p_after") is not None:
        rows.append(["N/P parameter set", _num(bal.get("n_to_p_parameter_set")), "Q_n / (Q_p dy_p)"])
        rows.append(["N/P before / after balance",
                     f"{_num(bal.get('n_to_p_before'))} / {_num(bal.get('n_to_p_after'))}",
                     "rescaled: " + (", ".join(bal.get("rescaled") or {}) or "nothing")])
    if bal.get("warning"):
        rows.append(["WARNING", _clip(bal["warning"], 70), ""])
    for name, sub in (attrs.get("substitutions") or {}).items():
        if str(sub.get("from", "")).startswith(("derived: (phase", "Xu2019")):
            continue  # equivalents and added half-cell constants: in sweep.json, not the table
        rows.append([_clip(name, 52), f"{_num(sub.get('old'))} → {_num(sub.get('value'))}",
                     _clip(str(sub.get("from", "")).split(": ")[-1], 60)])
    return rows


def _cell_table(ax, rows: list[list[str]]) -> None:
    tab = style.table(ax, rows, ["cell parameter", "value", "from"], align=["left", "left", "left"], fontsize=6)
    for (r, _), cell in tab.get_celld().items():
        if r > 0 and rows[r - 1][0] == "WARNING":
            cell.set_text_props(color="#D55E00", weight="bold")


def plot_capacity_fade(path: os.PathLike | str, max_conditions: int = 64):
    """State of health (percent of the first cycle) and discharge capacity per cycle, per condition;
    below them the last SOH of each condition against every varied input (so that each input is
    seen, not only the one that colours the curves), and the cell-parameter table
    (:func:`cell_parameter_rows`; N/P balance, warnings).

    Failed conditions (status 2/3) are drawn up to their last cycle with a cross at the stop.
    """
    sw, g = open_sweep(path, max_conditions)
    soh = np.asarray(g["soh"].get_orthogonal_selection((sw.rows, slice(None))), dtype=np.float64)
    cap = np.asarray(g["capacity_Ah"].get_orthogonal_selection((sw.rows, slice(None))), dtype=np.float64) \
        if "capacity_Ah" in g else None
    colours, sm, cname = _colouring(sw)
    lss, ls_legend = _linestyles(sw)
    cycles = np.arange(1, soh.shape[1] + 1)
    rows = cell_parameter_rows(sw.attrs)
    varied = sw.varied[:4]
    table_h = 0.16 * (len(rows) + 2) if rows else 0.0
    inputs_h = 1.7 if varied else 0.0
    heights = [2.6] + ([inputs_h] if varied else []) + ([table_h] if rows else [])
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, sum(heights) + 0.3)
        ncol = 2 if cap is not None else 1
        outer = fig.add_gridspec(len(heights), 1, height_ratios=heights)
        top = outer[0].subgridspec(1, ncol)
        axes = [fig.add_subplot(top[0, j]) for j in range(ncol)]
        for ax, data, ylabel in zip(axes, (soh, cap), ("state of health (%)", "discharge capacity (Ah)")):
            for i in range(len(sw.rows)):
                y = data[i]
                ok = np.isfinite(y)
                ax.plot(cycles[ok], y[ok], color=colours[i], ls=lss[i], lw=1.0, marker="." if ok.sum() < 30 else None)
                if sw.status[i] != STATUS_OK and ok.any():
                    last = np.flatnonzero(ok)[-1]
                    ax.plot(cycles[last], y[last], "x", color="#D55E00", ms=5)
            ax.set_xlabel("cycle")
            ax.set_ylabel(ylabel)
        counts = {STATUS_NAMES.get(k, str(k)).replace("_", " "): int((sw.status == k).sum()) for k in np.unique(sw.status)}
        _finish(fig, axes, sm, cname, ls_legend)
        fig.final_soh = _final_soh(soh)
        fig.input_axes = _input_panels(fig, outer[1], sw, varied, fig.final_soh, colours) if varied else []
        if rows:
            _cell_table(fig.add_subplot(outer[-1]), rows)
        fig.suptitle("capacity fade across the sweep (" + ", ".join(f"{v} {k}" for k, v in counts.items())
                     + (")" if all(sw.status == STATUS_OK) else "; x: run stopped)"))
    fig.soh = soh
    fig.cell_rows = rows
    return fig


def _final_soh(soh: np.ndarray) -> np.ndarray:
    """The last finite SOH of each condition (NaN for a condition with none)."""
    out = np.full(soh.shape[0], np.nan)
    for i, y in enumerate(soh):
        ok = np.flatnonzero(np.isfinite(y))
        if ok.size:
            out[i] = y[ok[-1]]
    return out


def _input_panels(fig, spec, sw: Sweep, varied: list[str], final: np.ndarray, colours) -> list:
    """One panel per varied input: the last SOH of each condition against that input (log axis for
    an input spanning two decades or more), coloured as the curves; a stopped run is a cross."""
    grid = spec.subgridspec(1, len(varied))
    axes = []
    for k, name in enumerate(varied):
        ax = fig.add_subplot(grid[0, k], sharey=axes[0] if axes else None)
        x = sw.inputs[:, sw.input_names.index(name)]
        ok = sw.status == STATUS_OK
        ax.scatter(x[ok], final[ok], c=[colours[i] for i in np.flatnonzero(ok)], s=12, edgecolor="0.2", lw=0.3)
        if (~ok).any():
            ax.scatter(x[~ok], final[~ok], marker="x", color="#D55E00", s=14)
        if x.min() > 0 and x.max() / x.min() >= 100:
            ax.set_xscale("log")
        ax.set_xlabel("\n".join(textwrap.wrap(input_label(name), 22)))  # side by side: no label runs into the next
        if k == 0:
            ax.set_ylabel("last SOH (%)")
        else:
            ax.tick_params(labelleft=False)
        axes.append(ax)
    return axes


def rate_sensitivity_rows(block: dict) -> list[list[str]]:
    """The sensitivity table of a rate block: ``[quantity, factor, value, capacity (Ah), dQ/dx]``."""
    sens = block.get("sensitivity") or {}
    deriv = sens.get("derivatives") or {}
    rows = []
    for r in sens.get("rows") or []:
        d = deriv.get(r["quantity"]) if r["factor"] == 1.0 else None
        rows.append([r["quantity"], f"x{r['factor']:g}", _num(r.get("value")), _num(r.get("capacity_Ah")),
                     f"{_num(d['dQ_dx'])} {style.micro(d['unit'])} (elasticity {_num(d.get('elasticity'))})" if d else ""])
    return rows


def plot_rate_capability(path: os.PathLike | str):
    """Discharge capacity vs C-rate (percent of the lowest C-rate's, so that cells of different
    size compare; absolute values in the legend) of the measured electrode against the parameter
    set's (and the perturbed electrodes, thin), plated lithium (percent of the charge) vs charge
    C-rate, and the sensitivity table at ``sensitivity.c_rate`` (absolute capacities; attribute
    ``rate_capability`` of ``sweep.zarr``; docs/cellsim.md)."""
    g = open_group(path, "sweep store", arrays=("status",), schema=SWEEP_SCHEMA)
    block = dict(g.attrs).get("rate_capability")
    if not block:
        raise InputError(f"{path}: no rate_capability results (enable cellsim.rate_capability and rerun simulate)")
    rates = np.asarray(block["c_rates"], dtype=np.float64)
    caps = block["capacity_Ah"]
    plating = block.get("plating")
    rows = rate_sensitivity_rows(block)
    table_h = 0.15 * (len(rows) + 2) if rows else 0.0
    main = {"measured": ("measured electrode", "#0072B2", "o"),
            "parameter_set": ("parameter set's electrode", "#D55E00", "s")}
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 2.6 + table_h)
        grid = fig.add_gridspec(2 if rows else 1, 2, height_ratios=[2.6, table_h] if rows else None)
        ax = fig.add_subplot(grid[0, 0])
        k0 = int(np.argmin(rates))

        def retention(q):  # percent of the lowest C-rate's capacity: cells of any size compare
            q = np.asarray(q, dtype=np.float64)
            return 100.0 * q / q[k0] if q[k0] > 0 else np.full_like(q, np.nan)

        for name, q in caps.items():
            if name not in main:
                ax.plot(rates, retention(q), color="#999999", lw=0.6, alpha=0.7)
        for name, (label, colour, marker) in main.items():
            if name in caps:
                ax.plot(rates, retention(caps[name]), color=colour, marker=marker, ms=3, lw=1.2,
                        label=f"{label} ({_num(caps[name][k0])} Ah at {rates[k0]:g}C)")
        ax.plot([], [], color="#999999", lw=0.6, label="tau / porosity / thickness perturbed")
        ax.set_xscale("log")
        ax.set_xlabel("discharge C-rate")
        ax.set_ylabel(f"capacity (% of {rates[k0]:g}C)")
        ax.set_title(f"capacity vs C-rate ({block.get('model', '')})")
        ax.legend(fontsize=6)
        ax2 = fig.add_subplot(grid[0, 1])
        if plating:
            cr = np.asarray(plating["c_rates"], dtype=np.float64)
            charged = plating.get("charged_capacity_Ah") or {}
            for name, (label, colour, marker) in main.items():
                if name in plating["plated_capacity_Ah"] and name in charged:
                    share = 100.0 * np.asarray(plating["plated_capacity_Ah"][name], dtype=np.float64) \
                        / np.asarray(charged[name], dtype=np.float64)
                    ax2.plot(cr, share, color=colour, marker=marker, ms=3, lw=1.2, label=label)
            ax2.set_xlabel("charge C-rate (CC-CV from SOC 0)")
            ax2.set_ylabel("plated lithium (% of the charge)")
            ax2.set_title(f"lithium plating ({plating['option'].get('lithium plating')})")
            ax2.legend(fontsize=6)
        else:
            ax2.set_axis_off()
            ax2.text(0.5, 0.5, "no plating runs", transform=ax2.transAxes, ha="center")
        if rows:
            style.table(fig.add_subplot(grid[1, :]), rows,
                        ["perturbed", "factor", "value", f"capacity at {block['sensitivity']['c_rate']:g}C (Ah)",
                         "dQ/dx (central difference)"],
                        fontsize=6)
    fig.rate_rows = rows
    return fig
