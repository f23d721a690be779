"""``batterytwin segment``: distributed sliding-window inference, store in, label store out.

Ranks own disjoint contiguous runs of whole output shards (of
:func:`batterytwin.store.shard_regions`, C order); each shard is predicted with
:func:`~batterytwin.segment.window.predict_region` on the global window grid, so the label store
is the same for any number of ranks. Memory per rank is bounded by one shard: the input tile
(shard + up to one window on each side) and ``n_classes`` float32 probabilities of the shard.

Outputs (atomic): ``labels.zarr`` (uint8; attributes ``classes``, ``ignore_label``, model and
input provenance) and optionally ``uncertainty.zarr`` (float16 entropy in nats; 0 = certain,
``ln(n_classes)`` = uniform). ``infer.uncertainty_method`` chooses it: ``entropy``, the softmax
entropy of one pass, or ``mc_dropout``, the entropy of the mean softmax of ``mc_samples`` passes
with the model's dropout on (the labels are then the argmax of that mean). Both stores record the
method in the attribute ``uncertainty_method`` (and ``mc_samples``/``mc_seed`` for MC dropout).

Example::

    segment_volume("results/s1/denoised.zarr", "results/models/segment/model.pt",
                   "results/s1/labels.zarr", "results/s1/uncertainty.zarr", infer_cfg)
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Mapping

import numpy as np
import torch

from .. import store
from ..config import as_settings
from ..contracts import IGNORE_LABEL
from ..distributed import World, get_world, select_device, split_evenly
from ..errors import InputError
from ..kinds import require_kind
from ..progress import progress
from ..sanity import check_finite_result, contrast_refusal
from ..training import set_threads
from .config import InferSettings
from .data import intensity_range
from .model import check_patch, enable_dropout
from .pretrained import is_pretrained, resolve_model
from .train import load_model
from .window import entropy, gaussian_weight, meets, predict_region, window_extent

log = logging.getLogger(__name__)
MIN_EDGE = 2  # voxels per axis: below that there is no image to segment


@contextlib.contextmanager
def label_outputs(labels_out: str, uncertainty_out: str | None, shape, label_attrs: dict, unc_attrs: dict,
                  chunk: int, shard: int, world: World):
    """The label store (uint8) and optional uncertainty store (float16) of a segmentation, created by
    rank 0 under temporary names and committed together when the block ends: ``(labels, uncertainty)``
    opened for writing (``uncertainty`` None without ``uncertainty_out``); ranks write whole shards."""
    with contextlib.ExitStack() as stack:
        tmp_labels = stack.enter_context(store.atomic_output(labels_out, world))
        tmp_unc = stack.enter_context(store.atomic_output(uncertainty_out, world)) if uncertainty_out else None
        if world.is_root:
            store.create_volume(tmp_labels, shape, "uint8", label_attrs, chunk=chunk, shard=shard)
            if tmp_unc is not None:
                store.create_volume(tmp_unc, shape, "float16", unc_attrs, chunk=chunk, shard=shard)
        world.barrier()
        out = store.open_volume(tmp_labels, mode="r+", validate=False)
        unc = store.open_volume(tmp_unc, mode="r+", validate=False) if tmp_unc is not None else None
        yield out, unc


def segment_volume(input_path: str, model_path: str, labels_out: str, uncertainty_out: str | None,
                   infer_cfg: InferSettings | Mapping[str, Any], world: World | None = None) -> dict[str, Any]:
    """Segment ``input_path`` with the model at ``model_path``; returns timing figures (rank 0).

    Args:
        infer_cfg: the ``segment.infer`` section (a mapping is validated).
    """
    world = world or get_world()
    t0 = time.time()
    cfg = as_settings(InferSettings, infer_cfg, "segment.infer")
    set_threads(world, cfg.threads)
    device = select_device(world, cfg.device)
    model_path = resolve_model(model_path) if is_pretrained(model_path) else model_path
    net, meta = load_model(model_path, device)
    n_classes = int(meta["n_classes"])
    roi = list(cfg.patch_size or meta["patch_size"])
    check_patch(roi, meta["model"], "segment.infer.patch_size")
    amp = cfg.amp and device.type == "cuda"
    method = cfg.uncertainty_method
    mc = None
    if method == "mc_dropout":
        if not enable_dropout(net):
            raise InputError(f"{model_path}: segment.infer.uncertainty_method mc_dropout needs a model trained with "
                             f"dropout (segment.model.dropout > 0; this one has {meta['model'].get('dropout', 0)})")
        mc = (cfg.seed, cfg.mc_samples)
    vol = store.open_volume(input_path)
    require_kind(vol, "ct", "segment --input")
    if len(vol.shape) != 3:
        raise InputError(f"{input_path}: expected a 3-D volume (z, y, x), got shape {vol.shape}")
    if min(vol.shape) < MIN_EDGE:
        raise InputError(f"{input_path}: volume {vol.shape} is too small to segment (each edge >= {MIN_EDGE} voxels)")
    store.check_finite(vol, world)
    problem = world.bcast(contrast_refusal(vol.array, str(vol.path), "segment") if world.is_root else None)
    if problem is not None:
        raise problem
    lo, hi = world.bcast(intensity_range(vol.array) if world.is_root else None)


    def normalise(x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - lo) / (hi - lo)).astype(np.float32)

    params = {"model_sha256": store.sha256_files([model_path]) if world.is_root else None,
              "overlap": cfg.overlap, "sw_batch_size": cfg.sw_batch_size, "sigma_scale": cfg.sigma_scale,
              "patch_size": roi,
              "uncertainty_method": method, **({"mc_samples": mc[1], "mc_seed": mc[0]} if mc else {})}
    params = world.bcast(params)
    source = {"path": str(input_path), "producer": vol.attrs.get("producer", {}).get("config_sha256"),
              "model": str(model_path)}
    recorded = {"uncertainty_method": method, **({"mc_samples": mc[1], "mc_seed": mc[0]} if mc else {})}
    label_attrs = store.volume_attrs("segment", vol.voxel_size_um, params, source,
                                     classes=dict(meta["classes"]), ignore_label=IGNORE_LABEL, method="network",
                                     # the model's start: the shipped batteryNET with its head kept or a new one
                                     **({"model_init": meta["init"]} if meta.get("init") else {}), **recorded)
    chunk = cfg.chunk or store.DEFAULT_CHUNK
    shard = cfg.shard or store.DEFAULT_SHARD
    weight = gaussian_weight(roi, cfg.sigma_scale, device)

    quantity = "softmax entropy" if mc is None else f"entropy of the mean softmax of {mc[1]} MC-dropout passes"
    unc_attrs = store.volume_attrs("segment", vol.voxel_size_um, params, source, quantity=quantity,
                                   units="nats", max_value=float(np.log(n_classes)), **recorded)
    with label_outputs(labels_out, uncertainty_out, vol.shape, label_attrs, unc_attrs, chunk, shard,
                       world) as (out, unc):
        regions = store.shard_regions(vol.shape, out.shards)
        # contiguous runs of shards (C order: neighbours along x), so that windows on the face
        # between two consecutive shards of a rank are computed once (kept in `cache`)
        mine = list(split_evenly(range(len(regions)), world))
        extent = window_extent(vol.shape, roi)
        cache: dict = {}
        for j, i in enumerate(progress(mine, desc="segment", total=len(mine))):
            nxt = regions[mine[j + 1]] if j + 1 < len(mine) else None
            probs = predict_region(net, vol.array, regions[i], roi, n_classes, normalise,
                                   overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size, device=device, amp=amp,
                                   weight=weight, cache=cache, mc=mc,
                                   keep=None if nxt is None else (lambda o, r=nxt: meets(o, extent, r)))
            check_finite_result(probs, "segment", labels_out, regions[i])
            out.array[regions[i]] = probs.argmax(0).to(torch.uint8).cpu().numpy()
            if unc is not None:
                unc.array[regions[i]] = entropy(probs).to(torch.float16).cpu().numpy()
            del probs
    wall = time.time() - t0
    n = int(np.prod(vol.shape))
    figures = {"voxels": n, "wall_s": wall, "mvoxel_per_s": n / wall / 1e6, "ranks": world.size,
               "device": str(device)}
    if world.is_root:
        log.info("segmented %s (%.2f Mvoxel) in %.1f s: %.3g Mvoxel/s on %d rank(s)", input_path, n / 1e6, wall,
                 figures["mvoxel_per_s"], world.size)
    return figures
