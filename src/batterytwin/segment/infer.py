"""``batterytwin segment``: distributed sliding-window inference, store in, label store out.

Ranks own disjoint contiguous runs of whole output shards (of
:func:`batterytwin.store.shard_regions`, C order); each shard is predicted with
:func:`~batterytwin.segment.window.predict_region` on the global window grid, so the label store
is the same for any number of ranks. Memory per rank is bounded by one shard: the input tile
(shard + up to one window on each side) and ``n_classes`` float32 probabilities of the shard.

Outputs (atomic): ``labels.zarr`` (uint8; attributes ``classes``, ``ignore_label``, model and
input provenance) and optionally ``uncertainty.zarr`` (float16 softmax entropy in nats; 0 =
certain, ``ln(n_classes)`` = uniform).

Example::

    segment_volume("results/s1/denoised.zarr", "results/models/segment/model.pt",
                   "results/s1/labels.zarr", "results/s1/uncertainty.zarr", infer_cfg)
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import numpy as np
import torch

from .. import store
from ..contracts import IGNORE_LABEL
from ..distributed import World, get_world, select_device, split_evenly
from ..errors import InputError
from ..progress import progress
from .data import intensity_range
from .model import check_patch
from .train import _set_threads, load_model
from .window import entropy, gaussian_weight, meets, predict_region, window_extent

log = logging.getLogger(__name__)


def segment_volume(input_path: str, model_path: str, labels_out: str, uncertainty_out: str | None,
                   infer_cfg: dict[str, Any], world: World | None = None) -> dict[str, Any]:
    """Segment ``input_path`` with the model at ``model_path``; returns timing figures (rank 0).

    Args:
        infer_cfg: the ``segment.infer`` section (patch_size, overlap, sw_batch_size,
            sigma_scale, device, amp, chunk, shard, threads).
    """
    world = world or get_world()
    t0 = time.time()
    _set_threads(world, int(infer_cfg.get("threads") or 0))
    device = select_device(world, infer_cfg.get("device", "auto"))
    net, meta = load_model(model_path, device)
    n_classes = int(meta["n_classes"])
    roi = list(infer_cfg.get("patch_size") or meta["patch_size"])
    check_patch(roi, meta["model"], "segment.infer.patch_size")
    amp = bool(infer_cfg.get("amp", True)) and device.type == "cuda"
    vol = store.open_volume(input_path)
    if len(vol.shape) != 3:
        raise InputError(f"{input_path}: expected a 3-D volume (z, y, x), got shape {vol.shape}")
    lo, hi = world.bcast(intensity_range(vol.array) if world.is_root else None)

    def normalise(x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - lo) / (hi - lo)).astype(np.float32)

    params = {"model_sha256": store.sha256_files([model_path]) if world.is_root else None,
              **{k: infer_cfg.get(k) for k in ("overlap", "sw_batch_size", "sigma_scale")}, "patch_size": roi}
    params = world.bcast(params)
    source = {"path": str(input_path), "producer": vol.attrs.get("producer", {}).get("config_sha256"),
              "model": str(model_path)}
    label_attrs = store.volume_attrs("segment", vol.voxel_size_um, params, source,
                                     classes=dict(meta["classes"]), ignore_label=IGNORE_LABEL, method="network")
    chunk = int(infer_cfg.get("chunk") or store.DEFAULT_CHUNK)
    shard = int(infer_cfg.get("shard") or store.DEFAULT_SHARD)
    weight = gaussian_weight(roi, float(infer_cfg.get("sigma_scale", 0.125)), device)

    with contextlib.ExitStack() as stack:
        tmp_labels = stack.enter_context(store.atomic_output(labels_out, world))
        tmp_unc = stack.enter_context(store.atomic_output(uncertainty_out, world)) if uncertainty_out else None
        if world.is_root:
            store.create_volume(tmp_labels, vol.shape, "uint8", label_attrs, chunk=chunk, shard=shard)
            if tmp_unc is not None:
                unc_attrs = store.volume_attrs("segment", vol.voxel_size_um, params, source,
                                               quantity="softmax entropy", units="nats",
                                               max_value=float(np.log(n_classes)))
                store.create_volume(tmp_unc, vol.shape, "float16", unc_attrs, chunk=chunk, shard=shard)
        world.barrier()
        out = store.open_volume(tmp_labels, mode="r+", validate=False)
        unc = store.open_volume(tmp_unc, mode="r+", validate=False) if tmp_unc is not None else None
        regions = store.shard_regions(vol.shape, out.shards)
        # contiguous runs of shards (C order: neighbours along x), so that windows on the face
        # between two consecutive shards of a rank are computed once (kept in `cache`)
        mine = list(split_evenly(range(len(regions)), world))
        extent = window_extent(vol.shape, roi)
        cache: dict = {}
        for j, i in enumerate(progress(mine, desc="segment", total=len(mine))):
            nxt = regions[mine[j + 1]] if j + 1 < len(mine) else None
            probs = predict_region(net, vol.array, regions[i], roi, n_classes, normalise,
                                   overlap=float(infer_cfg.get("overlap", 0.25)),
                                   sw_batch_size=int(infer_cfg.get("sw_batch_size", 4)), device=device, amp=amp,
                                   weight=weight, cache=cache,
                                   keep=None if nxt is None else (lambda o, r=nxt: meets(o, extent, r)))
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
