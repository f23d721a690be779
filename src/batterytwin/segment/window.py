"""Sliding-window inference on a window grid fixed to the *whole volume*, with Gaussian blending.

MONAI's ``sliding_window_inference`` places windows relative to the tensor it is given; run per
shard (plus a halo), the windows and hence the blended result would depend on how the volume is
cut into shards. Here the grid is global: along each axis windows start at ``0, s, 2s, ...`` with
``s = int(roi * (1 - overlap))`` and a last window flush with the volume's end (as MONAI's
``dense_patch_slices``). A region is predicted by running every window of the grid that meets it
(each reads its full input from the volume, so it sees exactly what it would see in any other
split) and blending them in global window order with a Gaussian importance map (MONAI's
``compute_importance_map``). The result is therefore independent of the shard split and of the
number of ranks; the window itself is the halo. (Only float rounding can differ, about 1e-7, where
windows were batched differently through the network; labels then differ only at exact ties.)

MC dropout (``mc=(seed, samples)``): each window is passed ``samples`` times as one batch with the
network's dropout layers on (:func:`~batterytwin.segment.model.enable_dropout`), and its
probabilities are the mean softmax of the passes (Gal and Ghahramani, ICML 2016). The dropout masks
are drawn from a generator seeded by ``(seed, window origin)`` only (:func:`window_seed`), so a
window gets the same masks whichever shard, rank or cache computes it: the blended result keeps the
split independence above.

Example::

    probs = predict_region(net, volume_array, region=(slice(0, 32),) * 3, roi=(32, 32, 32),
                           n_classes=6, normalise=lambda x: x)   # float32 [6, 32, 32, 32]
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Sequence

import numpy as np
import torch


def window_starts(n: int, roi: int, overlap: float) -> list[int]:
    """Start offsets of the global window grid along one axis of length ``n``."""
    if n <= roi:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    starts = list(range(0, n - roi + 1, step))
    if starts[-1] != n - roi:
        starts.append(n - roi)
    return starts


def windows_meeting(shape: Sequence[int], region: Sequence[slice], roi: Sequence[int],
                    overlap: float) -> list[tuple[int, ...]]:
    """Window origins (global grid, C order) whose windows intersect ``region``."""
    axes = []
    for n, r, w in zip(shape, region, roi):
        axes.append([s for s in window_starts(n, w, overlap) if s < r.stop and s + w > r.start])
    return list(itertools.product(*axes))


def gaussian_weight(roi: Sequence[int], sigma_scale: float, device) -> torch.Tensor:
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(r) for r in roi), mode="gaussian", sigma_scale=sigma_scale,
                                  device=device, dtype=torch.float32)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def window_seed(seed: int, origin: Sequence[int]) -> int:
    """Seed of the dropout masks of the window at ``origin`` (global grid): a function of both only."""
    return int(np.random.SeedSequence([int(seed), *(int(o) for o in origin)]).generate_state(1, np.uint64)[0]
               & 0x7FFF_FFFF_FFFF_FFFF)


def window_probs(net: torch.nn.Module, x: torch.Tensor, origins: Sequence[tuple[int, ...]], device: torch.device,
                 amp: bool, mc: tuple[int, int] | None = None) -> torch.Tensor:
    """Softmax probabilities ``[b, C, *roi]`` of the windows ``x`` ``[b, *roi]`` (at ``origins``).

    With ``mc=(seed, samples)``: the mean softmax of ``samples`` passes per window, its dropout masks
    seeded by :func:`window_seed` (the network's dropout layers must be in training mode).
    """
    if mc is None:
        with _autocast(device, amp):
            logits = net(x[:, None])
        return torch.softmax(logits.float(), dim=1)
    seed, samples = int(mc[0]), int(mc[1])
    out = []
    for xi, o in zip(x, origins):
        # the global generator is forked: the masks of this window do not depend on what ran before
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(window_seed(seed, o))
            with _autocast(device, amp):
                logits = net(xi[None, None].repeat(samples, 1, 1, 1, 1))
        out.append(torch.softmax(logits.float(), dim=1).mean(0))
    return torch.stack(out)


@torch.no_grad()
def predict_region(net: torch.nn.Module, array: Any, region: Sequence[slice], roi: Sequence[int], n_classes: int,
                   normalise: Callable[[np.ndarray], np.ndarray], *, overlap: float = 0.25, sw_batch_size: int = 4,
                   sigma_scale: float = 0.125, device: torch.device | str = "cpu", amp: bool = True,
                   weight: torch.Tensor | None = None, cache: dict | None = None,
                   keep: Callable[[tuple[int, ...]], bool] | None = None,
                   mc: tuple[int, int] | None = None) -> torch.Tensor:
    """Blended class probabilities of ``region`` of a ``[Z, Y, X]`` volume.

    Args:
        net: network mapping ``[b, 1, *roi]`` to ``[b, n_classes, *roi]`` logits (in eval mode).
        array: the whole volume (zarr array or numpy); only the windows meeting ``region`` are read.
        region: tuple of 3 slices with explicit start/stop.
        roi: window size; axes of the volume shorter than the window are padded (edge values).
        normalise: intensity normalisation applied to the read voxels.
        cache: window origin -> probabilities ``[C, *window]`` computed for an earlier region;
            used instead of recomputing, then replaced by the windows for which ``keep(origin)``
            is true (those meeting the next region: a rank's consecutive shards share them).
        mc: ``(seed, samples)`` for MC dropout (:func:`window_probs`; one window per batch of
            ``samples`` passes, ``sw_batch_size`` is then not used); None = one deterministic pass.

    Returns:
        float32 tensor ``[n_classes, *region_shape]`` on ``device`` (probabilities summing to 1).
    """
    device = torch.device(device)
    shape = tuple(array.shape)
    roi = tuple(int(r) for r in roi)
    eff = tuple(min(r, n) for r, n in zip(roi, shape))  # window extent inside the volume
    origins = windows_meeting(shape, region, eff, overlap)
    cache = {} if cache is None else cache
    todo = [o for o in origins if o not in cache]
    tile, lo = None, [0, 0, 0]
    if todo:  # one read covering every window still to compute; windows are views of it
        lo = [min(o[k] for o in todo) for k in range(3)]
        hi = [max(o[k] for o in todo) + eff[k] for k in range(3)]
        tile = normalise(np.asarray(array[tuple(slice(a, b) for a, b in zip(lo, hi))]))
        tile = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32)).to(device)
    if weight is None:
        weight = gaussian_weight(roi, sigma_scale, device)
    rshape = tuple(r.stop - r.start for r in region)
    acc = torch.zeros((n_classes, *rshape), dtype=torch.float32, device=device)
    wsum = torch.zeros(rshape, dtype=torch.float32, device=device)
    pad = [(0, r - e) for r, e in zip(roi, eff)]
    kept: dict = {}
    computed: dict = {}
    next_todo = 0
    # blend in global window order (the same order for every split: bitwise equal sums); compute
    # the windows not in the cache in batches of sw_batch_size, just ahead of their turn
    for o in origins:
        if o in cache:
            probs = cache[o]
        else:
            if o not in computed:
                batch = todo[next_todo:next_todo + (1 if mc else sw_batch_size)]
                next_todo += len(batch)
                x = torch.stack([tile[tuple(slice(b[k] - lo[k], b[k] - lo[k] + eff[k]) for k in range(3))]
                                 for b in batch])
                if any(p[1] for p in pad):
                    x = torch.nn.functional.pad(x[:, None], [v for p in reversed(pad) for v in p],
                                                mode="replicate")[:, 0]
                out = window_probs(net, x, batch, device, amp, mc)
                computed.update({b: out[i] for i, b in enumerate(batch)})
            probs = computed.pop(o)
        if keep is not None and keep(o):
            kept[o] = probs
        dst, src = [], []
        for ax in range(3):
            a = max(o[ax], region[ax].start)
            b = min(o[ax] + eff[ax], region[ax].stop)
            dst.append(slice(a - region[ax].start, b - region[ax].start))
            src.append(slice(a - o[ax], b - o[ax]))
        w = weight[tuple(src)]
        acc[(slice(None), *dst)] += probs[(slice(None), *src)] * w
        wsum[tuple(dst)] += w
    cache.clear()
    cache.update(kept)
    return acc / wsum


def window_extent(shape: Sequence[int], roi: Sequence[int]) -> tuple[int, ...]:
    """Window extent inside a volume of ``shape`` (the window, clipped to the volume)."""
    return tuple(min(int(r), int(n)) for r, n in zip(roi, shape))


def meets(origin: Sequence[int], extent: Sequence[int], region: Sequence[slice]) -> bool:
    """Whether the window at ``origin`` intersects ``region``."""
    return all(o < r.stop and o + e > r.start for o, e, r in zip(origin, extent, region))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Softmax entropy (nats) over the class axis 0: ``[C, ...] -> [...]``."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(0)
