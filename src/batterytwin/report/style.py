"""One paper style for every figure: fonts, sizes, class colours, scale bars, atomic PNG output.

Figures are sized for a journal page (single column 3.5 in, double column 7.2 in) with 8 pt text,
so they are readable when printed at that size; ``save`` writes a PNG at ``dpi`` (default 200)
through a temporary name, so an interrupted job never leaves a half-written figure.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: batch jobs on compute nodes have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.table import Table  # noqa: E402

from ..contracts import IGNORE_LABEL  # noqa: E402
from .config import ReportConfig  # noqa: E402

SINGLE_COLUMN_IN = 3.5
DOUBLE_COLUMN_IN = 7.2
DEFAULT_DPI = ReportConfig().dpi  # the report section's default (report/config.py)

PAPER_RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "image.interpolation": "nearest",
    "figure.constrained_layout.use": True,
}

# Fixed colours for the default classes (colour-blind-safe Okabe-Ito palette), so a class has
# the same colour in every figure, in napari (OME-Zarr label colours) and in the legend.
CLASS_COLOURS = {
    "pore": "#000000",
    "solid_electrolyte": "#56B4E9",
    "lithium_metal": "#E69F00",
    "cathode_active": "#009E73",
    "redeposited_lithium": "#D55E00",
    "current_collector": "#999999",
}
_FALLBACK = ["#0072B2", "#CC79A7", "#F0E442", "#882255", "#44AA99", "#117733", "#332288", "#AA4499"]
AXIS_COLOURS = {"z": "#0072B2", "y": "#D55E00", "x": "#009E73"}
UNLABELLED_COLOUR = "#FFFFFF"


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context in which figures get the paper style (restores the caller's rcParams)."""
    with matplotlib.rc_context(PAPER_RC):
        yield


def class_colour(class_id: int, name: str) -> str:
    """Colour of a class: the fixed colour of a default class name, else a palette colour by id."""
    return CLASS_COLOURS.get(name, _FALLBACK[int(class_id) % len(_FALLBACK)])


def text_colour_on(colour) -> str:
    """Black or white, whichever reads better on ``colour`` (by its relative luminance)."""
    r, g, b = matplotlib.colors.to_rgb(colour)
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def class_colourmap(classes: Mapping[int, str], ignore_label: int = IGNORE_LABEL) -> tuple[ListedColormap, BoundaryNorm]:
    """Colour map + norm drawing label id ``k`` in its class colour (``ignore_label`` white).

    Ids without a class name (should not occur) are drawn magenta so that they stand out.
    """
    top = max(max(classes, default=0), ignore_label)
    colours = ["#FF00FF"] * (top + 1)
    for k, name in classes.items():
        colours[int(k)] = class_colour(int(k), name)
    colours[ignore_label] = UNLABELLED_COLOUR
    cmap = ListedColormap(colours)
    return cmap, BoundaryNorm(np.arange(top + 2) - 0.5, cmap.N)


def class_legend(fig: Figure, classes: Mapping[int, str], present: set[int] | None = None,
                 ncol: int | None = None) -> None:
    """Legend of class colours and names below the figure (only ``present`` ids when given)."""
    ids = [k for k in sorted(classes) if present is None or k in present]
    handles = [Patch(facecolor=class_colour(k, classes[k]), edgecolor="0.3", linewidth=0.4,
                     label=f"{k} {classes[k].replace('_', ' ')}") for k in ids]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol or min(len(handles), 3),
                   handlelength=1.0, columnspacing=1.2)


def nice_length(span: float, fraction: float = 0.25) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k) close to ``fraction`` of ``span``."""
    target = max(span * fraction, 1e-12)
    exp = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10**exp <= target:
            return m * 10**exp
    return 10**exp


def format_um(value: float) -> str:
    return f"{value:g} µm" if value >= 1 else f"{value * 1000:g} nm"


SCALE_BAR_BOX = "white"  # the scale bar's box: black bar and text on it read on any image


def add_scale_bar(ax, width_um: float) -> float:
    """Draw a scale bar in the lower right of an image axis whose data units are micrometres.

    Bar and text are black on a white, slightly transparent box, so they stay readable over
    features of any colour (a bare white or black bar vanishes on a feature of its own colour).

    Returns the bar length in µm (a round number about a quarter of ``width_um``).
    """
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = nice_length(width_um)
    bar = AnchoredSizeBar(ax.transData, length, format_um(length), "lower right", pad=0.15, sep=1.5, color="black",
                          frameon=True, size_vertical=width_um / 80, fontproperties={"size": 6},
                          label_top=True, borderpad=0.3)
    bar.patch.set(facecolor=SCALE_BAR_BOX, edgecolor="none", alpha=0.8)
    ax.add_artist(bar)
    ax.scale_bar = bar
    return length


def robust_window(*planes: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Grey-level window from the 1st and 99th percentiles of the finite values of ``planes``."""
    vals = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in planes])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def new_figure(width_in: float = DOUBLE_COLUMN_IN, height_in: float = 3.0) -> Figure:
    """A figure of paper width (call inside :func:`paper_style`)."""
    return plt.figure(figsize=(width_in, height_in))


def save(fig: Figure, path: os.PathLike | str, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` as PNG atomically (temporary name + rename) and close it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}.png")
    try:
        with paper_style():  # artists created lazily at draw time (ticks) get the style too
            fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, final)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return final


UNITS = {"um": "µm", "um2": "µm²", "um3": "µm³", "per_um": "1/µm", "nm": "nm", "s": "s", "Ah": "Ah", "V": "V",
         "K": "K", "C": "°C", "percent": "%"}
_UNIT_SUFFIX = re.compile(r"_(per_um|um[23]?|nm|Ah|V|K|percent)$")


def micro(text: str) -> str:
    """Free text with the micrometre written with the micro sign: ``"Ah per um"`` -> ``"Ah per µm"``."""
    return re.sub(r"\bum([23]?)\b", lambda m: "µm" + {"": "", "2": "²", "3": "³"}[m.group(1)], str(text))


def readable(key: str) -> str:
    """A JSON key as text: a trailing unit as ``(unit)`` with the micro sign, underscores as spaces.

    ``thickness_um`` -> ``thickness (µm)``, ``total_volume_um3`` -> ``total volume (µm³)``,
    ``specific_area_per_um`` -> ``specific area (1/µm)``.
    """
    parts = []
    for piece in str(key).split("."):
        m = _UNIT_SUFFIX.search(piece)
        unit = f" ({UNITS[m.group(1)]})" if m else ""
        parts.append((piece[: m.start()] if m else piece).replace("_", " ") + unit)
    return ".".join(parts)


TABLE_FONT_SIZE = 6.5
TABLE_MIN_FONT_SIZE = 5.0
TABLE_PAD = 0.1  # of the text width, each side of a cell's text
TABLE_HEADER_COLOUR = "#E8E8E8"


class FittedTable(Table):
    """A table whose columns are as wide as their widest text, in one font; when the columns would
    be wider than the axes, the font shrinks (down to ``TABLE_MIN_FONT_SIZE``) until they fit.

    The widths are measured when the figure is drawn, after the layout has sized the axes.
    """

    def __init__(self, ax, fontsize: float, **kwargs):
        super().__init__(ax, **kwargs)
        self.auto_set_font_size(False)
        self.wanted_fontsize = fontsize

    def fit(self, renderer) -> None:
        """Set the largest font (at most the wanted one) with which the columns' required widths sum
        to at most the axes' width; text extents do not scale smoothly with the size (hinting), so
        the size steps down until the table fits."""
        size = self.wanted_fontsize
        while True:
            self.set_fontsize(size)
            widths: dict[int, float] = {}
            for (_, c), cell in self.get_celld().items():
                widths[c] = max(widths.get(c, 0.0), cell.get_required_width(renderer))
            total = sum(widths.values())
            if total <= 1.0 or size <= TABLE_MIN_FONT_SIZE:
                return
            size = max(TABLE_MIN_FONT_SIZE, min(size - 0.25, size / total))

    def draw(self, renderer):
        self.fit(renderer)
        super().draw(renderer)

    def get_window_extent(self, renderer=None):
        if renderer is None:
            renderer = self.get_figure(root=True)._get_renderer()
        self.fit(renderer)
        return super().get_window_extent(renderer)


def table(ax, rows: Sequence[Sequence[str]], header: Sequence[str], title: str | None = None,
          align: Sequence[str] | None = None, fontsize: float = TABLE_FONT_SIZE, row_height: float | None = None):
    """A compact table at the top of ``ax`` (header shaded, thin rules); returns the table.

    Every column is as wide as its widest text and every cell in one font at ``fontsize``, smaller
    when the table would be wider than ``ax`` (:class:`FittedTable`); rows are ``row_height``
    (axes fraction, default: the rows fill ``ax``).
    """
    ax.set_axis_off()
    tab = FittedTable(ax, fontsize, loc="upper center")
    height = row_height or 1.0 / (len(rows) + 1.5)
    family = plt.rcParams["font.family"]
    for r, row in enumerate([list(header), *[list(x) for x in rows]]):
        for c, text in enumerate(row):
            ha = "center" if r == 0 or align is None else align[c]
            cell = tab.add_cell(r, c, width=0.1, height=height, text=str(text), loc=ha,
                                facecolor=TABLE_HEADER_COLOUR if r == 0 else "white", edgecolor="black")
            cell.set_linewidth(0.3)
            cell.PAD = TABLE_PAD
            cell.get_text().set_fontfamily(family)
    tab.set_fontsize(fontsize)
    tab.auto_set_column_width(list(range(len(header))))
    ax.add_table(tab)
    if title:
        ax.set_title(title)
    return tab
