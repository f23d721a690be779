"""Segmentation training figure: loss curve, per-class validation Dice, precision, recall and calibration.

Input: ``results/models/segment/metrics.json`` (schema ``batterytwin.segment.metrics/1``) with
``loss_curve`` [{step, loss, lr}], ``validation`` [{step, dice: [per class or null], mean_dice}],
``classes`` {"0": "pore", ...}, ``final_dice`` {name: value} and, when the run recorded them,
``final_precision``/``final_recall`` {name: value or null}, ``final_ece`` and ``final_reliability``
{bin_lower, voxels, confidence, accuracy} (:mod:`batterytwin.segment.metrics`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..contracts import SEGMENT_METRICS_SCHEMA
from ..errors import InputError
from . import style


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean (edges use the available points): a readable trend of a noisy loss."""
    if window <= 1 or y.size < 3:
        return y
    kernel = np.ones(window)
    num = np.convolve(y, kernel, mode="same")
    den = np.convolve(np.ones_like(y), kernel, mode="same")
    return num / den


def plot_training(metrics: Mapping[str, Any], where: str = "metrics.json"):
    """Loss per step (raw and smoothed), validation Dice per class over steps, final Dice bars with
    precision and recall markers, and the reliability diagram (accuracy vs confidence, ECE).

    Args:
        metrics: the parsed ``metrics.json``.
    Returns:
        the matplotlib figure.
    """
    if metrics.get("schema") != SEGMENT_METRICS_SCHEMA:
        raise InputError(f"{where}: schema is {metrics.get('schema')!r}, expected {SEGMENT_METRICS_SCHEMA!r}")
    curve = metrics.get("loss_curve")
    if not curve:
        raise InputError(f"{where}: no 'loss_curve' (not a segmentation metrics file?)")
    try:
        steps = np.array([float(c["step"]) for c in curve])
        loss = np.array([float(c["loss"]) for c in curve])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: 'loss_curve' entries need numeric 'step' and 'loss'") from None
    classes = {int(k): v for k, v in metrics.get("classes", {}).items()}
    val = metrics.get("validation") or []
    with style.paper_style():
        fig = style.new_figure(style.DOUBLE_COLUMN_IN, 4.6)
        (ax_loss, ax_dice), (ax_bar, ax_rel) = fig.subplots(2, 2)
        ax_loss.plot(steps, loss, color="0.7", lw=0.8, label="per step")
        ax_loss.plot(steps, _smooth(loss, max(1, len(loss) // 20)), color="#0072B2", label="running mean")
        ax_loss.set_xlabel("training step")
        ax_loss.set_ylabel("loss (Dice + cross-entropy)")
        if np.all(loss > 0) and loss.max() / max(loss.min(), 1e-12) > 10:
            ax_loss.set_yscale("log")
        ax_loss.legend()
        ax_loss.set_title("training loss")
        if val:
            vsteps = np.array([float(v["step"]) for v in val])
            dice = np.array([[np.nan if d is None else float(d) for d in v["dice"]] for v in val])
            for k in range(dice.shape[1]):
                name = classes.get(k, str(k))
                ax_dice.plot(vsteps, dice[:, k], marker="o", color=style.class_colour(k, name),
                             markeredgecolor="0.2", markeredgewidth=0.3, label=name.replace("_", " "))
            ax_dice.plot(vsteps, [float(v["mean_dice"]) for v in val], color="0.2", ls="--", label="mean")
            ax_dice.set_ylim(0, 1.02)
            # the class legend beside the panel, where it hides no curve
            ax_dice.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), handlelength=1.5)
        else:
            ax_dice.text(0.5, 0.5, "no validation record", ha="center", va="center", transform=ax_dice.transAxes)
        ax_dice.set_xlabel("training step")
        ax_dice.set_ylabel("validation Dice")
        ax_dice.set_title("per-class Dice")
        final = metrics.get("final_dice") or {}
        names = [classes[k] for k in sorted(classes)] if classes else list(final)
        vals = [final.get(n) for n in names]
        ys = np.arange(len(names))
        bars = ax_bar.barh(ys, [np.nan if v is None else v for v in vals],
                           color=[style.class_colour(k, n) for k, n in enumerate(names)], edgecolor="0.3", lw=0.4)
        for y, v, bar in zip(ys, vals, bars):
            # at the start of the bar, where no precision/recall marker sits (they are near the Dice)
            if v is None:  # no bar: say why, inside the panel
                ax_bar.text(0.02, y, "n/a (absent)", va="center", ha="left", fontsize=6, color="0.3", clip_on=True)
            else:
                inside = v >= 0.15
                ax_bar.text(0.02 if inside else v + 0.02, y, f"{v:.3f}", va="center", ha="left", fontsize=6,
                            color=style.text_colour_on(bar.get_facecolor()) if inside else "black", clip_on=True)
        ax_bar.set_yticks(ys, [n.replace("_", " ") for n in names])
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("final Dice (bars); precision, recall (markers)")
        mean = metrics.get("final_mean_dice")
        ax_bar.set_title("final" + (f" (mean Dice {mean:.3f})" if isinstance(mean, (int, float)) else ""))
        fig.bars = bars
        fig.markers = {}
        for key, marker, label in (("final_precision", "D", "precision"), ("final_recall", "^", "recall")):
            values = metrics.get(key)
            if values:
                xs = np.array([np.nan if values.get(n) is None else float(values[n]) for n in names])
                fig.markers[label] = ax_bar.scatter(xs, ys, marker=marker, s=14, facecolor="white",
                                                    edgecolor="0.1", lw=0.7, zorder=3, label=label)
        if fig.markers:  # beside the bars, not over them
            ax_bar.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=6)
        fig.reliability = _plot_reliability(ax_rel, metrics.get("final_reliability"), metrics.get("final_ece"))
    return fig


def _plot_reliability(ax, rel: Mapping[str, Any] | None, ece: float | None):
    """Reliability diagram: per confidence bin, the accuracy of its voxels (bars) and their mean confidence
    (dots); ECE is the voxel-weighted mean gap between the two."""
    ax.set_xlabel("confidence (largest class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8, label="calibrated")
    if not rel:
        ax.text(0.5, 0.5, "no calibration record", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("calibration")
        return None
    lower = np.asarray(rel["bin_lower"], float)
    width = (1.0 - lower[0]) / len(lower) if lower.size else 1.0
    acc = np.array([np.nan if a is None else float(a) for a in rel["accuracy"]])
    conf = np.array([np.nan if c is None else float(c) for c in rel["confidence"]])
    bars = ax.bar(lower, np.nan_to_num(acc), width=width, align="edge", color="#0072B2", edgecolor="0.3", lw=0.4,
                  label="accuracy")
    # the gap between a bar's top and its bin's mean confidence is that bin's calibration error
    ax.plot(lower + width / 2, conf, ls="none", marker="o", ms=2.5, color="#D55E00", label="mean confidence")
    ax.legend(loc="upper left", fontsize=6)
    ax.set_title("calibration" + (f" (ECE {ece:.3f})" if isinstance(ece, (int, float)) else ""))
    return bars
