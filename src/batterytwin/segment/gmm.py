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

CLIP_PERCENTILES = (0.5, 99.5)  # the bulk of the intensities; the fit sees them and a margin around them
CLIP_MARGIN = 0.25  # of the bulk's range, each side: the phases' own tails stay, far specks and outliers go
MIN_WEIGHT = 0.005  # a component with less of the (clipped) sample holds (near) no voxels: a collapsed class


def robust_sample(samples: np.ndarray) -> np.ndarray:
    """The finite samples inside the range of :data:`CLIP_PERCENTILES` widened by :data:`CLIP_MARGIN`
    (float64): bright specks, dead pixels and other rare outliers far from the bulk would otherwise
    claim a component of their own; the phases' tails are kept (cutting them would shrink the outer
    components' variances and bias the classification)."""
    x = np.asarray(samples, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return x
    lo, hi = np.percentile(x, CLIP_PERCENTILES)
    pad = CLIP_MARGIN * (hi - lo)
    return x[(x >= lo - pad) & (x <= hi + pad)]


def initial_mixture(x: np.ndarray, n_components: int, reg_covar: float) -> tuple[np.ndarray, ...]:
    """Means, weights and precisions to start EM from: the classes of a multi-Otsu split of the
    histogram (:func:`skimage.filters.threshold_multiotsu`), one component per intensity mode,
    instead of k-means++ seeds that may put two components on one large peak and none on a small one.

    Returns:
        (means [K, 1], weights [K], precisions [K, 1, 1]).
    """
    if n_components == 1:
        groups = [x]
    else:
        from skimage.filters import threshold_multiotsu

        thresholds = threshold_multiotsu(x, classes=n_components, nbins=256)
        part = np.digitize(x, thresholds)
        groups = [x[part == k] for k in range(n_components)]
    if any(g.size == 0 for g in groups):  # a mode too thin for the histogram: split by quantiles
        edges = np.quantile(x, np.linspace(0, 1, n_components + 1)[1:-1])
        part = np.searchsorted(edges, x, side="right")
        groups = [x[part == k] for k in range(n_components)]
    means = np.array([g.mean() if g.size else x.mean() for g in groups])
    weights = np.array([max(g.size, 1) for g in groups], np.float64)
    variances = np.array([g.var() if g.size > 1 else 0.0 for g in groups]) + reg_covar
    return means[:, None], weights / weights.sum(), (1.0 / variances)[:, None, None]


def fit_mixture(samples: np.ndarray, n_components: int, seed: int = 0, max_iter: int = 200,
                n_init: int = 1) -> Mixture:
    """Fit a ``n_components`` Gaussian mixture to ``samples`` (float [n]) by EM (scikit-learn).

    Robust to outliers and to peaks of very different sizes: EM runs on :func:`robust_sample`
    (specks far outside the 0.5..99.5 percentile range left out) from the multi-Otsu start of
    :func:`initial_mixture` (``n_init`` > 1 adds restarts from k-means++; the best likelihood wins).

    Raises:
        InputError: non-finite samples only, or fewer distinct values than components (EM would
            return degenerate, arbitrary components).
    """
    from sklearn.mixture import GaussianMixture

    x = robust_sample(samples)
    distinct = np.unique(x).size if x.size else 0
    if distinct < n_components:
        raise InputError(f"segment.gmm: {n_components} components but the volume's sampled intensities have only "
                         f"{distinct} distinct value(s); give fewer classes in segment.gmm.classes")
    reg = 1e-6 * max(float(x.var()), 1e-30)
    means, weights, precisions = initial_mixture(x, n_components, reg)
    gm = GaussianMixture(n_components, covariance_type="full", max_iter=max_iter, random_state=seed, reg_covar=reg,
                         means_init=means, weights_init=weights, precisions_init=precisions)
    gm.fit(x[:, None])
    if n_init > 1:  # restarts from k-means++ seeds; the start above stays one of the candidates
        other = GaussianMixture(n_components, covariance_type="full", max_iter=max_iter, n_init=n_init - 1,
                                random_state=seed, reg_covar=reg).fit(x[:, None])
        if other.lower_bound_ > gm.lower_bound_:
            gm = other
    order = np.argsort(gm.means_[:, 0], kind="stable")
    return Mixture(gm.means_[order, 0].copy(), gm.covariances_[order, 0, 0].copy(), gm.weights_[order].copy())


def check_mixture(mix: Mixture, component_classes: Sequence[str], where: str = "segment.gmm") -> None:
    """Refuse a fit that cannot be the phases asked for: a component of (near) no voxels (a class that
    vanished, e.g. claimed by a few bright specks), or two neighbouring components of different
    classes on one intensity peak (:func:`pair_modes`: no dip between them, so one phase is split in
    two and another phase got no component).

    Raises:
        InputError: one line naming the components, their classes and the fit.
    """
    names = list(component_classes)
    for k, w in enumerate(mix.weights):
        if w < MIN_WEIGHT:
            raise InputError(f"{where}: component {k} ({names[k]}) of the fitted mixture holds {100 * w:.2f} % of the "
                             f"voxels (means {_fmt(mix.means)}): the volume has no intensity mode for it; give fewer "
                             "classes in segment.gmm.classes")
    for k in range(mix.n_components - 1):
        if names[k] == names[k + 1]:
            continue  # several components of one class may model one skewed peak
        if pair_modes(mix, k) < 2:
            raise InputError(f"{where}: components {k} ({names[k]}) and {k + 1} ({names[k + 1]}) share one intensity "
                             f"peak (means {mix.means[k]:.4g} and {mix.means[k + 1]:.4g}, stds "
                             f"{np.sqrt(mix.variances[k]):.3g} and {np.sqrt(mix.variances[k + 1]):.3g}: their weighted "
                             "sum has a single mode): the volume does not show these phases apart; give fewer "
                             "classes in segment.gmm.classes")


def pair_modes(mix: Mixture, k: int, points: int = 1024) -> int:
    """Modes of the weighted density of components ``k`` and ``k + 1`` (1: one peak, 2: two),
    counted on a fine grid from 4 standard deviations below the first mean to 4 above the second."""
    sd = np.sqrt(mix.variances[k:k + 2])
    m, w = mix.means[k:k + 2], mix.weights[k:k + 2]
    x = np.linspace(m[0] - 4 * sd[0], m[1] + 4 * sd[1], points)
    f = sum(wi / si * np.exp(-0.5 * ((x - mi) / si) ** 2) for mi, si, wi in zip(m, sd, w))
    inner = f[1:-1]
    return int(np.sum((inner > f[:-2]) & (inner >= f[2:])))


def _fmt(values: np.ndarray) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


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
