"""Dice + cross-entropy that ignore unlabelled voxels, summed so that ranks add up exactly.

MONAI's ``DiceCELoss`` has no ignore label: with sparse hand labels (255 = unlabelled) it would
train the network to predict "class 0" wherever nobody labelled. Here both terms see labelled
voxels only:

- cross-entropy: sum over labelled voxels of ``w[y] * -log p_y``, divided by the *global*
  (all-ranks) sum of ``w[y]``;
- soft Dice, per sample and class over its labelled voxels, ``1 - (2 I + s) / (P + G + s)``,
  averaged over classes, summed over samples and divided by the *global* batch size.

Both are sums over local samples divided by global totals, so with DDP (which averages
gradients over ``world_size`` ranks) the local loss is multiplied by ``world_size``: N ranks with
global batch B then take exactly the step one rank takes with batch B.

Example::

    logits = torch.randn(2, 6, 8, 8, 8, requires_grad=True)
    target = torch.randint(0, 6, (2, 8, 8, 8)); target[:, :4] = 255     # half unlabelled
    w = labelled_weight(target, 6)                                      # global total (1 rank)
    loss = dice_ce_loss(logits, target, 6, weight_total=w, global_batch=2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from ..contracts import IGNORE_LABEL

if TYPE_CHECKING:
    import numpy

SMOOTH = 1e-5


def labelled_weight(target: torch.Tensor, n_classes: int, class_weights: Sequence[float] | None = None,
                    ignore_label: int = IGNORE_LABEL) -> torch.Tensor:
    """Sum of cross-entropy weights of the labelled voxels in ``target`` (``[B, Z, Y, X]`` int64)."""
    mask = target != ignore_label
    if class_weights is None:
        return mask.sum().to(torch.float64)
    w = torch.as_tensor(class_weights, dtype=torch.float64, device=target.device)
    return w[torch.where(mask, target, 0)][mask].sum()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int, *, weight_total: torch.Tensor | float,
                 global_batch: int, world_size: int = 1, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 class_weights: Sequence[float] | None = None, ignore_label: int = IGNORE_LABEL,
                 tversky_weight: float = 0.0, tversky_alpha: float = 0.3, tversky_beta: float = 0.7) -> torch.Tensor:
    """Masked Dice + CE (+ Tversky) of this rank's samples, scaled for DDP gradient averaging.

    The optional Tversky term is MONAI's ``TverskyLoss`` (softmax, ``ignore_index`` = the ignore
    label) per sample and class, averaged over classes and divided by the global batch like the
    Dice term; ``beta > alpha`` weighs missed voxels (false negatives) above false alarms, which
    favours the recall of rare classes (redeposited lithium).

    Args:
        logits: ``[b, C, Z, Y, X]`` network output (any float dtype; computed in float32).
        target: ``[b, Z, Y, X]`` int64 class ids, ``ignore_label`` for unlabelled voxels.
        weight_total: :func:`labelled_weight` summed over all ranks' targets of this step.
        global_batch: number of samples over all ranks (B).
        world_size: number of DDP ranks (the gradient is averaged over them).

    Returns:
        scalar tensor; summing the unscaled values (``loss / world_size``) over ranks gives the
        loss of the global batch.
    """
    logits = logits.float()
    mask = target != ignore_label
    safe = torch.where(mask, target, 0)
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)[safe] * mask
    else:
        w = mask.to(logits.dtype)
    ce = (nll * w).sum() / max(float(weight_total), 1e-12)

    m = mask.unsqueeze(1).to(logits.dtype)
    probs = logp.exp() * m
    onehot = F.one_hot(safe, n_classes).movedim(-1, 1).to(logits.dtype) * m
    dims = tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + SMOOTH) / (denom + SMOOTH)  # [b, C]; a sample with no labels gives 1
    dice_loss = (1 - dice).mean(dim=1).sum() / global_batch
    total = ce_weight * ce + dice_weight * dice_loss
    if tversky_weight > 0:
        from monai.losses import TverskyLoss

        tv = TverskyLoss(softmax=True, to_onehot_y=True, alpha=tversky_alpha, beta=tversky_beta, reduction="none",
                         smooth_nr=SMOOTH, smooth_dr=SMOOTH, ignore_index=ignore_label)
        per = tv(logits, target.unsqueeze(1)).reshape(logits.shape[0], n_classes)  # [b, C]
        total = total + tversky_weight * per.mean(dim=1).sum() / global_batch
    return total * world_size


def hard_dice_counts(pred: torch.Tensor | numpy.ndarray, target, n_classes: int, ignore_label: int = IGNORE_LABEL):
    """Per-class ``(2|P∩G|, |P|+|G|)`` counts over labelled voxels (accumulate, then divide).

    Args:
        pred, target: integer arrays of one shape (numpy or torch).

    Returns:
        two float64 numpy arrays ``[C]``.
    """
    import numpy as np

    pred = np.asarray(pred).ravel()
    target = np.asarray(target).ravel()
    keep = target != ignore_label
    p, t = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    inter = np.bincount(t[p == t], minlength=n_classes)[:n_classes]
    size = np.bincount(p, minlength=n_classes)[:n_classes] + np.bincount(t, minlength=n_classes)[:n_classes]
    return 2.0 * inter.astype(np.float64), size.astype(np.float64)
