"""Random 3-D training patches read lazily from volume and label stores.

Nothing here loads a whole volume: patches are sliced from the zarr arrays (only the chunks they
touch are read), the class index is built block by block, and intensity statistics come from the
whole volume (or, for a large one, blocks spread over its whole extent).

Determinism: patch ``i`` of the run (the ``i``-th sample of the global stream, ``i = step * B + j``)
is drawn from ``numpy.random.default_rng([seed, i])`` alone, so it is the same whichever rank or
DataLoader worker reads it, and a resumed run sees exactly the patches it would have seen.
:class:`StepSampler` hands each rank its contiguous slice of every global batch (the
DistributedSampler of this stream).

Class-aware sampling: with probability ``class_balance`` a patch is centred on a random voxel of a
class drawn uniformly among the classes present, so that rare classes (redeposited lithium) are
seen as often as common ones; otherwise a labelled voxel is drawn uniformly and the patch origin
uniformly among the patches that hold it (uniform over the volume when every voxel is labelled).
Either way every patch holds labelled voxels, so sparse hand labels (a few labelled slices or
scribbles, the rest 255) never give a patch that teaches nothing.

Validation by region: labels inside ``holdout`` (a slab along one axis) are set to 255 (ignored)
in every training patch and are used for validation only; the image there may still be seen as
context, which is also available at inference.

Example::

    src = PatchSource.open(image_array, label_array, n_classes=6, holdout=(slice(None),) * 2 + (slice(40, 48),))
    ds = PatchDataset([src], patch=(32, 32, 32), seed=0)
    img, lab = ds[0]        # float32 [1, 32, 32, 32], int64 [32, 32, 32]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..config import as_settings
from ..contracts import IGNORE_LABEL
from ..errors import InputError
from .config import AugmentSettings

INDEX_BLOCK = 16  # voxels per side of a class-index block: small, so a drawn block holds its class densely
INDEX_SUPER = 4 * INDEX_BLOCK  # edge of the regions read to build the class index
STATS_BLOCK = 32
STATS_BLOCKS = 64


def intensity_range(array: Any, q: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """Robust intensity range (1st, 99th percentile) of the whole volume.

    A volume of at most ``STATS_BLOCKS`` blocks of ``STATS_BLOCK^3`` voxels is read entirely (in z
    slabs), so the range is exactly ``np.percentile`` of every voxel whatever the shape. A larger
    volume is cut into a block grid that covers its whole extent (the last, partial blocks
    included) and ``STATS_BLOCKS`` blocks spread evenly over that grid are read. The choice
    depends on the shape only, so training, validation and inference normalise a volume alike.

    Args:
        array: ``[Z, Y, X]`` array-like (zarr or numpy), read block by block.

    Returns:
        ``(lo, hi)`` with ``hi > lo``; the network sees ``(x - lo) / (hi - lo)``.
    """
    shape = tuple(int(n) for n in array.shape)
    if int(np.prod(shape)) <= STATS_BLOCKS * STATS_BLOCK**3:
        regions = [(slice(z, min(z + STATS_BLOCK, shape[0])), slice(None), slice(None))
                   for z in range(0, shape[0], STATS_BLOCK)]
    else:
        grid = list(itertools.product(*[range(0, n, STATS_BLOCK) for n in shape]))
        pick = np.unique(np.linspace(0, len(grid) - 1, STATS_BLOCKS).round().astype(np.int64))
        regions = [tuple(slice(o, min(o + STATS_BLOCK, n)) for o, n in zip(grid[i], shape)) for i in pick]
    values = np.concatenate([np.asarray(array[r], np.float32).ravel() for r in regions])
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InputError("segment: the input volume has no finite values")
    lo, hi = (float(v) for v in np.percentile(values, q))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


@dataclass
class PatchSource:
    """One training volume: image and label arrays, held-out region, intensity range, class index.

    Attributes:
        image, labels: ``[Z, Y, X]`` arrays of one shape (zarr arrays or numpy).
        holdout: region whose labels are hidden from training (validation), or ``None``.
        lo, hi: intensity range for normalisation.
        block_origins: ``[n_blocks, 3]`` origins of the class-index blocks.
        block_counts: ``[n_blocks, n_classes]`` labelled voxels of each class per block (outside
            ``holdout``).
    """

    image: Any
    labels: Any
    n_classes: int
    holdout: tuple[slice, ...] | None = None
    lo: float = 0.0
    hi: float = 1.0
    block_origins: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    block_counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    name: str = "volume"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    @classmethod
    def open(cls, image: Any, labels: Any, n_classes: int, holdout: tuple[slice, ...] | None = None,
             name: str = "volume", world=None) -> "PatchSource":
        """Check shapes and class ids, then build the class index (split over ranks when ``world`` is given)."""
        if tuple(image.shape) != tuple(labels.shape):
            raise InputError(f"{name}: label store shape {tuple(labels.shape)} differs from the volume shape "
                             f"{tuple(image.shape)}")
        if len(image.shape) != 3:
            raise InputError(f"{name}: expected a 3-D volume (z, y, x), got shape {tuple(image.shape)}")
        lo, hi = intensity_range(image)
        src = cls(image, labels, n_classes, holdout, lo, hi, name=name)
        src._build_index(world)
        return src

    def _build_index(self, world) -> None:
        # read super-blocks of INDEX_SUPER^3 (a few chunks, not one 16^3 read per block: a real scan
        # has millions of index blocks) and count (block, label) pairs with one bincount each
        grid = [range(0, n, INDEX_BLOCK) for n in self.shape]
        origins = np.array(list(itertools.product(*grid)), np.int64)
        nb = [len(g) for g in grid]
        supers = list(itertools.product(*[range(0, n, INDEX_SUPER) for n in self.shape]))
        mine = range(len(supers)) if world is None else world.my_items(len(supers))
        counts = {}
        for i in mine:
            region = tuple(slice(o, min(o + INDEX_SUPER, n)) for o, n in zip(supers[i], self.shape))
            lab = self.masked_labels(region)
            sub = [-(-(r.stop - r.start) // INDEX_BLOCK) for r in region]  # index blocks per axis here
            local = [np.arange(r.stop - r.start) // INDEX_BLOCK for r in region]
            lid = (local[0][:, None, None] * sub[1] + local[1][None, :, None]) * sub[2] + local[2][None, None, :]
            hist = np.bincount((lid * 256 + lab).ravel(), minlength=int(np.prod(sub)) * 256).reshape(-1, 256)
            total = hist.sum(0)
            bad = np.flatnonzero(total[self.n_classes:IGNORE_LABEL]) + self.n_classes
            if bad.size:
                raise InputError(f"{self.name}: label ids {bad.tolist()} are beyond the {self.n_classes} configured "
                                 f"classes (0..{self.n_classes - 1}, {IGNORE_LABEL} = unlabelled)")
            first = [r.start // INDEX_BLOCK for r in region]
            for k, (a, b, c) in enumerate(itertools.product(*[range(n) for n in sub])):
                counts[((first[0] + a) * nb[1] + first[1] + b) * nb[2] + first[2] + c] = hist[k, :self.n_classes]
        if world is not None and world.size > 1:
            merged = {}
            for part in world.allgather(counts):
                merged.update(part)
            counts = merged
        self.block_origins = origins
        self.block_counts = np.stack([counts[i] for i in range(len(origins))]).astype(np.int64)

    def masked_labels(self, region: tuple[slice, ...]) -> np.ndarray:
        """Labels of ``region`` with the held-out region set to 255."""
        lab = np.array(self.labels[region], dtype=np.uint8)
        if self.holdout is not None:
            inter = []
            for r, h, n in zip(region, self.holdout, self.shape):
                h0, h1, _ = h.indices(n)
                a, b = max(r.start, h0), min(r.stop, h1)
                if a >= b:
                    return lab
                inter.append(slice(a - r.start, b - r.start))
            lab[tuple(inter)] = IGNORE_LABEL
        return lab

    def normalise(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.lo) / (self.hi - self.lo)).astype(np.float32)


def labelled_regions(labels: Any, region: Sequence[slice] | None = None,
                     depth: int | None = None) -> list[tuple[tuple[slice, ...], int]]:
    """Where the labelled voxels of ``region`` are: runs of consecutive z slices holding labels.

    Each run is cut to the y-x box of its labels, so validating on a few labelled slices of a large
    scan predicts those slices (with the window context around them), not the whole volume. The label
    array is read in z slabs of ``depth`` (default: its chunk depth).

    Returns:
        ``[(region, labelled_voxels), ...]`` in z order; every voxel != 255 of ``region`` lies in one.
    """
    shape = tuple(labels.shape)
    region = tuple(region) if region is not None else tuple(slice(0, n) for n in shape)
    (z0, z1, _), (y0, _, _), (x0, _, _) = (r.indices(n) for r, n in zip(region, shape))
    depth = int(depth or (getattr(labels, "chunks", None) or (16,))[0])
    runs: list[list[int]] = []  # [z_start, z_stop, y_lo, y_hi, x_lo, x_hi, count]
    for a in range(z0, z1, depth):
        b = min(a + depth, z1)
        known = np.asarray(labels[(slice(a, b), *region[1:])]) != IGNORE_LABEL
        for k in np.flatnonzero(known.any(axis=(1, 2))):
            ys, xs = np.flatnonzero(known[k].any(1)), np.flatnonzero(known[k].any(0))
            z, box = a + int(k), [y0 + int(ys[0]), y0 + int(ys[-1]) + 1, x0 + int(xs[0]), x0 + int(xs[-1]) + 1]
            n = int(known[k].sum())
            if runs and runs[-1][1] == z:
                r = runs[-1]
                r[1], r[6] = z + 1, r[6] + n
                r[2], r[3], r[4], r[5] = min(r[2], box[0]), max(r[3], box[1]), min(r[4], box[2]), max(r[5], box[3])
            else:
                runs.append([z, z + 1, *box, n])
    return [((slice(r[0], r[1]), slice(r[2], r[3]), slice(r[4], r[5])), r[6]) for r in runs]


FLIPS_ONLY = AugmentSettings(intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)
"""The augmentation of a dataset given none: random flips and rotations, intensities unchanged."""


def augment_settings(cfg: AugmentSettings | Mapping[str, Any] | None) -> AugmentSettings:
    """The ``train.augment`` section as :class:`~batterytwin.segment.config.AugmentSettings` (a mapping is
    validated); none or an empty mapping: :data:`FLIPS_ONLY`."""
    return as_settings(AugmentSettings, cfg, "segment.train.augment") if cfg else FLIPS_ONLY


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: AugmentSettings):
    """Random flips (each axis), 90-degree rotations in the y-x plane, intensity scale/shift, noise.

    Rotations stay in the y-x plane: the cell is layered along z, and turning z into x would ask
    the network to learn orientations that never occur in a scan (about the rotation axis z).

    Args:
        image: ``[Z, Y, X]`` float32 (normalised); labels: ``[Z, Y, X]`` uint8.
    """
    if cfg.flip:
        for ax in range(3):
            if rng.random() < 0.5:
                image, labels = np.flip(image, ax), np.flip(labels, ax)
    if cfg.rot90:
        k = int(rng.integers(4)) if image.shape[1] == image.shape[2] else 2 * int(rng.integers(2))
        image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k, axes=(1, 2))
    image = np.ascontiguousarray(image, dtype=np.float32)
    scale, shift, noise = cfg.intensity_scale, cfg.intensity_shift, cfg.noise_std
    image = image * np.float32(1 + rng.uniform(-scale, scale)) + np.float32(rng.uniform(-shift, shift))
    if noise > 0:
        image = image + np.float32(noise * rng.random()) * rng.standard_normal(image.shape, dtype=np.float32)
    return image.astype(np.float32), np.ascontiguousarray(labels)


class PatchDataset(torch.utils.data.Dataset):
    """Map-style dataset over the infinite, seeded patch stream: item ``i`` = global sample ``i``.

    Returns:
        ``(image float32 [1, pz, py, px], labels int64 [pz, py, px])``.
    """

    def __init__(self, sources: Sequence[PatchSource], patch: Sequence[int], seed: int = 0,
                 class_balance: float = 1.0, augment_cfg: AugmentSettings | Mapping[str, Any] | None = None,
                 length: int = 2**62):
        self.sources = list(sources)
        self.patch = tuple(int(p) for p in patch)
        self.seed = int(seed)
        self.class_balance = float(class_balance)
        self.augment_cfg = augment_settings(augment_cfg)
        self.length = length
        for s in self.sources:
            if any(p > n for p, n in zip(self.patch, s.shape)):
                raise InputError(f"{s.name}: patch size {list(self.patch)} is larger than the volume {list(s.shape)}; "
                                 "use a smaller segment.train.patch_size")
        totals = np.stack([s.block_counts.sum(0) for s in self.sources])  # [n_sources, C]
        self.class_totals = totals
        self.present = np.flatnonzero(totals.sum(0) > 0)
        self.labelled_totals = totals.sum(1).astype(np.float64)  # [n_sources]
        if self.present.size == 0:
            raise InputError("segment: the training label stores hold no labelled voxel (all 255?)")

    def __len__(self) -> int:
        return self.length

    def _origin(self, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        if rng.random() < self.class_balance:
            c = int(rng.choice(self.present))
            w = self.class_totals[:, c].astype(np.float64)
            si = int(rng.choice(len(self.sources), p=w / w.sum()))
            src = self.sources[si]
            bw = src.block_counts[:, c].astype(np.float64)
            bi = int(rng.choice(len(bw), p=bw / bw.sum()))
            region = tuple(slice(o, min(o + INDEX_BLOCK, n)) for o, n in zip(src.block_origins[bi], src.shape))
            hits = np.argwhere(src.masked_labels(region) == c)
            centre = src.block_origins[bi] + hits[int(rng.integers(len(hits)))]
            # jitter so that the class voxel is not always at the patch centre
            centre = centre + rng.integers(-(np.array(self.patch) // 4), np.array(self.patch) // 4 + 1)
            origin = tuple(int(np.clip(cz - p // 2, 0, n - p)) for cz, p, n in zip(centre, self.patch, src.shape))
        else:
            # a labelled voxel drawn uniformly, then an origin drawn uniformly among the patches holding it:
            # with dense labels every origin is equally likely (each patch holds the same number of
            # labelled voxels); with sparse labels (a few slices, scribbles) no patch is empty of labels
            w = self.labelled_totals
            si = int(rng.choice(len(self.sources), p=w / w.sum()))
            src = self.sources[si]
            bw = src.block_counts.sum(1).astype(np.float64)
            bi = int(rng.choice(len(bw), p=bw / bw.sum()))
            region = tuple(slice(o, min(o + INDEX_BLOCK, n)) for o, n in zip(src.block_origins[bi], src.shape))
            hits = np.argwhere(src.masked_labels(region) != IGNORE_LABEL)
            voxel = src.block_origins[bi] + hits[int(rng.integers(len(hits)))]
            origin = tuple(int(rng.integers(max(0, v - p + 1), min(v, n - p) + 1))
                           for v, p, n in zip(voxel, self.patch, src.shape))
        return si, origin

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, int(i)])
        si, origin = self._origin(rng)
        src = self.sources[si]
        region = tuple(slice(o, o + p) for o, p in zip(origin, self.patch))
        image = src.normalise(src.image[region])
        labels = src.masked_labels(region)
        image, labels = augment(image, labels, rng, self.augment_cfg)
        return torch.from_numpy(image)[None], torch.from_numpy(labels.astype(np.int64))


class StepSampler(torch.utils.data.Sampler):
    """Indices of this rank's share of global batches ``start_step .. steps-1``.

    Global batch ``s`` is samples ``s*B .. s*B+B-1``; rank ``r`` of ``n`` takes the contiguous
    block ``r*b .. r*b+b-1`` with ``b = B / n``.
    """

    def __init__(self, global_batch: int, rank: int, world_size: int, start_step: int, steps: int):
        if global_batch % world_size:
            raise InputError(f"segment.train.batch_size: {global_batch} is not divisible by the {world_size} ranks")
        self.B, self.b, self.rank = global_batch, global_batch // world_size, rank
        self.start, self.steps = start_step, steps

    def __iter__(self) -> Iterator[int]:
        for s in range(self.start, self.steps):
            base = s * self.B + self.rank * self.b
            yield from range(base, base + self.b)

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.b
