"""Volume figures: orthogonal mid-plane slices, and NLM denoising before/after.

Only planes are read from the stores (``array[z0]``, ``array[:, y0]``, ``array[:, :, x0]``): the
zarr reader decodes only the chunks those planes cross (a one-chunk-thick slab per plane), with
memory bounded by the planes, never the volume.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..contracts import IGNORE_LABEL
from ..errors import InputError
from ..store import Volume, open_volume
from . import style

PLANES = ("z", "y", "x")


def mid_planes(volume: Volume, index: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The three orthogonal planes through ``index`` (default: the centre) of a volume store.

    Returns:
        ``{"z": [Y, X], "y": [Z, X], "x": [Z, Y]}`` -- the plane normal to each axis.
    """
    arr = volume.array
    if arr.ndim != 3:
        raise InputError(f"{volume.path}: expected a 3-D volume (z, y, x), got shape {arr.shape}")
    zc, yc, xc = index if index is not None else [s // 2 for s in arr.shape]
    return {"z": np.asarray(arr[zc]), "y": np.asarray(arr[:, yc]), "x": np.asarray(arr[:, :, xc])}


def plane_extent(shape: Sequence[int], voxel_um: Sequence[float], normal: str) -> list[float]:
    """imshow extent (left, right, bottom, top) in µm of the plane normal to ``normal``."""
    dz, dy, dx = voxel_um
    nz, ny, nx = shape
    rows, cols = {"z": ((ny, dy), (nx, dx)), "y": ((nz, dz), (nx, dx)), "x": ((nz, dz), (ny, dy))}[normal]
    return [0.0, cols[0] * cols[1], rows[0] * rows[1], 0.0]


_AXIS_LABELS = {"z": ("x (µm)", "y (µm)"), "y": ("x (µm)", "z (µm)"), "x": ("y (µm)", "z (µm)")}


@dataclass
class Panel:
    """One row of the slice figure: a title, a store, and how to draw it."""

    title: str
    volume: Volume
    kind: str = "image"  # "image" (grey), "labels" (class colours) or "map" (a scalar map, viridis)


def load_panel(title: str, path: os.PathLike | str, kind: str = "image") -> Panel:
    return Panel(title, open_volume(path), kind)


def plot_orthoslices(panels: Sequence[Panel], title: str | None = None, index: Sequence[int] | None = None):
    """Rows of z/y/x mid-planes, one row per store (raw, denoised, segmented, truth, ...).

    All stores must have the same shape; grey images get a 1-99 percentile window, label stores
    their class colours and a class legend, every panel a scale bar in µm.

    Returns:
        the matplotlib figure (the caller saves it with :func:`style.save`).
    """
    if not panels:
        raise InputError("slices: no volume to draw")
    shape = panels[0].volume.shape
    for p in panels[1:]:
        if p.volume.shape != shape:
            raise InputError(f"{p.volume.path}: shape {p.volume.shape} differs from {panels[0].volume.path} {shape}")
    voxel = panels[0].volume.voxel_size_um
    dz, dy, dx = voxel
    nz, ny, nx = shape
    # Column widths proportional to the physical widths of the planes, so pixels stay square.
    widths = [nx * dx, nx * dx, ny * dy]
    heights = [ny * dy, nz * dz, nz * dz]
    row_h = max(heights)
    fig_w = style.DOUBLE_COLUMN_IN
    panel_h = (fig_w - 0.45) / sum(widths) * row_h  # 0.45 in: row labels and gaps
    labels_seen: dict[int, str] = {}
    present: set[int] = set()
    with style.paper_style():
        has_labels = any(p.kind == "labels" for p in panels)
        height = (panel_h + 0.12) * len(panels) + 0.25 + (0.2 if title else 0) + (0.35 if has_labels else 0)
        fig = style.new_figure(fig_w, min(9.5, height))
        grid = fig.add_gridspec(len(panels), 3, width_ratios=widths)
        for r, panel in enumerate(panels):
            planes = mid_planes(panel.volume, index)
            if panel.kind != "labels":  # float16 (uncertainty) and integer scans -> float32 for imshow
                planes = {k: v.astype(np.float32) for k, v in planes.items()}
            if panel.kind == "labels":
                classes = panel.volume.classes or {}
                ignore = int(panel.volume.attrs.get("ignore_label", IGNORE_LABEL))
                cmap, norm = style.class_colourmap(classes, ignore)
                labels_seen.update(classes)
                for pl in planes.values():
                    present.update(int(v) for v in np.unique(pl) if v != ignore)
                draw = dict(cmap=cmap, norm=norm)
            elif panel.kind == "map":
                draw = dict(cmap="viridis", interpolation="antialiased", **map_window(*planes.values()))
            else:
                lo, hi = style.robust_window(*planes.values())
                # antialiased: a plane of more voxels than pixels is filtered, not sampled (no moire bands)
                draw = dict(cmap="gray", vmin=lo, vmax=hi, interpolation="antialiased")
            for c, normal in enumerate(PLANES):
                ax = fig.add_subplot(grid[r, c])
                im = ax.imshow(planes[normal], extent=plane_extent(shape, voxel, normal), **draw)
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ("top", "right", "bottom", "left"):
                    ax.spines[side].set_visible(False)
                style.add_scale_bar(ax, plane_extent(shape, voxel, normal)[1])
                if r == 0:
                    ax.set_title(f"{normal} mid-plane ({_AXIS_LABELS[normal][1][0]}{_AXIS_LABELS[normal][0][0]})")
                if c == 0:
                    ax.set_ylabel(panel.title)
                if panel.kind == "map" and c == 2:
                    units = panel.volume.attrs.get("units")
                    label = panel.title if not units or panel.title.endswith(f"({units})") \
                        else f"{panel.title} ({units})"
                    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        if labels_seen:
            style.class_legend(fig, labels_seen, present)
        if title:
            fig.suptitle(title)
    return fig


def map_window(*planes: np.ndarray) -> dict[str, float]:
    """Colour range of a non-negative scalar map (entropy): from 0 to the 99.5th percentile, at least
    ten times the median. A window spanning only the near-constant background would spread its
    few float16 steps over the whole colour map and draw them as bands."""
    vals = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in planes])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return {"vmin": 0.0, "vmax": 1.0}
    lo = min(0.0, float(vals.min()))
    hi = max(float(np.percentile(vals, 99.5)), 10.0 * float(np.median(vals)))
    return {"vmin": lo, "vmax": hi if hi > lo else lo + 1.0}


def nlm_parameters(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """NLM parameters of a denoised store: ``nlm``/``params`` attributes or the producer's params."""
    for key in ("nlm", "nlm_params", "params"):
        if isinstance(attrs.get(key), Mapping):
            return dict(attrs[key])
    return dict(attrs.get("producer", {}).get("params", {}))


def _format_params(params: Mapping[str, Any], keys=("patch_size", "search_radius", "h", "noise_sigma")) -> str:
    parts = []
    for k in keys:
        if k in params and isinstance(params[k], (int, float, str)):
            v = params[k]
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def plane_quality(test: np.ndarray, ref: np.ndarray, data_range: float) -> dict[str, float]:
    """PSNR (dB) and SSIM of one plane against the noise-free plane (scikit-image, 2-D)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return {"psnr_db": float(peak_signal_noise_ratio(ref, test, data_range=data_range)),
            "ssim": float(structural_similarity(ref, test, data_range=data_range))}


def volume_quality(denoised: Volume, metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Whole-volume PSNR/SSIM measured by the denoise stage (store attribute ``metrics`` or the
    ``metrics`` of ``denoise.json``); empty when there was no noise-free reference."""
    for source in (denoised.attrs.get("metrics"), (metrics or {}).get("metrics"), metrics):
        if isinstance(source, Mapping):
            found = {k: float(source[k]) for k in ("psnr_db", "ssim")
                     if isinstance(source.get(k), (int, float)) and math.isfinite(float(source[k]))}
            if found:
                return found
    return {}


def plot_nlm(noisy: Volume, denoised: Volume, clean: Volume | None = None,
             metrics: Mapping[str, Any] | None = None, z: int | None = None):
    """NLM before/after: the z mid-plane of the noisy, denoised (and clean) images, the removed
    noise (noisy - denoised), and a through-plane (z) profile averaged over a central y band.

    With a noise-free reference the title gives PSNR/SSIM of that plane before (noisy) and after
    (denoised) -- scikit-image on the plane -- and the whole-volume PSNR/SSIM the denoise stage
    measured (``metrics`` attribute / ``denoise.json``).

    Returns:
        the figure; ``fig.quality`` holds the numbers shown (``plane_noisy``, ``plane_denoised``,
        ``volume``).
    """
    if noisy.shape != denoised.shape:
        raise InputError(f"{denoised.path}: shape {denoised.shape} differs from {noisy.path} {noisy.shape}")
    if clean is not None and clean.shape != noisy.shape:
        raise InputError(f"{clean.path}: shape {clean.shape} differs from {noisy.path} {noisy.shape}")
    nz, ny, nx = noisy.shape
    z = nz // 2 if z is None else int(z)
    imgs = [("noisy (input)", np.asarray(noisy.array[z], dtype=np.float64)),
            ("NLM denoised", np.asarray(denoised.array[z], dtype=np.float64))]
    quality: dict[str, Any] = {"volume": volume_quality(denoised, metrics)}
    if clean is not None:
        ref = np.asarray(clean.array[z], dtype=np.float64)
        imgs.append(("noise-free", ref))
        rng = float(((denoised.attrs.get("metrics") or {}).get("data_range")) or (ref.max() - ref.min()) or 1.0)
        quality["plane_noisy"] = plane_quality(imgs[0][1], ref, rng)
        quality["plane_denoised"] = plane_quality(imgs[1][1], ref, rng)
    removed = imgs[0][1] - imgs[1][1]
    voxel = noisy.voxel_size_um
    extent = plane_extent(noisy.shape, voxel, "z")
    lo, hi = style.robust_window(*(i for _, i in imgs))
    # z profile: mean over a central band of y (bounded read: a y-slab, not the volume)
    y0, y1 = ny // 2 - max(1, ny // 16), ny // 2 + max(1, ny // 16)
    prof = [("noisy", np.asarray(noisy.array[:, y0:y1], dtype=np.float64).mean(axis=(1, 2))),
            ("denoised", np.asarray(denoised.array[:, y0:y1], dtype=np.float64).mean(axis=(1, 2)))]
    if clean is not None:
        prof.append(("noise-free", np.asarray(clean.array[:, y0:y1], dtype=np.float64).mean(axis=(1, 2))))
    ncol = len(imgs) + 2
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 2.3)
        axes = fig.subplots(1, ncol, width_ratios=[1] * (ncol - 1) + [1.3])
        for ax, (name, img) in zip(axes, imgs):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=extent)
            ax.set_title(name)
            ax.set_axis_off()
            style.add_scale_bar(ax, extent[1])
        ax = axes[len(imgs)]
        r = float(np.percentile(np.abs(removed), 99)) or 1.0
        im = ax.imshow(removed, cmap="RdBu_r", vmin=-r, vmax=r, extent=extent)
        ax.set_title("removed noise")
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.7, label="noisy − denoised (grey value)")
        ax = axes[-1]
        zs = (np.arange(nz) + 0.5) * voxel[0]
        colours = {"noisy": "0.6", "denoised": "#0072B2", "noise-free": "#D55E00"}
        for name, p in prof:
            ax.plot(zs, p, label=name, color=colours[name], lw=1.0 if name == "noisy" else 1.3,
                    ls=":" if name == "noise-free" else "-")
        ax.set_xlabel("z (µm)")
        ax.set_ylabel("mean grey value")
        ax.set_title("through-plane profile")
        ax.legend(loc="best")
        params = _format_params(nlm_parameters(denoised.attrs))
        lines = [f"NLM denoising, z = {z}" + (f" ({params})" if params else "")]
        if clean is not None:
            a, b = quality["plane_noisy"], quality["plane_denoised"]
            lines.append(f"this plane: PSNR {a['psnr_db']:.1f} → {b['psnr_db']:.1f} dB, "
                         f"SSIM {a['ssim']:.3f} → {b['ssim']:.3f}")
        else:
            lines.append("no noise-free reference: no PSNR/SSIM")
        v = quality["volume"]
        if v:
            lines[-1] += "; whole volume: " + ", ".join(
                f"PSNR {v['psnr_db']:.1f} dB" if k == "psnr_db" else f"SSIM {v['ssim']:.3f}" for k in v)
        fig.suptitle("\n".join(lines))
    fig.quality = quality
    return fig
