"""Layout checks of a drawn matplotlib figure: what a reader of the printed figure would see as broken.

:func:`layout_problems` draws the figure with matplotlib's renderer and lists, in words, every
text outside the figure, annotation outside its panel, text overlapping another text, table text
spilling over its cell, legend covering a bar, colour bar without a unit, "um" written for µm,
and table cells of one table in different fonts. :func:`assert_clean` fails a test with that list.
"""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.table import Table
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from batterytwin.report import style

TOLERANCE_PX = 1.0
ASCII_MICRO = re.compile(r"\bum[23]?\b|1/um\b")  # "um", "um2", "um3", "1/um": µm written without the micro sign
UNIT = re.compile(r"\(([^()]+)\)\s*$")  # a trailing "(unit)"


def _inside(inner: Bbox, outer: Bbox, tol: float = TOLERANCE_PX) -> bool:
    return (inner.x0 >= outer.x0 - tol and inner.x1 <= outer.x1 + tol and inner.y0 >= outer.y0 - tol
            and inner.y1 <= outer.y1 + tol)


def _overlap(a: Bbox, b: Bbox, tol: float = TOLERANCE_PX) -> bool:
    return a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol


def _shown(t: Text) -> bool:
    if not t.get_visible() or not t.get_text().strip():
        return False
    parent = t
    while parent is not None:  # a legend or axes switched off hides its texts
        if not parent.get_visible():
            return False
        parent = getattr(parent, "axes", None) if parent is not getattr(parent, "axes", None) else None
    return True


def drawn_texts(fig, renderer) -> list[tuple[str, Text, Bbox]]:
    """(where, text artist, window extent) of every text a reader sees: titles, axis and tick labels
    drawn, annotations, legend entries, table cells, colour-bar labels, the figure's own texts."""
    out: list[tuple[str, Text, Bbox]] = []
    seen: set[int] = set()

    def add(where: str, t: Text) -> None:
        if id(t) in seen or not _shown(t):
            return
        seen.add(id(t))
        out.append((where, t, t.get_window_extent(renderer)))

    for t in fig.texts:
        add("figure", t)
    if getattr(fig, "_suptitle", None) is not None:
        add("suptitle", fig._suptitle)
    for leg in fig.legends:
        for t in leg.get_texts():
            add("figure legend", t)
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        name = f"axes {i} ({ax.get_title() or ax.get_label()!s})"
        for t in (ax.title, ax._left_title, ax._right_title):
            add(f"{name} title", t)
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                add(f"{name} axis label", axis.label)
                add(f"{name} offset", axis.offsetText)
                for tick in axis._update_ticks():  # the ticks inside the view: the ones drawn
                    for t in (tick.label1, tick.label2):
                        add(f"{name} tick label", t)
        for t in ax.texts:
            add(f"{name} text", t)
        leg = ax.get_legend()
        if leg is not None and leg.get_visible():
            for t in leg.get_texts():
                add(f"{name} legend", t)
        for tab in ax.tables:
            for (r, c), cell in tab.get_celld().items():
                add(f"{name} table cell ({r}, {c})", cell.get_text())
    return out


def layout_problems(fig) -> list[str]:
    """Every layout defect of ``fig`` in words (empty: the figure reads cleanly)."""
    if not hasattr(fig.canvas, "get_renderer"):  # a bare Figure(): draw it with Agg, as the report does
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    problems: list[str] = []
    texts = drawn_texts(fig, renderer)
    for where, t, box in texts:
        if not _inside(box, frame):
            problems.append(f"{where}: {t.get_text()!r} outside the figure")
        if ASCII_MICRO.search(t.get_text()):
            problems.append(f"{where}: {t.get_text()!r} writes um for µm")
    for ax in fig.axes:  # annotations of a plot belong inside it (a panel without axes only holds text)
        if not ax.axison:
            continue
        panel = ax.get_window_extent(renderer)
        for t in ax.texts:
            if _shown(t) and not _inside(t.get_window_extent(renderer), panel):
                problems.append(f"text {t.get_text()!r} outside its panel {ax.get_title()!r}")
    for ax in fig.axes:  # an annotation hides no data marker
        points = _marker_points(ax)
        for t in ax.texts:
            if not _shown(t) or not len(points):
                continue
            box = t.get_window_extent(renderer).expanded(1.0, 1.0)
            hit = (points[:, 0] > box.x0 + TOLERANCE_PX) & (points[:, 0] < box.x1 - TOLERANCE_PX) \
                & (points[:, 1] > box.y0 + TOLERANCE_PX) & (points[:, 1] < box.y1 - TOLERANCE_PX)
            if hit.any():
                problems.append(f"text {t.get_text()!r} covers a data marker in {ax.get_title()!r}")
    for (w1, t1, b1), (w2, t2, b2) in combinations(texts, 2):
        if _overlap(b1, b2):
            problems.append(f"{w1} {t1.get_text()!r} overlaps {w2} {t2.get_text()!r}")
    for ax in fig.axes:
        for tab in ax.tables:
            problems += _table_problems(tab, renderer, ax.get_title())
            if not _inside(tab.get_window_extent(renderer), ax.get_window_extent(renderer)):
                problems.append(f"table {ax.get_title()!r} is larger than its panel")
        leg = ax.get_legend()
        if leg is not None and leg.get_visible():
            lbox = leg.get_window_extent(renderer)
            bars = [p for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]
            for p in bars:
                if p.get_visible() and np.isfinite(p.get_width()) and p.get_width() \
                        and _overlap(lbox, p.get_window_extent(renderer)):
                    problems.append(f"legend of {ax.get_title()!r} covers a bar")
                    break
        cb = getattr(ax, "_colorbar", None)
        if cb is not None:
            label = cb.long_axis.get_label_text()
            if not UNIT.search(label):
                problems.append(f"colour bar {label!r} has no unit in brackets")
    return problems


def _marker_points(ax) -> np.ndarray:
    """Display coordinates [n, 2] of the markers of ``ax``: scatter points and marked line vertices."""
    pts = [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
           if isinstance(c, PathCollection) and len(c.get_offsets())]
    pts += [line.get_transform().transform(line.get_xydata()) for line in ax.lines
            if line.get_marker() not in (None, "None", "", " ") and len(line.get_xydata())]
    pts = [p[np.isfinite(p).all(axis=1)] for p in pts]
    return np.concatenate(pts) if pts else np.empty((0, 2))


def _table_problems(tab: Table, renderer, where: str) -> list[str]:
    out = []
    fonts = set()
    for (r, c), cell in tab.get_celld().items():
        text = cell.get_text()
        fonts.add((tuple(text.get_fontfamily()), text.get_fontname(), text.get_fontsize()))
        if text.get_text() and not _inside(text.get_window_extent(renderer), cell.get_window_extent(renderer), 0.5):
            out.append(f"table {where!r} cell ({r}, {c}) {text.get_text()!r} spills over its border")
    if len(fonts) > 1:
        out.append(f"table {where!r} mixes fonts {sorted(fonts)}")
    return out


def assert_clean(fig) -> None:
    """Fail with the list of layout problems of ``fig`` (drawn in the paper style, as
    :func:`batterytwin.report.style.save` draws it) when there is any."""
    with style.paper_style():
        problems = layout_problems(fig)
    assert not problems, "figure layout:\n" + "\n".join(problems)


def cell_texts(fig) -> list[list[str]]:
    """The rows of every table of ``fig`` as drawn (header first), table after table."""
    rows = []
    for ax in fig.axes:
        for tab in ax.tables:
            cells = tab.get_celld()
            n_rows = max(r for r, _ in cells) + 1
            n_cols = max(c for _, c in cells) + 1
            rows += [[cells[r, c].get_text().get_text() for c in range(n_cols)] for r in range(n_rows)]
    return rows


def unit_of(label: str) -> str | None:
    """The unit of an axis label ``"quantity (unit)"``, or None."""
    m = UNIT.search(label)
    return m.group(1) if m else None
