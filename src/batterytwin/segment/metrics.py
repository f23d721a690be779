"""Segmentation scores over labelled voxels: per-class Dice, precision, recall and calibration (ECE).

The scores are accumulated region by region (:meth:`SegmentationScores.update` with the class
probabilities of a region and its labels; 255 = unlabelled is skipped), so a validation that
predicts a large volume in blocks never holds more than one block:

- a confusion matrix (``sklearn.metrics.confusion_matrix``; rows = reference class, columns =
  predicted class = argmax of the probabilities) gives per-class Dice ``2TP / (2TP + FP + FN)``,
  precision ``TP / (TP + FP)`` and recall ``TP / (TP + FN)``;
- the expected calibration error is the top-label ECE of Guo et al. (ICML 2017): the confidence of
  a voxel is its largest class probability, voxels are binned by confidence into
  :data:`ECE_BINS` equal-width bins of [0, 1] (``monai.metrics.calibration_binning``), and
  ``ECE = sum_b n_b / N * |accuracy_b - confidence_b|``. Bin sums (not per-block ECEs) are
  accumulated, so the ECE of a volume is that of all its labelled voxels at once.

A class that is neither predicted nor labelled has undefined precision (and recall): ``None`` in
:meth:`SegmentationScores.result`.

Example::

    scores = SegmentationScores(n_classes=6)
    scores.update(probs, labels)        # probs float [6, Z, Y, X] (torch or numpy), labels uint8 [Z, Y, X]
    scores.result()["ece"], scores.result()["precision"]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..contracts import IGNORE_LABEL

ECE_BINS = 15  # Guo et al. 2017: 15 equal-width confidence bins


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [None if d == 0 else float(n / d) for n, d in zip(num, den)]


class SegmentationScores:
    """Streaming per-class confusion counts and confidence bins over the labelled voxels."""

    def __init__(self, n_classes: int, bins: int = ECE_BINS, ignore_label: int = IGNORE_LABEL):
        self.n_classes = int(n_classes)
        self.bins = int(bins)
        self.ignore_label = int(ignore_label)
        self.confusion = np.zeros((self.n_classes, self.n_classes), np.int64)
        self.bin_count = np.zeros(self.bins, np.float64)
        self.bin_confidence = np.zeros(self.bins, np.float64)  # sum of confidences per bin
        self.bin_correct = np.zeros(self.bins, np.float64)     # correct voxels per bin

    def update(self, probs: Any, labels: Any) -> None:
        """Add a region: ``probs`` ``[C, *shape]`` class probabilities, ``labels`` ``[*shape]`` ids (255 skipped)."""
        from monai.metrics import calibration_binning
        from sklearn.metrics import confusion_matrix

        probs = torch.as_tensor(probs).detach().float().cpu()
        target = torch.as_tensor(np.asarray(labels).astype(np.int64))
        if probs.shape[0] != self.n_classes or tuple(probs.shape[1:]) != tuple(target.shape):
            raise ValueError(f"probabilities {tuple(probs.shape)} do not match {self.n_classes} classes x labels "
                             f"{tuple(target.shape)}")
        keep = target.reshape(-1) != self.ignore_label
        if not bool(keep.any()):
            return
        p = probs.reshape(self.n_classes, -1)[:, keep]
        t = target.reshape(-1)[keep]
        confidence, pred = p.max(0)
        self.confusion += confusion_matrix(t.numpy(), pred.numpy(), labels=np.arange(self.n_classes))
        mean_p, mean_gt, counts = calibration_binning(confidence[None, None], (pred == t).float()[None, None],
                                                      num_bins=self.bins)
        counts = counts[0, 0].double().numpy()
        self.bin_count += counts
        self.bin_confidence += np.nan_to_num(mean_p[0, 0].double().numpy()) * counts
        self.bin_correct += np.nan_to_num(mean_gt[0, 0].double().numpy()) * counts

    def merge(self, other: "SegmentationScores") -> None:
        """Add the counts of another accumulator (another rank, another volume)."""
        self.confusion += other.confusion
        self.bin_count += other.bin_count
        self.bin_confidence += other.bin_confidence
        self.bin_correct += other.bin_correct

    @property
    def voxels(self) -> int:
        return int(self.confusion.sum())

    def ece(self) -> float | None:
        """Top-label expected calibration error over every voxel added (None before any)."""
        n = self.bin_count.sum()
        if n == 0:
            return None
        return float(np.abs(self.bin_correct - self.bin_confidence).sum() / n)

    def result(self) -> dict[str, Any]:
        """``dice``, ``precision``, ``recall`` (per class id, None where undefined), ``ece``, ``accuracy``,
        ``voxels`` and ``reliability`` (per bin: lower edge, voxels, mean confidence, accuracy)."""
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        predicted, labelled = cm.sum(0), cm.sum(1)
        n = self.bin_count
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.where(n > 0, self.bin_confidence / np.maximum(n, 1), np.nan)
            acc = np.where(n > 0, self.bin_correct / np.maximum(n, 1), np.nan)
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        return {
            "dice": _ratio(2 * tp, predicted + labelled),
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, labelled),
            "ece": self.ece(),
            "accuracy": None if cm.sum() == 0 else float(tp.sum() / cm.sum()),
            "voxels": self.voxels,
            "reliability": {"bin_lower": edges[:-1].tolist(), "voxels": n.astype(np.int64).tolist(),
                            "confidence": [None if np.isnan(v) else float(v) for v in conf],
                            "accuracy": [None if np.isnan(v) else float(v) for v in acc]},
        }


def final_scores(final: dict[str, Any] | None, classes: dict[int, str]) -> dict[str, Any]:
    """The ``final_*`` keys of the segmentation ``metrics.json`` from the last validation record:
    precision and recall by class name, the ECE and the reliability bins (None without validation)."""
    final = final or {}
    by_name = {key: None if final.get(key) is None else {classes[c]: v for c, v in enumerate(final[key])}
               for key in ("precision", "recall")}
    return {"final_precision": by_name["precision"], "final_recall": by_name["recall"],
            "final_ece": final.get("ece"), "final_reliability": final.get("reliability"),
            "ece_bins": ECE_BINS}
