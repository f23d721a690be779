"""``batterytwin segment`` with ``segment.method: gmm``: the label-free segmentation driver.

Store in, label store out, shard by shard over MPI ranks like :mod:`batterytwin.segment.infer`:

1. Sample: the blocks of the fixed sampling grid (:func:`~batterytwin.segment.gmm.sample_blocks`)
   are split over the ranks; each draws its blocks' quota with per-block seeds and the samples are
   gathered in block order, so the sample (and the fit) is the same for any number of ranks.
2. Fit: rank 0 fits the mixture (:func:`~batterytwin.segment.gmm.fit_mixture`) and broadcasts it.
3. Label: ranks own disjoint contiguous runs of whole output shards; each shard is read with a
   halo of ``4 r + 1`` voxels (mirrored at the volume's faces), classified, cleaned and cropped, so
   the labels do not depend on the shard size or the number of ranks.

Memory per rank: one padded shard of float32 intensities, its float64 log-densities per slab of
2M voxels, and ``n_classes`` boolean masks of the padded shard.

Outputs (atomic): ``labels.zarr`` (uint8; attributes ``classes`` (the run's class map),
``ignore_label``, ``method: gmm``, the fitted ``gmm``) and optionally ``uncertainty.zarr``
(float16 entropy of the GMM class posteriors in nats, before the clean-up).

Example::

    segment_gmm("results/s1/denoised.zarr", "results/s1/labels.zarr", None,
                SegmentConfig(method="gmm"))
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np

from .. import store
from ..config import as_settings
from ..contracts import CLASSES, IGNORE_LABEL
from ..distributed import World, get_world, split_evenly
from ..errors import InputError
from ..progress import progress
from .config import GmmSettings, SegmentConfig
from ..kinds import require_kind
from ..sanity import contrast_refusal
from .gmm import (check_mixture, classify, clean_labels, fit_mixture, halo, pad_tile, sample_blocks,
                  sample_intensities)
from .infer import label_outputs

log = logging.getLogger(__name__)


def padded_read(array: Any, region: tuple[slice, ...], margin: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``array[region]`` grown by ``margin`` on every side (mirrored beyond the volume), and the slice
    of the result that is ``region``."""
    shape = array.shape
    lo = [max(0, s.start - margin) for s in region]
    hi = [min(n, s.stop + margin) for s, n in zip(region, shape)]
    tile = np.asarray(array[tuple(slice(a, b) for a, b in zip(lo, hi))])
    before = [margin - (s.start - a) for s, a in zip(region, lo)]
    after = [margin - (b - s.stop) for s, b in zip(region, hi)]
    tile = pad_tile(tile, before, after)
    return tile, tuple(slice(margin, margin + s.stop - s.start) for s in region)


def class_lut(gmm: GmmSettings) -> tuple[np.ndarray, list[int]]:
    """Component -> class id of the run's class map (uint8 [K]) and the class ids produced."""
    ids = {name: c for c, name in CLASSES.items()}
    lut = np.array([ids[name] for name in gmm.component_classes()], np.uint8)
    return lut, sorted({int(c) for c in lut})


MIN_CLASS_FRACTION = 1e-3  # a class given fewer of the labelled voxels has vanished (nothing committed)


def _check_classes_found(counts: np.ndarray, produced: list[int], where: str) -> None:
    """Refuse labels in which a class of the mixture ended with (near) no voxel after the clean-up."""
    counts = np.asarray(counts, np.float64)
    total = counts[produced].sum()
    for c in produced:
        if counts[c] < MIN_CLASS_FRACTION * total:
            raise InputError(f"{where}: segment.gmm: class {CLASSES[c]!r} got {int(counts[c])} of {int(total)} voxels "
                             f"(< {100 * MIN_CLASS_FRACTION:g} %): it vanished; give fewer classes in "
                             "segment.gmm.classes")


def segment_gmm(input_path: str, labels_out: str, uncertainty_out: str | None, cfg: SegmentConfig | Mapping[str, Any],
                world: World | None = None) -> dict[str, Any]:
    """Segment ``input_path`` without a model; returns timing and fit figures (on every rank).

    Args:
        cfg: the whole ``segment`` section (``gmm``; ``infer.chunk``/``infer.shard`` for the output; a mapping
            is validated).

    Raises:
        InputError: not a 3-D volume, or fewer distinct intensities than components.
    """
    world = world or get_world()
    t0 = time.time()
    cfg = as_settings(SegmentConfig, cfg, "segment")
    gmm, infer = cfg.gmm, cfg.infer
    lut, produced = class_lut(gmm)
    vol = store.open_volume(input_path)
    require_kind(vol, "ct", "segment --input")
    if len(vol.shape) != 3:
        raise InputError(f"{input_path}: expected a 3-D volume (z, y, x), got shape {vol.shape}")
    problem = world.bcast(contrast_refusal(vol.array, str(vol.path), "segment") if world.is_root else None)
    if problem is not None:
        raise problem

    blocks = list(split_evenly(range(len(sample_blocks(vol.shape))), world))
    mine = sample_intensities(vol.array, gmm.max_samples, gmm.seed, blocks=blocks)
    parts = world.allgather(mine)
    mix = None
    if world.is_root:
        try:
            mix = fit_mixture(np.concatenate(parts), len(lut), seed=gmm.seed, max_iter=gmm.max_iter,
                              n_init=gmm.n_init)
            check_mixture(mix, gmm.component_classes(), f"{input_path}: segment.gmm")
        except InputError as exc:
            mix = exc
    mix = world.bcast(mix)
    if isinstance(mix, InputError):
        raise mix
    t_fit = time.time() - t0

    params = {"method": "gmm", "gmm": gmm.model_dump(mode="json"), "fit": mix.to_dict()}
    source = {"path": str(input_path), "producer": vol.attrs.get("producer", {}).get("config_sha256")}
    classes = {str(c): n for c, n in CLASSES.items()}
    fit = {**mix.to_dict(), "component_classes": gmm.component_classes(), "samples": int(sum(p.size for p in parts))}
    label_attrs = store.volume_attrs("segment", vol.voxel_size_um, params, source, classes=classes,
                                     ignore_label=IGNORE_LABEL, method="gmm", gmm=fit)
    chunk = infer.chunk or store.DEFAULT_CHUNK
    shard = infer.shard or store.DEFAULT_SHARD
    margin = halo(gmm.clean_radius)
    changed = 0
    counts = np.zeros(256, np.int64)
    unc_attrs = store.volume_attrs("segment", vol.voxel_size_um, params, source, method="gmm",
                                   quantity="GMM class posterior entropy", units="nats",
                                   max_value=float(np.log(len(produced))))
    with label_outputs(labels_out, uncertainty_out, vol.shape, label_attrs, unc_attrs, chunk, shard,
                       world) as (out, unc):
        regions = store.shard_regions(vol.shape, out.shards)
        for i in progress(list(split_evenly(range(len(regions)), world)), desc="segment (gmm)"):
            tile, inner = padded_read(vol.array, regions[i], margin)
            if unc is not None:
                labels, ent = classify(tile, mix, lut, class_posteriors=True)
                unc.array[regions[i]] = ent[inner].astype(np.float16)
            else:
                labels = classify(tile, mix, lut)
            cleaned = clean_labels(labels, produced, gmm.clean_radius)[inner]
            changed += int((cleaned != labels[inner]).sum())
            counts += np.bincount(cleaned.ravel(), minlength=256)
            out.array[regions[i]] = cleaned
        _check_classes_found(world.allreduce_sum(counts.astype(np.float64)), produced, input_path)
    changed = int(world.allreduce_sum(float(changed)))
    wall = time.time() - t0
    n = int(np.prod(vol.shape))
    figures = {"voxels": n, "wall_s": wall, "fit_s": t_fit, "mvoxel_per_s": n / wall / 1e6, "ranks": world.size,
               "cleaned_voxels": changed, **fit}
    if world.is_root:
        log.info("GMM-segmented %s (%.2f Mvoxel) in %.1f s (fit %.1f s) on %d rank(s); means %s; clean-up changed "
                 "%d voxels", input_path, n / 1e6, wall, t_fit, world.size,
                 ", ".join(f"{m:.3g}" for m in mix.means), changed)
    return figures
