"""Label-free segmentation, the pure core: sample, fit a Gaussian mixture, classify, clean up.

Arrays in, arrays out; no stores, no ranks (the driver is :mod:`batterytwin.segment.gmm_run`).
The recipe (seed 003): fit a Gaussian mixture to the intensities by EM, give each voxel its most
probable component, map components to classes, then remove speckles with a morphological opening
and closing of each class.

- :func:`sample_intensities`: a bounded, uniform random sample of a volume, drawn block by block
  (memory: one block) with a per-block seed, so the sample does not depend on who reads which block.
- :func:`fit_mixture`: scikit-learn ``GaussianMixture`` (EM) on the sample; components sorted by
  mean (increasing attenuation) into a small :class:`Mixture`.
- :func:`classify`: most probable component per voxel, with scikit-learn's own formula, in float64.
- :func:`clean_labels`: per-class opening then closing with a ball; conflicts are settled locally,
  so a tile with a :func:`halo` of context gives the same voxels as the whole volume.

Example::

    x = volume.astype(np.float32)                                  # [Z, Y, X]
    mix = fit_mixture(sample_intensities(x, 100_000, seed=0), 3, seed=0)
    comp = classify(x, mix)                                        # uint8 [Z, Y, X], 0..2 by mean
    labels = np.array([0, 1, 3], np.uint8)[comp]                   # component -> class id
    labels = clean_labels(labels, [0, 1, 3], radius=1)             # speckles removed
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ..contracts import IGNORE_LABEL
from ..errors import InputError

SAMPLE_BLOCK = 64  # edge of the fixed sampling grid (independent of the store's chunks and shards)
SLAB = 1 << 21  # voxels classified at a time (bounds the float64 temporaries to ~100 MB)


@dataclass(frozen=True)
class Mixture:
    """A 1-D Gaussian mixture, components sorted by mean (increasing).

    Attributes:
        means, variances, weights: float64 [K].
    """

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray

    @property
    def n_components(self) -> int:
        return len(self.means)

    def to_dict(self) -> dict[str, list[float]]:
        return {"means": [float(v) for v in self.means], "stds": [float(v) for v in np.sqrt(self.variances)],
                "weights": [float(v) for v in self.weights]}


# ------------------------------------------------------------------------------------------ sample

def sample_blocks(shape: Sequence[int], block: int = SAMPLE_BLOCK) -> list[tuple[slice, ...]]:
    """The fixed sampling grid of ``shape``: blocks of ``block``^3 in C order (edges clipped)."""
    return [tuple(slice(o, min(o + block, n)) for o, n in zip(origin, shape))
            for origin in itertools.product(*(range(0, n, block) for n in shape))]


def block_quota(shape: Sequence[int], max_samples: int, block: int = SAMPLE_BLOCK) -> list[int]:
    """Voxels to draw from each block of :func:`sample_blocks`: proportional to its size, summing
    to ``min(max_samples, voxels)`` (cumulative rounding, so the total is exact)."""
    sizes = np.array([int(np.prod([s.stop - s.start for s in r])) for r in sample_blocks(shape, block)], np.int64)
    total = int(sizes.sum())
    n = min(int(max_samples), total)
    edges = np.rint(np.concatenate([[0], np.cumsum(sizes)]) * (n / total)).astype(np.int64)
    return [int(min(q, s)) for q, s in zip(np.diff(edges), sizes)]


def sample_block(values: np.ndarray, quota: int, seed: int, index: int) -> np.ndarray:
    """``quota`` voxels of one block (any shape), drawn without replacement with seed (seed, index)."""
    flat = np.asarray(values, np.float32).ravel()
    if quota >= flat.size:
        return flat.copy()
    rng = np.random.default_rng([int(seed), int(index), 0x6E3])
    return flat[np.sort(rng.choice(flat.size, quota, replace=False))]


def sample_intensities(array: Any, max_samples: int, seed: int = 0, blocks: Sequence[int] | None = None,
                       block: int = SAMPLE_BLOCK) -> np.ndarray:
    """A uniform random sample of at most ``max_samples`` voxels of ``array`` (float32 [n]).

    Args:
        array: [Z, Y, X] array-like (numpy or zarr), read one ``block``^3 block at a time.
        blocks: indices into :func:`sample_blocks` to read (one rank's share); None = all.
            Concatenating the shares in block order gives the sample of ``blocks=None``.

    Example: ``sample_intensities(np.zeros((8, 8, 8)), 100).shape == (100,)``.
    """
    regions = sample_blocks(array.shape, block)
    quota = block_quota(array.shape, max_samples, block)
    idx = range(len(regions)) if blocks is None else blocks
    parts = [sample_block(array[regions[i]], quota[i], seed, i) for i in idx if quota[i] > 0]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# --------------------------------------------------------------------------------------------- fit

def fit_mixture(samples: np.ndarray, n_components: int, seed: int = 0, max_iter: int = 200,
                n_init: int = 1) -> Mixture:
    """Fit a ``n_components`` Gaussian mixture to ``samples`` (float [n]) by EM (scikit-learn).

    Raises:
        InputError: non-finite samples only, or fewer distinct values than components (EM would
            return degenerate, arbitrary components).
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(samples, np.float64).ravel()
    x = x[np.isfinite(x)]
    distinct = np.unique(x).size if x.size else 0
    if distinct < n_components:
        raise InputError(f"segment.gmm: {n_components} components but the volume's sampled intensities have only "
                         f"{distinct} distinct value(s); give fewer classes in segment.gmm.classes")
    gm = GaussianMixture(n_components, covariance_type="full", max_iter=max_iter, n_init=n_init,
                         random_state=seed, reg_covar=1e-6 * max(float(x.var()), 1e-30))
    gm.fit(x[:, None])
    order = np.argsort(gm.means_[:, 0], kind="stable")
    return Mixture(gm.means_[order, 0].copy(), gm.covariances_[order, 0, 0].copy(), gm.weights_[order].copy())


# -------------------------------------------------------------------------------------- classify

def log_responsibilities(x: np.ndarray, mix: Mixture) -> np.ndarray:
    """Weighted log-densities ``log w_k + log N(x; mu_k, var_k)``, float64 [K, *x.shape].

    The same arithmetic as scikit-learn's ``GaussianMixture._estimate_weighted_log_prob`` (1-D,
    precision Cholesky factor ``1 / sqrt(var)``), so argmax agrees with ``predict``.
    """
    x = np.asarray(x, np.float64)
    prec = 1.0 / np.sqrt(mix.variances)
    out = np.empty((mix.n_components, *x.shape), np.float64)
    for k in range(mix.n_components):
        y = x * prec[k] - mix.means[k] * prec[k]
        out[k] = -0.5 * (np.log(2 * np.pi) + y * y) + np.log(prec[k]) + np.log(mix.weights[k])
    return out


def classify(x: np.ndarray, mix: Mixture, lut: np.ndarray | None = None,
             class_posteriors: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Most probable component of each voxel: uint8, ``x.shape`` (0 = lowest mean).

    Non-finite voxels get :data:`~batterytwin.contracts.IGNORE_LABEL` (255, unlabelled) and
    entropy 0.

    Args:
        lut: optional uint8 [K] component -> class id, applied to the result.
        class_posteriors: also return the entropy (nats, float32) of the class posteriors
            (components of one class summed; needs ``lut``).
    """
    x = np.asarray(x)
    flat = x.reshape(-1)
    comp = np.empty(flat.size, np.uint8)
    ent = np.empty(flat.size, np.float32) if class_posteriors else None
    for s in range(0, flat.size, SLAB):
        lr = log_responsibilities(flat[s:s + SLAB], mix)
        comp[s:s + SLAB] = lr.argmax(0)
        if class_posteriors:
            with np.errstate(invalid="ignore"):  # non-finite voxels: set to 0 below
                post = np.exp(lr - lr.max(0))
                post /= post.sum(0)
            ids = np.unique(lut)
            pc = np.stack([post[lut == c].sum(0) for c in ids])
            with np.errstate(divide="ignore", invalid="ignore"):
                ent[s:s + SLAB] = -np.where(pc > 0, pc * np.log(pc), 0.0).sum(0)
    out = comp.reshape(x.shape) if lut is None else np.asarray(lut, np.uint8)[comp].reshape(x.shape)
    bad = ~np.isfinite(x)
    if bad.any():
        out[bad] = IGNORE_LABEL
        if class_posteriors:
            ent.reshape(x.shape)[bad] = 0.0
    return (out, ent.reshape(x.shape)) if class_posteriors else out


# ----------------------------------------------------------------------------------------- clean

def ball(radius: int) -> np.ndarray:
    """bool [2r+1]^3: voxels within Euclidean distance ``radius`` (radius 1: the 6-neighbour cross)."""
    r = int(radius)
    z, y, x = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (z * z + y * y + x * x) <= r * r


def halo(radius: int) -> int:
    """Context (voxels) a tile needs on each side so that :func:`clean_labels` of the tile equals the
    whole volume's in its interior: opening + closing reach 4 radii, the tie-break 1 voxel more."""
    return 4 * int(radius) + 1 if radius > 0 else 0


def clean_labels(labels: np.ndarray, classes: Sequence[int], radius: int = 1) -> np.ndarray:
    """Remove speckles: per class, a binary opening then a closing with a ball of ``radius``.

    Each class ``c`` gives a cleaned mask ``M_c = close(open(labels == c))``. A voxel in exactly one
    ``M_c`` takes ``c``. A voxel in several (or in none: e.g. a thin feature opened away) takes the
    class, among those candidates (or among all ``classes``), with the most voxels in its 3x3x3
    neighbourhood of the input; equal counts go to the lower class id. Every step is local, so the
    result inside a tile with :func:`halo` voxels of real context (or of mirrored padding at the
    volume's faces, see :func:`pad_tile`) does not depend on the tiling. Voxels of other labels
    (e.g. 255) are kept as they are and never claimed.

    Args:
        labels: uint8 [Z, Y, X].
        classes: the class ids to clean (the ids the segmentation can produce).
        radius: ball radius in voxels; 0 returns a copy.

    Returns:
        uint8 [Z, Y, X]. Faces of the array are treated with scipy's defaults (pad first with
        :func:`pad_tile` to clean a whole volume the way the driver does).

    Example: a single voxel of class 1 inside class 0 becomes 0 (``clean_labels(l, [0, 1])``).
    """
    labels = np.asarray(labels, np.uint8)
    classes = sorted(int(c) for c in classes)
    if radius <= 0 or len(classes) < 2:
        return labels.copy()
    se = ball(radius)
    cleaned = np.zeros((len(classes), *labels.shape), bool)
    for i, c in enumerate(classes):
        m = labels == c
        if m.any():
            m = ndimage.binary_opening(m, se)
            cleaned[i] = ndimage.binary_closing(m, se)
    ours = np.isin(labels, classes)
    n_claims = cleaned.sum(0)
    out = labels.copy()
    one = (n_claims == 1) & ours
    out[one] = np.asarray(classes, np.uint8)[cleaned.argmax(0)[one]]
    tie = (n_claims != 1) & ours
    if tie.any():
        box = np.ones((3, 3, 3), np.uint8)
        best = np.full(int(tie.sum()), -1, np.int16)
        pick = np.zeros(int(tie.sum()), np.uint8)
        none = (n_claims == 0)[tie]
        for i, c in enumerate(classes):
            count = ndimage.correlate((labels == c).astype(np.uint8), box, mode="nearest")[tie].astype(np.int16)
            count = np.where(cleaned[i][tie] | none, count, -1)
            better = count > best  # strict: equal counts keep the lower class id
            best[better], pick[better] = count[better], c
        out[tie] = pick
    return out


def pad_tile(tile: np.ndarray, before: Sequence[int], after: Sequence[int]) -> np.ndarray:
    """``tile`` padded by mirroring (``numpy.pad`` mode ``symmetric``): the volume's faces seen as
    mirrors, as the microstructure walk does."""
    if not any(before) and not any(after):
        return tile
    return np.pad(tile, list(zip(before, after)), mode="symmetric")
